"""EG3D (Chan et al., CVPR 2022): NVIDIA's ``TriPlaneGenerator`` in our own PyTorch, and ``EG3D``, the
Generator-protocol adapter GUIDE unlearns.

``TriPlaneGenerator`` has NVIDIA's constructor arguments, attributes, methods and state-dict keys
(``backbone``: a StyleGAN2 generator drawing three 32-channel 256x256 planes; ``decoder``: the
OSG MLP; ``renderer``/``ray_sampler``: the volume renderer in eg3d_render.py; ``superresolution``:
the module named by ``rendering_kwargs['superresolution_module']``), so ``ffhqrebalanced512-128.pkl``
and the other released pickles load into it. Two keyword arguments NVIDIA's code does not have make
tiny test networks possible and keep the released configuration by default: ``plane_resolution``
(256) here and ``block_channels`` in the superresolution modules.

GUIDE-specific conventions (KU-VGI/GUIDE, unlearn.py / evaluate_fid.py) live in ``EG3D``.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ..generator import GeneratorBase, straight_through_clamp
from .eg3d_render import ImportanceRenderer, RaySampler, camera_params, fov_to_intrinsics, look_at_camera
from .ops import setup_filter
from .pickle_io import allow_plain_class, register
from .stylegan2 import FullyConnectedLayer, Generator as StyleGAN2Backbone, SynthesisBlock

PLANE_CHANNELS = 32  # features per plane; the backbone draws 3 x 32 channels


class OSGDecoder(nn.Module):
    """Tri-plane features (mean over the planes) -> density and 32 features by a 64-unit MLP; the
    features go through sigmoid * (1 + 2 * 0.001) - 0.001, MipNeRF's widened sigmoid."""

    def __init__(self, n_features, options):
        super().__init__()
        self.hidden_dim = 64
        self.net = nn.Sequential(
            FullyConnectedLayer(n_features, self.hidden_dim, lr_multiplier=options["decoder_lr_mul"]),
            nn.Softplus(),
            FullyConnectedLayer(self.hidden_dim, 1 + options["decoder_output_dim"], lr_multiplier=options["decoder_lr_mul"]),
        )

    def forward(self, sampled_features, ray_directions):
        x = sampled_features.mean(1)  # [N, M, C]
        n, m, c = x.shape
        x = self.net(x.reshape(n * m, c)).reshape(n, m, -1)
        return {"rgb": torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001, "sigma": x[..., :1]}


class SynthesisBlockNoUp(SynthesisBlock):
    """A StyleGAN2 synthesis block that keeps its input's resolution: conv0 and conv1 at
    ``resolution``, the incoming image passed on without upsampling (NVIDIA's superresolution.py)."""

    up = 1

    def __init__(self, *args, architecture="skip", **kwargs):
        if architecture not in ("orig", "skip"):  # NVIDIA's 'resnet' variant upsamples its skip path: it cannot run
            raise ValueError(f"SynthesisBlockNoUp: architecture must be 'orig' or 'skip', got {architecture!r}")
        super().__init__(*args, architecture=architecture, **kwargs)


