"""FaceNet (Inception-ResNet-v1, VGGFace2, 512-d) from a frozen TensorFlow graph, run in PyTorch.

The weight ``facenet-vggface2`` is facenet's 20180402-114759 model as a frozen ``GraphDef``
(``graph_final.pb``) with its batch norms folded into the convolutions. The ``protobuf`` package
parses it against the few TensorFlow messages a frozen graph uses, declared in this module with
TensorFlow's field numbers (no TensorFlow needed); the graph is then interpreted node by node with
torch ops. Float constants with more than one element (conv kernels, biases, the bottleneck and
its batch norm) become ``nn.Parameter``s; scalars (the residual scales, the L2 epsilon) stay
buffers. Only the ops this graph uses are implemented; any other raises ``NotImplementedError``
naming the op and the node.

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
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from torch import nn

SIZE = 160

# --- the GraphDef schema, for protobuf's own parser --------------------------------------------
# TensorFlow's .proto files do not ship with protobuf, and TensorFlow is no dependency, so the
# messages a frozen graph needs are declared here with TensorFlow's field numbers and types
# (tensorflow/core/framework/{graph,node_def,attr_value,tensor,tensor_shape,versions}.proto, all
# proto3). The DataType enum is declared as int32: the same varint on the wire. Fields left out
# (function bodies, debug info, resource handles, ...) are unknown to the parser, which skips
# them. The classes live in a private descriptor pool: an installed TensorFlow registers the same
# message names in protobuf's default pool, and the two must not clash.

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64, "uint32": _F.TYPE_UINT32,
            "uint64": _F.TYPE_UINT64, "float": _F.TYPE_FLOAT, "double": _F.TYPE_DOUBLE,
            "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES}
_ONE, _MANY, _ONEOF = "one", "many", "oneof"  # singular, repeated, member of AttrValue's oneof

# message (nested ones after their parent) -> [(field, number, scalar type or message, label)]
_SCHEMA = {
    "GraphDef": [("node", 1, "NodeDef", _MANY), ("library", 2, "FunctionDefLibrary", _ONE),
                 ("version", 3, "int32", _ONE), ("versions", 4, "VersionDef", _ONE)],
    "FunctionDefLibrary": [],  # its functions are skipped; a frozen graph has none
    "VersionDef": [("producer", 1, "int32", _ONE), ("min_consumer", 2, "int32", _ONE),
                   ("bad_consumers", 3, "int32", _MANY)],
    "NodeDef": [("name", 1, "string", _ONE), ("op", 2, "string", _ONE), ("input", 3, "string", _MANY),
                ("device", 4, "string", _ONE), ("attr", 5, "NodeDef.AttrEntry", _MANY)],
    "NodeDef.AttrEntry": [("key", 1, "string", _ONE), ("value", 2, "AttrValue", _ONE)],  # the map<string, AttrValue>
    "AttrValue": [("list", 1, "AttrValue.ListValue", _ONEOF), ("s", 2, "bytes", _ONEOF),
                  ("i", 3, "int64", _ONEOF), ("f", 4, "float", _ONEOF), ("b", 5, "bool", _ONEOF),
                  ("type", 6, "int32", _ONEOF), ("shape", 7, "TensorShapeProto", _ONEOF),
                  ("tensor", 8, "TensorProto", _ONEOF), ("placeholder", 9, "string", _ONEOF)],  # func = 10 skipped
    "AttrValue.ListValue": [("s", 2, "bytes", _MANY), ("i", 3, "int64", _MANY), ("f", 4, "float", _MANY),
                            ("b", 5, "bool", _MANY), ("type", 6, "int32", _MANY),
                            ("shape", 7, "TensorShapeProto", _MANY), ("tensor", 8, "TensorProto", _MANY)],
    "TensorShapeProto": [("dim", 2, "TensorShapeProto.Dim", _MANY), ("unknown_rank", 3, "bool", _ONE)],
    "TensorShapeProto.Dim": [("size", 1, "int64", _ONE), ("name", 2, "string", _ONE)],
    "TensorProto": [("dtype", 1, "int32", _ONE), ("tensor_shape", 2, "TensorShapeProto", _ONE),
                    ("version_number", 3, "int32", _ONE), ("tensor_content", 4, "bytes", _ONE),
                    ("float_val", 5, "float", _MANY), ("double_val", 6, "double", _MANY),
                    ("int_val", 7, "int32", _MANY), ("string_val", 8, "bytes", _MANY),
                    ("int64_val", 10, "int64", _MANY), ("bool_val", 11, "bool", _MANY)],
}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """_SCHEMA as a proto3 FileDescriptorProto of package ``tensorflow``."""
    proto = descriptor_pb2.FileDescriptorProto(name="guide_ray/tensorflow_graph.proto",
                                               package="tensorflow", syntax="proto3")
    made: dict[str, descriptor_pb2.DescriptorProto] = {}
    for full, fields in _SCHEMA.items():
        parent, _, name = full.rpartition(".")
        msg = made[full] = (made[parent].nested_type if parent else proto.message_type).add(name=name)
        if full == "NodeDef.AttrEntry":
            msg.options.map_entry = True
        if any(label == _ONEOF for *_, label in fields):
            msg.oneof_decl.add(name="value")
        for field_name, number, kind, label in fields:
            f = msg.field.add(name=field_name, number=number,
                              label=_F.LABEL_REPEATED if label == _MANY else _F.LABEL_OPTIONAL)
            if kind in _SCALARS:
                f.type = _SCALARS[kind]
            else:
                f.type, f.type_name = _F.TYPE_MESSAGE, f".tensorflow.{kind}"
            if label == _ONEOF:
                f.oneof_index = 0
    return proto


@cache
def _graphdef_class() -> type:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(_file_descriptor().SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.GraphDef"))


# TensorFlow DataType enum values -> numpy dtypes (the ones a frozen float graph can hold), and the
# TensorProto field that holds a tensor's values when they are not in tensor_content.
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 6: np.int8, 9: np.int64, 10: np.bool_}
_VALUES = {1: "float_val", 2: "double_val", 3: "int_val", 4: "int_val", 6: "int_val", 9: "int64_val",
           10: "bool_val"}


def _shape(msg) -> list[int] | None:
    """A TensorShapeProto's dims; None for an unknown rank."""
    return None if msg.unknown_rank else [d.size for d in msg.dim]


