"""Read, build and write NVIDIA network pickles (StyleGAN2-ADA, StyleGAN3 repo, EG3D) SAFELY.

NVIDIA's snapshots (``network-snapshot-*.pkl``, the published ``*.pkl``) are plain
``pickle.dump(dict(G=..., D=..., G_ema=..., augment_pipe=..., training_set_kwargs=...))``. Each
network class decorated with ``torch_utils.persistence.persistent_class`` pickles as
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta = dict(type='class',
version=6, module_src=<the defining module's source>, class_name=<bare class name>,
state=<the object's __dict__, with _init_args/_init_kwargs, _parameters, _buffers, _modules>)``,
and NVIDIA's loader EXECUTES ``module_src``. Here nothing from a pickle is executed or imported:

* ``SafeUnpickler.find_class`` resolves an explicit allowlist of globals to inert stand-ins:
  persistent objects become ``PersistentRecord`` (``module_src`` kept as a string), plain objects
  of allowlisted classes (``allow_plain_class``) become ``PlainRecord``; tensors are rebuilt from
  storages that ``torch.load(weights_only=True)`` decodes; anything else raises
  ``UnsafePickleError``.
* ``load_network_pickle`` builds OUR class registered (``register``) for the record's NVIDIA
  name and copies every parameter and buffer of the record tree into it, strictly. The bare
  class name does not say which NVIDIA file defined it (three files define ``Generator``), so the
  defining module is recognised from the parsed (never run) source by marker definitions.
* ``export_network_pickle`` writes the original pickle back with a network's tensors substituted,
  every other field untouched, through the same global names, so NVIDIA's own
  ``legacy.load_network_pkl`` loads it; ``save_safetensors``/``load_safetensors_network`` store a
  network as safetensors plus its NVIDIA class name and constructor arguments.
"""

from __future__ import annotations

import ast
import collections
import copyreg
import io
import json
import os
import pickle
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from . import stylegan2


class NetworkPickleError(ValueError):
    """The file is not a readable network pickle, or lacks what was asked of it."""


class UnsafePickleError(NetworkPickleError, pickle.UnpicklingError):
    """The pickle references a global outside the allowlist (it could run code if loaded)."""


class UnsupportedNetworkError(NetworkPickleError):
    """The pickle holds a network class we have no implementation for."""


# ---------------------------------------------------------------------------------------------
# Registry: NVIDIA dotted class name -> our class, and how to recognise NVIDIA's modules.

NETWORK_CLASSES: dict[str, type[nn.Module]] = {}

# module name -> definitions its source must contain: "Class", "Class.method" or
# "Class.method(arg)" (an argument name of that method). The most specific match wins.
MODULE_MARKERS: dict[str, frozenset[str]] = {}
_MODULE_CACHE: dict[str, str | None] = {}  # module_src -> identified module name


def register(nvidia_name: str, cls: type[nn.Module], markers: set[str] | frozenset[str] | None = None) -> None:
    """Build ``cls`` for pickled objects of NVIDIA's ``nvidia_name`` ('training.triplane.TriPlaneGenerator');
    ``markers`` identify the defining module's source (needed once per module)."""
    NETWORK_CLASSES[nvidia_name] = cls
    if markers is not None:
        MODULE_MARKERS[nvidia_name.rpartition(".")[0]] = frozenset(markers)
        _MODULE_CACHE.clear()


register("training.networks.Generator", stylegan2.AdaGenerator,
         {"Generator", "SynthesisNetwork", "MappingNetwork.forward(skip_w_avg_update)"})
register("training.networks_stylegan2.Generator", stylegan2.Generator,
         {"Generator", "SynthesisBlock.__init__(fused_modconv_default)", "MappingNetwork.forward(update_emas)"})
# Recognised, so that its networks get a precise "unsupported" error rather than "unknown".
MODULE_MARKERS["training.networks_stylegan3"] = frozenset({"Generator", "SynthesisInput"})


def _definitions(module_src: str) -> frozenset[str]:
    """Top-level classes/functions of a source text, their methods and argument names (AST only)."""
    try:
        tree = ast.parse(module_src.lstrip("\ufeff"))
    except SyntaxError:
        return frozenset()
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found.add(node.name)
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    found.add(f"{node.name}.{item.name}")
                    a = item.args
                    for arg in a.posonlyargs + a.args + a.kwonlyargs:
                        found.add(f"{node.name}.{item.name}({arg.arg})")
    return frozenset(found)


