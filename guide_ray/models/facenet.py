"""FaceNet (Inception-ResNet-v1, VGGFace2, 512-d) from a frozen TensorFlow graph, run in PyTorch.

The weight ``facenet-vggface2`` is facenet's 20180402-114759 model as a frozen ``GraphDef``
(``graph_final.pb``) with its batch norms folded into the convolutions. We read the protobuf with
a small wire-format decoder of our own (no TensorFlow, no ``protobuf`` package), then interpret the
graph node by node with torch ops. Float constants with more than one element (conv kernels,
biases, the bottleneck and its batch norm) become ``nn.Parameter``s; scalars (the residual scales,
the L2 epsilon) stay buffers. Only the ops this graph uses are implemented; any other raises
``NotImplementedError`` naming the op and the node.

What the graph expects, read from the file itself:

* one ``Placeholder`` named ``input``, NHWC float ``[1, 160, 160, 3]``. It was frozen for batch 1,
  and so were two constant-folded reshape targets (``[1, -1]``, ``[1, 512]``); our Reshape reads a
  leading 1 as "the input's batch", so any batch size runs (rows are independent);
* no ``phase_train`` placeholder (the training branches of the batch norms were folded away) and
  no preprocessing subgraph: the first op after ``input`` is the ``Conv2d_1a_3x3`` convolution;
* so preprocessing happens outside the graph; for facenet's 2018 models it is RGB 160x160 crops
  with *fixed image standardization*, ``(x - 127.5) / 128`` on 0..255 pixels (the setting
  20180402-114759 was trained with). On the openpeople photos this gives a wider gap between
  same-person and different-person cosine similarity than per-image prewhitening or BGR input;
* the output is the node ``embeddings``: the 512-d bottleneck after its batch norm, L2-normalised
  in the graph (``x * rsqrt(max(sum(x**2), 1e-10))``), returned as is.

``FaceNet.forward`` takes float NCHW RGB chips in [-1, 1] (resized bilinearly to 160x160 when they
are another size) and applies the standardization itself: a chip value ``c`` is ``127.5 * (c + 1)``
on 0..255, so the graph sees ``c * 127.5 / 128``. It returns ``[B, 512]`` unit vectors.
Activations are NCHW inside; TF's NHWC-dependent attributes (concat axes, reshapes) are mapped.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SIZE = 160

# --- protobuf wire format ----------------------------------------------------------------------
# A message is a sequence of (field number, wire type, value). Wire types used by GraphDef:
# 0 varint, 1 fixed64, 2 length-delimited (bytes, strings, sub-messages, packed arrays), 5 fixed32.


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview):
    """Yield (field number, wire type, value): an int for varints, a memoryview otherwise."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 2, 5):
            if wire == 2:
                size, pos = _varint(buf, pos)
            else:
                size = 8 if wire == 1 else 4
            if pos + size > end:
                raise ValueError(f"field {number} runs past the end of its message")
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ValueError(f"unsupported wire type {wire} (field {number})")
        if number == 0:
            raise ValueError("field number 0")
        yield number, wire, value


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _ints(wire: int, value) -> list[int]:
    """A repeated integer field's values from one occurrence, packed or not."""
    if wire == 0:
        return [_signed(value)]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(_signed(v))
    return out


def _floats(value, fmt: str = "f") -> list[float]:
    """A repeated float/double field's values from one occurrence (fixed32/64, packed or not)."""
    return list(struct.unpack(f"<{len(value) // struct.calcsize(fmt)}{fmt}", value))


def _text(value) -> str:
    return bytes(value).decode("utf-8")


# TensorFlow DataType enum values -> numpy dtypes (the ones a frozen float graph can hold).
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 6: np.int8, 9: np.int64, 10: np.bool_}


def _shape(buf) -> list[int] | None:
    """TensorShapeProto {repeated Dim dim = 2 {int64 size = 1}; bool unknown_rank = 3}."""
    dims = []
    for number, wire, value in _fields(buf):
        if number == 2:
            dims.append(next((_signed(v) for n, _, v in _fields(value) if n == 1), 0))
        elif number == 3 and value:
            return None
    return dims


