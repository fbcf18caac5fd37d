"""pSp and e4e encoders from their published checkpoints, as a LatentEncoder for inversion.

pSp (Richardson et al., "Encoding in Style", CVPR 2021) maps a 256x256 FFHQ-aligned face to
StyleGAN2's W+ with an IR-SE50 body and a feature pyramid: ``styles`` 0-2 (coarse) read the last
stage's 16x16 map c3, 3-6 (middle) the 32x32 map p2 = up(c3) + latlayer1(c2), 7+ (fine) the 64x64
map p1 = up(p2) + latlayer2(c1) (bilinear, align_corners=True); each ``GradualStyleBlock`` is
stride-2 3x3 convs with LeakyReLU(0.01) down to 1x1, then an equalised linear layer. e4e (Tov et
al., "Designing an Encoder for StyleGAN Image Manipulation", SIGGRAPH 2021) reuses the blocks but
predicts one code w0 = styles[0](c3) and per-layer deltas: w_i = w0 + styles[i](features_i), i >= 1.
Both repos also have single-code encoders (pSp's BackboneEncoderUsingLastLayerIntoW(Plus), e4e's
SingleStyleCodeEncoder): average-pooled (resp. 7x7-pooled) last stage -> linear layer(s).

A checkpoint is a torch file {'state_dict': {'encoder.*', 'decoder.*'}, 'opts': dict of the
training options, 'latent_avg': [n_styles, 512] or [512] when start_from_latent_avg}. Only the
``encoder.*`` tensors are used, loaded strictly into a network of their shape (read from the
keys); ``opts`` gives the encoder type and the generator size (pSp's output_size, e4e's
stylegan_size; 1024 -> 18 styles).

Latents. pSp feeds its decoder codes + latent_avg (start_from_latent_avg) or the codes as they are.
Our LatentEncoder protocol returns offsets from the generator's w_avg, so ``for_generator`` gives
offsets = (pSp's latent) - generator.w_avg, and ``inversion.encode`` (w_avg + offsets) returns
exactly pSp's latent even where the generator's w_avg differs from the checkpoint's latent_avg
(both estimate the mean of the same mapping network, from different samples). A checkpoint that
starts from the average but stores none gets the generator's w_avg, as e4e then computes its
decoder's mean latent instead.

Inputs: [B, 3, H, W] RGB in [-1, 1] (pSp: Resize((256, 256)), ToTensor, Normalize(0.5, 0.5) on
RGB PIL images); other sizes are resized to 256 with antialiased bilinear filtering, as PIL does.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import WeightsError
from .irse import IRLayout, IRNet, load_strict, load_torch_file, read_layout

INPUT_SIZE = 256
COARSE, MIDDLE = 3, 7  # styles [0, 3) read c3, [3, 7) p2, [7, n) p1
STYLE_SPATIAL = (16, 32, 64)  # the sizes of c3, p2, p1 at 256 px input


class EqualLinear(nn.Module):
    """StyleGAN2's equalised linear layer (lr_mul 1, no activation): x @ (weight / sqrt(in)).T + bias."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, x):
        return F.linear(x, self.weight / math.sqrt(self.weight.shape[1]), self.bias)


class GradualStyleBlock(nn.Module):
    """log2(spatial) stride-2 3x3 convs, each followed by LeakyReLU(0.01), then EqualLinear."""

    def __init__(self, in_c: int, out_c: int, spatial: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(in_c if i == 0 else out_c, out_c, 3, 2, 1), nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, out_c)

    def forward(self, x):
        return self.linear(self.convs(x).flatten(1))


