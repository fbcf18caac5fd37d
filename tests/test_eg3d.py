"""EG3D in our own PyTorch: the renderer's math by hand, a tiny TriPlaneGenerator end to end (NVIDIA
pickle round trip, GUIDE's LTU with one random camera per step, multi-view ID, same-camera FID)."""

from __future__ import annotations

import copy
import importlib
import math
import pickle
import sys

import pytest
import torch
import torch.nn.functional as F

from guide_ray.config import load_config
from guide_ray.core.evaluate import evaluation_views, generator_stats, identity_similarity
from guide_ray.core.ltu import unlearn
from guide_ray.models import load_generator
from guide_ray.models.generator import Generator
from guide_ray.models.identity import cosine
from guide_ray.models.nvidia import pickle_io
from guide_ray.models.nvidia.eg3d import EG3D, TriPlaneGenerator
from guide_ray.models.nvidia.eg3d_render import (
    ImportanceRenderer, MipRayMarcher2, RaySampler, fov_to_intrinsics, look_at_camera, sample_from_planes, sample_pdf,
)
from tests.tiny import TinyIdentity, TinyPerceptual

RENDERING = dict(image_resolution=64, disparity_space_sampling=False, clamp_mode="softplus",
                 superresolution_module="training.superresolution.SuperresolutionHybrid8XDC",
                 c_gen_conditioning_zero=False, gpc_reg_prob=0.5, c_scale=1.0, superresolution_noise_mode="none",
                 density_reg=0.25, decoder_lr_mul=1.0, sr_antialias=True, depth_resolution=6,
                 depth_resolution_importance=6, ray_start=2.25, ray_end=3.3, box_warp=1,
                 avg_camera_radius=2.7, avg_camera_pivot=[0, 0, 0.2])
# The released FFHQ-512 configuration scaled down: planes 32x32, rendering 16x16, output 64x64.
TINY = dict(z_dim=8, c_dim=25, w_dim=16, img_resolution=64, img_channels=3, sr_num_fp16_res=4,
            mapping_kwargs=dict(num_layers=2), rendering_kwargs=RENDERING,
            sr_kwargs=dict(channel_base=256, channel_max=16, fused_modconv_default="inference_only", block_channels=(8, 4)),
            channel_base=256, channel_max=16, fused_modconv_default="inference_only", num_fp16_res=0, conv_clamp=None,
            plane_resolution=32)


def tiny_triplane(seed: int = 0) -> TriPlaneGenerator:
    """Random weights, with non-zero biases and noise strengths so every path matters."""
    torch.manual_seed(seed)
    G = TriPlaneGenerator(**copy.deepcopy(TINY))
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith(("noise_strength", "bias")) and "mapping" not in name:
                p.copy_(torch.randn_like(p) * 0.3)
        G.backbone.mapping.w_avg.copy_(torch.randn(16) * 0.1)
    G.neural_rendering_resolution = 16
    return G.eval()


@pytest.fixture
def eg3d() -> EG3D:
    return EG3D(tiny_triplane(), name="tiny-eg3d")


# --- cameras and rays ---------------------------------------------------------------------------


@pytest.mark.parametrize("yaw,pitch,pivot", [(math.pi / 2, math.pi / 2, (0, 0, 0.2)), (1.3, 1.2, (0, 0, 0)),
                                             (2.0, 1.9, (0.1, -0.2, 0.3))])
def test_look_at_camera_centre_ray_hits_the_pivot(yaw, pitch, pivot):
    pose = look_at_camera(yaw, pitch, pivot, radius=2.7)
    origin = pose[0, :3, 3]
    assert origin.norm() == pytest.approx(2.7, abs=1e-5)  # on the sphere around the world origin
    torch.testing.assert_close(pose[0, :3, :3] @ pose[0, :3, :3].T, torch.eye(3), atol=1e-6, rtol=0)
    assert pose[0, 1, 0].abs() < 1e-6  # no roll: the camera's x axis is horizontal
    origins, dirs = RaySampler()(pose, fov_to_intrinsics(18.837)[None], 1)  # one pixel: the principal point
    to_pivot = torch.tensor(pivot, dtype=torch.float32) - origins[0, 0]
    miss = to_pivot - (to_pivot @ dirs[0, 0]) * dirs[0, 0]
    assert miss.norm() < 1e-5 and to_pivot @ dirs[0, 0] > 0


