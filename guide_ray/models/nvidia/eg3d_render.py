"""EG3D's cameras and neural volume renderer, written from the paper and NVlabs/eg3d's conventions.

Our own code with the same math (and the same module names, so pickled EG3D generators map onto it):

- cameras: a camera is 25 numbers, the flattened 4x4 cam2world matrix (OpenCV axes: x right, y down,
  z forward) then the flattened 3x3 intrinsics normalised by the image size. ``look_at_camera`` places
  it as NVIDIA's ``LookAtPoseSampler``: on a sphere of ``radius`` around the world origin, at yaw
  ``h`` (azimuth; pi/2 is the +z axis, facing the face) and pitch ``v`` (polar angle from +y, mapped
  through phi = arccos(1 - 2 v / pi)), looking at a pivot, world y up.
- ``RaySampler``: one ray per pixel centre through the normalised intrinsics.
- ``ImportanceRenderer``: stratified depths between ``ray_start`` and ``ray_end`` (or the box's
  entry/exit, 'auto'), the tri-plane features at each point decoded to (sigma, 32 features), composited
  by ``MipRayMarcher2``; then ``depth_resolution_importance`` more depths drawn from the coarse
  weights' PDF and everything composited again.

Randomness is drawn in NVIDIA's order and shapes from torch's global generator (so a seeded run
reproduces theirs); ``rendering_kwargs['deterministic_sampling'] = True`` (our addition) puts the
coarse samples at the middle of their strata and the importance samples at evenly spaced quantiles.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# --- cameras ------------------------------------------------------------------------------------


def fov_to_intrinsics(fov_degrees: float, device=None) -> torch.Tensor:
    """[3, 3] intrinsics normalised by the image size, principal point at the centre; the focal
    length as NVIDIA's ``FOV_to_intrinsics`` computes it (with its constants 3.14159 and 1.414)."""
    focal = float(1 / (math.tan(fov_degrees * 3.14159 / 360) * 1.414))
    return torch.tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]], device=device)


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def cam2world_from_forward(forward: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """[B, 4, 4] pose of cameras at ``origin`` [B, 3] looking along ``forward`` [B, 3], no roll:
    columns right, down (OpenCV's y), forward, with world y up."""
    forward = _normalize(forward)
    world_up = torch.tensor([0.0, 1.0, 0.0], device=origin.device).expand_as(forward)
    right = -_normalize(torch.cross(world_up, forward, dim=-1))
    down = _normalize(torch.cross(forward, right, dim=-1))
    pose = torch.eye(4, device=origin.device).repeat(len(origin), 1, 1)
    pose[:, :3, :3] = torch.stack([right, down, forward], dim=-1)
    pose[:, :3, 3] = origin
    return pose


def look_at_camera(yaw, pitch, lookat, radius: float) -> torch.Tensor:
    """[B, 4, 4] cam2world of cameras at (yaw, pitch) on the sphere of ``radius`` around the origin,
    looking at ``lookat`` [3]; yaw/pitch are floats or [B] tensors (NVIDIA's LookAtPoseSampler with
    zero spread)."""
    lookat = torch.as_tensor(lookat, dtype=torch.float32)
    yaw = torch.as_tensor(yaw, dtype=torch.float32, device=lookat.device).reshape(-1, 1)
    pitch = torch.as_tensor(pitch, dtype=torch.float32, device=lookat.device).reshape(-1, 1)
    pitch = pitch.clamp(1e-5, math.pi - 1e-5)
    phi = torch.arccos(1 - 2 * (pitch / math.pi))
    theta = math.pi - yaw
    origin = torch.cat([radius * torch.sin(phi) * torch.cos(theta), radius * torch.cos(phi),
                        radius * torch.sin(phi) * torch.sin(theta)], dim=1)
    return cam2world_from_forward(lookat - origin, origin)


def camera_params(cam2world: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """[B, 25]: flattened cam2world [B, 4, 4] then intrinsics ([3, 3] shared, or [B, 3, 3])."""
    return torch.cat([cam2world.reshape(-1, 16), intrinsics.expand(len(cam2world), 3, 3).reshape(-1, 9)], dim=1)


# --- rays ---------------------------------------------------------------------------------------


class RaySampler(nn.Module):
    """Camera parameters -> one ray per pixel centre, row-major: origins and unit directions [N, R*R, 3]."""

    def forward(self, cam2world: torch.Tensor, intrinsics: torch.Tensor, resolution: int):
        n, device = len(cam2world), cam2world.device
        centres = torch.arange(resolution, dtype=torch.float32, device=device) * (1 / resolution) + 0.5 / resolution
        v, u = torch.meshgrid(centres, centres, indexing="ij")  # v: row (image y), u: column (image x)
        u, v = u.reshape(1, -1), v.reshape(1, -1)
        fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]
        cx, cy, skew = intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None], intrinsics[:, 0, 1, None]
        y_cam = (v - cy) / fy
        x_cam = (u - cx - skew * y_cam) / fx
        directions_cam = torch.stack([x_cam, y_cam, torch.ones_like(x_cam)], dim=-1)  # at depth 1
        directions = F.normalize(directions_cam @ cam2world[:, :3, :3].transpose(1, 2), dim=-1)
        origins = cam2world[:, None, :3, 3].expand(n, resolution * resolution, 3)
        return origins, directions


