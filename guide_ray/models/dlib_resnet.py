"""dlib's face recognition network (``dlib_face_recognition_resnet_model_v1.dat``) in PyTorch.

The network is ``anet_type`` of dlib's ``dnn_face_recognition_ex.cpp``: a 29-conv ResNet whose
conv+BN pairs are frozen into conv+affine, ending in global average pooling and a 128-wide
``fc_no_bias``. Two descriptors of the same person lie closer than 0.6 (L2, not normalized).

We read the weights by parsing dlib's serialization ourselves:

* ints are packed: one control byte (low 4 bits: byte count, bit 7: sign), then that many
  little-endian magnitude bytes; floats are an int mantissa and an int exponent (m * 2**e);
  strings are a packed length and the raw bytes; bools are the characters ``'0'``/``'1'``.
* tensors are ``version 2, num_samples, k, nr, nc`` then raw little-endian float32 data; a layer's
  weights live in one flat ``params`` tensor, split by "alias tensors" that store only a shape
  (their offsets follow from their order).
* the network nests outside-in: the loss layer, then every ``add_layer`` writes its version and its
  whole sub-network *before* its own layer, so the file reads output-to-input in the prefix and
  input-to-output in the layer details. Tag and skip layers both serialize as a bare version 1 with
  no id, so the residual wiring is not in the file; it is fixed by dlib's C++ type and checked here
  against the sequence of layer kinds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DatLayer:
    """One layer as serialized; ``kind`` is ``tag`` for dlib's (indistinguishable) tag/skip layers."""

    kind: str
    weight: np.ndarray | None = None  # con: (out, in, kh, kw); affine: gamma (C,); fc: (in, out)
    bias: np.ndarray | None = None  # con: (out,); affine: beta (C,)
    window: tuple[int, int] = (0, 0)  # pooling (rows, cols); (0, 0) pools everything
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)