def test_camera_conventions():
    front = look_at_camera(math.pi / 2, math.pi / 2, (0, 0, 0), 2.7)[0]
    torch.testing.assert_close(front[:3, 3], torch.tensor([0, 0, 2.7]), atol=1e-6, rtol=0)  # on +z, looking along -z
    torch.testing.assert_close(front[:3, 2], torch.tensor([0.0, 0, -1]), atol=1e-6, rtol=0)
    assert look_at_camera(math.pi / 2 + 0.2, math.pi / 2, (0, 0, 0), 2.7)[0, 0, 3] > 0  # more yaw: towards +x
    assert look_at_camera(math.pi / 2, math.pi / 2 - 0.2, (0, 0, 0), 2.7)[0, 1, 3] > 0  # less pitch: above
    # pitch maps to the polar angle through phi = arccos(1 - 2 v / pi), NVIDIA's sampler
    v = math.pi / 2 - 0.2
    assert look_at_camera(math.pi / 2, v, (0, 0, 0), 1.0)[0, 1, 3] == pytest.approx(1 - 2 * v / math.pi, abs=1e-6)
    # image rows run downwards in the world, columns to the camera's right (OpenCV), pixel centres row-major
    K = fov_to_intrinsics(18.837)
    _, dirs = RaySampler()(front[None], K[None], 4)
    dirs = dirs[0].view(4, 4, 3)
    assert (dirs[0, :, 1] > dirs[-1, :, 1]).all()  # top row looks up (world +y)
    assert (dirs[:, -1, 0] > dirs[:, 0, 0]).all()  # right column looks to +x (seen from +z)
    u = (torch.arange(4) + 0.5) / 4
    expected_x = (u - 0.5) / K[0, 0]
    torch.testing.assert_close(dirs[0, :, 0] / -dirs[0, :, 2], expected_x, atol=1e-6, rtol=0)
    # the 18.837 degrees are the diagonal field of view (to NVIDIA's rounded 3.14159 and 1.414)
    half_diagonal = math.atan(math.sqrt(0.5 ** 2 * 2) / float(K[0, 0]))
    assert math.degrees(2 * half_diagonal) == pytest.approx(18.837, abs=5e-3)


# --- rendering math -------------------------------------------------------------------------------


def test_triplane_sampling_of_known_planes():
    """Planes whose channels hold their own grid coordinates give back each plane's projection:
    (x, y), (x, z) and (z, x) (NVIDIA's third plane), times 2 / box_warp; zero outside the box."""
    h, w = 6, 10
    gx = ((2 * torch.arange(w) + 1) / w - 1).expand(h, w)  # align_corners=False pixel centres
    gy = ((2 * torch.arange(h) + 1) / h - 1)[:, None].expand(h, w)
    planes = torch.stack([gx, gy]).expand(1, 3, 2, h, w).contiguous()
    torch.manual_seed(0)
    points = (torch.rand(1, 50, 3) - 0.5) * 1.6  # inside [-0.8, 0.8]^3, box_warp 2 -> same plane coordinates
    got = sample_from_planes(planes, points, box_warp=2.0)  # [1, 3, 50, 2]
    x, y, z = points[0].unbind(-1)
    for k, (a, b) in enumerate([(x, y), (x, z), (z, x)]):
        torch.testing.assert_close(got[0, k], torch.stack([a, b], -1), atol=1e-5, rtol=0)
    half = sample_from_planes(planes, points * 0.5, box_warp=1.0)  # box_warp scales the coordinates
    torch.testing.assert_close(half, got, atol=1e-5, rtol=0)
    outside = sample_from_planes(planes, torch.tensor([[[1.5, 0.1, 0.2]]]), box_warp=2.0)
    assert outside[0, 0].abs().sum() == 0 and outside[0, 1].abs().sum() == 0  # x beyond the box
    assert outside[0, 2].abs().sum() == 0  # (z, x): x is the plane's second axis, also beyond