def ray_box_limits(origins: torch.Tensor, directions: torch.Tensor, side: float):
    """Where rays enter and leave the axis-aligned cube of side ``side`` centred at the origin
    (slab method), [..., 1] each; rays that miss get (-1, -2)."""
    half = side / 2
    inv = 1 / directions.detach()
    t0 = (-half - origins.detach()) * inv
    t1 = (half - origins.detach()) * inv
    near = torch.minimum(t0, t1)
    far = torch.maximum(t0, t1)
    # NVIDIA's test: the slabs overlap pairwise in (x, y) and then with z.
    xy_hit = (near[..., 0] <= far[..., 1]) & (near[..., 1] <= far[..., 0])
    t_in = torch.maximum(near[..., 0], near[..., 1])
    t_out = torch.minimum(far[..., 0], far[..., 1])
    hit = xy_hit & (t_in <= far[..., 2]) & (near[..., 2] <= t_out)
    t_in = torch.maximum(t_in, near[..., 2])
    t_out = torch.minimum(t_out, far[..., 2])
    t_in = torch.where(hit, t_in, torch.full_like(t_in, -1.0))
    t_out = torch.where(hit, t_out, torch.full_like(t_out, -2.0))
    return t_in[..., None], t_out[..., None]


# --- tri-planes -----------------------------------------------------------------------------------


def plane_coordinates(points: torch.Tensor) -> torch.Tensor:
    """[N, M, 3] points -> [N, 3, M, 2] coordinates on EG3D's three planes: (x, y), (x, z) and (z, x).

    The third plane is (z, x), not (z, y): NVIDIA's plane axes [[0,0,1],[1,0,0],[0,1,0]], inverted and
    applied to row vectors, give (z, x); the released checkpoints were trained with it."""
    x, y, z = points.unbind(-1)
    return torch.stack([torch.stack([x, y], -1), torch.stack([x, z], -1), torch.stack([z, x], -1)], dim=1)


def sample_from_planes(planes: torch.Tensor, points: torch.Tensor, box_warp: float) -> torch.Tensor:
    """Bilinear features of ``planes`` [N, 3, C, H, W] at ``points`` [N, M, 3] -> [N, 3, M, C].

    The box of side ``box_warp`` maps onto the planes' [-1, 1] extent (align_corners=False: the
    plane's corner pixel centres are half a pixel inside); outside it features are zero."""
    n, n_planes, c, h, w = planes.shape
    m = points.shape[1]
    grid = plane_coordinates(points * (2 / box_warp)).reshape(n * n_planes, 1, m, 2)
    features = F.grid_sample(planes.reshape(n * n_planes, c, h, w), grid.float(), mode="bilinear",
                             padding_mode="zeros", align_corners=False)  # [N*3, C, 1, M]
    return features.reshape(n, n_planes, c, m).transpose(2, 3)


# --- compositing ----------------------------------------------------------------------------------


