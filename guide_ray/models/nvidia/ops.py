"""Pure-PyTorch versions of the custom ops of NVIDIA's StyleGAN2-ADA / StyleGAN3 / EG3D code.

Same names, arguments and semantics as ``torch_utils/ops`` (``bias_act``, ``upfirdn2d``,
``conv2d_resample``) and ``training/networks*.py`` (``modulated_conv2d``), so code and weights
written for NVIDIA's ops compute the same function here. Everything is differentiable, runs on
any device, and computes in the input's dtype (the networks use float32 throughout).

Conventions (NVIDIA's): a filter ``f`` is a float32 tensor ``[fh, fw]`` (non-separable) or
``[taps]`` (separable, applied along x then y) made by ``setup_filter``; ``padding`` is an int,
``[px, py]`` or ``[px0, px1, py0, py1]`` (negative values crop); ``flip_filter`` /
``flip_weight`` = True means correlation (what ``torch.nn.functional.conv2d`` computes),
False means true convolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import compiled


@dataclass(frozen=True)
class Activation:
    func: Callable[[torch.Tensor, float], torch.Tensor]
    def_alpha: float
    def_gain: float


# NVIDIA's activations (torch_utils/ops/bias_act.py); names and default alpha/gain from the one table
# the compiled kernels also use (compiled.ACTIVATIONS).
_FUNCS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "linear": lambda x, a: x,
    "relu": lambda x, a: F.relu(x),
    "lrelu": lambda x, a: F.leaky_relu(x, a),
    "tanh": lambda x, a: torch.tanh(x),
    "sigmoid": lambda x, a: torch.sigmoid(x),
    "elu": lambda x, a: F.elu(x),
    "selu": lambda x, a: F.selu(x),
    "softplus": lambda x, a: F.softplus(x),
    "swish": lambda x, a: torch.sigmoid(x) * x,
}
activation_funcs: dict[str, Activation] = {name: Activation(_FUNCS[name], spec.def_alpha, spec.def_gain)
                                           for name, spec in compiled.ACTIVATIONS.items()}


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None, clamp: float | None = None) -> torch.Tensor:
    """``clamp(act(x + b) * gain, -clamp, clamp)``; ``b`` is broadcast along axis ``dim``.
    On CUDA tensors our compiled kernel (``compiled.py``) runs when it builds; else this code."""
    if x.is_cuda and compiled.available():
        return compiled.bias_act(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
    if act not in activation_funcs:
        raise ValueError(f"bias_act: unknown activation {act!r}; known: {', '.join(activation_funcs)}")
    if clamp is not None and clamp < 0:
        raise ValueError(f"bias_act: clamp must be >= 0 or None, got {clamp}")
    spec = activation_funcs[act]
    if b is not None:
        if b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(f"bias_act: bias of shape {tuple(b.shape)} does not match axis {dim} "
                             f"of x {tuple(x.shape)}")
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, float(spec.def_alpha if alpha is None else alpha))
    gain = float(spec.def_gain if gain is None else gain)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


# ---------------------------------------------------------------------------------------------
# upfirdn2d: upsample (zero insertion), pad, FIR filter, downsample.


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        v = (int(v), int(v))
    if len(v) != 2 or any(int(i) < 1 for i in v):
        raise ValueError(f"{what} must be a positive int or a pair of them, got {v!r}")
    return int(v[0]), int(v[1])


def _padding4(padding) -> tuple[int, int, int, int]:
    """NVIDIA's padding forms -> (x0, x1, y0, y1)."""
    if isinstance(padding, (int, np.integer)):
        return (int(padding),) * 4
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    if len(padding) == 4:
        return tuple(padding)
    raise ValueError(f"padding must be an int, [x, y] or [x0, x1, y0, y1], got {padding!r}")


def _filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """(fw, fh) of a filter from setup_filter (1x1 for None)."""
    if f is None:
        return 1, 1
    if f.ndim not in (1, 2):
        raise ValueError(f"filter must be 1-D (separable) or 2-D, got shape {tuple(f.shape)}")
    return int(f.shape[-1]), int(f.shape[0])