def test_ray_marcher_matches_a_hand_composite():
    depths = torch.tensor([1.0, 2.0, 4.0]).view(1, 1, 3, 1)
    sigma = torch.tensor([0.5, 2.5, 1.0]).view(1, 1, 3, 1)
    colors = torch.tensor([0.2, 0.6, 1.0]).view(1, 1, 3, 1)

    def softplus(v):
        return math.log1p(math.exp(v))

    a0 = 1 - math.exp(-softplus((0.5 + 2.5) / 2 - 1) * 1.0)
    a1 = 1 - math.exp(-softplus((2.5 + 1.0) / 2 - 1) * 2.0)
    w0, w1 = a0, a1 * (1 - a0 + 1e-10)
    rgb, depth, weights = MipRayMarcher2()(colors, sigma, depths, {"clamp_mode": "softplus"})
    torch.testing.assert_close(weights.flatten(), torch.tensor([w0, w1]))
    assert float(rgb) == pytest.approx((w0 * 0.4 + w1 * 0.8) * 2 - 1, abs=1e-6)
    assert float(depth) == pytest.approx((w0 * 1.5 + w1 * 3.0) / (w0 + w1), abs=1e-6)
    white, _, _ = MipRayMarcher2()(colors, sigma, depths, {"clamp_mode": "softplus", "white_back": True})
    assert float(white) == pytest.approx((w0 * 0.4 + w1 * 0.8 + 1 - w0 - w1) * 2 - 1, abs=1e-6)
    with pytest.raises(ValueError, match="clamp_mode 'relu'"):
        MipRayMarcher2()(colors, sigma, depths, {"clamp_mode": "relu"})


def test_pdf_sampling_follows_the_weights():
    bins = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    weights = torch.tensor([[1.0, 0.0, 3.0]])
    torch.manual_seed(0)
    s = sample_pdf(bins.expand(200, -1), weights.expand(200, -1), 100).flatten()
    assert abs(float((s < 1).float().mean()) - 0.25) < 0.015  # mass 1/4 in [0, 1]
    assert float(((s > 1.001) & (s < 1.999)).float().mean()) < 1e-3  # none where the weight is 0
    assert float(s[s >= 2].mean()) == pytest.approx(2.5, abs=0.02)  # uniform within a segment
    even = sample_pdf(bins, torch.ones(1, 3), 7, deterministic=True)  # quantiles of a uniform PDF
    torch.testing.assert_close(even, torch.linspace(0, 3, 7)[None], atol=1e-4, rtol=0)


def test_importance_samples_concentrate_where_the_coarse_weights_are():
    depths = torch.linspace(0, 1, 9).view(1, 1, 9, 1)
    weights = torch.zeros(1, 1, 8, 1)
    weights[0, 0, 5] = 1.0
    fine = ImportanceRenderer.sample_importance(depths, weights, 64, deterministic=True).flatten()
    mids = (depths.flatten()[:-1] + depths.flatten()[1:]) / 2
    near = ((fine >= mids[3]) & (fine <= mids[6])).float().mean()
    assert near > 0.9  # a uniform PDF would put half of them there
    torch.manual_seed(0)
    drawn = ImportanceRenderer.sample_importance(depths.expand(50, 1, 9, 1), weights.expand(50, 1, 8, 1), 64)
    assert ((drawn >= mids[3]) & (drawn <= mids[6])).float().mean() > 0.9


def test_stratified_depths_stay_in_their_strata():
    origins = torch.zeros(1, 3, 3)
    torch.manual_seed(0)
    d = ImportanceRenderer.sample_stratified(origins, 2.0, 3.0, 5).squeeze(-1)  # knots every 0.25
    knots = torch.linspace(2, 3, 5)
    assert ((d >= knots) & (d <= knots + 0.25)).all() and not torch.equal(d[0, 0], d[0, 1])
    mid = ImportanceRenderer.sample_stratified(origins, 2.0, 3.0, 5, deterministic=True).squeeze(-1)
    torch.testing.assert_close(mid, (knots + 0.125).expand(1, 3, 5))


