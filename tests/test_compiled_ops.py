"""Our CUDA kernels (guide_ray.models.nvidia.compiled) against the pure-PyTorch ops (ops.py).

The GPU tests build the extension (ninja, once per cache) and compare forward passes, first and
second-order gradients with the PyTorch ops on random inputs (max |diff| <= 1e-3 in float32), and
check the kernels' own gradients against finite differences (gradcheck, float64). Without CUDA
they are skipped, and the CPU tests check that nothing is built and CPU tensors are refused.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.utils.cpp_extension

from guide_ray import weights
from guide_ray.models.nvidia import compiled

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ACTS = list(compiled.ACTIVATIONS)
TOL = 1e-3


@pytest.fixture
def fresh(monkeypatch):
    """Forget any earlier build attempt, so the test sees the first one."""
    monkeypatch.setattr(compiled, "_tried", False)
    monkeypatch.setattr(compiled, "_ext", None)
    monkeypatch.setattr(compiled, "_failure", None)


def _forbid_build(monkeypatch):
    monkeypatch.setattr(torch.utils.cpp_extension, "load",
                        lambda **kw: pytest.fail("the CUDA extension build was attempted"))


# ------------------------------------------------------------------------------------- no GPU needed


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_unavailable_without_cuda_and_nothing_is_built(fresh, monkeypatch):
    _forbid_build(monkeypatch)
    assert compiled.available() is False
    assert compiled.failure() is None


def test_cpu_tensors_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match=r"compiled.bias_act needs a CUDA tensor x, got cpu.*ops.bias_act"):
        compiled.bias_act(torch.zeros(2, 3), act="lrelu")
    with pytest.raises(ValueError, match=r"compiled.upfirdn2d needs a CUDA tensor x, got cpu.*ops.upfirdn2d"):
        compiled.upfirdn2d(torch.zeros(1, 1, 4, 4), None)


def test_env_switch_disables_without_building(fresh, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv(compiled.ENV_SWITCH, "0")
    _forbid_build(monkeypatch)
    assert compiled.available() is False


def test_build_failure_is_logged_once_and_falls_back(fresh, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.delenv(compiled.ENV_SWITCH, raising=False)
    calls = []

    def broken_load(**kw):
        calls.append(kw)
        raise OSError("CUDA_HOME environment variable is not set")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", broken_load)
    with caplog.at_level(logging.WARNING, logger=compiled.__name__):
        assert compiled.available() is False
        assert compiled.available() is False
    assert len(calls) == 1  # tried once per process
    warned = [r.getMessage() for r in caplog.records if "could not build the CUDA kernels" in r.getMessage()]
    assert len(warned) == 1 and "CUDA_HOME environment variable is not set" in warned[0]
    assert "OSError" in compiled.failure()
    # What would have been built: our sources, into the cache.
    assert all(Path(s).is_file() for s in calls[0]["sources"])
    build_dir = Path(calls[0]["build_directory"])
    assert build_dir.is_relative_to(weights.cache_dir()) and build_dir.name.endswith("-sm90")


def test_pip_ninja_is_put_on_path_when_missing(monkeypatch):
    import ninja

    monkeypatch.setenv("PATH", str(Path(__file__).parent))  # no ninja there
    compiled._ninja_on_path()
    assert os.environ["PATH"].split(os.pathsep)[0] == ninja.BIN_DIR
    assert shutil.which("ninja") is not None


# ----------------------------------------------------------------------------------------- GPU only


@pytest.fixture(scope="module")
def ops():
    from guide_ray.models.nvidia import ops

    if not compiled.available():
        pytest.fail(f"CUDA is present but the extension did not build: {compiled.failure()}")
    return ops


def _pure(fn, *args, **kwargs):
    """Call an ops.py function with the compiled kernels switched off (the PyTorch path)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(compiled.ENV_SWITCH, "0")
        return fn(*args, **kwargs)


def _assert_close(got, want, tol=TOL, what=""):
    if got is None or want is None:  # an input the output does not depend on: zero gradient
        got = torch.zeros(()) if got is None else got.float()
        want = torch.zeros(()) if want is None else want.float()
    assert got.shape == want.shape or got.ndim == 0 or want.ndim == 0, f"{what}: {got.shape} vs {want.shape}"
    diff = (got.float() - want.float()).abs().max().item()
    assert diff <= tol, f"{what}: max |diff| {diff:.3g} > {tol}"