def identify_module(module_src: str) -> str | None:
    """NVIDIA's module name for a pickled ``module_src`` (e.g. 'training.networks'), or None."""
    if module_src not in _MODULE_CACHE:
        defs = _definitions(module_src)
        matches = sorted(((len(m), name) for name, m in MODULE_MARKERS.items() if m <= defs), reverse=True)
        if len(matches) > 1 and matches[0][0] == matches[1][0]:
            raise NetworkPickleError(f"pickled source matches several NVIDIA modules: {[n for _, n in matches]}")
        _MODULE_CACHE[module_src] = matches[0][1] if matches else None
    return _MODULE_CACHE[module_src]


# ---------------------------------------------------------------------------------------------
# Inert stand-ins for what a pickle references.


def _global(module: str, name: str):
    """Mark a stand-in with the global name it replaces; the exporter writes that name back."""
    def mark(obj):
        obj.__nvidia_global__ = (module, name)
        return obj
    return mark


@_global("torch_utils.persistence", "_reconstruct_persistent_obj")
def _reconstruct_persistent_obj(meta) -> "PersistentRecord":
    if not isinstance(meta, dict) or not isinstance(meta.get("state"), dict):
        raise NetworkPickleError("malformed persistent object: meta must be a dict with a 'state' dict")
    return PersistentRecord(meta)


@dataclass(eq=False)
class PersistentRecord:
    """A pickled NVIDIA persistent object: its ``meta`` exactly as stored; nothing executed."""

    meta: dict

    @property
    def class_name(self) -> str:
        return self.meta.get("class_name", "?")

    @property
    def module_src(self) -> str:
        return self.meta.get("module_src", "")

    @property
    def state(self) -> dict:
        return self.meta["state"]

    @property
    def nvidia_name(self) -> str:
        """'module.Class' with the module recognised from its source ('?.Class' if unknown)."""
        return f"{identify_module(self.module_src) or '?'}.{self.class_name}"

    def __reduce__(self):
        return _reconstruct_persistent_obj, (self.meta,)

    def __repr__(self):
        return f"PersistentRecord({self.nvidia_name})"


class PlainRecord:
    """A pickled object of an allowlisted plain class (e.g. torch.nn.Sequential): its state only.
    Subclasses are made per class name by ``allow_plain_class``."""

    __nvidia_global__: tuple[str, str]

    def __setstate__(self, state):
        self.state = state

    def __reduce_ex__(self, protocol):
        return copyreg.__newobj__, (type(self),), getattr(self, "state", None)

    def __repr__(self):
        return f"PlainRecord({'.'.join(self.__nvidia_global__)})"


class PickledDict(dict):
    """Dict-like globals (dnnlib.util.EasyDict): plain dicts that pickle back under their name."""

    __nvidia_global__: tuple[str, str]

    def __getattr__(self, name):  # EasyDict's attribute access, used by NVIDIA's kwargs
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


_STAND_IN_CLASSES: dict[str, type] = {}