# --- the generator --------------------------------------------------------------------------------


def test_tiny_eg3d_forward_shapes_and_state_dict_names():
    G = tiny_triplane()
    names = set(G.state_dict())
    for name in ("backbone.mapping.embed.weight", "backbone.synthesis.b32.torgb.affine.weight",
                 "decoder.net.0.weight", "decoder.net.2.bias", "superresolution.block0.conv0.noise_const",
                 "superresolution.block1.torgb.weight"):
        assert name in names, name
    assert not any(n.startswith(("renderer", "ray_sampler")) for n in names)
    z, c = torch.randn(2, 8), EG3D(G).sample_camera(2, torch.Generator().manual_seed(0))
    out = G(z, c, noise_mode="const")
    assert out["image"].shape == (2, 3, 64, 64)
    assert out["image_raw"].shape == (2, 3, 16, 16) and out["image_depth"].shape == (2, 1, 16, 16)
    depth = out["image_depth"]
    assert (depth >= 2.25).all() and (depth <= 3.3 + 1.05 / 5).all()  # within the sampled depth range
    with pytest.raises(ValueError, match="superresolution_module.*'training.superresolution.Nope'"):
        TriPlaneGenerator(**{**TINY, "rendering_kwargs": {**RENDERING, "superresolution_module":
                                                           "training.superresolution.Nope"}})


@pytest.mark.parametrize("module,resolution,rendered", [("SuperresolutionHybrid2X", 32, 16),
                                                        ("SuperresolutionHybrid4X", 32, 8),
                                                        ("SuperresolutionHybrid8X", 64, 16)])
def test_superresolution_variants(module, resolution, rendered):
    kwargs = {**copy.deepcopy(TINY), "img_resolution": resolution}
    kwargs["rendering_kwargs"]["superresolution_module"] = f"training.superresolution.{module}"
    torch.manual_seed(0)
    G = TriPlaneGenerator(**kwargs).eval()
    G.neural_rendering_resolution = rendered
    sr = G.superresolution
    assert "superresolution.resample_filter" in G.state_dict()  # an (unused) buffer of NVIDIA's 2X/4X/8X
    no_up = module != "SuperresolutionHybrid8X"
    assert sr.input_resolution == resolution // (2 if no_up else 4)
    assert sr.block0.conv0.weight.shape == (8, 32, 3, 3) and sr.block1.resolution == resolution
    assert (sr.block0.resolution == sr.input_resolution) == no_up  # SynthesisBlockNoUp keeps the resolution
    out = G(torch.randn(1, 8), EG3D(G).front_camera(), noise_mode="const")
    assert out["image"].shape == (1, 3, resolution, resolution) and out["image_raw"].shape[-1] == rendered


def test_adapter_protocol_gradients_and_cameras(eg3d):
    assert isinstance(eg3d, Generator) and eg3d.num_ws == eg3d.G.backbone.num_ws
    ws = eg3d.mapping(eg3d.z_from_seed(3)).detach()
    rng = torch.Generator().manual_seed(1)
    c1, c2 = eg3d.sample_camera(1, rng), eg3d.sample_camera(1, rng)
    img1, planes1 = eg3d.render(ws, c1)
    img2, planes2 = eg3d.render(ws, c2)
    assert img1.shape == (1, 3, 64, 64) and planes1.shape == (1, 3, 32, 32, 32)
    assert (img1 - img2).abs().max() > 1e-3  # the view changes the image...
    assert torch.equal(planes1, planes2) and torch.equal(planes1, eg3d.features(ws, c2))  # ...not the planes
    torch.testing.assert_close(eg3d.synthesis(ws, c1), img1)
    torch.testing.assert_close(eg3d.synthesis(ws), eg3d.synthesis(ws, eg3d.front_camera()))  # deterministic
    assert float(img1.detach().min()) >= -1 and float(img1.detach().max()) <= 1

    trainable = {id(p) for p in eg3d.trainable_parameters()}
    assert trainable == {id(p) for p in eg3d.G.backbone.synthesis.parameters()}
    for source in ("image", "planes"):
        eg3d.zero_grad()
        image, planes = eg3d.render(ws, c1)
        (image.square().mean() if source == "image" else planes.square().mean()).backward()
        grads = [p.grad for p in eg3d.G.backbone.synthesis.parameters()]
        assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0, source
        if source == "planes":  # nothing after the backbone is involved
            assert all(p.grad is None for p in eg3d.G.decoder.parameters())
    with pytest.raises(ValueError, match=r"cameras must be \[1, 25\] or \[2, 25\]"):
        eg3d.render(ws.expand(2, -1, -1), torch.zeros(3, 25))


