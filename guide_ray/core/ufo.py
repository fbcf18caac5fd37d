"""Un-identifying Face On latent space (UFO, Sec. 3.2) and the latent distance scale.

Latents are W+ tensors [B, num_ws, w_dim]; norms are over the whole (num_ws x w_dim) tensor of
each sample, as the official code's ``w_id.norm(p=2)`` on EG3D's [1, 14, 512] latents.
"""

from __future__ import annotations

import math
import torch

# The paper tuned d = 30 and alpha_max = 15 on EG3D's W space. EG3D's weights cannot be had here,
# so EG3D's typical whole-tensor distance ||w - w_avg|| is taken from a StyleGAN2 FFHQ mapping
# network (MobileStyleGAN keeps its teacher's, config-f): 9.84 per 512-d w, mean over 20,000
# samples, times sqrt(14) for EG3D's 14 broadcast layers = 36.8. d = 30 is then 0.81 of a typical
# identity's distance from the average face, alpha_max = 15 is 0.41 of it.
EG3D_W_DISTANCE_PER_LAYER = 9.84
EG3D_NUM_WS = 14
EG3D_TYPICAL_DISTANCE = EG3D_W_DISTANCE_PER_LAYER * math.sqrt(EG3D_NUM_WS)


def whole_norm(w: torch.Tensor) -> torch.Tensor:
    """||w|| over all but the batch dimension, shaped to broadcast against w."""
    return w.flatten(1).norm(dim=1).view(-1, *([1] * (w.ndim - 1)))


def ufo_target(w_u: torch.Tensor, w_avg: torch.Tensor, d: float) -> torch.Tensor:
    """Eq. 3: w_t = w_avg - d * w_id / ||w_id||, w_id = w_u - w_avg.

    d > 0 extrapolates through the average face to the opposite side, d = 0 is the average face
    (the baseline's target), d < 0 interpolates towards w_u.
    """
    w_avg = w_avg.expand_as(w_u)
    w_id = w_u - w_avg
    norm = whole_norm(w_id)
    if not bool((norm > 0).all()):
        raise ValueError("the source latent equals the average latent: UFO's direction (Eq. 3) is undefined")
    return w_avg - d * w_id / norm


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