def setup_filter(f, device=torch.device("cpu"), normalize: bool = True, flip_filter: bool = False,
                 gain: float = 1, separable: bool | None = None) -> torch.Tensor:
    """A FIR filter for ``upfirdn2d`` from taps (list/array/tensor), ``[]``-like scalar or None.

    1-D taps become the outer product (non-separable) unless ``separable`` (default: 1-D with at
    least 8 taps); normalized to unit DC gain; total gain ``gain`` spread over the filter's axes.
    """
    f = torch.as_tensor(1 if f is None else f, dtype=torch.float32).clone()
    if f.ndim not in (0, 1, 2) or f.numel() == 0:
        raise ValueError(f"setup_filter: expected a scalar, 1-D or 2-D filter, got shape {tuple(f.shape)}")
    if f.ndim == 0:
        f = f.reshape(1)
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if f.ndim != (1 if separable else 2):
        raise ValueError(f"setup_filter: a 2-D filter cannot be made separable (shape {tuple(f.shape)})")
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    return (f * gain ** (f.ndim / 2)).to(device)


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up=1, down=1, padding=0, flip_filter: bool = False,
              gain: float = 1) -> torch.Tensor:
    """Upsample by zero insertion (``up``-1 zeros after each sample), pad/crop, filter with ``f``
    ('valid' mode, true convolution unless ``flip_filter``), keep every ``down``-th sample.

    Output size per axis: ``(in * up + pad0 + pad1 - taps) // down + 1``. ``f`` None: a 1x1
    filter of ones (``gain`` still applies). On CUDA tensors our compiled kernel runs when it
    builds (not for a filter that needs a gradient: the kernel has none for it).
    """
    if x.is_cuda and not (f is not None and f.requires_grad) and compiled.available():
        return compiled.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d: x must be [N, C, H, W], got {tuple(x.shape)}")
    upx, upy = _pair(up, "up")
    downx, downy = _pair(down, "down")
    px0, px1, py0, py1 = _padding4(padding)
    n, c, h, w = x.shape
    if upx > 1 or upy > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1]).reshape(n, c, h * upy, w * upx)
    x = F.pad(x, [px0, px1, py0, py1])  # negative entries crop
    if f is None:
        return x[:, :, ::downy, ::downx] * gain
    f = f.to(x.dtype) * gain ** (f.ndim / 2)
    if not flip_filter:  # conv2d correlates: flip for a true convolution
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        weight = f[None, None].expand(c, 1, *f.shape)
        return F.conv2d(x, weight, stride=(downy, downx), groups=c)
    x = F.conv2d(x, f[None, None, None, :].expand(c, 1, 1, -1), stride=(1, downx), groups=c)
    return F.conv2d(x, f[None, None, :, None].expand(c, 1, -1, 1), stride=(downy, 1), groups=c)


def filter2d(x, f, padding=0, flip_filter=False, gain=1):
    """Filter with ``f``, padded so the output has the input's size (plus ``padding``)."""
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = _filter_size(f)
    pad = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1):
    """Upsample by ``up`` with interpolation filter ``f`` (output = input size * up, plus ``padding``)."""
    upx, upy = _pair(up, "up")
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = _filter_size(f)
    pad = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=up, padding=pad, flip_filter=flip_filter, gain=gain * upx * upy)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1):
    """Downsample by ``down`` after anti-aliasing with ``f`` (output = input size / down)."""
    downx, downy = _pair(down, "down")
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = _filter_size(f)
    pad = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2,
           py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter, gain=gain)