def _tensor(msg) -> np.ndarray:
    """A TensorProto as an array: raw little-endian ``tensor_content``, or the typed repeated field
    of its dtype, where a single value is broadcast over the shape, as TensorFlow does."""
    if msg.dtype not in _DTYPES:
        raise ValueError(f"unsupported tensor dtype {msg.dtype}")
    dtype = _DTYPES[msg.dtype]
    shape = _shape(msg.tensor_shape) or []
    count = math.prod(shape)
    if msg.tensor_content:  # astype gives a native, writable copy
        raw = np.frombuffer(msg.tensor_content, dtype=np.dtype(dtype).newbyteorder("<"))
        return raw.astype(dtype).reshape(shape)
    arr = np.array(getattr(msg, _VALUES[msg.dtype]), dtype=dtype)
    if arr.size not in (0, 1, count):
        raise ValueError(f"tensor of shape {shape} has {arr.size} values")
    return arr.reshape(shape) if arr.size == count else np.full(shape, arr[0] if arr.size else 0, dtype)


def _attr(msg):
    """An AttrValue as a Python value: bytes (s), int (i, type), float (f), bool (b), a list of
    dims (shape), an ndarray (tensor), a list of those (list); None when unset or another kind."""
    kind = msg.WhichOneof("value")
    if kind == "list":
        lst = msg.list
        return [*lst.s, *lst.i, *lst.f, *lst.b, *lst.type, *map(_shape, lst.shape), *map(_tensor, lst.tensor)]
    if kind == "shape":
        return _shape(msg.shape)
    if kind == "tensor":
        return _tensor(msg.tensor)
    return getattr(msg, kind) if kind in ("s", "i", "f", "b", "type") else None


@dataclass
class NodeDef:
    name: str
    op: str
    inputs: list[str] = field(default_factory=list)  # "node", "node:k", or "^node" (control)
    attr: dict = field(default_factory=dict)


def parse_graphdef(path: str | Path) -> list[NodeDef]:
    """The nodes of a binary GraphDef file; ValueError naming the file when it is not one."""
    path = Path(path)
    graph = _graphdef_class()()
    try:
        graph.ParseFromString(path.read_bytes())
        nodes = [NodeDef(n.name, n.op, list(n.input), {k: _attr(v) for k, v in n.attr.items()})
                 for n in graph.node]
        if not nodes or any(not n.name or not n.op for n in nodes):
            raise ValueError("no nodes, or a node without a name or an op")
    except (ValueError, DecodeError) as e:
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
