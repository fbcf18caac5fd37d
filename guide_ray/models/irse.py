"""IR and IR-SE ResNets: the face-recognition backbones of GUIDE's ID loss and ID metric.

ArcFace (Deng et al., CVPR 2019) introduced the "improved residual" unit (BN - conv - PReLU -
conv - BN, the stride in the second conv); IR-SE adds a squeeze-and-excitation gate (Hu et al.,
CVPR 2018, reduction 16). This module defines them with the parameter names of the checkpoints
people have, built by TreB1eN's InsightFace_Pytorch ``Backbone`` and its copies:

* ``model_ir_se50.pth`` (pSp's, TreB1eN's IR-SE50; GUIDE's ID loss): IR-SE, 3/4/14/3 units,
  its last BatchNorm1d affine;
* ``CurricularFace_Backbone.pth`` (HuangYG123/CurricularFace's IR_101; GUIDE's ID metric): IR,
  3/13/30/3 units ("IR_101" is built with num_layers=100), its last BatchNorm1d without affine.

Keys: ``input_layer.{0,1,2}`` (conv 3x3, BN, PReLU), ``body.N.shortcut_layer.{0,1}`` (1x1 conv
and BN where the depth changes; a parameter-free 1x1 max-pool, i.e. subsampling, elsewhere),
``body.N.res_layer.{0..4}`` (+ ``.5.fc1/fc2`` for SE), ``output_layer.{0,3,4}`` (BN2d, dropout,
flatten, linear, BN1d). The layout (units per stage, widths, SE, input size) is read from a state
dict's keys and shapes, so a file loads strictly into a network of exactly its shape.

Input: [B, 3, S, S] RGB in [-1, 1] (ToTensor then Normalize(0.5, 0.5), as pSp, GUIDE and
CurricularFace feed them; CurricularFace's evaluation swaps its BGR validation arrays to RGB first).
Output: the l2-normalised embedding, as pSp's and GUIDE's ``Backbone.forward`` return it
(CurricularFace's own ``forward`` leaves the normalisation to its caller).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import WeightsError

# Units per stage of the standard depths (TreB1eN's get_blocks; "101" is its num_layers=100).
STANDARD_UNITS = {(3, 4, 14, 3): 50, (3, 13, 30, 3): 101, (3, 8, 36, 3): 152}
SE_REDUCTION = 16


def load_torch_file(path: str | Path) -> object:
    """A torch.save file loaded without running arbitrary pickled code: tensors and plain
    containers (``torch.load(weights_only=True)``), plus ``argparse.Namespace`` (some pSp/e4e forks
    store their options as one) where the installed torch can allow it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    try:
        with allow([argparse.Namespace]) if allow else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = [line for line in str(e).splitlines() if "GLOBAL" in line]
        if refused:
            raise WeightsError(f"{path}: refused to load: it holds pickled objects other than tensors and plain "
                               f"containers ({refused[0].strip()}); re-save its tensors as a plain state dict") from None
        raise WeightsError(f"{path} is not a readable torch checkpoint (torch.load: {str(e)[:300]})") from None
    except Exception as e:  # torch.load fails on foreign files with RuntimeError, KeyError, EOFError, ...
        raise WeightsError(f"{path} is not a readable torch checkpoint ({type(e).__name__}: {e})") from None