def _upsample_add(x, lateral):
    return F.interpolate(x, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral


class GradualStyleEncoder(IRNet):
    """pSp's encoder: [B, 3, 256, 256] -> codes [B, n_styles, w_dim]."""

    def __init__(self, layout: IRLayout, n_styles: int, w_dim: int):
        super().__init__(layout)
        c3 = layout.depths[-1]
        c1, c2 = layout.depths[sum(layout.stage_units[:2]) - 1], layout.depths[sum(layout.stage_units[:3]) - 1]
        self.styles = nn.ModuleList(
            GradualStyleBlock(c3, w_dim, STYLE_SPATIAL[(i >= COARSE) + (i >= MIDDLE)]) for i in range(n_styles))
        self.latlayer1 = nn.Conv2d(c2, c3, 1)
        self.latlayer2 = nn.Conv2d(c1, c3, 1)

    def pyramid(self, x):
        """The features each style reads: c3, p2, p1."""
        c1, c2, c3 = self.stages(x)[-3:]
        p2 = _upsample_add(c3, self.latlayer1(c2))
        return c3, p2, _upsample_add(p2, self.latlayer2(c1))

    def forward(self, x):
        features = self.pyramid(x)
        return torch.stack([style(features[(i >= COARSE) + (i >= MIDDLE)]) for i, style in enumerate(self.styles)], 1)


class Encoder4Editing(GradualStyleEncoder):
    """e4e's encoder at its inference stage (every delta on): w_0 = w0, w_i = w0 + delta_i."""

    def forward(self, x):
        features = self.pyramid(x)
        w0 = self.styles[0](features[0])
        deltas = [style(features[(i >= COARSE) + (i >= MIDDLE)]) for i, style in enumerate(self.styles) if i > 0]
        return w0[:, None] + torch.stack([torch.zeros_like(w0), *deltas], 1)


class BackboneEncoderUsingLastLayerIntoW(IRNet):
    """pSp's W encoder (e4e's SingleStyleCodeEncoder): mean-pooled last stage -> EqualLinear: [B, w_dim]."""

    def __init__(self, layout: IRLayout, n_styles: int, w_dim: int):
        super().__init__(layout)
        self.linear = EqualLinear(layout.depths[-1], w_dim)

    def forward(self, x):
        return self.linear(self.stages(x)[-1].mean(dim=(2, 3)))


class BackboneEncoderUsingLastLayerIntoWPlus(IRNet):
    """pSp's W+ variant: BN2d - 7x7 adaptive average pool - linear - EqualLinear to n_styles codes."""

    def __init__(self, layout: IRLayout, n_styles: int, w_dim: int):
        super().__init__(layout)
        c = layout.depths[-1]
        self.n_styles, self.w_dim = n_styles, w_dim
        self.output_layer_2 = nn.Sequential(nn.BatchNorm2d(c), nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(),
                                            nn.Linear(c * 49, w_dim))
        self.linear = EqualLinear(w_dim, w_dim * n_styles)

    def forward(self, x):
        return self.linear(self.output_layer_2(self.stages(x)[-1])).view(-1, self.n_styles, self.w_dim)


ENCODERS = {
    "GradualStyleEncoder": GradualStyleEncoder,
    "Encoder4Editing": Encoder4Editing,
    "BackboneEncoderUsingLastLayerIntoW": BackboneEncoderUsingLastLayerIntoW,
    "SingleStyleCodeEncoder": BackboneEncoderUsingLastLayerIntoW,
    "BackboneEncoderUsingLastLayerIntoWPlus": BackboneEncoderUsingLastLayerIntoWPlus,
}


class PSPEncoder(nn.Module):
    """A pSp / e4e encoder with its checkpoint's latent_avg. ``latents(images)`` is what pSp feeds
    its decoder, [B, n_styles, w_dim]; ``for_generator(g)`` is the LatentEncoder for ``g``."""

    def __init__(self, net: nn.Module, n_styles: int, w_dim: int, latent_avg: torch.Tensor | None,
                 start_from_latent_avg: bool, name: str):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.n_styles, self.w_dim, self.name = n_styles, w_dim, name
        self.start_from_latent_avg = start_from_latent_avg
        self.register_buffer("latent_avg", latent_avg)

    def codes(self, images: torch.Tensor) -> torch.Tensor:
        """The encoder's output for images in [-1, 1], as [B, n_styles, w_dim] (a W code repeated)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected RGB images [B, 3, H, W], got {tuple(images.shape)}")
        if images.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            images = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True,
                                   align_corners=False)
        codes = self.net(images)
        return codes[:, None].expand(-1, self.n_styles, -1) if codes.ndim == 2 else codes

    def latents(self, images: torch.Tensor, w_avg: torch.Tensor | None = None) -> torch.Tensor:
        """pSp's latents: codes + latent_avg when the checkpoint starts from the average (``w_avg``
        stands in for a latent_avg the checkpoint lacks), else the codes."""
        codes = self.codes(images)
        if not self.start_from_latent_avg:
            return codes
        avg = self.latent_avg if self.latent_avg is not None else w_avg
        if avg is None:
            raise ValueError(f"{self.name} starts from the average latent but stores none; pass w_avg")
        return codes + avg

    def for_generator(self, generator) -> "GeneratorOffsets":
        shape = (generator.num_ws, generator.w_dim)
        if (self.n_styles, self.w_dim) != shape:
            raise WeightsError(f"{self.name} predicts {self.n_styles} x {self.w_dim} latents, but generator "
                               f"{getattr(generator, 'name', '')!r} takes {shape[0]} x {shape[1]}: this encoder "
                               f"was trained for another generator")
        return GeneratorOffsets(self, generator.w_avg)


class GeneratorOffsets:
    """The LatentEncoder protocol for one generator: pSp's latents minus the generator's w_avg."""

    def __init__(self, encoder: PSPEncoder, w_avg: torch.Tensor):
        self.encoder, self.w_avg = encoder, w_avg

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.latents(images, self.w_avg) - self.w_avg


def load_psp_encoder(path: str | Path, device: str | torch.device | None = None, ckpt: dict | None = None) -> PSPEncoder:
    """A pSp or e4e encoder from its training checkpoint (e.g. ``psp_ffhq_encode.pt``,
    ``e4e_ffhq_encode.pt``), on ``device`` (CPU by default); ``ckpt``: the file's contents when
    already read."""
    path = Path(path).expanduser()
    ckpt = load_torch_file(path) if ckpt is None else ckpt
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) or "opts" not in ckpt:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise WeightsError(f"{path} is not a pSp/e4e checkpoint (a dict with 'state_dict' and 'opts'); it holds "
                           f"{keys}")
    opts = ckpt["opts"] if isinstance(ckpt["opts"], dict) else vars(ckpt["opts"])
    kind = opts.get("encoder_type")
    if kind not in ENCODERS:
        raise WeightsError(f"{path}: encoder_type {kind!r} is not one of {', '.join(ENCODERS)}")
    size = opts.get("output_size", opts.get("stylegan_size", 1024))  # pSp's inference default: 1024
    n_styles = 2 * int(math.log2(size)) - 2
    state = {k[len("encoder."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}
    if not state:
        raise WeightsError(f"{path}: its state_dict has no 'encoder.*' tensors")
    source = f"{path} (encoder.*)"
    layout = read_layout(state, source, head=False)
    if layout.in_channels != 3:
        raise WeightsError(f"{path}: the encoder takes {layout.in_channels}-channel inputs (input_nc "
                           f"{opts.get('input_nc')}: a sketch or segmentation task), not RGB photos")
    if kind in ("GradualStyleEncoder", "Encoder4Editing"):
        found = sum(1 for k in state if k.startswith("styles.") and k.endswith(".linear.weight"))
        if found != n_styles:
            raise WeightsError(f"{path}: {found} style blocks, but a {size} px generator has {n_styles} "
                               f"(opts output_size / stylegan_size)")
    # the tensor whose rows are w_dim
    w_key = {"GradualStyleEncoder": "styles.0.linear.weight", "Encoder4Editing": "styles.0.linear.weight",
             "BackboneEncoderUsingLastLayerIntoWPlus": "output_layer_2.3.weight"}.get(kind, "linear.weight")
    if w_key not in state:
        raise WeightsError(f"{path}: no encoder.{w_key}, which a {kind} has")
    w_dim = state[w_key].shape[0]
    net = ENCODERS[kind](layout, n_styles, w_dim)
    load_strict(net, state, source)

    latent_avg = ckpt.get("latent_avg", ckpt["state_dict"].get("latent_avg"))
    if latent_avg is not None:
        if latent_avg.numel() not in (w_dim, n_styles * w_dim):
            raise WeightsError(f"{path}: latent_avg has shape {tuple(latent_avg.shape)}; expected [{w_dim}] or "
                               f"[{n_styles}, {w_dim}]")
        latent_avg = latent_avg.detach().float().reshape(-1, w_dim)
    start = bool(opts.get("start_from_latent_avg", latent_avg is not None))
    encoder = PSPEncoder(net, n_styles, w_dim, latent_avg, start, f"{kind}:{path.name}")
    return encoder.to(device or "cpu")