class _HybridSuperresolution(nn.Module):
    """EG3D's superresolution: the neural rendering (32 features, the first 3 of them RGB) resized
    to ``input_resolution``, then two StyleGAN2 blocks driven by the last w (repeated 3 times), the
    last one at ``img_resolution``; the output is their skip-summed RGB.

    NVIDIA's classes fix w_dim = 512 and the resolutions of the released models (asserting
    ``img_resolution``); here the resolutions follow ``img_resolution`` by the same ratios and
    ``w_dim``/``block_channels`` default to NVIDIA's values, so their pickles build the same network.
    One deliberate difference: NVIDIA's SynthesisBlockNoUp adds its RGB to the input in place, so
    with 2X/4X and no resize their returned ``image_raw`` is overwritten; ours is left intact.
    """

    default_channels: tuple[int, int]  # NVIDIA's (block0, block1) widths
    upsample_first: bool  # block0 a SynthesisBlock (2x up) rather than a SynthesisBlockNoUp
    resize_if_smaller_only: bool  # SuperresolutionHybrid4X resizes only inputs smaller than its input size
    has_resample_filter: bool  # a (never used) 'resample_filter' buffer in NVIDIA's state dict

    def __init__(self, channels, img_resolution, sr_num_fp16_res, sr_antialias, num_fp16_res=4, conv_clamp=None,
                 channel_base=None, channel_max=None, w_dim=512, block_channels=None, **block_kwargs):
        super().__init__()
        del num_fp16_res, conv_clamp, channel_base, channel_max  # ignored, as NVIDIA's
        block_channels = tuple(block_channels or self.default_channels)
        divisor = 4 if self.upsample_first else 2
        if img_resolution % divisor:
            raise ValueError(f"{type(self).__name__}: img_resolution {img_resolution} is not divisible by {divisor}")
        use_fp16 = sr_num_fp16_res > 0
        clamp = 256 if use_fp16 else None
        self.input_resolution = img_resolution // divisor
        self.sr_antialias = sr_antialias
        first = SynthesisBlock if self.upsample_first else SynthesisBlockNoUp
        self.block0 = first(channels, block_channels[0], w_dim=w_dim, resolution=img_resolution // 2, img_channels=3,
                            is_last=False, use_fp16=use_fp16, conv_clamp=clamp, **block_kwargs)
        self.block1 = SynthesisBlock(block_channels[0], block_channels[1], w_dim=w_dim, resolution=img_resolution,
                                     img_channels=3, is_last=True, use_fp16=use_fp16, conv_clamp=clamp, **block_kwargs)
        if self.has_resample_filter:
            self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))

    def forward(self, rgb, x, ws, **block_kwargs):
        ws = ws[:, -1:, :].repeat(1, 3, 1)
        size = self.input_resolution
        if (x.shape[-1] < size) if self.resize_if_smaller_only else (x.shape[-1] != size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=self.sr_antialias)
            rgb = F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False,
                                antialias=self.sr_antialias)
        x, rgb = self.block0(x, rgb, ws, **block_kwargs)
        x, rgb = self.block1(x, rgb, ws, **block_kwargs)
        return rgb


class SuperresolutionHybrid8XDC(_HybridSuperresolution):
    """128 -> 512 (the FFHQ 512 checkpoints)."""

    default_channels, upsample_first = (256, 128), True
    resize_if_smaller_only, has_resample_filter = False, False


class SuperresolutionHybrid8X(_HybridSuperresolution):
    """128 -> 512, narrower."""

    default_channels, upsample_first = (128, 64), True
    resize_if_smaller_only, has_resample_filter = False, True


class SuperresolutionHybrid4X(_HybridSuperresolution):
    """128 -> 256: a block at 128 without upsampling, then one up to 256."""

    default_channels, upsample_first = (128, 64), False
    resize_if_smaller_only, has_resample_filter = True, True


class SuperresolutionHybrid2X(_HybridSuperresolution):
    """64 -> 128: a block at 64 without upsampling, then one up to 128."""

    default_channels, upsample_first = (128, 64), False
    resize_if_smaller_only, has_resample_filter = False, True


SUPERRESOLUTION = {f"training.superresolution.{cls.__name__}": cls for cls in
                   (SuperresolutionHybrid8XDC, SuperresolutionHybrid8X, SuperresolutionHybrid4X, SuperresolutionHybrid2X)}


def superresolution_class(dotted_name: str) -> type[nn.Module]:
    try:
        return SUPERRESOLUTION[dotted_name]
    except KeyError:
        raise ValueError(f"rendering_kwargs['superresolution_module'] = {dotted_name!r} is not one we implement; "
                         f"known: {', '.join(SUPERRESOLUTION)}") from None


