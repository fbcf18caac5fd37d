"""Run an OpenVINO IR (v10/v11 ``.xml`` + ``.bin``) as a differentiable PyTorch module.

OpenVINO executes an IR for inference only. To fine-tune a network that is shipped as IR (here the
MobileStyleGAN of the random-face wheel) we interpret its graph ourselves: each layer becomes the
equivalent torch op, every FP32 weight tensor becomes an ``nn.Parameter``, and shape arithmetic
(ShapeOf/Gather/Concat/Reshape chains that make the batch size dynamic) runs on small int64 CPU
tensors. Only the ~25 op types these generators use are implemented; anything else raises an
error that names the op and the layer.

What is NOT a parameter: scalar FP32 constants (epsilons, exponents, fixed scales, leaky slopes),
per-pixel noise maps (shape 1x1xHxW, consumed by an Add), which StyleGAN-style exports bake in
as constants, and constants the caller declares fixed (``fixed_consumers``). They stay buffers, so
fine-tuning changes learned weights only.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_DTYPES = {"f32": np.float32, "f16": np.float16, "f64": np.float64, "i64": np.int64,
           "i32": np.int32, "i8": np.int8, "u8": np.uint8, "boolean": np.bool_}


@dataclass
class _Layer:
    id: str
    type: str
    name: str
    attrs: dict[str, str]
    out_ports: list[str]  # port ids of the outputs, in order
    out_shapes: list[list[int]]
    inputs: list[tuple[str, int]] = field(default_factory=list)  # (source layer, output index)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()] if text else []


def parse_ir(xml_path: Path) -> tuple[dict[str, _Layer], list[str]]:
    """Layers keyed by id, and a topological order of their ids."""
    root = ET.parse(xml_path).getroot()
    if root.tag != "net":
        raise ValueError(f"{xml_path} is not an OpenVINO IR file (root element {root.tag!r})")
    layers: dict[str, _Layer] = {}
    for el in root.find("layers"):
        data = el.find("data")
        outs = el.findall("output/port")
        layers[el.get("id")] = _Layer(
            id=el.get("id"), type=el.get("type"), name=el.get("name"),
            attrs=dict(data.attrib) if data is not None else {},
            out_ports=[p.get("id") for p in outs],
            out_shapes=[[int(d.text) if d.text.lstrip("-").isdigit() else -1 for d in p.findall("dim")]
                        for p in outs])
    by_port: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    for e in root.find("edges"):
        src = layers[e.get("from-layer")]
        by_port[e.get("to-layer")].append(
            (int(e.get("to-port")), src.id, src.out_ports.index(e.get("from-port"))))
    for lid, edges in by_port.items():
        layers[lid].inputs = [(src, idx) for _, src, idx in sorted(edges)]
    # Kahn's algorithm, stable in layer id order.
    consumers: dict[str, set[str]] = defaultdict(set)
    pending = {}
    for lid, layer in layers.items():
        srcs = {s for s, _ in layer.inputs}
        pending[lid] = len(srcs)
        for s in srcs:
            consumers[s].add(lid)
    ready = sorted((lid for lid, n in pending.items() if n == 0), key=int, reverse=True)
    order = []
    while ready:
        lid = ready.pop()
        order.append(lid)
        for c in sorted(consumers[lid], key=int, reverse=True):
            pending[c] -= 1
            if pending[c] == 0:
                ready.append(c)
    if len(order) != len(layers):
        raise ValueError(f"{xml_path}: the graph has a cycle")
    return layers, order


def _safe_name(layer: _Layer) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in layer.name) + f"__{layer.id}"


class IRGraph(nn.Module):
    """An OpenVINO IR graph as a torch module: ``forward(*inputs)`` returns its Result tensors.

    ``per_layer_input``: if given (a Parameter's index), that input may also be passed as
    ``[B, K, C]`` where K is the number of MatMul layers that consume it (``input_consumers``);
    the k-th consumer, counted in the order the data reaches the graph's output, then receives
    ``x[:, k]``. This is how a single-``w`` StyleGAN synthesis export accepts W+.

    ``fixed_consumers``: op types whose constant inputs are fixed filters rather than learned
    weights (e.g. the Haar wavelet filters of MobileStyleGAN's inverse DWT); they stay buffers.
    """

    def __init__(self, xml_path: str | Path, bin_path: str | Path | None = None,
                 per_layer_input: int | None = None, fixed_consumers: tuple[str, ...] = ()):
        super().__init__()
        xml_path = Path(xml_path)
        bin_path = Path(bin_path) if bin_path else xml_path.with_suffix(".bin")
        self.layers, self.order = parse_ir(xml_path)
        blob = np.fromfile(bin_path, dtype=np.uint8)
        self.params = nn.ParameterDict()
        self._const_key: dict[str, tuple[str, str]] = {}  # layer id -> ("param"|"buffer"|"int", key)
        self._int_consts: dict[str, torch.Tensor] = {}
        consumers: dict[str, list[_Layer]] = defaultdict(list)
        for layer in self.layers.values():
            for src, _ in layer.inputs:
                consumers[src].append(layer)
        self._uses = {lid: len(c) for lid, c in consumers.items()}
        for lid in self.order:
            layer = self.layers[lid]
            if layer.type != "Const":
                continue
            a = layer.attrs
            dtype = _DTYPES[a["element_type"]]
            offset, size = int(a["offset"]), int(a["size"])
            arr = blob[offset:offset + size].view(dtype).reshape(_ints(a.get("shape", "")))
            tensor = torch.from_numpy(arr.copy())
            key = _safe_name(layer)
            if tensor.is_floating_point():
                tensor = tensor.float()
                is_noise = (tensor.ndim == 4 and tensor.shape[:2] == (1, 1) and tensor[0, 0].numel() > 1
                            and all(c.type == "Add" for c in consumers[lid]))
                is_fixed = bool(fixed_consumers) and all(c.type in fixed_consumers for c in consumers[lid])
                if tensor.numel() > 1 and not is_noise and not is_fixed:
                    self.params[key] = nn.Parameter(tensor)
                    self._const_key[lid] = ("param", key)
                else:
                    self.register_buffer(key, tensor)
                    self._const_key[lid] = ("buffer", key)
            else:
                self._int_consts[lid] = tensor
                self._const_key[lid] = ("int", lid)
        # Inputs and outputs keep the order in which the IR file lists them, as OpenVINO does.
        self.input_ids = [lid for lid, layer in self.layers.items() if layer.type == "Parameter"]
        self.output_ids = [lid for lid, layer in self.layers.items() if layer.type == "Result"]
        self._plans: dict[str, tuple[list[str], dict[str, int]]] = {}
        self.per_layer_input = per_layer_input
        self.input_consumers: list[str] = []
        if per_layer_input is not None:
            self.input_consumers = self._consumers_in_flow_order(self.input_ids[per_layer_input])

    def _consumers_in_flow_order(self, param_id: str) -> list[str]:
        """MatMul consumers of a Parameter, in the order their branches join the data path.

        Each branch joins where it meets a tensor it does not already feed (the activations it
        modulates); ranking by how many of these branches have joined by then gives the layer
        order a StyleGAN W+ latent uses. Shape arithmetic (ShapeOf chains) is not data flow.
        """
        matmuls = {c.id for c in self.layers.values()
                   if c.type == "MatMul" and any(s == param_id for s, _ in c.inputs)}
        is_shape: dict[str, bool] = {}
        feeds: dict[str, frozenset[str]] = {}
        joined: dict[str, int] = {}
        for lid in self.order:
            layer = self.layers[lid]
            if layer.type == "Const":
                is_shape[lid] = lid in self._int_consts
            else:
                is_shape[lid] = layer.type == "ShapeOf" or bool(layer.inputs) and all(
                    is_shape[s] for s, _ in layer.inputs)
            data_srcs = [s for s, _ in layer.inputs if not is_shape[s]]
            feeds[lid] = frozenset().union(*(feeds[s] | ({s} & matmuls) for s in data_srcs))
            for m in feeds[lid] - joined.keys():
                if any(self.layers[s].type != "Const" and m not in feeds[s] and s not in matmuls
                       for s in data_srcs):
                    joined[m] = len(feeds[lid])
        missing = matmuls - joined.keys()
        if missing:
            raise ValueError(f"MatMul layers {sorted(missing)} never join the data path")
        return sorted(matmuls, key=lambda m: (joined[m], int(m)))

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.params.values())
        return f"layers={len(self.layers)}, parameters={n}"

    def _const(self, lid: str) -> torch.Tensor:
        kind, key = self._const_key[lid]
        if kind == "param":
            return self.params[key]
        if kind == "buffer":
            return getattr(self, key)
        return self._int_consts[key]

    def ancestors(self, layer_id: str) -> set[str]:
        """The layers ``layer_id``'s output depends on, itself included."""
        if layer_id not in self.layers:
            raise KeyError(f"the graph has no layer with id {layer_id!r}")
        seen, stack = set(), [layer_id]
        while stack:
            lid = stack.pop()
            if lid not in seen:
                seen.add(lid)
                stack.extend(s for s, _ in self.layers[lid].inputs)
        return seen

    def parameters_until(self, layer_id: str) -> list[nn.Parameter]:
        """The learned weights that ``layer_id``'s output depends on."""
        needed = self.ancestors(layer_id)
        return [self.params[key] for lid, (kind, key) in self._const_key.items() if kind == "param" and lid in needed]

    def _plan(self, until: str | None) -> tuple[list[str], dict[str, int]]:
        """The layers to run (topological order) and how many inputs each output feeds."""
        if until is None:
            return self.order, self._uses
        if until not in self._plans:
            needed = self.ancestors(until)
            uses: dict[str, int] = defaultdict(int)
            for lid in needed:
                for src, _ in self.layers[lid].inputs:
                    uses[src] += 1
            self._plans[until] = [lid for lid in self.order if lid in needed], dict(uses)
        return self._plans[until]

    def forward(self, *inputs: torch.Tensor, until: str | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The graph's Result tensors, or with ``until`` the first output of that layer (only the
        layers it depends on run: a truncated network)."""
        if len(inputs) != len(self.input_ids):
            raise ValueError(f"expected {len(self.input_ids)} inputs, got {len(inputs)}")
        values: dict[str, tuple[torch.Tensor, ...]] = {}  # layer id -> its outputs
        order, uses = self._plan(until)
        remaining = dict(uses)
        per_layer = None
        for i, (lid, x) in enumerate(zip(self.input_ids, inputs)):
            if i == self.per_layer_input and x.ndim == 3:
                if x.shape[1] != len(self.input_consumers):
                    raise ValueError(f"per-layer input has {x.shape[1]} entries; the graph has "
                                     f"{len(self.input_consumers)} consumers")
                per_layer = {m: x[:, k] for k, m in enumerate(self.input_consumers)}
                x = x[:, 0]
            values[lid] = (x,)
        results = {}
        for lid in order:
            layer = self.layers[lid]
            t = layer.type
            if t == "Parameter":
                continue
            if t == "Const":
                values[lid] = (self._const(lid),)
                continue
            args = [values[src][idx] for src, idx in layer.inputs]
            if per_layer is not None and lid in per_layer:
                args[0] = per_layer[lid]
            for src in {s for s, _ in layer.inputs}:  # free what no later layer needs
                remaining[src] -= sum(1 for s, _ in layer.inputs if s == src)
                if remaining[src] == 0:
                    del values[src]
            if t == "Result":
                results[lid] = args[0]
                continue
            op = _OPS.get(t)
            if op is None:
                raise NotImplementedError(f"OpenVINO op {t!r} (layer {layer.name!r}) is not supported")
            out = op(layer.attrs, *args)
            values[lid] = tuple(out) if isinstance(out, (list, tuple)) else (out,)
            if lid == until:
                return values[lid][0]
        outputs = tuple(results[lid] for lid in self.output_ids)
        return outputs[0] if len(outputs) == 1 else outputs


# --- op implementations (OpenVINO opset semantics) -------------------------------------------

def _axes(t: torch.Tensor, rank: int) -> list[int]:
    return [a % rank for a in t.reshape(-1).tolist()]


def _conv_pads(a: dict) -> tuple[list[int], list[int]]:
    auto = a.get("auto_pad", "explicit")
    if auto not in ("explicit", "notset", "valid"):
        raise NotImplementedError(f"auto_pad={auto!r} is not supported")
    if auto == "valid":
        return [0, 0], [0, 0]
    return _ints(a["pads_begin"]), _ints(a["pads_end"])


def _conv(a, x, w, groups=1):
    begin, end = _conv_pads(a)
    if begin != end:
        x = F.pad(x, [begin[1], end[1], begin[0], end[0]])
        begin = [0, 0]
    return F.conv2d(x, w, stride=_ints(a["strides"]), padding=begin, dilation=_ints(a["dilations"]),
                    groups=groups)


def _group_conv(a, x, w):
    g = w.shape[0]
    return _conv(a, x, w.reshape(g * w.shape[1], *w.shape[2:]), groups=g)


def _conv_transpose(a, x, w, groups=1):
    begin, end = _conv_pads(a)
    out_pad = _ints(a.get("output_padding", "")) or [0, 0]
    y = F.conv_transpose2d(x, w, stride=_ints(a["strides"]), output_padding=out_pad,
                           dilation=_ints(a["dilations"]), groups=groups)
    h, wd = y.shape[-2:]
    return y[..., begin[0]:h - end[0], begin[1]:wd - end[1]]


def _group_conv_transpose(a, x, w):
    g = w.shape[0]  # [G, Cin/G, Cout/G, kh, kw] -> torch's [Cin, Cout/G, kh, kw]
    return _conv_transpose(a, x, w.reshape(g * w.shape[1], *w.shape[2:]), groups=g)


def _matmul(a, x, y):
    if a.get("transpose_a") == "true":
        x = x.transpose(-1, -2)
    if a.get("transpose_b") == "true":
        y = y.transpose(-1, -2)
    return x @ y


def _prelu(a, x, slope):
    # torch's fused kernels: a third of the cost (and memory) of where(x >= 0, x, x * slope) and its backward
    if slope.numel() == 1:
        return F.leaky_relu(x, float(slope))
    return F.prelu(x, slope.reshape(-1)) if x.ndim > 1 else torch.where(x >= 0, x, x * slope)


def _gather(a, data, indices, axis):
    ax = int(axis) % data.ndim
    idx = indices.to(data.device).long() % data.shape[ax]
    out = data.index_select(ax, idx.reshape(-1))
    return out.reshape((*data.shape[:ax], *idx.shape, *data.shape[ax + 1:]))


def _reshape(a, x, shape):
    target = shape.tolist()
    if a.get("special_zero") == "true":
        target = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
    return x.reshape(target)


def _unsqueeze(a, x, axes):
    for ax in sorted(_axes(axes, x.ndim + axes.numel())):
        x = x.unsqueeze(ax)
    return x


def _squeeze(a, x, axes=None):
    if axes is None:
        return x.squeeze()
    for ax in sorted(_axes(axes, x.ndim), reverse=True):
        x = x.squeeze(ax)
    return x


def _broadcast(a, x, shape):
    target = shape.tolist()
    if a.get("mode", "numpy") == "bidirectional":
        target = torch.broadcast_shapes(tuple(x.shape), tuple(target))
    return x.broadcast_to(target)


def _tile(a, x, repeats):
    reps = repeats.tolist()
    if len(reps) > x.ndim:
        x = x.reshape([1] * (len(reps) - x.ndim) + list(x.shape))
    return x.repeat([1] * (x.ndim - len(reps)) + reps)


def _variadic_split(a, x, axis, lengths):
    ax = int(axis) % x.ndim
    sizes = lengths.tolist()
    if -1 in sizes:
        sizes[sizes.index(-1)] = x.shape[ax] - sum(s for s in sizes if s != -1)
    return torch.split(x, sizes, dim=ax)


def _reduce_mean(a, x, axes):
    return x.mean(dim=_axes(axes, x.ndim), keepdim=a.get("keep_dims") == "true")


def _concat(a, *xs):
    return torch.cat(xs, dim=int(a["axis"]) % xs[0].ndim)


_OPS = {
    "Add": lambda a, x, y: x + y,
    "Subtract": lambda a, x, y: x - y,
    "Multiply": lambda a, x, y: x * y,
    "Divide": lambda a, x, y: x / y,
    "Power": lambda a, x, y: torch.pow(x, y),
    "Sqrt": lambda a, x: torch.sqrt(x),
    "Tanh": lambda a, x: torch.tanh(x),
    "MatMul": _matmul,
    "PReLU": _prelu,
    "ReduceMean": _reduce_mean,
    "ShapeOf": lambda a, x: torch.tensor(x.shape, dtype=torch.int64),
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": _concat,
    "Reshape": _reshape,
    "Broadcast": _broadcast,
    "Tile": _tile,
    "VariadicSplit": _variadic_split,
    "Convolution": _conv,
    "GroupConvolution": _group_conv,
    "ConvolutionBackpropData": _conv_transpose,
    "GroupConvolutionBackpropData": _group_conv_transpose,
}
