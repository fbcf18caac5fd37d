"""Un-identifying Face On latent space (UFO, Sec. 3.2), the latent distance scale, and a target
that is a face.

Latents are W+ tensors [B, num_ws, w_dim]; norms are over the whole (num_ws x w_dim) tensor of
each sample, as the official code's ``w_id.norm(p=2)`` on EG3D's [1, 14, 512] latents.

Eq. 3 extrapolates in a straight line, which suits a StyleGAN W space fed the same w in every
layer (the paper's EG3D latents, mapped seeds). Two latents it does not suit, so the geometry is
chosen by the generator (``geometry_for``):
- a W+ inversion of a photo: its layers differ, and Eq. 3 amplifies those per-layer deviations
  off the face manifold (P001's target on MobileStyleGAN was colour noise). "w" extrapolates
  only the W part of w_u - w_avg (its mean over layers), so the target is a W latent, as the
  paper's are; for a W latent it is Eq. 3 exactly.
- a Gaussian latent with no mapping network (the DCGAN's z ~ N(0, I)): its faces lie on the thin
  shell ||z|| ≈ sqrt(z_dim), and the straight line leaves it (d = 30 put ||w_t|| at ~20 against
  ~10 for every sample, and the target was a smear). "sphere" moves the same chord distance d
  from w_avg along the great circle away from w_u on the sphere of radius ||w_avg||, the
  spherical interpolation used for Gaussian GAN latents (White, "Sampling Generative Networks",
  2016): the target keeps the prior's typical norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

# The paper tuned d = 30 and alpha_max = 15 on EG3D's W space. EG3D's weights are on no registry these
# machines reach, so EG3D's typical whole-tensor distance ||w - w_avg|| is taken from a StyleGAN2 FFHQ mapping
# network (MobileStyleGAN keeps its teacher's, config-f): 9.84 per 512-d w, mean over 20,000
# samples, times sqrt(14) for EG3D's 14 broadcast layers = 36.8. d = 30 is then 0.81 of a typical
# identity's distance from the average face, alpha_max = 15 is 0.41 of it.
EG3D_W_DISTANCE_PER_LAYER = 9.84
EG3D_NUM_WS = 14
EG3D_TYPICAL_DISTANCE = EG3D_W_DISTANCE_PER_LAYER * math.sqrt(EG3D_NUM_WS)

GEOMETRIES = ("w+", "w", "sphere")
# When the target is not a face, d is shrunk by this factor, at most this many times, then 0.
SHRINK_FACTOR = 0.75
SHRINK_STEPS = 6


def whole_norm(w: torch.Tensor) -> torch.Tensor:
    """||w|| over all but the batch dimension, shaped to broadcast against w."""
    return w.flatten(1).norm(dim=1).view(-1, *([1] * (w.ndim - 1)))


def geometry_for(generator) -> str:
    """"sphere" for a generator whose latent is Gaussian with no mapping network, else "w"."""
    return "sphere" if getattr(generator, "gaussian_latent", False) else "w"


def ufo_target(w_u: torch.Tensor, w_avg: torch.Tensor, d: float, geometry: str = "w+") -> torch.Tensor:
    """Eq. 3: w_t = w_avg - d * w_id / ||w_id||, w_id = w_u - w_avg, in one of three geometries:

    - "w+": Eq. 3 on the whole latent, as written;
    - "w": w_id replaced by its W part (the mean over layers, repeated in every layer);
    - "sphere": the point at chord distance d from w_avg on the great circle through w_avg that
      leads away from w_u, on the sphere ||w|| = ||w_avg|| (d is capped at the antipode, 2||w_avg||).

    d > 0 moves through the average face to the opposite side, d = 0 is the average face (the
    baseline's target), d < 0 moves towards w_u.
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, not {geometry!r}")
    w_avg = w_avg.expand_as(w_u)
    w_id = w_u - w_avg
    if geometry == "w":
        w_id = w_id.mean(dim=1, keepdim=True).expand_as(w_id)
    norm = whole_norm(w_id)
    if not bool((norm > 0).all()):
        raise ValueError("the source latent equals the average latent: UFO's direction (Eq. 3) is undefined")
    if geometry != "sphere":
        return w_avg - d * w_id / norm
    radius = whole_norm(w_avg)
    pole = w_avg / radius
    # the tangent at w_avg pointing away from w_u: -w_id without its component along w_avg
    tangent = -(w_id - (w_id * pole).flatten(1).sum(1).view_as(radius) * pole)
    tangent_norm = whole_norm(tangent)
    if not bool((tangent_norm > 0).all()):
        raise ValueError("the source latent is a multiple of the average latent: the great circle is undefined")
    angle = 2 * torch.asin((d / (2 * radius)).clamp(-1, 1))  # chord d on a circle of this radius
    return radius * (torch.cos(angle) * pole + torch.sin(angle) * tangent / tangent_norm)


@dataclass
class FaceTarget:
    w_t: torch.Tensor
    geometry: str
    d: float  # the distance used (latent units): the requested one, or less when that was no face
    face_score: float | None  # the face detector's score of G_s(w_t); None when not checked
    tries: int  # targets rendered and scored
    error: str | None = None  # the face detector failed: the target at d, unchecked


def face_target(w_u: torch.Tensor, w_avg: torch.Tensor, d: float, geometry: str,
                face_score: Callable[[torch.Tensor], float] | None, threshold: float) -> FaceTarget:
    """The UFO target at distance d, or, when ``face_score(w_t)`` (the detector's score of G_s(w_t))
    is below ``threshold``, at d x SHRINK_FACTOR^k for k = 1..SHRINK_STEPS, then 0 (the average
    face): the first that is a face. If none is, the last one tried (d = 0), marked by its score. A
    detector that fails leaves the target at d, unchecked, with the error."""
    if face_score is None:
        return FaceTarget(ufo_target(w_u, w_avg, d, geometry), geometry, d, None, 0)
    distances = [d * SHRINK_FACTOR ** k for k in range(SHRINK_STEPS + 1)] + [0.0]
    for tries, distance in enumerate(distances, start=1):
        w_t = ufo_target(w_u, w_avg, distance, geometry)
        try:
            score = float(face_score(w_t))
        except Exception as e:  # a detector failure must not stop the erasure; the verdict judges the result
            return FaceTarget(ufo_target(w_u, w_avg, d, geometry), geometry, d, None, tries, f"{type(e).__name__}: {e}")
        if score >= threshold:
            break
    return FaceTarget(w_t, geometry, distance, score, tries)


@torch.no_grad()
def typical_distance(generator, samples: int = 10_000) -> float:
    """E||w - w_avg|| over the whole W+ tensor for w = mapping(z), z ~ N(0, I)."""
    z = torch.randn(samples, generator.z_dim, generator=torch.Generator().manual_seed(0))
    dists = [whole_norm(generator.mapping(chunk.to(generator.device)) - generator.w_avg) for chunk in z.split(1000)]
    return float(torch.cat(dists).mean())


def distance_scale(generator, units: str) -> float:
    """The factor that turns config distances (d, alpha_max) into this generator's latent units."""
    if units == "absolute":
        return 1.0
    return typical_distance(generator) / EG3D_TYPICAL_DISTANCE