class MipRayMarcher2(nn.Module):
    """The volume rendering equation over sample intervals (MipNeRF style, no cone tracing).

    Interval i lies between samples i and i+1: its colour and density are the endpoints' means,
    density softplus(sigma - 1), opacity alpha_i = 1 - exp(-density_i * delta_i), weight
    w_i = alpha_i * prod_{j<i} (1 - alpha_j + 1e-10). Returns colour in [-1, 1] (after
    ``white_back``), the weighted mean depth (clamped to the samples' range) and the weights."""

    def forward(self, colors, densities, depths, rendering_options):
        if rendering_options["clamp_mode"] != "softplus":
            raise ValueError(f"clamp_mode {rendering_options['clamp_mode']!r} is not supported; EG3D uses 'softplus'")
        deltas = depths[:, :, 1:] - depths[:, :, :-1]
        colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
        densities_mid = F.softplus((densities[:, :, :-1] + densities[:, :, 1:]) / 2 - 1)
        depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
        alpha = 1 - torch.exp(-densities_mid * deltas)
        transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], -2), -2)
        weights = alpha * transmittance[:, :, :-1]
        total = weights.sum(2)
        rgb = (weights * colors_mid).sum(2)
        depth = torch.nan_to_num((weights * depths_mid).sum(2) / total, float("inf"))
        depth = depth.clamp(depths.min(), depths.max())
        if rendering_options.get("white_back", False):
            rgb = rgb + 1 - total
        return rgb * 2 - 1, depth, weights


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n: int, deterministic: bool = False,
               eps: float = 1e-5) -> torch.Tensor:
    """Inverse-transform sampling of ``n`` depths per ray from the piecewise-linear CDF whose k-th
    knot is at ``bins[:, k]`` and whose k-th segment carries ``weights[:, k]`` (+eps) of the mass.
    ``deterministic``: the quantiles linspace(0, 1, n) instead of uniform draws."""
    rays, segments = weights.shape
    pdf = (weights + eps) / (weights + eps).sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)  # [rays, segments + 1]
    if deterministic:
        u = torch.linspace(0, 1, n, device=bins.device).expand(rays, n).contiguous()
    else:
        u = torch.rand(rays, n, device=bins.device)
    upper = torch.searchsorted(cdf, u, right=True)
    lo = (upper - 1).clamp(min=0)
    hi = upper.clamp(max=segments)
    cdf_lo, cdf_hi = cdf.gather(1, lo), cdf.gather(1, hi)
    bin_lo, bin_hi = bins.gather(1, lo), bins.gather(1, hi)
    span = cdf_hi - cdf_lo
    span = torch.where(span < eps, torch.ones_like(span), span)  # an empty segment is never landed in
    return bin_lo + (u - cdf_lo) / span * (bin_hi - bin_lo)