def _stand_in_class(base: type, module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _STAND_IN_CLASSES:
        _STAND_IN_CLASSES[key] = type(name, (base,), {"__nvidia_global__": (module, name), "__module__": __name__})
    return _STAND_IN_CLASSES[key]


PLAIN_CLASSES: set[str] = {
    f"torch.nn.modules.{m}" for m in (
        "container.Sequential", "container.ModuleList", "container.ModuleDict", "container.ParameterList",
        "container.ParameterDict", "linear.Linear", "linear.Identity", "conv.Conv2d", "activation.ReLU",
        "activation.LeakyReLU", "activation.Softplus", "activation.Sigmoid", "activation.Tanh",
        "activation.SiLU", "activation.ELU", "pooling.AvgPool2d", "upsampling.Upsample", "flatten.Flatten")
}


def allow_plain_class(qualified_name: str) -> None:
    """Let plain (non-persistent) objects of this class be read as ``PlainRecord`` (e.g. EG3D's
    'training.volumetric_rendering.renderer.ImportanceRenderer'). Their state is read, never run."""
    PLAIN_CLASSES.add(qualified_name)


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    if not isinstance(storage, torch.storage.TypedStorage):
        raise NetworkPickleError(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or min(size + stride + (int(storage_offset),), default=0) < 0:
        raise NetworkPickleError(f"malformed tensor: size {size}, stride {stride}, offset {storage_offset}")
    untyped, dtype = storage._untyped_storage, storage.dtype
    numel = untyped.nbytes() // dtype.itemsize
    if all(size) and storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) >= numel:
        raise NetworkPickleError(f"tensor of size {size} runs past its storage of {numel} elements")
    tensor = torch.empty((0,), dtype=dtype).set_(untyped, storage_offset, size, stride)
    return tensor.requires_grad_(bool(requires_grad)) if tensor.is_floating_point() else tensor


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    if not isinstance(data, torch.Tensor) or state:
        raise NetworkPickleError("malformed parameter (not a tensor, or a Parameter subclass with state)")
    return nn.Parameter(data, requires_grad=bool(requires_grad))


def _load_storage(data: bytes):
    if not isinstance(data, (bytes, bytearray)):
        raise NetworkPickleError("storage payload is not bytes")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _safe_reconstructor(cls, base, state):
    """copyreg._reconstructor (protocol 0/1 objects), for allowlisted plain classes only."""
    if not (isinstance(cls, type) and issubclass(cls, (PlainRecord, PickledDict))) or base not in (object, dict):
        raise UnsafePickleError(f"copyreg._reconstructor of {cls!r} is not allowed")
    obj = cls.__new__(cls)
    if state is not None and isinstance(obj, PickledDict):
        obj.update(state)
    return obj


def _latin1(text, encoding="latin1"):
    """_codecs.encode as protocol-2 pickles use it for bytes."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"_codecs.encode({encoding!r}) is not allowed")
    return text.encode("latin1")


_NP_MULTIARRAY = (np._core if hasattr(np, "_core") else np.core).multiarray  # numpy 2 / numpy 1
_NUMPY = {"scalar": _NP_MULTIARRAY.scalar, "_reconstruct": _NP_MULTIARRAY._reconstruct}

_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
    ("builtins", "object"): object,
    ("builtins", "dict"): dict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("torch", "device"): torch.device,
    ("torch", "Size"): torch.Size,
    **{(f"numpy.{core}.multiarray", fn): impl for core in ("core", "_core") for fn, impl in _NUMPY.items()},
    **{("torch", str(dt).rpartition(".")[2]): dt for dt in (
        torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8, torch.int8, torch.int16,
        torch.int32, torch.int64, torch.bool)},
}
_DICT_GLOBALS = {("dnnlib.util", "EasyDict"), ("dnnlib", "EasyDict")}
_PY2_NAMES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class SafeUnpickler(pickle.Unpickler):
    """Resolves only allowlisted globals, to stand-ins; ``globals_seen`` records what the file used."""

    def __init__(self, file, source: str = "<pickle>"):
        super().__init__(file)
        self.source = source
        self.globals_seen: set[tuple[str, str]] = set()

    def find_class(self, module, name):
        module = _PY2_NAMES.get(module, module)
        self.globals_seen.add((module, name))
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if (module, name) in _DICT_GLOBALS:
            return _stand_in_class(PickledDict, module, name)
        if f"{module}.{name}" in PLAIN_CLASSES:
            return _stand_in_class(PlainRecord, module, name)
        if (module, name) == ("dnnlib.tflib.network", "Network"):
            raise UnsupportedNetworkError(
                f"{self.source} is a TensorFlow StyleGAN pickle; convert it to PyTorch first with "
                f"NVIDIA's stylegan2-ada-pytorch (legacy.py --source {self.source} --dest converted.pkl)")
        raise UnsafePickleError(
            f"{self.source} references {module}.{name}, which is not on the allowlist of an NVIDIA network "
            f"pickle; refusing to load it (a pickle can run arbitrary code through such globals)")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source} uses persistent ids ({pid!r}): not a plain network pickle "
                                f"(a torch.save file? load it with torch.load(weights_only=True))")


def _unpickle(path: Path) -> tuple[Any, SafeUnpickler]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"network pickle {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head.startswith(b"PK\x03\x04"):
            raise NetworkPickleError(f"{path} is a zip archive (a torch.save checkpoint?), not a network pickle")
        unpickler = SafeUnpickler(f, source=str(path))
        try:
            return unpickler.load(), unpickler
        except NetworkPickleError:
            raise
        except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                RuntimeError) as e:
            if isinstance(e, EOFError) or "truncated" in str(e):
                raise NetworkPickleError(f"{path} ends early: the pickle is truncated (incomplete download?)") from None
            raise NetworkPickleError(f"{path} is not a readable network pickle: {type(e).__name__}: {e}") from None


def read_network_pickle(path: str | Path) -> dict:
    """The pickle's top-level dict: networks as ``PersistentRecord``s, other values as plain data."""
    data, _ = _unpickle(Path(path))
    if not isinstance(data, dict):
        raise NetworkPickleError(f"{path} holds a {type(data).__name__}, not NVIDIA's dict of networks "
                                 f"(G, D, G_ema, ...)")
    return data


# ---------------------------------------------------------------------------------------------
# Building our modules from records.


@dataclass(frozen=True)
class NetworkSpec:
    """How to rebuild a network: NVIDIA's class name and the constructor arguments."""

    nvidia_name: str
    init_args: tuple
    init_kwargs: dict


def build_network(nvidia_name: str, *init_args, **init_kwargs) -> nn.Module:
    """Our registered class for ``nvidia_name`` constructed with NVIDIA's arguments; remembers them
    (``module.nvidia_spec``) for ``save_safetensors``."""
    if nvidia_name not in NETWORK_CLASSES:
        raise UnsupportedNetworkError(f"no implementation of NVIDIA network class {nvidia_name}; "
                                      f"supported: {', '.join(sorted(NETWORK_CLASSES))}")
    module = NETWORK_CLASSES[nvidia_name](*init_args, **init_kwargs)
    module.nvidia_spec = NetworkSpec(nvidia_name, tuple(init_args), dict(init_kwargs))
    return module


def _children(record) -> dict:
    state = record.state if isinstance(record, (PersistentRecord, PlainRecord)) else None
    return state if isinstance(state, dict) else {}


def _tensor_slots(record, prefix: str = "") -> Iterator[tuple[str, dict, str]]:
    """(dotted name, container dict, key) of every parameter and persistent buffer in the record tree."""
    state = _children(record)
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is not None and name not in skip:
                yield prefix + name, state[group], name
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            yield from _tensor_slots(child, f"{prefix}{name}.")


def record_tensors(record) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of a record tree, by NVIDIA's dotted state-dict name."""
    return {name: container[key] for name, container, key in _tensor_slots(record)}


def _load_tensors(module: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise NetworkPickleError(f"{source}: tensors do not match {type(module).__name__}: missing {missing[:8]}"
                                 f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                                 f"{'...' if len(unexpected) > 8 else ''}")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(own[name].shape):
            raise NetworkPickleError(f"{source}: {name} has shape {tuple(t.shape)}, the network built from "
                                     f"its constructor arguments has {tuple(own[name].shape)}")
    with torch.no_grad():
        module.load_state_dict({k: v.detach() for k, v in tensors.items()}, strict=True)


def build_from_record(record: PersistentRecord, source: str = "<pickle>") -> nn.Module:
    """Our module for a persistent record: constructed from its ``_init_args``/``_init_kwargs``,
    then loaded with all its parameters and buffers. In eval mode, like NVIDIA's G_ema."""
    if not isinstance(record, PersistentRecord):
        raise UnsupportedNetworkError(f"{source}: expected a persistent network, got {type(record).__name__}")
    name = record.nvidia_name
    if name not in NETWORK_CLASSES:
        raise UnsupportedNetworkError(f"{source}: network class {name} ('{record.class_name}' defined in "
                                      f"{'an unrecognised module' if name.startswith('?') else name.rpartition('.')[0]})"
                                      f" is not supported; supported: {', '.join(sorted(NETWORK_CLASSES))}")
    state = record.state
    module = build_network(name, *tuple(state.get("_init_args") or ()), **dict(state.get("_init_kwargs") or {}))
    _load_tensors(module, record_tensors(record), f"{source} ({name})")
    restore = getattr(module, "restore_post_init_attributes", None)
    if restore is not None:  # attributes set after construction (EG3D's neural_rendering_resolution)
        restore(state)
    return module.eval()


def load_network_pickle(path: str | Path, key: str = "G_ema") -> nn.Module:
    """The network ``key`` (G_ema, G, D...) of an NVIDIA pickle as our module, without running its code."""
    data = read_network_pickle(path)
    if key not in data:
        raise NetworkPickleError(f"{path} has no {key!r}; it holds {sorted(map(str, data))}")
    return build_from_record(data[key], source=str(path))


# ---------------------------------------------------------------------------------------------
# safetensors.

SAFETENSORS_FORMAT = "guide_ray.nvidia_network/1"


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"constructor argument {value!r} ({type(value).__name__}) cannot be stored as JSON")


def save_safetensors(module: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """All of ``module``'s tensors under NVIDIA's names, plus its class name and constructor
    arguments (JSON metadata) so ``load_safetensors_network`` rebuilds it. Written atomically."""
    spec = getattr(module, "nvidia_spec", None)
    if not isinstance(spec, NetworkSpec):
        raise ValueError(f"{type(module).__name__} was not made by build_network/load_network_pickle, so its "
                         f"constructor arguments are unknown; build it with build_network(nvidia_name, ...)")
    path = Path(path)
    meta = {**(metadata or {}), "format": SAFETENSORS_FORMAT, "nvidia_class": spec.nvidia_name,
            "init_args": json.dumps(_jsonable(spec.init_args)), "init_kwargs": json.dumps(_jsonable(spec.init_kwargs))}
    if hasattr(module, "post_init_attributes"):  # e.g. EG3D's neural_rendering_resolution
        meta["attributes"] = json.dumps(_jsonable(module.post_init_attributes()))
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".safetensors.tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_safetensors_network(path: str | Path) -> nn.Module:
    """A network written by ``save_safetensors``, rebuilt from its metadata."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for other files
        raise NetworkPickleError(f"{path} is not a safetensors file: {e}") from None
    if meta.get("format") != SAFETENSORS_FORMAT:
        raise NetworkPickleError(f"{path} is not a network saved by save_safetensors (format "
                                 f"{meta.get('format')!r}, expected {SAFETENSORS_FORMAT!r})")
    module = build_network(meta["nvidia_class"], *json.loads(meta["init_args"]), **json.loads(meta["init_kwargs"]))
    _load_tensors(module, tensors, str(path))
    if "attributes" in meta:
        module.restore_post_init_attributes(json.loads(meta["attributes"]))
    return module.eval()


# ---------------------------------------------------------------------------------------------
# Export back to NVIDIA's pickle format.


class _NvidiaPickler(pickle._Pickler):
    """Pure-Python pickler writing stand-ins under the global names they replaced (nothing of
    NVIDIA's is imported), and numpy globals spelled as in the original file."""

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[types.FunctionType] = lambda self, obj: self.save_global(obj)  # the base binds its own

    def __init__(self, file, protocol: int, numpy_core: str):
        super().__init__(file, protocol=protocol)
        self.numpy_core = numpy_core

    def save_global(self, obj, name=None):
        target = getattr(obj, "__nvidia_global__", None)
        if target is None:
            module = pickle.whichmodule(obj, name or obj.__qualname__)
            if module.startswith(("numpy.core.", "numpy._core.")):
                target = (f"{self.numpy_core}.{module.split('.', 2)[2]}", name or obj.__qualname__)
        if target is None:
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + f"{target[0]}\n{target[1]}\n".encode("utf-8"))
        self.memoize(obj)


def _protocol(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(2)
    return head[1] if head[:1] == pickle.PROTO else 2


def export_network_pickle(original_path: str | Path, module: nn.Module, out_path: str | Path,
                          key: str = "G_ema") -> Path:
    """Rewrite ``original_path`` with ``module``'s tensors in place of network ``key``'s.

    Everything else (module sources, constructor arguments, other networks such as D/G, training
    options) is written back as read, with the file's pickle protocol. Names, shapes and dtypes
    must match the original network exactly. Written atomically.
    """
    original_path, out_path = Path(original_path), Path(out_path)
    data, unpickler = _unpickle(original_path)
    if not isinstance(data, dict) or key not in data:
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise NetworkPickleError(f"{original_path} has no {key!r}; it holds {keys}")
    slots = {name: (container, k) for name, container, k in _tensor_slots(data[key])}
    new = module.state_dict()
    missing, unexpected = sorted(set(slots) - set(new)), sorted(set(new) - set(slots))
    if missing or unexpected:
        raise NetworkPickleError(f"{type(module).__name__} does not match {key} of {original_path}: "
                                 f"missing {missing[:8]}, unexpected {unexpected[:8]}")
    for name, (container, k) in slots.items():
        old, value = container[k], new[name].detach().cpu()
        if tuple(old.shape) != tuple(value.shape):
            raise NetworkPickleError(f"{name}: shape {tuple(value.shape)} differs from the original's "
                                     f"{tuple(old.shape)} in {original_path}")
        value = value.to(old.dtype).contiguous().clone()
        container[k] = nn.Parameter(value, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) \
            else value.requires_grad_(old.requires_grad)
    # numpy 2 writes numpy._core, which numpy 1 cannot read; numpy 2 still reads numpy.core.
    seen = {m for m, _ in unpickler.globals_seen}
    core = "numpy._core" if any(m.startswith("numpy._core.") for m in seen) else "numpy.core"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, suffix=".pkl.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            _NvidiaPickler(f, protocol=max(2, _protocol(original_path)), numpy_core=core).dump(data)
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out_path
