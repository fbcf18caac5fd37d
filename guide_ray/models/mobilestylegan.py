"""MobileStyleGAN FFHQ 1024 (random-face wheel, OpenVINO IR) as a fine-tunable PyTorch generator.

The export feeds one w [B, 512] to all 23 modulation layers of the synthesis network; the IR
interpreter splits that input so W+ ([B, 23, 512]) reaches each layer separately. The IR stores
no w_avg: we estimate it as the mean of ``W_AVG_SAMPLES`` mapping outputs and cache it beside the
weights.

Reduced resolution (``at_resolution``): each synthesis block doubles the size of the features,
and the features at R/2 are the wavelet coefficients of an R² image. 80-90% of a 1024² forward is
spent above 128² features, so GUIDE can train the layers up to the block giving R/2-size
features and read a R² image from them. The export keeps no intermediate to-RGB layer (it was
pruned with the branches the final image does not use), so we fit one: a linear 1x1 map from the
block's features to 12 channels, pixel-shuffled to R² (the same span as the network's 12 Haar
coefficients and inverse DWT), fitted by least squares to the full image area-downsampled to R²
on ``HEAD_SAMPLES`` random latents and cached beside w_avg. A head with a learned per-channel
style modulation and a 3x3 convolution fitted no better (22.5 dB on held-out latents): what the
head misses is what the upper blocks still change (small shifts of pose and hair), not colour.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import platformdirs
import torch
import torch.nn.functional as F

from .generator import GeneratorBase, cached_latent, file_digest
from .openvino_ir import IRGraph

log = logging.getLogger(__name__)

W_AVG_SAMPLES = 100_000
W_AVG_SEED = 0
HEAD_SAMPLES = 32  # random latents the reduced-resolution head is fitted on (~75 s once on 2 CPU cores)
HEAD_SEED = 1000  # torch seed of their z: not a seed any table or test evaluates
MAPPING_XML, SYNTHESIS_XML = "MappingNetwork.xml", "SynthesisNetwork.xml"


class MobileStyleGAN(GeneratorBase):
    z_dim = w_dim = 512
    resolution = 1024

    def __init__(self, folder: str | Path, name: str = "mobilestylegan-ffhq1024"):
        super().__init__()
        folder = Path(folder)
        for f in (MAPPING_XML, SYNTHESIS_XML):
            if not (folder / f).exists() or not (folder / f).with_suffix(".bin").exists():
                raise FileNotFoundError(f"{folder} lacks {f} and its .bin: a MobileStyleGAN IR folder "
                                        f"holds {MAPPING_XML}/.bin and {SYNTHESIS_XML}/.bin")
        self.name = name
        self.mapping_net = IRGraph(folder / MAPPING_XML).requires_grad_(False)
        # The inverse-DWT upsamplers (transposed convs) use fixed Haar filters: not learned.
        self.synthesis_net = IRGraph(folder / SYNTHESIS_XML, per_layer_input=0,
                                     fixed_consumers=("GroupConvolutionBackpropData",))
        self.num_ws = len(self.synthesis_net.input_consumers)
        self._cache = folder if os.access(folder, os.W_OK) else Path(platformdirs.user_cache_dir("guide_ray")) / "w_avg"
        self._digest = file_digest(folder / MAPPING_XML.replace(".xml", ".bin"))
        self._synthesis_digest = file_digest(folder / SYNTHESIS_XML.replace(".xml", ".bin"))
        name = f"w_avg-n{W_AVG_SAMPLES}-seed{W_AVG_SEED}-{self._digest}.npy"
        self.register_buffer("w_avg", cached_latent(self._cache / name, lambda: estimate_w_avg(self.mapping_net),
                                                    f"w_avg from {W_AVG_SAMPLES} mapping samples"))

    def _map(self, z):
        return self.mapping_net(z)

    def _synthesize(self, ws):
        return self.synthesis_net(ws)

    def lr_scale(self, parameter):
        """1/sqrt(fan-in) for weight tensors: the export folded StyleGAN's equalized-lr constants
        into them, so Adam at lr on the stored weights would step sqrt(fan-in) (11-23x) farther
        than the official code's Adam on the unscaled ones. Unscaled, LTU at lr 1e-4 collapsed
        the generator after ~180 iterations (the 1x1 convolutions moved by up to 53 %)."""
        return float(parameter[0].numel()) ** -0.5 if parameter.ndim >= 2 else 1.0

    def at_resolution(self, resolution: int) -> GeneratorBase:
        if resolution == self.resolution:
            return self
        cut = cut_layer(self.synthesis_net, resolution)
        name = (f"rgb-head-r{resolution}-n{HEAD_SAMPLES}-seed{HEAD_SEED}-"
                f"{self._digest}-{self._synthesis_digest}.npy")
        head = cached_latent(self._cache / name, lambda: fit_rgb_head(self, cut, resolution),
                             f"the {resolution}x{resolution} RGB head from {HEAD_SAMPLES} latents")
        return ReducedMobileStyleGAN(self, cut, resolution, head.to(self.device))


def cut_layer(graph: IRGraph, resolution: int) -> str:
    """The id of the last activation whose features are (resolution / 2)² in size: the output of
    the block whose wavelet features make a resolution² image."""
    size = resolution // 2
    activations = [lid for lid in graph.order if graph.layers[lid].type == "PReLU"]
    found = [lid for lid in activations if graph.layers[lid].out_shapes[0][-2:] == [size, size]]
    if resolution % 2 or not found or found[-1] == activations[-1]:  # the last block's is the full image
        sizes = sorted({2 * graph.layers[lid].out_shapes[0][-1] for lid in activations})
        raise ValueError(f"MobileStyleGAN cannot be trained at {resolution}x{resolution}: its blocks give "
                         f"{', '.join(map(str, sizes[:-1]))} (or its full {sizes[-1]})")
    return found[-1]


@torch.no_grad()
def fit_rgb_head(generator: "MobileStyleGAN", cut: str, resolution: int, samples: int = HEAD_SAMPLES,
                 seed: int = HEAD_SEED) -> torch.Tensor:
    """[12, C + 1]: the least-squares linear map (weights, then bias) from the cut's C-channel
    features to the pixel-unshuffled full image, area-downsampled to ``resolution``²."""
    z = torch.randn(samples, generator.z_dim, generator=torch.Generator().manual_seed(seed))
    gram = rhs = None
    for w in generator.mapping(z.to(generator.device)):
        features = generator.synthesis_net(w[None], until=cut)
        image = F.avg_pool2d(generator.synthesis(w[None]), generator.resolution // resolution)
        x = F.pad(features[0].flatten(1).T.double(), (0, 1), value=1.0)  # [pixels, C + 1]: the bias column
        y = F.pixel_unshuffle(image, 2)[0].flatten(1).T.double()  # [pixels, 12]
        gram = x.T @ x if gram is None else gram + x.T @ x
        rhs = x.T @ y if rhs is None else rhs + x.T @ y
    ridge = 1e-6 * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + ridge, rhs).T.float()


class ReducedMobileStyleGAN(GeneratorBase):
    """A MobileStyleGAN that stops at ``resolution``²: the synthesis layers up to ``cut`` and the
    fitted RGB head (a buffer: never trained). It shares the full generator's modules, so training
    it trains the full generator's lower layers; ``full`` is that generator (for a deep copy of the
    view, the copy of it that shares the copied modules)."""

    def __init__(self, full: MobileStyleGAN, cut: str, resolution: int, head: torch.Tensor):
        super().__init__()
        object.__setattr__(self, "_full", full)  # not a submodule: parameter names stay the full generator's
        self.name = f"{full.name}@{resolution}"
        self.z_dim, self.w_dim, self.num_ws = full.z_dim, full.w_dim, full.num_ws
        self.resolution, self.ffhq_box, self.cut = resolution, full.ffhq_box, cut
        self.mapping_net, self.synthesis_net = full.mapping_net, full.synthesis_net
        self.register_buffer("w_avg", full.w_avg)
        self.register_buffer("head", head)
        needed = self.synthesis_net.ancestors(cut)
        # The W+ entries that reach the truncated network: the first ones, in flow order. A W+
        # inversion through the view leaves the others at the projector's start (w_avg), which
        # renders natural colours at 1024²; copying the last fitted entry there over-contrasted them.
        self.used_ws = sum(m in needed for m in self.synthesis_net.input_consumers)

    @property
    def full(self) -> MobileStyleGAN:
        return self._full

    def _map(self, z):
        return self.mapping_net(z)

    def _synthesize(self, ws):
        features = self.synthesis_net(ws, until=self.cut)
        coefficients = F.conv2d(features, self.head[:, :-1, None, None], self.head[:, -1])
        return F.pixel_shuffle(coefficients, 2)

    def trainable_parameters(self):
        return iter(self.synthesis_net.parameters_until(self.cut))

    def lr_scale(self, parameter):
        return self.full.lr_scale(parameter)


@torch.no_grad()
def estimate_w_avg(mapping: torch.nn.Module, samples: int = W_AVG_SAMPLES, seed: int = W_AVG_SEED,
                   batch: int = 5000) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(512, dtype=torch.float64)
    for start in range(0, samples, batch):
        z = torch.randn(min(batch, samples - start), 512, generator=gen)
        total += mapping(z).double().sum(0)
    return (total / samples).float()
