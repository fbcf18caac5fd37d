"""Our CUDA kernels for NVIDIA's two custom StyleGAN ops, `bias_act` and `upfirdn2d`.

Same signatures and semantics as the pure-PyTorch ops in `ops.py` (NVIDIA's `bias_act.py` and
`upfirdn2d.py` in stylegan2-ada-pytorch torch_utils/ops), but each op is one kernel launch instead
of a chain of PyTorch ops. The extension (cuda/*.cu, cuda/ops.cpp) is built with ninja by
`torch.utils.cpp_extension.load` the first time `available()` is asked on a machine with CUDA, into
`<cache>/torch_extensions/` (cache: $GUIDE_RAY_CACHE, else ~/.cache/guide_ray); later processes
reuse the build. Without CUDA nothing is built. A failed build (no nvcc, no CUDA_HOME, compiler
error) is logged once as a warning and `available()` answers False, so callers use PyTorch.
Setting GUIDE_RAY_CUDA_OPS=0 also makes `available()` False (forces the PyTorch ops).

`bias_act` and `upfirdn2d` here accept CUDA tensors only (ValueError otherwise); route CPU
tensors to `ops.py`. Gradients: first and second order (as NVIDIA's), none for the filter `f`.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Callable, NamedTuple

import torch

from ... import weights

log = logging.getLogger(__name__)

ENV_SWITCH = "GUIDE_RAY_CUDA_OPS"
_NAME = "guide_ray_nvidia_ops"
_SOURCES = [Path(__file__).parent / "cuda" / s for s in ("ops.cpp", "bias_act.cu", "upfirdn2d.cu")]


class Activation(NamedTuple):
    cuda_id: int  # the Act enum in cuda/bias_act.cu
    def_alpha: float
    def_gain: float
    has_2nd_grad: bool


# NVIDIA's activation table (names, default alpha and gain).
ACTIVATIONS = {
    "linear": Activation(1, 0.0, 1.0, False),
    "relu": Activation(2, 0.0, 2**0.5, False),
    "lrelu": Activation(3, 0.2, 2**0.5, False),
    "tanh": Activation(4, 0.0, 1.0, True),
    "sigmoid": Activation(5, 0.0, 1.0, True),
    "elu": Activation(6, 0.0, 1.0, True),
    "selu": Activation(7, 0.0, 1.0, True),
    "softplus": Activation(8, 0.0, 1.0, True),
    "swish": Activation(9, 0.0, 2**0.5, True),
}

_lock = threading.Lock()
_tried = False
_ext: ModuleType | None = None
_failure: str | None = None


def build_directory() -> Path:
    """Where the extension is built: one folder per Python, torch and GPU architecture (so machines
    sharing a cache do not rebuild over each other), shared by the processes of one machine."""
    major, minor = torch.cuda.get_device_capability()
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}-sm{major}{minor}"
    return weights.cache_dir() / "torch_extensions" / f"{_NAME}-{tag.replace('+', '_')}"


def _ninja_on_path() -> None:
    """torch builds with the `ninja` executable on PATH; the pip package's copy (a dependency)
    is not on it when the venv is not activated (e.g. Ray workers started by path)."""
    if shutil.which("ninja") is None:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _load() -> ModuleType | None:
    global _tried, _ext, _failure
    if _tried:
        return _ext
    with _lock:
        if _tried:
            return _ext
        try:
            from torch.utils.cpp_extension import load

            _ninja_on_path()
            build_dir = build_directory()
            build_dir.mkdir(parents=True, exist_ok=True)
            _ext = load(name=_NAME, sources=[str(s) for s in _SOURCES], build_directory=str(build_dir),
                        extra_cuda_cflags=["--use_fast_math"], verbose=False)
        except Exception as e:  # any build/import failure means: use the PyTorch ops
            _failure = f"{type(e).__name__}: {e}".strip()
            log.warning("guide_ray: could not build the CUDA kernels for bias_act/upfirdn2d (%s); "
                        "using the pure-PyTorch ops instead", _failure)
        _tried = True
    return _ext


def available() -> bool:
    """True when CUDA is present and the extension is built (building it on the first call)."""
    if os.environ.get(ENV_SWITCH) == "0" or not torch.cuda.is_available():
        return False
    return _load() is not None


def failure() -> str | None:
    """Why the build failed (None if it did not fail or was never attempted)."""
    return _failure


def without_kernels(op: Callable) -> Callable:
    """``op`` run with the compiled kernels switched off (ENV_SWITCH), whatever ops.py dispatches to:
    the PyTorch reference path the kernels are checked and timed against."""
    def run(*args, **kwargs):
        os.environ[ENV_SWITCH] = "0"
        try:
            return op(*args, **kwargs)
        finally:
            del os.environ[ENV_SWITCH]
    return run


def _require_extension(x: torch.Tensor, op: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_cuda:
        where = x.device if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"compiled.{op} needs a CUDA tensor x, got {where}; "
                         f"use guide_ray.models.nvidia.ops.{op}, which runs anywhere")
    if not available():
        reason = failure() or f"{ENV_SWITCH}=0 or CUDA unavailable"
        raise RuntimeError(f"compiled.{op}: the CUDA extension is not available ({reason}); "
                           f"use guide_ray.models.nvidia.ops.{op}")


def _sum_except(t: torch.Tensor, dim: int) -> torch.Tensor:
    dims = [i for i in range(t.ndim) if i != dim]
    return t.sum(dims) if dims else t  # sum([]) would reduce every dim


# ------------------------------------------------------------------------------------------ bias_act


class _BiasActArgs(NamedTuple):
    dim: int
    act: Activation
    alpha: float
    gain: float
    clamp: float


class _BiasAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, a: _BiasActArgs):
        ctx.a = a
        ctx.save_for_backward(x, b)
        return _ext.bias_act(x, x, b, 0, a.dim, a.act.cuda_id, a.alpha, a.gain, a.clamp)

    @staticmethod
    def backward(ctx, dy):
        x, b = ctx.saved_tensors
        a = ctx.a
        dx = db = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            dx = _BiasActGrad.apply(dy.contiguous(), x, b, a)
        if ctx.needs_input_grad[1]:
            db = _sum_except(dx, a.dim)
        return dx, db, None


class _BiasActGrad(torch.autograd.Function):
    """dx = dy * gain * act'(x + b), zero where the forward output was clamped."""

    @staticmethod
    def forward(ctx, dy, x, b, a: _BiasActArgs):
        ctx.a = a
        ctx.save_for_backward(dy, x, b)
        return _ext.bias_act(dy, x, b, 1, a.dim, a.act.cuda_id, a.alpha, a.gain, a.clamp)

    @staticmethod
    def backward(ctx, d_dx):
        dy, x, b = ctx.saved_tensors
        a = ctx.a
        d_dx = d_dx.contiguous()
        d_dy = d_x = d_b = None
        if ctx.needs_input_grad[0]:  # dx is linear in dy
            d_dy = _BiasActGrad.apply(d_dx, x, b, a)
        if a.act.has_2nd_grad and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            # Not differentiable again: third-order gradients are unsupported, as in NVIDIA's op.
            d_x = _ext.bias_act(d_dx * dy, x, b, 2, a.dim, a.act.cuda_id, a.alpha, a.gain, a.clamp)
            if ctx.needs_input_grad[2]:
                d_b = _sum_except(d_x, a.dim)
        return d_dy, d_x, d_b, None


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None, clamp: float | None = None) -> torch.Tensor:
    """clamp(gain * act(x + b), -clamp, clamp) with `b` broadcast along `dim`; see NVIDIA's bias_act.

    x: CUDA float tensor of any shape; b: None or 1D with x.shape[dim] elements (cast to x.dtype);
    alpha/gain default per activation (lrelu: alpha 0.2; relu, lrelu, swish: gain sqrt(2));
    clamp: None or >= 0. Returns a contiguous tensor of x's shape and dtype.
    """
    _require_extension(x, "bias_act")
    if act not in ACTIVATIONS:
        raise ValueError(f"bias_act: unknown act {act!r}; known: {', '.join(ACTIVATIONS)}")
    if clamp is not None and clamp < 0:
        raise ValueError(f"bias_act: clamp must be None or >= 0, got {clamp}")
    spec = ACTIVATIONS[act]
    args = _BiasActArgs(dim, spec, float(spec.def_alpha if alpha is None else alpha),
                        float(spec.def_gain if gain is None else gain), float(-1 if clamp is None else clamp))
    if b is None:
        if act == "linear" and args.gain == 1 and args.clamp < 0:
            return x
        b = torch.empty(0, dtype=x.dtype, device=x.device)
    else:
        if b.ndim != 1 or not 0 <= dim < x.ndim or b.shape[0] != x.shape[dim]:
            raise ValueError(f"bias_act: b must be 1D with x.shape[dim] elements; got b {tuple(b.shape)}, "
                             f"x {tuple(x.shape)}, dim {dim}")
        if b.device != x.device:
            raise ValueError(f"bias_act: b is on {b.device} but x on {x.device}")
        b = b.to(x.dtype).contiguous()
    return _BiasAct.apply(x.contiguous(), b, args)