class TriPlaneGenerator(nn.Module):
    """NVIDIA's EG3D generator: mapping(z, c) -> ws; synthesis(ws, c) -> dict(image, image_raw,
    image_depth), where c [B, 25] is the camera (cam2world 16 + normalised intrinsics 9)."""

    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, sr_num_fp16_res=0, mapping_kwargs=None,
                 rendering_kwargs=None, sr_kwargs=None, plane_resolution=256, **synthesis_kwargs):
        super().__init__()
        rendering_kwargs = dict(rendering_kwargs or {})
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.renderer = ImportanceRenderer()
        self.ray_sampler = RaySampler()
        self.backbone = StyleGAN2Backbone(z_dim, c_dim, w_dim, img_resolution=plane_resolution,
                                          img_channels=3 * PLANE_CHANNELS, mapping_kwargs=mapping_kwargs,
                                          **synthesis_kwargs)
        sr_class = superresolution_class(rendering_kwargs.get("superresolution_module"))
        self.superresolution = sr_class(channels=PLANE_CHANNELS, img_resolution=img_resolution,
                                        sr_num_fp16_res=sr_num_fp16_res, sr_antialias=rendering_kwargs["sr_antialias"],
                                        w_dim=w_dim, **(sr_kwargs or {}))
        self.decoder = OSGDecoder(PLANE_CHANNELS, {"decoder_lr_mul": rendering_kwargs.get("decoder_lr_mul", 1),
                                                   "decoder_output_dim": PLANE_CHANNELS})
        self.neural_rendering_resolution = 64
        self.rendering_kwargs = rendering_kwargs
        self._last_planes = None

    def post_init_attributes(self) -> dict:
        """The attributes NVIDIA's training sets after construction: the neural rendering resolution
        (128 in ffhqrebalanced512-128.pkl; the constructor says 64) and the rendering options."""
        return {"neural_rendering_resolution": self.neural_rendering_resolution,
                "rendering_kwargs": dict(self.rendering_kwargs)}

    def restore_post_init_attributes(self, state: dict) -> None:
        """Set ``post_init_attributes`` from a pickled generator's state (or saved metadata)."""
        resolution = state.get("neural_rendering_resolution")
        if resolution is not None:
            if not isinstance(resolution, numbers.Integral) or resolution < 1:
                raise ValueError(f"pickled neural_rendering_resolution must be a positive int, got {resolution!r}")
            self.neural_rendering_resolution = int(resolution)
        if isinstance(state.get("rendering_kwargs"), dict):
            self.rendering_kwargs = dict(state["rendering_kwargs"])

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        if self.rendering_kwargs["c_gen_conditioning_zero"]:
            c = torch.zeros_like(c)
        return self.backbone.mapping(z, c * self.rendering_kwargs.get("c_scale", 0), truncation_psi=truncation_psi,
                                     truncation_cutoff=truncation_cutoff, update_emas=update_emas)

    def planes(self, ws, update_emas=False, **synthesis_kwargs):
        """The tri-planes [B, 3, 32, H, W] of ws (the backbone's output, what GUIDE's L2 compares)."""
        planes = self.backbone.synthesis(ws, update_emas=update_emas, **synthesis_kwargs)
        return planes.view(len(planes), 3, PLANE_CHANNELS, planes.shape[-2], planes.shape[-1])

    def render_planes(self, planes, ws, c, neural_rendering_resolution=None, rendering_kwargs=None,
                      **synthesis_kwargs):
        """Volume-render ``planes`` [B, 3, 32, H, W] from cameras c [B, 25] and super-resolve with ws;
        ``rendering_kwargs``: options to use instead of ``self.rendering_kwargs``."""
        options = self.rendering_kwargs if rendering_kwargs is None else rendering_kwargs
        if neural_rendering_resolution is None:
            neural_rendering_resolution = self.neural_rendering_resolution
        else:
            self.neural_rendering_resolution = neural_rendering_resolution  # sticky, as NVIDIA's
        cam2world, intrinsics = c[:, :16].view(-1, 4, 4), c[:, 16:25].view(-1, 3, 3)
        origins, directions = self.ray_sampler(cam2world, intrinsics, neural_rendering_resolution)
        features, depth, _ = self.renderer(planes, self.decoder, origins, directions, options)
        n, size = len(origins), neural_rendering_resolution
        feature_image = features.permute(0, 2, 1).reshape(n, features.shape[-1], size, size).contiguous()
        depth_image = depth.permute(0, 2, 1).reshape(n, 1, size, size)
        rgb_image = feature_image[:, :3]
        sr_kwargs = {k: v for k, v in synthesis_kwargs.items() if k != "noise_mode"}
        image = self.superresolution(rgb_image, feature_image, ws, noise_mode=options["superresolution_noise_mode"],
                                     **sr_kwargs)
        return {"image": image, "image_raw": rgb_image, "image_depth": depth_image}

    def synthesis(self, ws, c, neural_rendering_resolution=None, update_emas=False, cache_backbone=False,
                  use_cached_backbone=False, **synthesis_kwargs):
        if use_cached_backbone and self._last_planes is not None:
            planes = self._last_planes
        else:
            planes = self.planes(ws, update_emas=update_emas, **synthesis_kwargs)
        if cache_backbone:
            self._last_planes = planes
        return self.render_planes(planes, ws, c, neural_rendering_resolution, **synthesis_kwargs)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, neural_rendering_resolution=None,
                update_emas=False, cache_backbone=False, use_cached_backbone=False, **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, c, update_emas=update_emas, neural_rendering_resolution=neural_rendering_resolution,
                              cache_backbone=cache_backbone, use_cached_backbone=use_cached_backbone,
                              **synthesis_kwargs)