def test_guide_cameras(eg3d):
    def yaw_pitch(cams):
        origin = cams[:, :16].view(-1, 4, 4)[:, :3, 3]
        return torch.atan2(origin[:, 0], origin[:, 2]), origin[:, 1] / origin.norm(dim=1)

    yaw, up = yaw_pitch(eg3d.evaluation_cameras())
    torch.testing.assert_close(yaw, torch.linspace(-math.pi / 12, math.pi / 12, 11), atol=1e-5, rtol=0)
    v = math.pi / 2 - 0.2  # GUIDE's pitch offset -0.2: the camera above the face
    torch.testing.assert_close(up, torch.full((11,), 1 - 2 * v / math.pi), atol=1e-5, rtol=0)
    drawn, _ = yaw_pitch(eg3d.sample_camera(500, torch.Generator().manual_seed(0)))
    assert drawn.abs().max() <= math.pi / 12 + 1e-6 and drawn.std() > 0.1
    again, _ = yaw_pitch(eg3d.sample_camera(500, torch.Generator().manual_seed(0)))
    torch.testing.assert_close(drawn, again)  # reproducible from the generator
    cond = eg3d.conditioning_camera()
    torch.testing.assert_close(cond[0, :16].view(4, 4)[:3, 3], torch.tensor([0, 0, 2.7]), atol=1e-6, rtol=0)
    torch.testing.assert_close(cond[0, 16:], fov_to_intrinsics(18.837).flatten())
    z = torch.randn(2, 8)
    torch.testing.assert_close(eg3d.mapping(z), eg3d.G.mapping(z, cond.expand(2, -1)))


# --- NVIDIA pickles -------------------------------------------------------------------------------

FAKE_NVIDIA_CODE = {
    "torch_utils/__init__.py": "",
    "torch_utils/persistence.py": "def _reconstruct_persistent_obj(meta):\n    raise RuntimeError('never called')\n",
    "dnnlib/__init__.py": "",
    "dnnlib/util.py": "class EasyDict(dict):\n    pass\n",
    "training/__init__.py": "",
    "training/triplane.py": "class OSGDecoder:\n    pass\n",
    "training/volumetric_rendering/__init__.py": "",
    "training/volumetric_rendering/renderer.py": "class ImportanceRenderer:\n    pass\n",
    "training/volumetric_rendering/ray_sampler.py": "class RaySampler:\n    pass\n",
    "training/volumetric_rendering/ray_marcher.py": "class MipRayMarcher2:\n    pass\n",
}
# What the pickled module source of training/triplane.py defines (parsed by the reader, never run).
TRIPLANE_SRC = '''
class TriPlaneGenerator(torch.nn.Module):
    def synthesis(self, ws, c, neural_rendering_resolution=None, update_emas=False, cache_backbone=False,
                  use_cached_backbone=False, **synthesis_kwargs): ...
class OSGDecoder(torch.nn.Module): ...
'''
PLAIN = {"ImportanceRenderer": "training.volumetric_rendering.renderer", "RaySampler":
         "training.volumetric_rendering.ray_sampler", "MipRayMarcher2": "training.volumetric_rendering.ray_marcher",
         "OSGDecoder": "training.triplane"}