def strip_module_prefix(state: dict) -> dict:
    """Keys saved from an nn.DataParallel wrapper start with 'module.'; drop it."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


@dataclass(frozen=True)
class IRLayout:
    """The shape of an IR / IR-SE network, as read from a state dict."""

    se: bool
    in_channels: int  # 3 for RGB (pSp trains some encoders on other inputs)
    stem: int  # input_layer channels (64)
    depths: tuple[int, ...]  # output channels of each body unit; a stage starts where it changes
    embedding: int | None = None  # Backbone only: the embedding size (512)
    input_size: int | None = None  # Backbone only: 112 or 224 (the output linear sees size/16 squared)
    affine: bool = True  # Backbone only: whether the final BatchNorm1d has weight and bias

    @property
    def stage_units(self) -> tuple[int, ...]:
        counts: list[int] = []
        for i, d in enumerate(self.depths):
            if i == 0 or d != self.depths[i - 1]:
                counts.append(0)
            counts[-1] += 1
        return tuple(counts)

    @property
    def name(self) -> str:
        layers = STANDARD_UNITS.get(self.stage_units)
        depth = str(layers) if layers else "-".join(map(str, self.stage_units))
        return f"{'ir_se' if self.se else 'ir'}{depth}"

    def units(self) -> list[tuple[int, int, int]]:
        """(in_channels, depth, stride) of each body unit: stride 2 where a stage starts."""
        out, prev = [], self.stem
        for i, d in enumerate(self.depths):
            out.append((prev, d, 2 if i == 0 or d != self.depths[i - 1] else 1))
            prev = d
        return out


def read_layout(state: dict, source: str, head: bool) -> IRLayout:
    """The IRLayout a state dict holds (``head``: with a Backbone's output_layer), or a WeightsError
    naming ``source`` and the key that is missing or inconsistent."""
    def need(key):
        if key not in state:
            raise WeightsError(f"{source}: not an IR/IR-SE network state dict: no {key!r} (expected the layout "
                               f"of pSp's model_ir_se50.pth or CurricularFace_Backbone.pth)")
        return state[key]

    stem_w = need("input_layer.0.weight")
    n_units = 0
    while f"body.{n_units}.res_layer.1.weight" in state:
        n_units += 1
    if n_units == 0:
        need("body.0.res_layer.1.weight")
    depths, prev = [], stem_w.shape[0]
    for i in range(n_units):
        w = state[f"body.{i}.res_layer.1.weight"]
        if w.ndim != 4 or w.shape[1] != prev:
            raise WeightsError(f"{source}: body.{i}.res_layer.1.weight has shape {tuple(w.shape)}; expected "
                               f"[depth, {prev}, 3, 3] after the previous unit's {prev} channels")
        depths.append(w.shape[0])
        prev = w.shape[0]
    layout = IRLayout(se="body.0.res_layer.5.fc1.weight" in state, in_channels=stem_w.shape[1],
                      stem=stem_w.shape[0], depths=tuple(depths))
    if len(layout.stage_units) < 4:
        raise WeightsError(f"{source}: the body has {len(layout.stage_units)} stages ({layout.stage_units} "
                           f"units); IR networks have 4")
    if not head:
        return layout
    linear = need("output_layer.3.weight")
    side = math.isqrt(linear.shape[1] // depths[-1])
    if side * side * depths[-1] != linear.shape[1] or side not in (7, 14):
        raise WeightsError(f"{source}: output_layer.3.weight has shape {tuple(linear.shape)}; expected "
                           f"[embedding, {depths[-1]} x 7 x 7] (112 px input) or x 14 x 14 (224 px)")
    return IRLayout(layout.se, layout.in_channels, layout.stem, layout.depths, embedding=linear.shape[0],
                    input_size=side * 16, affine="output_layer.4.weight" in state)


class SEModule(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(fc2(relu(fc1(mean over H, W of x))))."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x):
        gate = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class IRUnit(nn.Module):
    """bottleneck_IR (``se`` False) / bottleneck_IR_SE (``se`` True)."""

    def __init__(self, in_channels: int, depth: int, stride: int, se: bool):
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)  # a 1x1 max-pool: plain subsampling
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channels, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        res = [nn.BatchNorm2d(in_channels), nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
               nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth)]
        self.res_layer = nn.Sequential(*res, *([SEModule(depth)] if se else []))

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class IRNet(nn.Module):
    """``input_layer`` and ``body`` of an IR / IR-SE network; ``stages(x)`` gives each stage's output."""

    def __init__(self, layout: IRLayout):
        super().__init__()
        self.layout = layout
        self.input_layer = nn.Sequential(nn.Conv2d(layout.in_channels, layout.stem, 3, 1, 1, bias=False),
                                         nn.BatchNorm2d(layout.stem), nn.PReLU(layout.stem))
        self.body = nn.Sequential(*(IRUnit(i, d, s, layout.se) for i, d, s in layout.units()))
        self._stage_ends = {end - 1 for end in itertools.accumulate(layout.stage_units)}

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each stage's last unit (pSp's c1, c2, c3 are the last three of IR-SE50's
        four: body units 6, 20 and 23)."""
        x = self.input_layer(x)
        out = []
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self._stage_ends:
                out.append(x)
        return out


class Backbone(IRNet):
    """The face-recognition network: body, then BN2d - dropout - flatten - linear - BN1d, then
    l2-normalised (TreB1eN's / pSp's ``Backbone``; CurricularFace's ``IR_101``)."""

    def __init__(self, layout: IRLayout):
        if layout.embedding is None:
            raise ValueError("a Backbone layout needs embedding and input_size")
        super().__init__(layout)
        side = layout.input_size // 16
        self.output_layer = nn.Sequential(nn.BatchNorm2d(layout.depths[-1]), nn.Dropout(0.4), nn.Flatten(),
                                          nn.Linear(layout.depths[-1] * side * side, layout.embedding),
                                          nn.BatchNorm1d(layout.embedding, affine=layout.affine))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.layout.input_size
        if x.shape[-2:] != (size, size):
            raise ValueError(f"{self.layout.name} takes {size}x{size} chips, got {tuple(x.shape[-2:])}")
        x = self.body(self.input_layer(x))
        return F.normalize(self.output_layer(x), dim=1)


def load_backbone(path: str | Path) -> Backbone:
    """An IR / IR-SE Backbone from a state-dict file (pSp's ``model_ir_se50.pth``, CurricularFace's
    ``CurricularFace_Backbone.pth``, ...), loaded strictly, in eval mode on the CPU."""
    path = Path(path).expanduser()
    state = load_torch_file(path)
    if isinstance(state, dict) and "state_dict" in state and "opts" in state:
        raise WeightsError(f"{path} is a pSp/e4e encoder checkpoint, not a face-recognition backbone; "
                           f"give it as the inversion encoder (inversion.encoder) instead")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors (expected an IR/IR-SE backbone "
                           f"such as model_ir_se50.pth or CurricularFace_Backbone.pth)")
    state = strip_module_prefix(state)
    net = Backbone(read_layout(state, str(path), head=True))
    load_strict(net, state, str(path))
    return net.eval()


def load_strict(module: nn.Module, state: dict, source: str) -> None:
    """load_state_dict(strict=True), with an error that names the file and the first mismatches."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise WeightsError(f"{source}: its tensors do not fit a {type(module).__name__} of the layout they "
                           f"imply: {detail[:600]}") from None
