"""Perceptual distances between images: ST-LPIPS (the default) and the official LPIPS.

ST-LPIPS (Ghildyal & Liu, "Shift-tolerant Perceptual Similarity Metric", ECCV 2022) is LPIPS
(Zhang et al., CVPR 2018) computed on an anti-aliased backbone: every stride-2 step becomes a
stride-1 max pool followed by a reflect-padded [1, 2, 1] x [1, 2, 1] blur sampled at stride 2
(Zhang, "Making Convolutional Networks Shift-Invariant Again", ICML 2019), so a one-pixel shift
of either image barely moves the distance. The backbone and the linear layers come together in
stlpips-pytorch's ``vST0.0`` checkpoints (``weights.path("stlpips-vgg")``); this module is an
independent implementation that loads them.

All distances take two NCHW batches in [-1, 1] and return one distance per pair, shape [B].
"""

from __future__ import annotations

import os
import warnings
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import weights

# LPIPS v0.1's input normalisation (ImageNet statistics expressed for [-1, 1] inputs).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class BlurPool(nn.Module):
    """Anti-aliased stride-2 downsampling: reflect pad 2 (ST-LPIPS's ``pad_more``), 3x3 binomial blur."""

    def __init__(self, channels: int):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        k = torch.outer(k, k) / 16
        self.register_buffer("filt", k.expand(channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


def _conv_relu(cin: int, cout: int, k: int = 3, pad: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=pad), nn.ReLU()]


def _vgg16_stages() -> list[nn.Sequential]:
    """VGG16 cut after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3; each 2x2 max pool -> max pool s1 + BlurPool."""
    def down(c: int) -> list[nn.Module]:
        return [nn.MaxPool2d(2, stride=1), BlurPool(c)]

    return [
        nn.Sequential(*_conv_relu(3, 64), *_conv_relu(64, 64)),
        nn.Sequential(*down(64), *_conv_relu(64, 128), *_conv_relu(128, 128)),
        nn.Sequential(*down(128), *_conv_relu(128, 256), *_conv_relu(256, 256), *_conv_relu(256, 256)),
        nn.Sequential(*down(256), *_conv_relu(256, 512), *_conv_relu(512, 512), *_conv_relu(512, 512)),
        nn.Sequential(*down(512), *_conv_relu(512, 512), *_conv_relu(512, 512), *_conv_relu(512, 512)),
    ]


def _alexnet_stages() -> list[nn.Sequential]:
    """ST-LPIPS's AlexNet: conv1 at stride 1 then BlurPool before its ReLU; 3x3 max pools at stride 1 + BlurPool."""
    return [
        nn.Sequential(nn.Conv2d(3, 64, 11, padding=2), BlurPool(64), nn.ReLU()),
        nn.Sequential(nn.MaxPool2d(3, stride=1), BlurPool(64), *_conv_relu(64, 192, 5, 2)),
        nn.Sequential(nn.MaxPool2d(3, stride=1), BlurPool(192), *_conv_relu(192, 384)),
        nn.Sequential(*_conv_relu(384, 256)),
        nn.Sequential(*_conv_relu(256, 256)),
    ]


# Per backbone: stage builder, channels of the five tapped layers, and the index in the reference
# implementation's flat ``features`` list where each of its ``net.slice{1..5}`` starts.
_BACKBONES = {
    "vgg": (_vgg16_stages, (64, 128, 256, 512, 512), (0, 4, 10, 18, 26)),
    "alex": (_alexnet_stages, (64, 192, 384, 256, 256), (0, 3, 7, 11, 13)),
}


class STLPIPS(nn.Module):
    """Shift-tolerant LPIPS: forward(a, b) with NCHW images in [-1, 1] -> [B] distances.

    Differentiable with respect to both images (the weights are frozen); d(x, x) = 0.
    """

    def __init__(self, net: str = "vgg"):
        super().__init__()
        if net not in _BACKBONES:
            raise ValueError(f"ST-LPIPS backbone must be one of {sorted(_BACKBONES)}, not {net!r}")
        build, chns, _ = _BACKBONES[net]
        self.net = net
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.stages = nn.ModuleList(build())
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in chns)

    @classmethod
    def from_file(cls, path_or_name: str | os.PathLike = "stlpips-vgg") -> STLPIPS:
        """Load an stlpips-pytorch ``*_shift_tolerant.pth``: a manifest name or a file path."""
        state = torch.load(weights.resolve_file(path_or_name), map_location="cpu", weights_only=True)
        first = state.get("net.slice1.0.weight")
        if first is None:
            raise ValueError(f"{path_or_name}: not an ST-LPIPS checkpoint (no net.slice1.0.weight)")
        model = cls("alex" if first.shape[-1] == 11 else "vgg")
        model.load_state_dict(model._map_reference_keys(state))
        return model.requires_grad_(False).eval()

    def _map_reference_keys(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """stlpips-pytorch names -> ours: scaling_layer.* -> shift/scale,
        net.slice{s}.{i}.* -> stages.{s-1}.{i - start of slice s},
        lin{k}.model.1.weight (index 1 sits behind a training-time dropout) -> lins.{k}.weight."""
        starts = _BACKBONES[self.net][2]
        out = {}
        for key, value in state.items():
            parts = key.split(".")
            if parts[0] == "scaling_layer":
                out[parts[1]] = value
            elif parts[0] == "net":
                stage = int(parts[1].removeprefix("slice")) - 1
                out[f"stages.{stage}.{int(parts[2]) - starts[stage]}.{parts[3]}"] = value
            elif parts[0].startswith("lin") and parts[1:] == ["model", "1", "weight"]:
                out[f"lins.{parts[0].removeprefix('lin')}.weight"] = value
            else:
                raise ValueError(f"unexpected key {key!r} in an ST-LPIPS checkpoint")
        return out

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The channel-normalised feature maps of each stage (cacheable for a fixed image)."""
        h = (x - self.shift) / self.scale
        feats = []
        for stage in self.stages:
            h = stage(h)
            # Unit-normalise over channels (LPIPS's normalize_tensor, eps 1e-10). vector_norm's
            # gradient is 0 at an all-zero feature, where sqrt(sum of squares) would give NaN.
            feats.append(h / (torch.linalg.vector_norm(h, dim=1, keepdim=True) + 1e-10))
        return feats

    def distance(self, fa: list[torch.Tensor], fb: list[torch.Tensor]) -> torch.Tensor:
        """[B] distances between two images' ``features``."""
        return sum(lin((a - b) ** 2).mean(dim=(1, 2, 3)) for lin, a, b in zip(self.lins, fa, fb))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
            raise ValueError(f"expected two equal NCHW RGB batches, got {tuple(a.shape)} and {tuple(b.shape)}")
        n = a.shape[0]
        feats = self.features(torch.cat([a, b]))
        return self.distance([f[:n] for f in feats], [f[n:] for f in feats])


# torchvision's ImageNet checkpoints that lpips.LPIPS loads into its trunk.
_TORCHVISION_BACKBONES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}