# ----------------------------------------------------------------------------------------- upfirdn2d


def _pair(v, what: str) -> tuple[int, int]:
    xy = (v, v) if isinstance(v, int) else tuple(v)
    if len(xy) != 2 or not all(isinstance(i, int) and i >= 1 for i in xy):
        raise ValueError(f"upfirdn2d: {what} must be an int >= 1 or [x, y] of them, got {v!r}")
    return xy


def _padding(p) -> tuple[int, int, int, int]:
    if isinstance(p, int):
        return p, p, p, p
    p = tuple(p)
    if len(p) == 2:
        return p[0], p[0], p[1], p[1]
    if len(p) != 4 or not all(isinstance(i, int) for i in p):
        raise ValueError(f"upfirdn2d: padding must be an int, [x, y] or [x0, x1, y0, y1], got {p!r}")
    return p


class _UpfirdnArgs(NamedTuple):
    up: tuple[int, int]
    down: tuple[int, int]
    pad: tuple[int, int, int, int]  # x0, x1, y0, y1
    flip: bool
    gain: float


class _Upfirdn2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, f, a: _UpfirdnArgs):
        (upx, upy), (downx, downy), (px0, px1, py0, py1) = a.up, a.down, a.pad
        if f.ndim == 2:
            y = _ext.upfirdn2d(x, f, upx, upy, downx, downy, px0, px1, py0, py1, a.flip, a.gain)
        else:  # separable: a horizontal pass, then a vertical one carrying the whole gain
            y = _ext.upfirdn2d(x, f[None], upx, 1, downx, 1, px0, px1, 0, 0, a.flip, 1.0)
            y = _ext.upfirdn2d(y, f[:, None], 1, upy, 1, downy, 0, 0, py0, py1, a.flip, a.gain)
        ctx.a = a
        ctx.in_hw = x.shape[2:]
        ctx.save_for_backward(f)
        return y

    @staticmethod
    def backward(ctx, dy):
        (f,), a = ctx.saved_tensors, ctx.a
        if not ctx.needs_input_grad[0]:
            return None, None, None
        (upx, upy), (downx, downy), (px0, _, py0, _) = a.up, a.down, a.pad
        (ih, iw), (oh, ow) = ctx.in_hw, dy.shape[2:]
        fh, fw = (f.shape[0], f.shape[-1])
        # The adjoint (NVIDIA's documented backward): the same op with up and down swapped, the
        # filter flipped the other way, and the padding that maps dy back onto x's grid.
        pad = (fw - px0 - 1, iw * upx - ow * downx + px0 - upx + 1,
               fh - py0 - 1, ih * upy - oh * downy + py0 - upy + 1)
        dx = _Upfirdn2d.apply(dy.contiguous(), f, _UpfirdnArgs(a.down, a.up, pad, not a.flip, a.gain))
        return dx, None, None


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up=1, down=1, padding=0, flip_filter: bool = False,
              gain: float = 1) -> torch.Tensor:
    """Upsample (zeros), pad (negative crops), FIR-filter, downsample; see NVIDIA's upfirdn2d.

    x: CUDA [N, C, H, W]; f: 2D [fh, fw], 1D [taps] (separable) or None (identity), no grad;
    up/down: int or [x, y]; padding: int, [x, y] or [x0, x1, y0, y1]; flip_filter False convolves,
    True correlates; gain scales the output. Out size: (H*up + pad0 + pad1 - fh) // down + 1.
    """
    _require_extension(x, "upfirdn2d")
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d: x must be [N, C, H, W], got shape {tuple(x.shape)}")
    if f is None:
        f = torch.ones(1, 1, dtype=torch.float32, device=x.device)
    if f.ndim not in (1, 2) or not f.is_floating_point() or f.device != x.device:
        raise ValueError(f"upfirdn2d: f must be a 1D/2D float tensor on {x.device}, got "
                         f"{f.dtype} {tuple(f.shape)} on {f.device}")
    if f.requires_grad:
        raise ValueError("upfirdn2d: the CUDA op has no gradient for the filter f; use ops.upfirdn2d "
                         "(PyTorch) to differentiate through f, or pass f.detach()")
    args = _UpfirdnArgs(_pair(up, "up"), _pair(down, "down"), _padding(padding), bool(flip_filter), float(gain))
    (upx, upy), (px0, px1, py0, py1) = args.up, args.pad
    fh, fw = f.shape[0], f.shape[-1]
    if x.shape[2] * upy + py0 + py1 < fh or x.shape[3] * upx + px0 + px1 < fw:
        raise ValueError(f"upfirdn2d: x {tuple(x.shape)} upsampled by {args.up} and padded by {args.pad} is "
                         f"smaller than the filter {tuple(f.shape)}")
    return _Upfirdn2d.apply(x.contiguous(), f.to(torch.float32).contiguous(), args)