def _tensor(buf) -> np.ndarray:
    """TensorProto: dtype = 1, tensor_shape = 2, tensor_content = 4 (raw little-endian), or the
    typed repeated fields float_val = 5, double_val = 6, int_val = 7, int64_val = 10, bool_val = 11;
    a single typed value is broadcast over the shape, as TensorFlow does."""
    dtype, shape, content, values = 1, [], None, []
    for number, wire, value in _fields(buf):
        if number == 1:
            dtype = value
        elif number == 2:
            shape = _shape(value) or []
        elif number == 4:
            content = value
        elif number == 5:
            values += _floats(value, "f")
        elif number == 6:
            values += _floats(value, "d")
        elif number in (7, 10, 11):
            values += _ints(wire, value)
    if dtype not in _DTYPES:
        raise ValueError(f"unsupported tensor dtype {dtype}")
    np_dtype = _DTYPES[dtype]
    count = math.prod(shape)
    if content is not None:  # raw little-endian bytes; astype gives a native, writable copy
        raw = np.frombuffer(content, dtype=np.dtype(np_dtype).newbyteorder("<"))
        return raw.astype(np_dtype).reshape(shape)
    arr = np.array(values, dtype=np_dtype)
    if arr.size not in (0, 1, count):
        raise ValueError(f"tensor of shape {shape} has {arr.size} values")
    return arr.reshape(shape) if arr.size == count else np.full(shape, arr[0] if arr.size else 0, np_dtype)


def _attr(buf):
    """AttrValue -> a Python value: list = 1, s = 2 (bytes), i = 3, f = 4, b = 5, type = 6,
    shape = 7 (list of dims), tensor = 8 (ndarray). A ListValue uses the same numbers."""
    for number, wire, value in _fields(buf):
        if number == 1:
            items = []
            for n, w, v in _fields(value):
                if n == 2:
                    items.append(bytes(v))
                elif n in (3, 5, 6):
                    items += _ints(w, v)
                elif n == 4:
                    items += _floats(v)
                elif n == 7:
                    items.append(_shape(v))
                elif n == 8:
                    items.append(_tensor(v))
            return items
        if number == 2:
            return bytes(value)
        if number in (3, 6):
            return _signed(value)
        if number == 4:
            return _floats(value)[0]
        if number == 5:
            return bool(value)
        if number == 7:
            return _shape(value)
        if number == 8:
            return _tensor(value)
    return None


@dataclass
class NodeDef:
    name: str
    op: str
    inputs: list[str] = field(default_factory=list)  # "node", "node:k", or "^node" (control)
    attr: dict = field(default_factory=dict)


def _node(buf) -> NodeDef:
    """NodeDef {name = 1, op = 2, repeated input = 3, device = 4, map<string, AttrValue> attr = 5}."""
    node = NodeDef("", "")
    for number, _, value in _fields(buf):
        if number == 1:
            node.name = _text(value)
        elif number == 2:
            node.op = _text(value)
        elif number == 3:
            node.inputs.append(_text(value))
        elif number == 5:
            entry = {n: v for n, _, v in _fields(value)}  # map entry {key = 1, value = 2}
            node.attr[_text(entry.get(1, b""))] = _attr(entry.get(2, b""))
    return node


def parse_graphdef(path: str | Path) -> list[NodeDef]:
    """The nodes of a binary GraphDef file (GraphDef {repeated NodeDef node = 1, library = 2,
    versions = 4}); ValueError naming the file when it is not one."""
    path = Path(path)
    data = memoryview(path.read_bytes())
    try:
        nodes = []
        for number, wire, value in _fields(data):
            if number == 1 and wire == 2:
                nodes.append(_node(value))
            elif number not in (2, 3, 4):
                raise ValueError(f"field {number} (wire type {wire}) does not belong in a GraphDef")
        if not nodes or any(not n.name or not n.op for n in nodes):
            raise ValueError("no nodes, or a node without a name or an op")
    except (ValueError, UnicodeDecodeError, struct.error) as e:
        raise ValueError(f"{path} is not a binary TensorFlow GraphDef: {e}") from None
    return nodes