class ImportanceRenderer(nn.Module):
    """Two-pass volume rendering of tri-planes: coarse stratified samples, then importance samples
    drawn from the coarse weights; returns features [N, M, C] in [-1, 1], depth [N, M, 1] and the
    total weight (opacity) [N, M, 1]."""

    def __init__(self):
        super().__init__()
        self.ray_marcher = MipRayMarcher2()

    def forward(self, planes, decoder, ray_origins, ray_directions, rendering_options):
        opts = rendering_options
        deterministic = opts.get("deterministic_sampling", False)
        if opts["ray_start"] == opts["ray_end"] == "auto":
            ray_start, ray_end = ray_box_limits(ray_origins, ray_directions, opts["box_warp"])
            valid = ray_end > ray_start
            if valid.any():  # rays that miss the box get the hits' extent (NVIDIA's fill, kept as is)
                ray_start = torch.where(valid, ray_start, ray_start[valid].min())
                ray_end = torch.where(valid, ray_end, ray_start[valid].max())
        else:
            ray_start, ray_end = opts["ray_start"], opts["ray_end"]
        depths = self.sample_stratified(ray_origins, ray_start, ray_end, opts["depth_resolution"],
                                        opts["disparity_space_sampling"], deterministic)
        colors, densities = self._shade(planes, decoder, ray_origins, ray_directions, depths, opts)

        n_importance = opts["depth_resolution_importance"]
        if n_importance > 0:
            _, _, weights = self.ray_marcher(colors, densities, depths, opts)
            fine = self.sample_importance(depths, weights, n_importance, deterministic)
            colors_f, densities_f = self._shade(planes, decoder, ray_origins, ray_directions, fine, opts)
            depths, order = torch.sort(torch.cat([depths, fine], -2), dim=-2)
            colors = torch.cat([colors, colors_f], -2).gather(-2, order.expand(-1, -1, -1, colors.shape[-1]))
            densities = torch.cat([densities, densities_f], -2).gather(-2, order)
        rgb, depth, weights = self.ray_marcher(colors, densities, depths, opts)
        return rgb, depth, weights.sum(2)

    def _shade(self, planes, decoder, origins, directions, depths, opts):
        """Decoded (features, sigma) [N, M, S, C], [N, M, S, 1] at the given depths [N, M, S, 1]."""
        n, m, s, _ = depths.shape
        points = (origins.unsqueeze(-2) + depths * directions.unsqueeze(-2)).reshape(n, -1, 3)
        dirs = directions.unsqueeze(-2).expand(-1, -1, s, -1).reshape(n, -1, 3)
        out = self.run_model(planes, decoder, points, dirs, opts)
        return out["rgb"].reshape(n, m, s, -1), out["sigma"].reshape(n, m, s, 1)

    def run_model(self, planes, decoder, sample_coordinates, sample_directions, options):
        features = sample_from_planes(planes, sample_coordinates, options["box_warp"])
        out = decoder(features, sample_directions)
        if options.get("density_noise", 0) > 0:
            out["sigma"] = out["sigma"] + torch.randn_like(out["sigma"]) * options["density_noise"]
        return out

    @staticmethod
    def sample_stratified(ray_origins, ray_start, ray_end, depth_resolution: int,
                          disparity_space_sampling: bool = False, deterministic: bool = False):
        """[N, M, D, 1] depths: D evenly spaced knots from start to end (or evenly in disparity),
        each pushed forward by U(0, one spacing), as NVIDIA; ``deterministic``: by half a spacing."""
        n, m, _ = ray_origins.shape
        device = ray_origins.device
        steps = torch.arange(depth_resolution, dtype=torch.float32, device=device) / (depth_resolution - 1)
        shape = (n, m, depth_resolution, 1)

        if deterministic:
            jitter = torch.full(shape, 0.5, device=device)
        elif isinstance(ray_start, torch.Tensor) and not disparity_space_sampling:
            # per-ray limits: NVIDIA's draws are laid out in [D, N, M, 1] memory order
            jitter = torch.rand(depth_resolution, n, m, 1, device=device).permute(1, 2, 0, 3)
        else:
            jitter = torch.rand(shape, device=device)
        t = steps.reshape(1, 1, -1, 1) + jitter / (depth_resolution - 1)  # fractions of the way, [N, M, D, 1]
        if disparity_space_sampling:
            return 1 / (1 / ray_start * (1 - t) + 1 / ray_end * t)
        if isinstance(ray_start, torch.Tensor):  # per-ray limits [N, M, 1]
            start, end = ray_start.unsqueeze(-2), ray_end.unsqueeze(-2)
        else:
            start, end = float(ray_start), float(ray_end)
        return start + t * (end - start)

    @staticmethod
    def sample_importance(depths, weights, n_importance: int, deterministic: bool = False):
        """[N, M, n_importance, 1] depths drawn from the coarse weights (no gradient): the weights are
        smoothed (max over neighbours, then mean of pairs) plus 0.01, and the PDF over the coarse
        samples' midpoints uses the inner ones, as NVIDIA."""
        with torch.no_grad():
            n, m, s, _ = depths.shape
            z = depths.reshape(n * m, s)
            w = weights.reshape(n * m, 1, -1).float()  # s - 1 interval weights
            w = F.avg_pool1d(F.max_pool1d(w, 2, 1, padding=1), 2, 1).squeeze(1) + 0.01
            mids = (z[:, :-1] + z[:, 1:]) / 2
            fine = sample_pdf(mids, w[:, 1:-1], n_importance, deterministic)
        return fine.reshape(n, m, n_importance, 1)