# ---------------------------------------------------------------------------------------------
# Convolution with resampling.


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1, down: int = 1,
                    padding=0, groups: int = 1, flip_weight: bool = True, flip_filter: bool = False) -> torch.Tensor:
    """2-D convolution with optional up/downsampling, NVIDIA's definition:

        down( filter_f( conv_w( pad( upsample_zeros(x) ) ) ) )

    with ``padding`` given with respect to the upsampled image, the filter ``f`` applied (gain
    up^2) when upsampling and again (anti-aliasing) when downsampling, and padding applied once,
    at the start. Since 'valid' convolutions commute, the filter and the convolution may be run
    in either order; the upsampling path uses a strided transposed convolution (no multiplications
    with inserted zeros).
    """
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d_resample: x and w must be 4-D, got {tuple(x.shape)} and {tuple(w.shape)}")
    if not (isinstance(up, int) and up >= 1 and isinstance(down, int) and down >= 1):
        raise ValueError(f"conv2d_resample: up and down must be positive ints, got {up!r}, {down!r}")
    out_ch, in_per_group, kh, kw = w.shape
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _padding4(padding)
    if up > 1:  # room for the interpolation filter
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:  # room for the anti-aliasing filter
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    if not flip_weight:
        w = w.flip([2, 3])

    if up > 1:
        # conv_transpose2d(stride=up) with the spatially flipped kernel == correlation of the
        # zero-inserted input, padded by k-1 on both sides, with w. The zero insertion of
        # upfirdn2d also leaves up-1 trailing zeros; the rest of the padding is applied after.
        rx0, rx1 = px0 - (kw - 1), px1 - (kw - up)
        ry0, ry1 = py0 - (kh - 1), py1 - (kh - up)
        cx, cy = max(0, min(-rx0, -rx1)), max(0, min(-ry0, -ry1))  # cropping done by the conv
        wt = w.flip([2, 3]).reshape(groups, out_ch // groups, in_per_group, kh, kw).transpose(1, 2)
        wt = wt.reshape(groups * in_per_group, out_ch // groups, kh, kw)
        x = F.conv_transpose2d(x, wt, stride=up, padding=(cy, cx), groups=groups)
        x = upfirdn2d(x, f, padding=[rx0 + cx, rx1 + cx, ry0 + cy, ry1 + cy], gain=up ** 2, flip_filter=flip_filter)
        return upfirdn2d(x, f, down=down, flip_filter=flip_filter) if down > 1 else x
    if down > 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return F.conv2d(x, w, stride=down, groups=groups)
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return F.conv2d(x, w, padding=(py0, px0), groups=groups)
    return F.conv2d(F.pad(x, [px0, px1, py0, py1]), w, groups=groups)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, noise: torch.Tensor | None = None,
                     up: int = 1, down: int = 1, padding=0, resample_filter: torch.Tensor | None = None,
                     demodulate: bool = True, flip_weight: bool = True, fused_modconv: bool = True) -> torch.Tensor:
    """StyleGAN2's modulated convolution (Karras et al. 2020, Eq. 1-3).

    Input channels are scaled by ``styles`` [N, I]; with ``demodulate`` each output channel is
    divided by the norm of its modulated weights (``rsqrt(sum w'^2 + 1e-8)``); ``noise`` is added
    after (demodulated) convolution. ``fused_modconv`` runs one grouped convolution with per-sample
    weights; otherwise activations are scaled before/after a shared convolution (same result).
    """
    batch = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    if x.ndim != 4 or x.shape[1] != in_ch or styles.shape != (batch, in_ch):
        raise ValueError(f"modulated_conv2d: x {tuple(x.shape)} and styles {tuple(styles.shape)} do not "
                         f"match weight {tuple(weight.shape)} (expected [N, {in_ch}, H, W] and [N, {in_ch}])")
    w = None
    dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)  # [N, O, I, kh, kw]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]
    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, down=down, padding=padding,
                            flip_weight=flip_weight)
        if demodulate and noise is not None:
            return torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(batch, -1, 1, 1))
        if demodulate:
            x = x * dcoefs.to(x.dtype).reshape(batch, -1, 1, 1)
        return x + noise.to(x.dtype) if noise is not None else x
    if demodulate:
        w = w * dcoefs.reshape(batch, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    x = conv2d_resample(x, w.reshape(-1, in_ch, kh, kw).to(x.dtype), f=resample_filter, up=up, down=down,
                        padding=padding, groups=batch, flip_weight=flip_weight)
    x = x.reshape(batch, -1, *x.shape[2:])
    return x + noise if noise is not None else x