def write_eg3d_pickle(path, G: TriPlaneGenerator, init_kwargs: dict, root) -> None:
    """Pickle {'G_ema': G} as NVIDIA's code does: persistent classes as _reconstruct_persistent_obj(meta),
    the renderer, ray sampler, ray marcher and decoder as plain objects, kwargs as EasyDicts."""
    for rel, text in FAKE_NVIDIA_CODE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    sys.path.insert(0, str(root))
    try:
        from dnnlib.util import EasyDict
        from torch_utils.persistence import _reconstruct_persistent_obj

        def easy(value):
            return EasyDict({k: easy(v) for k, v in value.items()}) if isinstance(value, dict) else value

        def as_plain(module):  # an instance of NVIDIA's (here: fake) class with the module's state
            name = type(module).__name__
            obj = object.__new__(getattr(importlib.import_module(PLAIN[name]), name))
            obj.__dict__.update(module.__dict__, _modules={k: as_plain(v) if type(v).__name__ in PLAIN else v
                                                           for k, v in module._modules.items()})
            return obj

        class Pickler(pickle.Pickler):
            def reducer_override(self, obj):
                if not isinstance(obj, torch.nn.Module) or type(obj).__module__.startswith("torch."):
                    return NotImplemented
                state = dict(obj.__dict__)
                state["_modules"] = {k: as_plain(v) if type(v).__name__ in PLAIN else v for k, v in obj._modules.items()}
                top = obj is G
                if top:
                    state["rendering_kwargs"] = easy(state["rendering_kwargs"])
                state["_init_args"], state["_init_kwargs"] = (), easy(init_kwargs) if top else {}
                meta = dict(type="class", version=6, module_src=TRIPLANE_SRC if top else "class Stub: ...",
                            class_name=type(obj).__name__, state=state)
                return _reconstruct_persistent_obj, (meta,)

        with open(path, "wb") as f:
            Pickler(f, protocol=4).dump({"G_ema": G, "training_set_kwargs": easy({"resolution": 64})})
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.split(".")[0] in ("torch_utils", "dnnlib", "training")]:
            del sys.modules[name]