# NVIDIA's pickles: TriPlaneGenerator is persistent (built from its constructor arguments); the
# renderer, ray sampler, ray marcher and decoder are plain objects whose state is only read.
register("training.triplane.TriPlaneGenerator", TriPlaneGenerator,
         {"TriPlaneGenerator", "OSGDecoder", "TriPlaneGenerator.synthesis(use_cached_backbone)"})
for _plain in ("training.volumetric_rendering.renderer.ImportanceRenderer",
               "training.volumetric_rendering.ray_sampler.RaySampler",
               "training.volumetric_rendering.ray_marcher.MipRayMarcher2", "training.triplane.OSGDecoder"):
    allow_plain_class(_plain)


# --- GUIDE's cameras ---------------------------------------------------------------------------------
# KU-VGI/GUIDE (unlearn.py, evaluate_fid.py): fov 18.837 deg; radius and pivot read from the pickle as
# rendering_kwargs.get("avg_cam_radius", 2.7) / .get("avg_cam_pivot", [0, 0, 0]). EG3D's pickles store
# those under "avg_camera_radius" / "avg_camera_pivot" ([0, 0, 0.2] for FFHQ), so GUIDE's cameras look
# at the origin from radius 2.7; the pitch is lowered by 0.2 rad for rendering (not for the mapping's
# conditioning camera, which stays at yaw = pitch = pi/2).
GUIDE_FOV_DEG = 18.837
GUIDE_RADIUS = 2.7
GUIDE_PIVOT = (0.0, 0.0, 0.0)
GUIDE_PITCH_OFFSET = -0.2
GUIDE_YAW_RANGE = math.pi / 12
GUIDE_VIEWS = 11