def lpips_linear(net: str) -> Traversable:
    """LPIPS v0.1's linear layers for ``net`` as the installed lpips package ships them
    (``lpips/weights/v0.1/{net}.pth``)."""
    return resources.files("lpips") / "weights" / "v0.1" / f"{net}.pth"


class OfficialLPIPS(nn.Module):
    """The lpips package's LPIPS v0.1: an ImageNet trunk from the torch hub cache and the linear
    layers the installed lpips package ships (``lpips_linear``); never downloads.

    lpips.LPIPS would fetch the torchvision trunk from download.pytorch.org when it is not in the
    torch hub cache. Here the checkpoint must already be at ``torch.hub.get_dir()/checkpoints``:
    the network is built with a random trunk (``pnet_rand=True``) and the cached file is loaded
    into it; a missing file is a WeightsError naming the exact path.
    """

    def __init__(self, net: str = "vgg"):
        super().__init__()
        if net not in _TORCHVISION_BACKBONES:
            raise ValueError(f"LPIPS backbone must be one of {sorted(_TORCHVISION_BACKBONES)}, not {net!r}")
        ckpt = Path(torch.hub.get_dir()) / "checkpoints" / _TORCHVISION_BACKBONES[net]
        if not ckpt.is_file():
            raise weights.WeightsError(
                f"official LPIPS ({net}) needs torchvision's ImageNet checkpoint {ckpt.name}, which is "
                f"missing: expected at {ckpt} (torch.hub.get_dir()/checkpoints; set TORCH_HOME to move it). "
                f"No download is attempted; place the file there, or use 'stlpips-{net}'.")
        import lpips

        linear = lpips_linear(net)
        if not linear.is_file():
            raise weights.WeightsError(f"the installed lpips package ({lpips.__file__}) lacks its linear "
                                       f"layers weights/v0.1/{net}.pth; reinstall lpips")
        with warnings.catch_warnings(), resources.as_file(linear) as model_path:
            warnings.simplefilter("ignore", UserWarning)  # lpips passes torchvision's deprecated `pretrained=False`
            self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, model_path=str(model_path),
                                     verbose=False)
        trunk = torch.load(ckpt, map_location="cpu", weights_only=True)
        # lpips keeps torchvision's layer indices inside its slices: net.slice{k}.{i}.* <- features.{i}.*
        mapped = {}
        for name in self.model.net.state_dict():
            _, index, param = name.split(".")
            mapped[name] = trunk[f"features.{index}.{param}"]
        self.model.net.load_state_dict(mapped)
        self.model.requires_grad_(False).eval()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.model(a, b).flatten()


PERCEPTUAL = ("stlpips-vgg", "stlpips-alex", "lpips-vgg", "lpips-alex")


def load_perceptual(spec: str = "stlpips-vgg", device: str | torch.device | None = None) -> nn.Module:
    """A perceptual distance by name (PERCEPTUAL), or an ST-LPIPS checkpoint path; frozen, in eval mode."""
    from . import default_device

    if spec.startswith("lpips-"):
        model = OfficialLPIPS(spec.removeprefix("lpips-"))
    elif spec in PERCEPTUAL or Path(spec).expanduser().is_file():
        model = STLPIPS.from_file(spec)
    else:
        raise ValueError(f"unknown perceptual distance {spec!r}; known: {', '.join(PERCEPTUAL)} or an ST-LPIPS .pth")
    return model.to(device or default_device())