def test_nvidia_pickle_round_trip(tmp_path):
    G = tiny_triplane(seed=4)
    G.rendering_kwargs["depth_resolution"] = 5  # changed after construction, as NVIDIA's scripts do
    path = tmp_path / "ffhqrebalanced-tiny.pkl"
    write_eg3d_pickle(path, G, TINY, tmp_path / "nvidia_code")

    record = pickle_io.read_network_pickle(path)["G_ema"]
    assert record.nvidia_name == "training.triplane.TriPlaneGenerator"
    assert isinstance(record.state["_modules"]["renderer"], pickle_io.PlainRecord)  # plain, as in NVIDIA's files

    loaded = pickle_io.load_network_pickle(path)
    assert type(loaded) is TriPlaneGenerator and not loaded.training
    assert loaded.neural_rendering_resolution == 16 and loaded.rendering_kwargs["depth_resolution"] == 5
    for name, tensor in G.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    z, c = torch.randn(2, 8), EG3D(G).sample_camera(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.manual_seed(7)
        want = G(z, c, truncation_psi=0.7, noise_mode="const")
        torch.manual_seed(7)
        got = loaded(z, c, truncation_psi=0.7, noise_mode="const")
    for key in ("image", "image_raw", "image_depth"):
        torch.testing.assert_close(got[key], want[key], msg=key)
    adapter = load_generator(path, "cpu")  # the EG3D adapter over G_ema
    assert type(adapter) is EG3D and adapter.name == "ffhqrebalanced-tiny"
    ws = adapter.mapping(z)
    torch.testing.assert_close(adapter.synthesis(ws, c), EG3D(G).synthesis(ws, c))
    saved = pickle_io.save_safetensors(loaded, tmp_path / "tiny.safetensors")  # and back, attributes included
    again = load_generator(saved, "cpu")
    assert again.G.neural_rendering_resolution == 16 and again.G.rendering_kwargs["depth_resolution"] == 5
    torch.testing.assert_close(again.synthesis(ws, c), adapter.synthesis(ws, c))
    assert not any(m.split(".")[0] in ("torch_utils", "dnnlib", "training") for m in sys.modules)


# --- GUIDE end to end -----------------------------------------------------------------------------


class PooledIdentity(TinyIdentity):
    """TinyIdentity's 8x8 embedding of an average-pooled image of any size."""

    def embed_generated(self, img, frame=None):
        return super().embed_generated(F.adaptive_avg_pool2d(img, 8), frame)


class RecordingEG3D(EG3D):
    """Remembers the cameras it was asked to draw."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.drawn: list[torch.Tensor] = []

    def sample_camera(self, batch, generator=None):
        camera = super().sample_camera(batch, generator)
        self.drawn.append(camera)
        return camera


def test_unlearn_tiny_eg3d_end_to_end():
    g = RecordingEG3D(tiny_triplane(seed=2), name="tiny-eg3d")
    cfg = load_config(overrides=["distance_units=absolute", "d=3.0", "alpha_max=1.0", "latent_pool=4",
                                 "iterations=3", "lr=1e-2", "n_adj=1", "n_global=1"])
    w_u = g.mapping(g.z_from_seed(5)).detach()
    before = {n: p.detach().clone() for n, p in g.named_parameters()}
    result = unlearn(g, w_u, cfg, PooledIdentity(), TinyPerceptual())

    assert result.status == "finished" and result.steps == 3
    assert set(result.trainable) == {f"G.{n}" for n, _ in g.G.named_parameters() if n.startswith("backbone.synthesis.")}
    for name, p in g.named_parameters():  # mapping, decoder, superresolution: frozen
        if not name.startswith("G.backbone.synthesis."):
            assert torch.equal(p, before[name]), name
    assert any(not torch.equal(p, before[f"G.backbone.synthesis.{n}"])
               for n, p in g.G.backbone.synthesis.named_parameters())

    # one random camera per step, from the sampler's seeded generator
    assert len(g.drawn) == 3 and all(c.shape == (1, 25) for c in g.drawn)
    assert len({float(c[0, 3]) for c in g.drawn}) == 3  # three different camera positions
    # the L2 term compares tri-planes: at step 0 (G_u = G_s) it is the planes' MSE of w_u and w_t
    with torch.no_grad():
        planes_mse = F.mse_loss(result.g_s.features(w_u), result.g_s.features(result.w_t))
        image_mse = F.mse_loss(result.g_s.synthesis(w_u, g.drawn[0]), result.g_s.synthesis(result.w_t, g.drawn[0]))
    assert result.history[0]["l2"] == pytest.approx(float(planes_mse), rel=1e-4)
    assert abs(float(planes_mse) - float(image_mse)) > 1e-3 * float(planes_mse)

    # ID: the mean over GUIDE's 11 views of the per-view cosine
    metric = PooledIdentity()
    views = evaluation_views(g)
    assert len(views) == 11
    with torch.no_grad():  # all views in one batch: one image per camera
        all_views, w_11 = torch.cat(views), w_u.expand(11, -1, -1)
        per_view = cosine(metric.embed_generated(result.g_s.synthesis(w_11, all_views)),
                          metric.embed_generated(g.synthesis(w_11, all_views)))
    assert per_view.std() > 0  # the views differ
    assert float(identity_similarity(metric, result.g_s, g, w_u)[0]) == pytest.approx(float(per_view.mean()), abs=1e-5)


def test_fid_statistics_use_the_same_latents_and_cameras():
    g_s = RecordingEG3D(tiny_triplane(seed=2))
    g_u = copy.deepcopy(g_s)
    with torch.no_grad():
        g_u.G.backbone.synthesis.b32.conv1.weight.mul_(1.5)
    torch.manual_seed(0)
    inception = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12, 4))
    s = generator_stats(g_s, inception, samples=6, seed=3, batch=4)
    u = generator_stats(g_u, inception, samples=6, seed=3, batch=4)
    assert [c.shape[0] for c in g_s.drawn] == [4, 2]
    for a, b in zip(g_s.drawn, g_u.drawn):
        assert torch.equal(a, b)  # the same views for G_s and G_u
    assert len({float(x) for x in torch.cat(g_s.drawn)[:, 3]}) == 6  # a random view per sample
    assert s.fid(u) > 0 and s.fid(generator_stats(g_s, inception, samples=6, seed=3, batch=4)) == pytest.approx(0, abs=1e-6)