class EG3D(GeneratorBase):
    """The Generator protocol over a ``TriPlaneGenerator`` ``G``, with GUIDE's cameras.

    - ``mapping(z, c)``: c is the mapping's conditioning camera, GUIDE's front camera (yaw = pitch =
      pi/2) when None;
    - ``synthesis(ws, c)``/``render``/``forward``: c is the rendering camera [B, 25] or [1, 25]
      (broadcast), the front view (pitch pi/2 - 0.2) when None; the final (super-resolved) image;
    - ``features(ws)``: the tri-planes [B, 3, 32, H, W] (they do not depend on the camera);
    - ``sample_camera``: yaw pi/2 + U(-pi/12, pi/12), one draw per row, from the given generator;
    - ``evaluation_cameras(n)``: n yaws evenly over [-pi/12, pi/12] (GUIDE's 11 ID views).

    Determinism (our choice, for reproducible targets and metrics): the backbone uses its stored noise
    (``noise_mode='const'``; the official code draws fresh noise each call) and the renderer samples
    depths deterministically (stratum midpoints and evenly spaced PDF quantiles instead of uniform
    draws). Pass ``noise_mode='random'`` and ``deterministic_sampling=False`` for NVIDIA's behaviour.

    ``ffhq_box``: EG3D re-cropped FFHQ (Deep3DFaceRecon's alignment: looser than FFHQ's, face
    centred lower). GUIDE's own code applies FFHQ's ArcFace crop (256 -> [35:223, 32:220]) to EG3D
    images unchanged, i.e. treats the frames as equal; so do we with (0, 0, 1, 1), until the box is
    measured on real EG3D samples.
    """

    def __init__(self, G: TriPlaneGenerator, name: str = "eg3d", *, fov_deg: float = GUIDE_FOV_DEG,
                 radius: float = GUIDE_RADIUS, pivot=GUIDE_PIVOT, pitch_offset: float = GUIDE_PITCH_OFFSET,
                 yaw_range: float = GUIDE_YAW_RANGE, views: int = GUIDE_VIEWS, noise_mode: str = "const",
                 deterministic_sampling: bool = True):
        super().__init__()
        self.name = name
        self.G = G
        self.z_dim, self.w_dim = G.z_dim, G.w_dim
        self.num_ws = G.backbone.num_ws
        self.resolution = G.img_resolution
        self.radius, self.pitch_offset, self.yaw_range, self.views = radius, pitch_offset, yaw_range, views
        self.noise_mode, self.deterministic_sampling = noise_mode, deterministic_sampling
        self.register_buffer("pivot", torch.tensor(pivot, dtype=torch.float32), persistent=False)
        self.register_buffer("intrinsics", fov_to_intrinsics(fov_deg), persistent=False)

    @property
    def w_avg(self) -> torch.Tensor:
        return self.G.backbone.mapping.w_avg

    @property
    def synthesis_net(self) -> nn.Module:  # what LTU fine-tunes: backbone.synthesis, as the official code
        return self.G.backbone.synthesis

    # --- cameras -------------------------------------------------------------------------------------
    def camera(self, yaw: torch.Tensor, pitch: torch.Tensor) -> torch.Tensor:
        """[B, 25] cameras at absolute yaw/pitch [B] (radians; pi/2, pi/2 faces the face)."""
        pose = look_at_camera(yaw.to(self.pivot.device), pitch.to(self.pivot.device), self.pivot, self.radius)
        return camera_params(pose, self.intrinsics)

    def conditioning_camera(self, batch: int = 1) -> torch.Tensor:
        front = torch.full((batch,), math.pi / 2)
        return self.camera(front, front)

    def front_camera(self, batch: int = 1) -> torch.Tensor:
        return self.camera(torch.full((batch,), math.pi / 2), torch.full((batch,), math.pi / 2 + self.pitch_offset))

    def sample_camera(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        yaw = math.pi / 2 + (torch.rand(batch, generator=generator) * 2 - 1) * self.yaw_range
        return self.camera(yaw, torch.full((batch,), math.pi / 2 + self.pitch_offset))

    def evaluation_cameras(self, n: int | None = None) -> torch.Tensor:
        yaw = math.pi / 2 + torch.linspace(-self.yaw_range, self.yaw_range, n or self.views)
        return self.camera(yaw, torch.full_like(yaw, math.pi / 2 + self.pitch_offset))

    # --- the protocol --------------------------------------------------------------------------------
    def mapping(self, z, c=None, truncation_psi: float = 1.0):
        if c is None:
            c = self.conditioning_camera(len(z))
        return self.G.mapping(z, c.to(z.device).expand(len(z), -1), truncation_psi=truncation_psi)

    def _camera_for(self, c, batch: int) -> torch.Tensor:
        if c is None:
            return self.front_camera(batch)
        if c.ndim != 2 or c.shape[1] != 25 or len(c) not in (1, batch):
            raise ValueError(f"{self.name}: cameras must be [1, 25] or [{batch}, 25] (cam2world 16 + intrinsics 9), "
                             f"got {tuple(c.shape)}")
        return c.to(self.device).expand(batch, -1)

    def features(self, ws, c=None):
        return self.G.planes(self.broadcast_ws(ws), noise_mode=self.noise_mode)

    def render(self, ws, c=None):
        """(image, tri-planes) from one forward pass."""
        ws = self.broadcast_ws(ws)
        planes = self.G.planes(ws, noise_mode=self.noise_mode)
        options = {**self.G.rendering_kwargs, "deterministic_sampling": self.deterministic_sampling}
        out = self.G.render_planes(planes, ws, self._camera_for(c, len(ws)), rendering_kwargs=options,
                                   noise_mode=self.noise_mode)
        return straight_through_clamp(out["image"]), planes

    def synthesis(self, ws, c=None):
        return self.render(ws, c)[0]

    def forward(self, z, c=None, truncation_psi: float = 1.0):
        return self.synthesis(self.mapping(z, None, truncation_psi), c)