# --- the graph as a torch module -------------------------------------------------------------

_NHWC_TO_NCHW_AXIS = (0, 2, 3, 1)


def _source(ref: str) -> tuple[str, int]:
    name, _, index = ref.partition(":")
    return name, int(index or 0)


def _same_pads(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TF's SAME padding: output ceil(size / s); the extra pixel, if any, goes after."""
    total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _pad_for(node: NodeDef, x: torch.Tensor, kernel: tuple[int, int], strides, dilations=(1, 1),
             value: float = 0.0) -> torch.Tensor:
    """Apply the node's padding to an NCHW tensor (VALID: none)."""
    padding = node.attr["padding"]
    if padding == b"VALID":
        return x
    if padding != b"SAME":
        raise NotImplementedError(f"padding {padding!r} of node {node.name!r}")
    top, bottom = _same_pads(x.shape[2], kernel[0], strides[0], dilations[0])
    left, right = _same_pads(x.shape[3], kernel[1], strides[1], dilations[1])
    return F.pad(x, [left, right, top, bottom], value=value) if top or bottom or left or right else x


def _hw(node: NodeDef, key: str, default=(1, 1, 1, 1)) -> tuple[int, int]:
    if node.attr.get("data_format", b"NHWC") != b"NHWC":
        raise NotImplementedError(f"data_format {node.attr['data_format']!r} of node {node.name!r}")
    v = node.attr.get(key, list(default))
    return int(v[1]), int(v[2])


class GraphModule(nn.Module):
    """A frozen GraphDef as a torch module mapping its one Placeholder to its one output node.

    Only the nodes the output depends on are kept. Values flow as (tensor, nchw): a 4-D tensor
    with ``nchw`` True holds TF's NHWC tensor permuted to NCHW. Convolutions and pools produce
    that layout; ops that depend on axis order convert back to NHWC first.
    """

    def __init__(self, nodes: list[NodeDef], source: str = "graph"):
        super().__init__()
        by_name = {n.name: n for n in nodes}
        placeholders = [n.name for n in nodes if n.op == "Placeholder"]
        consumed = {_source(i.lstrip("^"))[0] for n in nodes for i in n.inputs}
        outputs = [n.name for n in nodes if n.name not in consumed and n.op not in ("Const", "Placeholder")]
        if len(placeholders) != 1 or len(outputs) != 1:
            raise ValueError(f"{source}: expected one Placeholder and one output node, found "
                             f"{placeholders} and {outputs}")
        self.input_name, self.output_name = placeholders[0], outputs[0]
        self.inputs: dict[str, list[str]] = {}  # node -> its data inputs (control inputs dropped)
        for n in nodes:
            refs = [_source(r) for r in n.inputs if not r.startswith("^")]
            if any(index for _, index in refs):
                raise NotImplementedError(f"node {n.name!r} reads a secondary output of {n.inputs}")
            self.inputs[n.name] = [src for src, _ in refs]
        self.order = _topological(self.output_name, self.inputs, source)
        self.nodes: dict[str, NodeDef] = {}
        self.uses: dict[str, int] = {}  # how many inputs read each node, to free values early
        for name in self.order:
            node = by_name[name]
            if node.op not in _OPS and node.op not in ("Const", "Placeholder"):
                raise NotImplementedError(f"TensorFlow op {node.op!r} (node {name!r}) is not supported")
            for src in self.inputs[name]:
                self.uses[src] = self.uses.get(src, 0) + 1
            self.nodes[name] = NodeDef(name, node.op, node.inputs, {} if node.op == "Const" else node.attr)
        conv_weights = {self.inputs[n][1] for n in self.order if self.nodes[n].op == "Conv2D"}
        self.params = nn.ParameterDict()
        self._consts: dict[str, tuple] = {}  # node -> ("param" | "buffer", key) or ("value", ndarray)
        for name in self.order:
            if self.nodes[name].op != "Const":
                continue
            value = by_name[name].attr["value"]
            if value.dtype != np.float32:
                self._consts[name] = ("value", value)  # shapes and axes stay numpy
                continue
            t = torch.from_numpy(value)
            if name in conv_weights:
                t = t.permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
            key = "".join(c if c.isalnum() else "_" for c in name)
            if key in self.params or hasattr(self, key):
                raise ValueError(f"{source}: two constants map to the name {key!r}")
            if t.numel() > 1:
                self.params[key] = nn.Parameter(t)
                self._consts[name] = ("param", key)
            else:
                self.register_buffer(key, t)
                self._consts[name] = ("buffer", key)

    def extra_repr(self) -> str:
        return f"nodes={len(self.order)}, parameters={sum(p.numel() for p in self.params.values())}"

    def _const(self, name: str) -> tuple:
        kind, key = self._consts[name]
        if kind == "param":
            return self.params[key], False
        if kind == "buffer":
            return getattr(self, key), False
        return key, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: the placeholder's value in TF layout (NHWC); returns the output node's value."""
        values: dict[str, tuple] = {}
        remaining = dict(self.uses)
        for name in self.order:
            node = self.nodes[name]
            if node.op == "Placeholder":
                values[name] = (x, False)
                continue
            if node.op == "Const":
                values[name] = self._const(name)
                continue
            args = [values[src] for src in self.inputs[name]]
            for src in self.inputs[name]:  # free what no later node needs
                remaining[src] -= 1
                if remaining[src] == 0:
                    del values[src]
            values[name] = _OPS[node.op](node, *args)
        return _nhwc(values[self.output_name])


def _topological(output: str, inputs: dict[str, list[str]], source: str) -> list[str]:
    """The nodes ``output`` depends on, each after its inputs (iterative depth-first search)."""
    order, state = [], {}  # state: 1 while on the stack, 2 once placed
    stack = [(output, False)]
    while stack:
        name, done = stack.pop()
        if done:
            state[name] = 2
            order.append(name)
        elif state.get(name) != 2:
            if state.get(name) == 1:
                raise ValueError(f"{source}: the graph has a cycle through {name!r}")
            if name not in inputs:
                raise ValueError(f"{source}: an input names no node: {name!r}")
            state[name] = 1
            stack.append((name, True))
            stack.extend((src, False) for src in reversed(inputs[name]) if state.get(src) != 2)
    return order


def _nhwc(v) -> torch.Tensor | np.ndarray:
    t, nchw = v
    return t.permute(0, 2, 3, 1) if nchw else t


def _nchw(v) -> torch.Tensor:
    t, nchw = v
    return t if nchw else t.permute(0, 3, 1, 2)


def _conv2d(node, x, w):
    weight = w[0]  # OIHW
    strides, dilations = _hw(node, "strides"), _hw(node, "dilations")
    x = _pad_for(node, _nchw(x), weight.shape[2:], strides, dilations)
    return F.conv2d(x, weight, stride=strides, dilation=dilations), True


def _pool(node, x, kind):
    k, s = _hw(node, "ksize"), _hw(node, "strides")
    x = _nchw(x)
    if kind == "max":
        return F.max_pool2d(_pad_for(node, x, k, s, value=-math.inf), k, s), True
    if node.attr["padding"] == b"SAME":  # TF averages over the valid pixels only
        ones = _pad_for(node, torch.ones_like(x[:1, :1]), k, s)
        return F.avg_pool2d(_pad_for(node, x, k, s), k, s) / F.avg_pool2d(ones, k, s), True
    return F.avg_pool2d(x, k, s), True


def _bias_add(node, x, b):
    t, nchw = x
    bias = b[0]
    return (t + bias.reshape(-1, 1, 1), True) if nchw else (t + bias, False)


def _binary(fn):
    def op(node, a, b):
        (ta, nchw_a), (tb, nchw_b) = a, b
        if nchw_a == nchw_b or (tb.numel() == 1 and nchw_a) or (ta.numel() == 1 and nchw_b):
            return fn(ta, tb), nchw_a or nchw_b  # same layout, or a scalar against NCHW
        return fn(_nhwc(a), _nhwc(b)), False
    return op


def _concat(node, *args):
    *xs, axis = args
    axis = int(_nhwc(axis))
    if all(nchw for _, nchw in xs):
        return torch.cat([t for t, _ in xs], dim=_NHWC_TO_NCHW_AXIS[axis % 4]), True
    return torch.cat([_nhwc(v) for v in xs], dim=axis), False


def _reshape(node, x, shape):
    """The graph was frozen for batch 1, so constant-folded targets read [1, -1] or [1, 512]:
    a leading 1 stands for the batch and takes the input's batch size."""
    t = _nhwc(x)
    target = [int(d) for d in np.asarray(_nhwc(shape)).reshape(-1)]
    if target and target[0] == 1:
        target[0] = t.shape[0]
    return t.reshape(target), False


def _matmul(node, a, b):
    a, b = _nhwc(a), _nhwc(b)
    if node.attr.get("transpose_a"):
        a = a.transpose(-1, -2)
    if node.attr.get("transpose_b"):
        b = b.transpose(-1, -2)
    return a @ b, False


def _fused_batch_norm(node, x, scale, offset, mean, var):
    if node.attr.get("is_training", False):
        raise NotImplementedError(f"FusedBatchNorm {node.name!r} in training mode")
    inv = scale[0] * torch.rsqrt(var[0] + node.attr.get("epsilon", 1e-3))
    t, nchw = x
    shape = (-1, 1, 1) if nchw else (-1,)
    return t * inv.reshape(shape) + (offset[0] - mean[0] * inv).reshape(shape), nchw


def _sum(node, x, axes):
    t = _nhwc(x)
    dims = [int(a) % t.ndim for a in np.asarray(_nhwc(axes)).reshape(-1)]
    return t.sum(dim=dims, keepdim=bool(node.attr.get("keep_dims", False))), False


_OPS = {
    "Identity": lambda node, x: x,
    "Conv2D": _conv2d,
    "BiasAdd": _bias_add,
    "Relu": lambda node, x: (F.relu(x[0]), x[1]),
    "MaxPool": lambda node, x: _pool(node, x, "max"),
    "AvgPool": lambda node, x: _pool(node, x, "avg"),
    "ConcatV2": _concat,
    "Add": _binary(torch.add),
    "AddV2": _binary(torch.add),
    "Mul": _binary(torch.mul),
    "Maximum": _binary(torch.maximum),
    "Reshape": _reshape,
    "MatMul": _matmul,
    "FusedBatchNorm": _fused_batch_norm,
    "Square": lambda node, x: (x[0] * x[0], x[1]),
    "Sum": _sum,
    "Rsqrt": lambda node, x: (torch.rsqrt(x[0]), x[1]),
}


class FaceNet(nn.Module):
    """FaceNet embedder: ``forward(chips)`` -> ``[B, 512]`` L2-normalised embeddings.

    ``chips``: float NCHW RGB in [-1, 1] (any size; resized bilinearly to 160x160). Differentiable
    w.r.t. the chips; load with ``from_graphdef`` and use it frozen (``eval()``, no grad on params).
    """

    size = SIZE

    def __init__(self, graph: GraphModule):
        super().__init__()
        self.graph = graph

    @classmethod
    def from_graphdef(cls, path: str | Path) -> FaceNet:
        """Load a frozen GraphDef, returned frozen: eval mode, parameters without grad."""
        return cls(GraphModule(parse_graphdef(path), source=str(path))).eval().requires_grad_(False)

    def preprocess(self, chips: torch.Tensor) -> torch.Tensor:
        """[-1, 1] RGB chips -> the graph's input as NCHW: 160x160, (x255 - 127.5) / 128."""
        if chips.ndim != 4 or chips.shape[1] != 3:
            raise ValueError(f"expected NCHW RGB chips [B, 3, H, W], got {tuple(chips.shape)}")
        if chips.shape[-2:] != (SIZE, SIZE):
            chips = F.interpolate(chips, size=(SIZE, SIZE), mode="bilinear", align_corners=False,
                                  antialias=True)
        return chips * (127.5 / 128.0)

    def embed(self, blob: torch.Tensor) -> torch.Tensor:
        """Run the graph on already standardized NCHW input."""
        return self.graph(blob.permute(0, 2, 3, 1))

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        return self.embed(self.preprocess(chips))