@dataclass
class DatNetwork:
    input_mean: tuple[float, float, float]  # R, G, B in 0..255
    input_size: tuple[int, int]
    layers: list[DatLayer] = field(default_factory=list)  # input to output


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.pos = data, path, 0

    def error(self, why: str) -> ValueError:
        return ValueError(f"{self.path} is not a dlib face recognition network file "
                          f"(dlib_face_recognition_resnet_model_v1.dat): {why} at byte {self.pos}")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.error(f"truncated (wanted {n} bytes)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        control = self.take(1)[0]
        if control & 0x70 or control & 0x0F > 8:
            raise self.error(f"bad packed-int control byte {control:#04x}")
        magnitude = int.from_bytes(self.take(control & 0x0F), "little")
        return -magnitude if control & 0x80 else magnitude

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        if abs(exponent) > 1100:
            raise self.error(f"float exponent {exponent} out of range")
        return math.ldexp(mantissa, exponent) if mantissa else 0.0

    def string(self, limit: int = 64) -> str:
        n = self.int()
        if not 0 <= n <= limit:
            raise self.error(f"implausible string length {n}")
        return self.take(n).decode("latin-1")

    def bool(self) -> bool:
        char = self.take(1)
        if char not in (b"0", b"1"):
            raise self.error(f"bad bool {char!r}")
        return char == b"1"

    def shape(self) -> tuple[int, int, int, int]:
        dims = tuple(self.int() for _ in range(4))
        if min(dims) < 0:
            raise self.error(f"negative tensor shape {dims}")
        return dims

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise self.error(f"unsupported tensor version {version}")
        dims = self.shape()
        count = math.prod(dims)
        return np.frombuffer(self.take(4 * count), "<f4").reshape(dims)

    def alias_shape(self) -> tuple[int, int, int, int]:
        version = self.int()
        if version != 1:
            raise self.error(f"unsupported alias tensor version {version}")
        return self.shape()

    def split(self, params: np.ndarray, *shapes: tuple[int, ...]) -> list[np.ndarray]:
        """Cut consecutive alias tensors out of a flat params tensor."""
        flat, start, parts = params.reshape(-1), 0, []
        for shape in shapes:
            size = math.prod(shape)
            parts.append(flat[start:start + size].reshape(shape).astype(np.float32))
            start += size
        if start != flat.size:
            raise self.error(f"params hold {flat.size} values, aliases use {start}")
        return parts


def _read_details(r: _Reader) -> DatLayer:
    name = r.string()
    if name == "con_4":
        params = r.tensor()
        filters, rows, cols, stride_y, stride_x, pad_y, pad_x = (r.int() for _ in range(7))
        weight, bias = r.split(params, r.alias_shape(), r.alias_shape())
        for _ in range(4):  # learning-rate and weight-decay multipliers
            r.float()
        if weight.shape[0] != filters or weight.shape[2:] != (rows, cols):
            raise r.error(f"con filters {weight.shape} disagree with {filters}x{rows}x{cols}")
        return DatLayer("con", weight, bias.reshape(-1), stride=(stride_y, stride_x),
                        padding=(pad_y, pad_x))
    if name == "affine_":
        params = r.tensor()
        gamma, beta = r.split(params, r.alias_shape(), r.alias_shape())
        if r.int() != 0:
            raise r.error("affine layer is not in conv mode")
        return DatLayer("affine", gamma.reshape(-1), beta.reshape(-1))
    if name in ("max_pool_2", "avg_pool_2"):
        rows, cols, stride_y, stride_x, pad_y, pad_x = (r.int() for _ in range(6))
        return DatLayer(name.removesuffix("_2"), window=(rows, cols), stride=(stride_y, stride_x),
                        padding=(pad_y, pad_x))
    if name == "fc_2":
        outputs, inputs = r.int(), r.int()
        params = r.tensor()
        weight_shape, bias_shape = r.alias_shape(), r.alias_shape()
        weight, _ = r.split(params, weight_shape, bias_shape)
        if r.int() != 1 or math.prod(bias_shape):
            raise r.error("fc layer has a bias (expected fc_no_bias)")
        for _ in range(4):
            r.float()
        return DatLayer("fc", weight.reshape(inputs, outputs))
    if name in ("relu_", "add_prev_"):
        return DatLayer(name.rstrip("_"))
    raise r.error(f"unsupported layer {name!r}")


def _read_layer_state(r: _Reader) -> None:
    """Training state after each layer: 3 flags and 3 (normally empty) gradient/output tensors."""
    for _ in range(3):
        r.bool()
    for _ in range(3):
        r.tensor()


def parse_dat(path: str | Path) -> DatNetwork:
    """The layers of a dlib ``loss_metric`` network file (such as the face recognition model)."""
    path = Path(path)
    r = _Reader(path.read_bytes(), path)
    if r.int() != 1 or not r.string().startswith("loss_metric"):
        raise r.error("no loss_metric header")
    for _ in range(2):  # margin, distance threshold
        r.float()
    wrappers = []  # versions from the output inwards: 2 = add_layer, 1 = tag or skip
    while (version := r.int()) != 3:  # 3: the add_layer that holds the input layer
        if version not in (1, 2) or len(wrappers) > 10_000:
            raise r.error(f"unexpected layer version {version}")
        wrappers.append(version)
    if r.string() != "input_rgb_image_sized":
        raise r.error("input layer is not input_rgb_image_sized")
    mean = (r.float(), r.float(), r.float())
    net = DatNetwork(input_mean=mean, input_size=(r.int(), r.int()))
    net.layers.append(_read_details(r))
    _read_layer_state(r)
    r.int()  # sample expansion factor
    for version in reversed(wrappers):
        if version == 1:
            net.layers.append(DatLayer("tag"))
        else:
            net.layers.append(_read_details(r))
            _read_layer_state(r)
    if r.pos != len(r.data):
        raise r.error(f"{len(r.data) - r.pos} trailing bytes")
    return net


def _param(array: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(array.copy()))


def _conv(layer: DatLayer) -> nn.Conv2d:
    out_ch, in_ch, kh, kw = layer.weight.shape
    conv = nn.Conv2d(in_ch, out_ch, (kh, kw), stride=layer.stride, padding=layer.padding)
    conv.weight, conv.bias = _param(layer.weight), _param(layer.bias)
    return conv


def _pool(layer: DatLayer) -> nn.Module:
    if layer.kind == "max_pool":
        return nn.MaxPool2d(layer.window, layer.stride, layer.padding)
    return nn.AvgPool2d(layer.window, layer.stride, layer.padding, count_include_pad=False)


class _Affine(nn.Module):
    """Per-channel scale and shift: dlib's inference form of batch norm."""

    def __init__(self, layer: DatLayer):
        super().__init__()
        self.scale, self.shift = _param(layer.weight), _param(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale[:, None, None] + self.shift[:, None, None]


def _add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: tensors of different shapes add as if the smaller one were zero-padded at
    the end of each axis (more channels, or a 3x3 conv output next to a 4x4 pooled shortcut)."""
    channels, rows, cols = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, cols - t.shape[3], 0, rows - t.shape[2], 0, channels - t.shape[1]))

    return pad(a) + pad(b)


class _Residual(nn.Module):
    """relu(affine(conv(relu(affine(conv(x))))) + shortcut), the shortcut average-pooled when the
    block downsamples."""

    def __init__(self, layers: list[DatLayer], shortcut_pool: DatLayer | None):
        super().__init__()
        conv1, affine1, _, conv2, affine2 = layers
        self.body = nn.Sequential(_conv(conv1), _Affine(affine1), nn.ReLU(), _conv(conv2), _Affine(affine2))
        self.shortcut = _pool(shortcut_pool) if shortcut_pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(_add_zero_padded(self.body(x), self.shortcut(x)))


class _KindStream:
    """Hands out parsed layers in order, checking their kinds against dlib's network type."""

    def __init__(self, layers: list[DatLayer], path: Path):
        self.layers, self.path, self.pos = layers, path, 0

    def peek(self) -> str | None:
        return self.layers[self.pos].kind if self.pos < len(self.layers) else None

    def take(self, *kinds: str) -> list[DatLayer]:
        got = [layer.kind for layer in self.layers[self.pos:self.pos + len(kinds)]]
        if got != list(kinds):
            raise ValueError(f"{self.path} is not dlib's face recognition ResNet: expected layers "
                             f"{list(kinds)} at layer {self.pos}, found {got}")
        self.pos += len(kinds)
        return self.layers[self.pos - len(kinds):self.pos]


class DlibResNet34(nn.Module):
    """dlib's 128-d face descriptor network; ``forward`` takes RGB chips in [-1, 1] (NCHW)."""

    def __init__(self, net: DatNetwork, path: Path):
        super().__init__()
        stream = _KindStream(net.layers, path)
        conv, affine, _, pool = stream.take("con", "affine", "relu", "max_pool")
        self.stem = nn.Sequential(_conv(conv), _Affine(affine), nn.ReLU(), _pool(pool))
        blocks = []
        while stream.peek() == "tag":  # tag1<SUBNET> opens every residual block
            stream.take("tag")
            body = stream.take("con", "affine", "relu", "con", "affine")
            shortcut_pool = None
            if stream.peek() == "tag":  # residual_down: tag2, skip1 back to tag1, avg_pool
                shortcut_pool = stream.take("tag", "tag", "avg_pool")[2]
            stream.take("add_prev", "relu")
            blocks.append(_Residual(body, shortcut_pool))
        self.blocks = nn.Sequential(*blocks)
        global_pool, fc = stream.take("avg_pool", "fc")
        if global_pool.window != (0, 0) or stream.peek() is not None:
            raise ValueError(f"{path} is not dlib's face recognition ResNet: unexpected network tail")
        self.fc = nn.Linear(*fc.weight.shape, bias=False)
        self.fc.weight = _param(fc.weight.T)
        self.register_buffer("input_mean", torch.tensor(net.input_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.input_size = net.input_size

    @classmethod
    def from_dat(cls, path: str | Path) -> DlibResNet34:
        path = Path(path)
        return cls(parse_dat(path), path).eval()

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] RGB in [-1, 1] -> [B, 128] descriptors (bilinear resize to 150x150 first)."""
        if tuple(chips.shape[-2:]) != self.input_size:
            chips = F.interpolate(chips, size=self.input_size, mode="bilinear", align_corners=False)
        x = ((chips + 1) * 127.5 - self.input_mean) / 256.0  # dlib's input_rgb_image scaling
        x = self.blocks(self.stem(x))
        return self.fc(x.mean(dim=(2, 3)))


def native_chip(image_rgb_uint8: np.ndarray, shape) -> np.ndarray:
    """dlib's own 150x150 aligned chip (padding 0.25) for a ``dlib.full_object_detection``."""
    import dlib

    return dlib.get_face_chip(np.ascontiguousarray(image_rgb_uint8), shape, size=150, padding=0.25)
