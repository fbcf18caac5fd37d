"""NVIDIA StyleGAN2 in our PyTorch, and the safe NVIDIA network-pickle reader/exporter.

The ops are checked against naive computations written here; the networks against the
StyleGAN2 equations written out by hand; the pickle code on pickles this file writes the way
NVIDIA's ``torch_utils.persistence`` does (``_reconstruct_persistent_obj(meta)`` with the module
source inside), where that source and NVIDIA's reconstruct function would leave a sentinel file
behind if anything ran them. Parity with NVIDIA's own code: benchmarks/nvidia_parity.py.
"""

from __future__ import annotations

import copy
import math
import pickle
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from guide_ray.models import Generator as GeneratorProtocol
from guide_ray.models.nvidia import load_nvidia_generator, ops, pickle_io
from guide_ray.models.nvidia import stylegan2 as sg2

# ---------------------------------------------------------------------------------------------
# ops


def naive_upfirdn2d(x, f, up=1, down=1, pad=(0, 0, 0, 0), flip_filter=False, gain=1.0):
    """Definition, one output pixel at a time: zero-stuff, pad/crop, true convolution, decimate."""
    x, f = x.double().numpy(), f.double().numpy() * gain
    if f.ndim == 1:
        f = np.outer(f, f)  # the separable filter applied along x then y
    n, c, h, w = x.shape
    px0, px1, py0, py1 = pad
    hu, wu = h * up, w * up
    hp, wp = hu + py0 + py1, wu + px0 + px1
    fh, fw = f.shape
    out = np.zeros((n, c, (hp - fh) // down + 1, (wp - fw) // down + 1))

    def padded(i, j):  # value of the upsampled, padded image at (i, j)
        ui, uj = i - py0, j - px0
        if 0 <= ui < hu and 0 <= uj < wu and ui % up == 0 and uj % up == 0:
            return x[:, :, ui // up, uj // up]
        return np.zeros((n, c))

    for oi in range(out.shape[2]):
        for oj in range(out.shape[3]):
            i0, j0 = oi * down, oj * down
            acc = np.zeros((n, c))
            for a in range(fh):
                for b in range(fw):
                    # true convolution: the filter's last tap meets the window's first pixel
                    tap = f[a, b] if flip_filter else f[fh - 1 - a, fw - 1 - b]
                    acc += padded(i0 + a, j0 + b) * tap
            out[:, :, oi, oj] = acc
    return torch.from_numpy(out)


@pytest.mark.parametrize("up,down,pad,flip,separable", [
    (1, 1, (1, 1, 1, 1), False, False), (2, 1, (2, 1, 2, 1), False, False), (1, 2, (1, 2, 0, 1), True, False),
    (2, 2, (0, -1, 1, 0), False, False), (1, 1, (4, 3, -1, 4), True, True), (2, 1, (3, 2, 3, 2), False, True),
])
def test_upfirdn2d_matches_definition(up, down, pad, flip, separable):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 6, generator=g)
    f = torch.rand(8 if separable else 3, *(() if separable else (4,)), generator=g)  # asymmetric taps
    got = ops.upfirdn2d(x, f, up=up, down=down, padding=list(pad), flip_filter=flip, gain=1.7)
    want = naive_upfirdn2d(x, f, up, down, pad, flip, 1.7 ** (f.ndim / 2) if separable else 1.7)
    assert got.shape == want.shape
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_resampling_helpers_keep_dc_and_shapes():
    f = ops.setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and abs(float(f.sum()) - 1) < 1e-6
    x = torch.full((1, 2, 8, 8), 0.7)
    up, down, same = ops.upsample2d(x, f), ops.downsample2d(x, f), ops.filter2d(x, f)
    assert up.shape[-2:] == (16, 16) and down.shape[-2:] == (4, 4) and same.shape[-2:] == (8, 8)
    # away from the zero-padded border a constant stays constant (unit DC gain, up^2 gain for zeros)
    for img in (up[..., 4:-4, 4:-4], down[..., 1:-1, 1:-1], same[..., 2:-2, 2:-2]):
        torch.testing.assert_close(img, torch.full_like(img, 0.7))
    assert ops.setup_filter(list(range(1, 9))).ndim == 1  # >= 8 taps: kept separable, as NVIDIA's


@pytest.mark.parametrize("up,down,groups,flip_weight", [(2, 1, 1, True), (2, 1, 2, False), (1, 2, 1, True),
                                                        (1, 1, 2, False), (2, 2, 1, True)])
def test_conv2d_resample_matches_composition(up, down, groups, flip_weight):
    """NVIDIA's definition: pad once, zero-stuff + filter (gain up^2), convolve, filter + decimate."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 6, 6, generator=g)
    w = torch.randn(6, 4 // groups, 3, 3, generator=g)
    f = ops.setup_filter([1, 3, 3, 1])
    got = ops.conv2d_resample(x, w, f=f, up=up, down=down, padding=1, groups=groups, flip_weight=flip_weight)
    p0, p1 = 1, 1
    if up > 1:
        p0, p1 = p0 + (4 + up - 1) // 2, p1 + (4 - up) // 2
    if down > 1:
        p0, p1 = p0 + (4 - down + 1) // 2, p1 + (4 - down) // 2
    y = naive_upfirdn2d(x, f if up > 1 else torch.ones(1, 1), up=up, pad=(p0, p1, p0, p1), gain=up ** 2)
    kernel = w.double() if flip_weight else w.double().flip([2, 3])
    y = F.conv2d(y, kernel, groups=groups)
    if down > 1:
        y = naive_upfirdn2d(y.float(), f, down=down)
    assert got.shape == y.shape == (2, 6, 6 * up // down, 6 * up // down)
    torch.testing.assert_close(got.double(), y, atol=1e-4, rtol=1e-4)


def test_bias_act_matches_formulas():
    g = torch.Generator().manual_seed(2)
    x, b = torch.randn(2, 3, 4, 5, generator=g) * 3, torch.randn(4, generator=g)
    z = x + b.reshape(1, 1, 4, 1)
    expect = {
        "linear": z, "relu": z.clamp(min=0) * math.sqrt(2), "lrelu": torch.where(z > 0, z, 0.2 * z) * math.sqrt(2),
        "tanh": torch.tanh(z), "sigmoid": 1 / (1 + torch.exp(-z)), "elu": torch.where(z > 0, z, torch.exp(z) - 1),
        "selu": 1.0507009873554805 * torch.where(z > 0, z, 1.6732632423543772 * (torch.exp(z) - 1)),
        "softplus": torch.log1p(torch.exp(z)), "swish": z / (1 + torch.exp(-z)) * math.sqrt(2),
    }
    for act, want in expect.items():
        torch.testing.assert_close(ops.bias_act(x, b, dim=2, act=act), want, atol=1e-5, rtol=1e-5, msg=act)
    torch.testing.assert_close(ops.bias_act(x, b, dim=2, act="lrelu", alpha=0.1, gain=0.5, clamp=1.0),
                               (torch.where(z > 0, z, 0.1 * z) * 0.5).clamp(-1, 1))
    with pytest.raises(ValueError, match="gelu"):
        ops.bias_act(x, act="gelu")


def test_modulated_conv2d_per_sample_and_fused_agree():
    g = torch.Generator().manual_seed(3)
    x, weight = torch.randn(3, 4, 8, 8, generator=g), torch.randn(5, 4, 3, 3, generator=g)
    styles, noise = torch.randn(3, 4, generator=g), torch.randn(3, 1, 8, 8, generator=g)
    want = []
    for i in range(3):  # StyleGAN2 Eq. 1-3 for one sample at a time
        w = weight * styles[i].reshape(1, 4, 1, 1)
        w = w / (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
        want.append(F.conv2d(x[i:i + 1], w, padding=1) + noise[i:i + 1])
    for fused in (True, False):
        got = ops.modulated_conv2d(x, weight, styles, noise=noise, padding=1, fused_modconv=fused)
        torch.testing.assert_close(got, torch.cat(want), atol=1e-5, rtol=1e-5)
    f = ops.setup_filter([1, 3, 3, 1])
    for demod in (True, False):
        a, b = (ops.modulated_conv2d(x, weight, styles, up=2, padding=1, resample_filter=f, demodulate=demod,
                                     flip_weight=False, fused_modconv=fused) for fused in (True, False))
        assert a.shape == (3, 5, 16, 16)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# networks

KW = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2),
          synthesis_kwargs=dict(channel_base=64, channel_max=8, conv_clamp=256))


def randomized(G, seed=0):
    """Random weights everywhere (NVIDIA initialises biases/noise strengths to constants)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(G.parameters()) + [b for n, b in G.named_buffers() if "noise_const" in n or "w_avg" in n]:
            t.add_(torch.randn(t.shape, generator=g) * 0.3)
    return G.eval()


def test_state_dict_names_are_nvidias():
    G = sg2.AdaGenerator(**{**KW, "c_dim": 2})
    keys = set(G.state_dict())
    for k in ("mapping.fc0.weight", "mapping.fc1.bias", "mapping.w_avg", "mapping.embed.weight",
              "synthesis.b4.const", "synthesis.b4.conv1.affine.weight", "synthesis.b4.conv1.noise_const",
              "synthesis.b4.conv1.noise_strength", "synthesis.b8.conv0.weight", "synthesis.b8.torgb.affine.bias",
              "synthesis.b8.resample_filter", "synthesis.b16.conv1.resample_filter", "synthesis.b16.torgb.bias"):
        assert k in keys, k
    assert G.num_ws == 2 * int(math.log2(16)) - 2  # 18 for 1024x1024
    assert G.synthesis.block_resolutions == [4, 8, 16]
    resnet = set(sg2.Generator(**{**KW, "synthesis_kwargs": {"architecture": "resnet", "channel_base": 64}}).state_dict())
    assert "synthesis.b8.skip.weight" in resnet and "synthesis.b8.torgb.weight" not in resnet
    assert "synthesis.b16.torgb.weight" in resnet


def test_mapping_matches_equations_and_truncation():
    G = randomized(sg2.Generator(**{**KW, "c_dim": 3}))
    m = G.mapping
    z, c = torch.randn(4, 8), torch.randn(4, 3)

    def fc(layer, x, act):
        gain = 0.01 / math.sqrt(layer.weight.shape[1]) if act else 1 / math.sqrt(layer.weight.shape[1])
        y = x @ (layer.weight * gain).T + layer.bias * (0.01 if act else 1)
        return F.leaky_relu(y, 0.2) * math.sqrt(2) if act else y

    def norm(v):
        return v / v.square().mean(1, keepdim=True).add(1e-8).sqrt()

    x = torch.cat([norm(z), norm(fc(m.embed, c, act=False))], 1)
    w = fc(m.fc1, fc(m.fc0, x, True), True)
    with torch.no_grad():
        ws = G.mapping(z, c)
        assert ws.shape == (4, G.num_ws, 8)
        torch.testing.assert_close(ws, w[:, None].expand_as(ws))
        trunc = G.mapping(z, c, truncation_psi=0.6, truncation_cutoff=2)
        torch.testing.assert_close(trunc[:, :2], m.w_avg + 0.6 * (ws[:, :2] - m.w_avg))
        torch.testing.assert_close(trunc[:, 2:], ws[:, 2:])
        before = m.w_avg.clone()
        G.train().mapping(z, c)
        assert torch.equal(m.w_avg, before)  # only update_emas=True moves the average
        G.mapping(z, c, update_emas=True)
        torch.testing.assert_close(m.w_avg, w.mean(0).lerp(before, 0.998))


def test_4x4_synthesis_matches_equations():
    G = randomized(sg2.Generator(8, 0, 8, 4, 3, synthesis_kwargs=dict(channel_base=24, channel_max=6)))
    b = G.synthesis.b4
    ws = torch.randn(2, G.num_ws, 8)

    def affine(layer, w):
        return w @ (layer.weight / math.sqrt(8)).T + layer.bias

    img = []
    for i in range(2):
        s = affine(b.conv1.affine, ws[i, 0])
        wt = b.conv1.weight * s.reshape(1, -1, 1, 1)
        wt = wt / wt.square().sum(dim=[1, 2, 3], keepdim=True).add(1e-8).sqrt()
        x = F.conv2d(b.const[None], wt, padding=1) + b.conv1.noise_const * b.conv1.noise_strength
        x = (F.leaky_relu(x + b.conv1.bias.reshape(1, -1, 1, 1), 0.2) * math.sqrt(2)).clamp(-256, 256)
        s = affine(b.torgb.affine, ws[i, 1]) / math.sqrt(6)
        rgb = F.conv2d(x, b.torgb.weight * s.reshape(1, -1, 1, 1)) + b.torgb.bias.reshape(1, -1, 1, 1)
        img.append(rgb.clamp(-256, 256))
    with torch.no_grad():
        torch.testing.assert_close(G.synthesis(ws, noise_mode="const"), torch.cat(img), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("architecture", ["skip", "orig", "resnet"])
def test_synthesis_modes_fused_and_gradients(architecture):
    G = randomized(sg2.AdaGenerator(**{**KW, "synthesis_kwargs": {**KW["synthesis_kwargs"], "architecture": architecture}}))
    ws = G.mapping(torch.randn(2, 8), None)
    with torch.no_grad():
        const = G.synthesis(ws, noise_mode="const")
        assert const.shape == (2, 3, 16, 16)
        torch.testing.assert_close(G.synthesis(ws, noise_mode="const", fused_modconv=False), const,
                                   atol=1e-5, rtol=1e-5)
        assert torch.equal(G.synthesis(ws, noise_mode="const"), const)
        assert not torch.equal(G.synthesis(ws, noise_mode="random"), const)
        assert not torch.equal(G.synthesis(ws, noise_mode="none"), const)
    G.train()  # 'inference_only': unfused in training, as stylegan2-ada's fp32 path
    G.synthesis(ws.detach(), noise_mode="const").square().mean().backward()
    grads = {n: p.grad for n, p in G.synthesis.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["b16.conv1.weight"].abs().sum() > 0 and grads["b4.const"].abs().sum() > 0


def test_adapter_implements_generator_protocol():
    G = randomized(sg2.Generator(**{**KW, "c_dim": 2}))
    gen = sg2.StyleGAN2(G, name="tiny")
    assert isinstance(gen, GeneratorProtocol)
    assert (gen.z_dim, gen.w_dim, gen.num_ws, gen.resolution) == (8, 8, G.num_ws, 16)
    assert gen.w_avg is G.mapping.w_avg
    z = torch.randn(3, 8)
    with torch.no_grad():
        ws = gen.mapping(z, truncation_psi=0.5)
        torch.testing.assert_close(ws, G.mapping(z, torch.zeros(3, 2), truncation_psi=0.5))
        img = gen.synthesis(ws)
        torch.testing.assert_close(img, G.synthesis(ws, noise_mode="const").clamp(-1, 1))
        torch.testing.assert_close(gen.synthesis(ws[:, 0]), img)  # W broadcast to W+
    assert {id(p) for p in gen.trainable_parameters()} == {id(p) for p in G.synthesis.parameters()}
    assert set(gen.state_dict()) == {f"G.{k}" for k in G.state_dict()}  # each tensor once, NVIDIA's names


# ---------------------------------------------------------------------------------------------
# NVIDIA network pickles, written as NVIDIA's persistence writes them

PERSISTENCE_PY = '''
import pathlib
SENTINEL = pathlib.Path({sentinel!r})
def _reconstruct_persistent_obj(meta):
    SENTINEL.write_text("torch_utils.persistence ran")
    raise RuntimeError("NVIDIA's reconstruct function must never be called")
'''
EASYDICT_PY = "class EasyDict(dict):\n    pass\n"
# Module sources as stored in the pickles: markers of NVIDIA's files + a payload that must not run.
ADA_SRC = '''
import pathlib
pathlib.Path({sentinel!r}).write_text("module_src ran")
class MappingNetwork:
    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, skip_w_avg_update=False): pass
class SynthesisNetwork: pass
class Generator: pass
class Discriminator: pass
'''
SG3_SRC = '''
import pathlib
pathlib.Path({sentinel!r}).write_text("module_src ran")
class MappingNetwork:
    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False): pass
class SynthesisBlock:
    def __init__(self, in_channels, fused_modconv_default=True, **layer_kwargs): pass
class Generator: pass
'''


@pytest.fixture
def nvidia_env(tmp_path, monkeypatch):
    """Fake ``torch_utils``/``dnnlib`` packages, importable only while a test pickles."""
    root = tmp_path / "nvidia_code"
    (root / "torch_utils").mkdir(parents=True)
    (root / "dnnlib").mkdir()
    sentinel = tmp_path / "SENTINEL"
    (root / "torch_utils" / "__init__.py").write_text("")
    (root / "torch_utils" / "persistence.py").write_text(PERSISTENCE_PY.format(sentinel=str(sentinel)))
    (root / "dnnlib" / "__init__.py").write_text("")
    (root / "dnnlib" / "util.py").write_text(EASYDICT_PY)
    return root, sentinel


def _forget(prefixes=("torch_utils", "dnnlib")):
    for name in [m for m in sys.modules if m.split(".")[0] in prefixes]:
        del sys.modules[name]


def write_nvidia_pickle(path, data, root, module_src, class_names=None, init_kwargs=None):
    """Pickle ``data`` the way NVIDIA's persistence does: every nn.Module as
    ``_reconstruct_persistent_obj(dict(type, version, module_src, class_name, state))``."""
    sys.path.insert(0, str(root))
    try:
        from dnnlib.util import EasyDict
        from torch_utils.persistence import _reconstruct_persistent_obj

        def easy(value):  # dicts marked "_easydict" -> dnnlib.util.EasyDict, as NVIDIA's kwargs
            if isinstance(value, dict):
                items = {k: easy(v) for k, v in value.items() if k != "_easydict"}
                return EasyDict(items) if value.get("_easydict") else items
            return value

        class NvidiaPickler(pickle.Pickler):
            def reducer_override(self, obj):
                if isinstance(obj, torch.nn.Module):
                    state = dict(obj.__dict__)
                    state["_init_args"], state["_init_kwargs"] = (), easy((init_kwargs or {}).get(id(obj), {}))
                    name = (class_names or {}).get(id(obj), "Generator" if isinstance(obj, sg2.Generator)
                                                   else type(obj).__name__)
                    meta = dict(type="class", version=6, module_src=module_src, class_name=name, state=state)
                    return _reconstruct_persistent_obj, (meta,)
                return NotImplemented

        with open(path, "wb") as f:
            NvidiaPickler(f).dump(easy(data))
    finally:
        sys.path.remove(str(root))
        _forget()


@pytest.fixture
def snapshot(nvidia_env, tmp_path):
    """A stylegan2-ada network-snapshot: G, D, G_ema (EasyDict kwargs), training_set_kwargs."""
    root, sentinel = nvidia_env
    kwargs = {**KW, "mapping_kwargs": {**KW["mapping_kwargs"], "_easydict": True},
              "synthesis_kwargs": {**KW["synthesis_kwargs"], "_easydict": True}}
    clean = {k: ({kk: vv for kk, vv in v.items() if kk != "_easydict"} if isinstance(v, dict) else v)
             for k, v in kwargs.items()}
    G_ema = randomized(sg2.AdaGenerator(**clean), seed=1)
    G = randomized(sg2.AdaGenerator(**clean), seed=2)
    D = sg2.FullyConnectedLayer(4, 1)
    path = tmp_path / "network-snapshot-000123.pkl"
    data = dict(G=G, D=D, G_ema=G_ema, augment_pipe=None,
                training_set_kwargs={"_easydict": True, "path": "ffhq.zip", "xflip": True, "resolution": 16})
    write_nvidia_pickle(path, data, root, ADA_SRC.format(sentinel=str(sentinel)),
                        class_names={id(D): "Discriminator"}, init_kwargs={id(G_ema): kwargs, id(G): kwargs})
    return path, dict(G=G, D=D, G_ema=G_ema), sentinel


def assert_nothing_ran(sentinel):
    assert not sentinel.exists(), sentinel.read_text()
    assert not any(m.split(".")[0] in ("torch_utils", "dnnlib") for m in sys.modules)


def test_load_snapshot_without_running_its_code(snapshot):
    path, nets, sentinel = snapshot
    M = pickle_io.load_network_pickle(path)
    assert_nothing_ran(sentinel)
    assert type(M) is sg2.AdaGenerator and M.nvidia_spec.nvidia_name == "training.networks.Generator"
    ref = nets["G_ema"]
    assert set(M.state_dict()) == set(ref.state_dict())
    assert all(torch.equal(M.state_dict()[k], v) for k, v in ref.state_dict().items())
    z = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(M.mapping(z, None, truncation_psi=0.7), ref.mapping(z, None, truncation_psi=0.7))
        torch.testing.assert_close(M(z, None, noise_mode="const"), ref(z, None, noise_mode="const"))
    G = pickle_io.load_network_pickle(path, key="G")
    assert torch.equal(G.synthesis.b4.const, nets["G"].synthesis.b4.const)

    data = pickle_io.read_network_pickle(path)
    assert data["training_set_kwargs"] == {"path": "ffhq.zip", "xflip": True, "resolution": 16}
    assert data["training_set_kwargs"].xflip is True  # EasyDict attribute access
    assert data["D"].class_name == "Discriminator" and data["augment_pipe"] is None
    assert "module_src ran" in data["G_ema"].module_src  # kept as inert text
    assert_nothing_ran(sentinel)


def test_networks_stylegan2_flavour(nvidia_env, tmp_path):
    """stylegan3/eg3d repos: synthesis kwargs flat in the Generator's kwargs, other defaults."""
    root, sentinel = nvidia_env
    kwargs = dict(z_dim=8, c_dim=2, w_dim=8, img_resolution=8, img_channels=3, mapping_kwargs={"num_layers": 2},
                  channel_base=32, channel_max=8, fused_modconv_default="inference_only")
    G = randomized(sg2.Generator(**kwargs))
    write_nvidia_pickle(tmp_path / "sg2.pkl", dict(G_ema=G), root, SG3_SRC.format(sentinel=str(sentinel)),
                        init_kwargs={id(G): kwargs})
    M = pickle_io.load_network_pickle(tmp_path / "sg2.pkl")
    assert_nothing_ran(sentinel)
    assert type(M) is sg2.Generator and M.synthesis.b8.conv1.conv_clamp == 256  # networks_stylegan2 default
    z, c = torch.randn(2, 8), torch.randn(2, 2)
    with torch.no_grad():
        torch.testing.assert_close(M(z, c, noise_mode="const"), G(z, c, noise_mode="const"))


def test_unknown_network_class(nvidia_env, tmp_path, snapshot):
    path, _, sentinel = snapshot
    with pytest.raises(pickle_io.UnsupportedNetworkError, match=r"training\.networks\.Discriminator.*supported:.*"
                       r"training\.networks\.Generator"):
        pickle_io.load_network_pickle(path, key="D")
    root, _ = nvidia_env
    G = sg2.Generator(**KW)
    write_nvidia_pickle(tmp_path / "other.pkl", dict(G_ema=G), root, "class Generator: pass\n")
    with pytest.raises(pickle_io.UnsupportedNetworkError, match="'Generator' defined in an unrecognised module"):
        pickle_io.load_network_pickle(tmp_path / "other.pkl")
    assert_nothing_ran(sentinel)


@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "eval"), ("posix", "system"),
                                         ("subprocess", "call")])
def test_code_executing_globals_are_refused(tmp_path, module, name):
    target = tmp_path / "PWNED"
    arg = f"open({str(target)!r}, 'w')" if name == "eval" else f"touch {target}"
    payload = f"c{module}\n{name}\n(V{arg}\ntR.".encode()
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    with pytest.raises(pickle_io.UnsafePickleError, match=rf"evil\.pkl references {module}\.{name}"):
        pickle_io.read_network_pickle(path)
    assert not target.exists()
    # the same payload hidden inside an otherwise valid snapshot-like dict
    path.write_bytes(b"\x80\x04}(VG_ema\n" + payload[:-1] + b"u.")
    with pytest.raises(pickle_io.UnsafePickleError):
        pickle_io.load_network_pickle(path)
    assert not target.exists()


def test_broken_files_name_the_problem(tmp_path, snapshot):
    path, _, _ = snapshot
    text = tmp_path / "notes.pkl"
    text.write_text("just some text\n")
    with pytest.raises(pickle_io.NetworkPickleError, match="notes.pkl is not a readable network pickle"):
        pickle_io.load_network_pickle(text)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(pickle_io.NetworkPickleError, match="cut.pkl ends early: the pickle is truncated"):
        pickle_io.load_network_pickle(cut)
    with pytest.raises(pickle_io.NetworkPickleError, match=r"has no 'G_avg'; it holds \['D', 'G', 'G_ema', "):
        pickle_io.load_network_pickle(path, key="G_avg")
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        pickle_io.load_network_pickle(tmp_path / "missing.pkl")


def _strip_tensors(value):
    """The non-tensor content of a record tree, comparable with ==."""
    if isinstance(value, (pickle_io.PersistentRecord, pickle_io.PlainRecord)):
        return (type(value).__name__, _strip_tensors(value.meta if hasattr(value, "meta") else value.state))
    if isinstance(value, torch.Tensor):
        return ("tensor", type(value).__name__, value.dtype, tuple(value.shape), value.requires_grad)
    if isinstance(value, dict):
        return (type(value).__name__, {k: _strip_tensors(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return type(value)(_strip_tensors(v) for v in value)
    return value


def test_export_substitutes_only_the_network_tensors(snapshot, tmp_path):
    path, nets, sentinel = snapshot
    M = pickle_io.load_network_pickle(path)
    with torch.no_grad():
        M.synthesis.b8.conv0.weight.add_(1.0)
        M.mapping.w_avg.mul_(-1)
    out = pickle_io.export_network_pickle(path, M, tmp_path / "out" / "unlearned.pkl")
    before, after = pickle_io.read_network_pickle(path), pickle_io.read_network_pickle(out)
    assert_nothing_ran(sentinel)
    new = pickle_io.record_tensors(after["G_ema"])
    assert set(new) == set(M.state_dict())
    assert all(torch.equal(new[k], v) for k, v in M.state_dict().items())
    assert not torch.equal(new["synthesis.b8.conv0.weight"], nets["G_ema"].synthesis.b8.conv0.weight)
    assert isinstance(new["synthesis.b8.conv0.weight"], torch.nn.Parameter)
    assert after["G_ema"].module_src == before["G_ema"].module_src
    assert _strip_tensors(after) == _strip_tensors(before)  # every non-tensor field, every key
    for key in ("G", "D"):
        old_t, new_t = pickle_io.record_tensors(before[key]), pickle_io.record_tensors(after[key])
        assert all(torch.equal(new_t[k], v) for k, v in old_t.items())
    assert type(after["training_set_kwargs"]).__name__ == "EasyDict"
    M2 = pickle_io.load_network_pickle(out)
    z = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(M2(z, None, noise_mode="const"), M(z, None, noise_mode="const"))

    class NvidiaNames(pickle.Unpickler):  # what NVIDIA's loader resolves, by name
        seen = set()

        def find_class(self, module, name):
            self.seen.add(f"{module}.{name}")
            if (module, name) == ("torch_utils.persistence", "_reconstruct_persistent_obj"):
                return lambda meta: ("persistent", meta["class_name"])
            if (module, name) == ("dnnlib.util", "EasyDict"):
                return dict
            return super().find_class(module, name)

    with open(out, "rb") as f:
        plain = NvidiaNames(f).load()
    assert plain["G_ema"] == ("persistent", "Generator") and plain["D"] == ("persistent", "Discriminator")
    assert not any("guide_ray" in s for s in NvidiaNames.seen)
    wrong = copy.deepcopy(M)
    wrong.synthesis.b4.register_buffer("extra", torch.zeros(1))
    with pytest.raises(pickle_io.NetworkPickleError, match="unexpected.*synthesis.b4.extra"):
        pickle_io.export_network_pickle(path, wrong, tmp_path / "bad.pkl")
    assert not (tmp_path / "bad.pkl").exists()


def test_safetensors_round_trip(snapshot, tmp_path):
    path, _, _ = snapshot
    M = pickle_io.load_network_pickle(path)
    out = pickle_io.save_safetensors(M, tmp_path / "g.safetensors", {"source": path.name})
    M2 = pickle_io.load_safetensors_network(out)
    assert type(M2) is sg2.AdaGenerator and M2.nvidia_spec == M.nvidia_spec
    assert all(torch.equal(M2.state_dict()[k], v) for k, v in M.state_dict().items())
    z = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(M2(z, None, noise_mode="const"), M(z, None, noise_mode="const"))
    built = pickle_io.build_network("training.networks_stylegan2.Generator", **{**KW, "c_dim": 1})
    again = pickle_io.load_safetensors_network(pickle_io.save_safetensors(built, tmp_path / "b.safetensors"))
    assert type(again) is sg2.Generator and again.c_dim == 1
    gen = load_nvidia_generator(out)
    assert gen.name == "g" and isinstance(gen, GeneratorProtocol)
    torch.testing.assert_close(gen.w_avg, M.mapping.w_avg)
    assert load_nvidia_generator(path).resolution == 16
    with pytest.raises(pickle_io.UnsupportedNetworkError, match="Discriminator .* is not supported"):
        load_nvidia_generator(path, key="D")
    with pytest.raises(ValueError, match="constructor arguments are unknown"):
        pickle_io.save_safetensors(sg2.Generator(**KW), tmp_path / "x.safetensors")
    with pytest.raises(pickle_io.NetworkPickleError, match="is not a safetensors file"):
        pickle_io.load_safetensors_network(path)


def test_a_run_checkpoint_exports_back_to_the_users_pickle(snapshot, tmp_path):
    """The user's path: load_generator(pkl) -> (LTU writes checkpoint.safetensors) -> `export`."""
    from guide_ray import cli
    from guide_ray.models.checkpoint import save_trainable
    from guide_ray.models import load_generator

    path, nets, sentinel = snapshot
    gen = load_generator(path, "cpu")
    assert isinstance(gen, sg2.StyleGAN2) and gen.name == path.stem
    trained = {name: p.detach() + 0.5 for name, p in gen.named_parameters() if name.startswith("G.synthesis.")}
    ckpt = save_trainable(tmp_path / "run" / "checkpoint.safetensors", trained, gen.name)
    assert cli.main(["export", "--generator", str(path), "--checkpoint", str(ckpt),
                     "--out", str(tmp_path / "G_u.pkl")]) == 0
    assert cli.main(["export", "--generator", str(path), "--checkpoint", str(ckpt),
                     "--out", str(tmp_path / "G_u.safetensors")]) == 0
    for exported in (tmp_path / "G_u.pkl", tmp_path / "G_u.safetensors"):
        g_u = load_generator(exported, "cpu")
        tensors = g_u.G.state_dict()
        for name, value in trained.items():
            assert torch.equal(tensors[name.removeprefix("G.")], value), (exported, name)
        torch.testing.assert_close(g_u.w_avg, nets["G_ema"].mapping.w_avg)  # untouched by LTU
    g_u = load_generator(tmp_path / "G_u.pkl", "cpu")
    assert not torch.equal(g_u.synthesis(gen.w_avg[None]), gen.synthesis(gen.w_avg[None]))
    assert cli.main(["export", "--generator", str(path), "--checkpoint", str(ckpt),
                     "--out", str(tmp_path / "G_u.onnx")]) == 2
    assert_nothing_ran(sentinel)