def _grads(out, inputs, grad_out):
    return torch.autograd.grad(out, inputs, grad_out, create_graph=True, allow_unused=True)


BIAS_CASES = [  # (shape, dim, use bias, alpha, gain, clamp)
    ((3, 5, 4, 6), 1, False, None, None, None),
    ((3, 5, 4, 6), 1, True, None, None, None),
    ((3, 5, 4, 6), 1, True, 0.1, 0.7, 0.5),
    ((3, 5, 4, 6), 2, True, None, None, 1.5),
    ((8, 16), 1, True, None, 1.0, None),
]


@needs_cuda
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape,dim,use_b,alpha,gain,clamp", BIAS_CASES)
def test_bias_act_matches_pytorch_with_first_and_second_gradients(ops, act, shape, dim, use_b, alpha, gain, clamp):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.randn(shape, device="cuda", generator=g) * 2).requires_grad_()
    b = torch.randn(shape[dim], device="cuda", generator=g).requires_grad_() if use_b else None
    kw = dict(b=b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
    y = compiled.bias_act(x, **kw)
    y_ref = _pure(ops.bias_act, x, **kw)
    _assert_close(y, y_ref, what="forward")

    inputs = [x] + ([b] if use_b else [])
    dy = torch.randn(shape, device="cuda", generator=g).requires_grad_()
    d = _grads(y, inputs, dy)
    d_ref = _grads(y_ref, inputs, dy)
    for name, a, r in zip(("dx", "db"), d, d_ref):
        _assert_close(a, r, what=name)

    # Second order: differentiate <dx, v> (+ sum(db)) with respect to x, b and dy.
    v = torch.randn(shape, device="cuda", generator=g)

    def second(first):
        s = (first[0] * v).sum() + (first[1].sum() if use_b else 0)
        return torch.autograd.grad(s, inputs + [dy], allow_unused=True)

    names = ["d2/dx"] + (["d2/db"] if use_b else []) + ["d2/ddy"]
    for name, a, r in zip(names, second(d), second(d_ref)):
        _assert_close(a, r, what=name)


@needs_cuda
@pytest.mark.parametrize("act", ACTS)
def test_bias_act_gradients_match_finite_differences(act):
    g = torch.Generator(device="cuda").manual_seed(7)
    x = torch.randn(2, 3, 5, device="cuda", dtype=torch.float64, generator=g).requires_grad_()
    b = torch.randn(3, device="cuda", dtype=torch.float64, generator=g).requires_grad_()
    fn = lambda x, b: compiled.bias_act(x, b, act=act, gain=1.3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@needs_cuda
def test_bias_act_half_precision_matches_pytorch(ops):
    """StyleGAN2's fp16 layers: lrelu, clamp 256, float16. We compute in float32 and round once,
    PyTorch rounds after each op: equal up to a few fp16 ulps, except the clamp mask of dx right at
    the boundary, where the two roundings may disagree (those elements are left out)."""
    g = torch.Generator(device="cuda").manual_seed(1)
    x = (torch.randn(2, 8, 16, 16, device="cuda", generator=g) * 150).half().requires_grad_()
    b = torch.randn(8, device="cuda", generator=g).half().requires_grad_()
    y = compiled.bias_act(x, b, act="lrelu", clamp=256)
    y_ref = _pure(ops.bias_act, x, b, act="lrelu", clamp=256)
    assert y.dtype == torch.float16 and (y_ref.abs() == 256).any()  # the clamp is exercised
    assert ((y - y_ref).float().abs() <= 4e-3 * y_ref.float().abs() + 1e-3).all()
    dy = torch.randn(y.shape, device="cuda", generator=g).half()
    (dx,), (dx_ref,) = _grads(y, [x], dy), _grads(y_ref, [x], dy)
    y_exact = torch.nn.functional.leaky_relu(x.float() + b.float()[:, None, None], 0.2) * 2**0.5
    away = ((y_exact.abs() - 256).abs() > 2).detach()
    _assert_close(dx[away], dx_ref[away], tol=1e-2, what="dx fp16")


@needs_cuda
def test_bias_act_rejects_bad_arguments():
    x = torch.zeros(2, 3, device="cuda")
    with pytest.raises(ValueError, match="unknown act 'gelu'"):
        compiled.bias_act(x, act="gelu")
    with pytest.raises(ValueError, match=r"b must be 1D with x.shape\[dim\] elements; got b \(4,\), x \(2, 3\)"):
        compiled.bias_act(x, torch.zeros(4, device="cuda"))
    with pytest.raises(ValueError, match="clamp must be None or >= 0"):
        compiled.bias_act(x, clamp=-1)


UPFIRDN_CASES = [  # (up, down, padding, flip_filter, filter, gain)
    (1, 1, 0, False, "2d", 1.0),
    (2, 1, [2, 1, 2, 1], False, "2d", 4.0),  # StyleGAN2 upsample2d: [1,3,3,1] filter, gain up^2
    (1, 2, [1, 1, 1, 1], False, "2d", 1.0),  # StyleGAN2 downsample2d
    (1, 1, [1, 2], True, "2d", 2.5),
    (2, 2, [2, -1, 0, 3], False, "1d", 1.0),
    ([2, 1], [1, 3], [-1, 2, 3, -2], True, "1d", 0.5),
    (3, 2, 1, False, "2d", 1.0),
    ([1, 2], 1, 0, True, "none", 2.0),
    (2, [2, 1], [0, 1], False, "sep8", 1.0),  # separable 8-tap filter (StyleGAN3 style)
]


def _filter(kind: str, g: torch.Generator) -> torch.Tensor | None:
    if kind == "2d":
        return torch.randn(4, 3, device="cuda", generator=g)
    if kind == "1d":
        return torch.randn(4, device="cuda", generator=g)
    if kind == "sep8":
        return torch.randn(8, device="cuda", generator=g)
    return None


@needs_cuda
@pytest.mark.parametrize("up,down,padding,flip,kind,gain", UPFIRDN_CASES)
def test_upfirdn2d_matches_pytorch_with_gradients(ops, up, down, padding, flip, kind, gain):
    g = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(2, 3, 11, 9, device="cuda", generator=g).requires_grad_()
    f = _filter(kind, g)
    kw = dict(up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
    y = compiled.upfirdn2d(x, f, **kw)
    # NVIDIA defines f=None as the 1x1 filter [[1]] (gain still applies).
    y_ref = _pure(ops.upfirdn2d, x, torch.ones(1, 1, device="cuda") if f is None else f, **kw)
    _assert_close(y, y_ref, what="forward")

    dy = torch.randn(y.shape, device="cuda", generator=g).requires_grad_()
    (dx,), (dx_ref,) = _grads(y, [x], dy), _grads(y_ref, [x], dy)
    _assert_close(dx, dx_ref, what="dx")
    # dx is linear in dy: its gradient must flow back through our backward op too.
    v = torch.randn(x.shape, device="cuda", generator=g)
    (d2,), (d2_ref,) = (torch.autograd.grad((d * v).sum(), [dy]) for d in (dx, dx_ref))
    _assert_close(d2, d2_ref, what="d2/ddy")


@needs_cuda
@pytest.mark.parametrize("up,down,padding,flip,kind,gain", UPFIRDN_CASES[3:6])
def test_upfirdn2d_gradients_match_finite_differences(up, down, padding, flip, kind, gain):
    g = torch.Generator(device="cuda").manual_seed(5)
    x = torch.randn(1, 2, 6, 5, device="cuda", dtype=torch.float64, generator=g).requires_grad_()
    f = _filter(kind, g)
    fn = lambda x: compiled.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@needs_cuda
def test_upfirdn2d_half_precision_matches_pytorch(ops):
    f = ops.setup_filter([1, 3, 3, 1], device="cuda")
    x = torch.randn(2, 4, 16, 16, device="cuda").half()
    y = compiled.upfirdn2d(x, f, up=2, padding=[2, 1, 2, 1], gain=4)
    assert y.dtype == torch.float16 and y.shape == (2, 4, 32, 32)
    _assert_close(y, _pure(ops.upfirdn2d, x, f, up=2, padding=[2, 1, 2, 1], gain=4), tol=1e-2, what="fp16")


@needs_cuda
def test_upfirdn2d_rejects_bad_arguments():
    x = torch.zeros(1, 1, 4, 4, device="cuda")
    with pytest.raises(ValueError, match="no gradient for the filter f"):
        compiled.upfirdn2d(x, torch.ones(3, 3, device="cuda", requires_grad=True))
    with pytest.raises(ValueError, match=r"smaller than the filter \(7, 7\)"):
        compiled.upfirdn2d(x, torch.ones(7, 7, device="cuda"))
    with pytest.raises(ValueError, match="up must be an int >= 1"):
        compiled.upfirdn2d(x, None, up=0)
