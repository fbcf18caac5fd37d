"""Attacks on an erasure (beyond the paper): can someone who holds G_u draw the person again?

GUIDE's evaluation looks at w_u and one fresh re-inversion. An attacker can do more, and each
attack here is run the same way on G_s, where the person was never erased (the reference):

1. re-inversion with restarts: the photo projected into G from several starts (w_avg, the mean of
   mapped samples, random mapped latents, the encoder's latent) in W and W+; the best ID;
2. neighbourhood probe: latents around w_u and around the best re-inverted latent, drawn as GUIDE's
   neighbours are (Eq. 5, α ~ U(0, α_max)): the max and 95th-percentile ID to the photo;
3. relearning (pivotal tuning): G fine-tuned for k steps so that G(pivot) reconstructs the photo
   (the projector's perceptual + pixel losses; the pivot is the best re-inverted latent), then the
   person looked for ELSEWHERE: the other photos inverted into the tuned generator, or for a seed w_u
   and its neighbours. A generator tuned on one photo draws that photo at the pivot whatever it
   forgot (``id_pivot``); the person coming back at the other latents is what relearning means.

Every ID is the metric's cosine similarity to the photo (the run's source image: the aligned photo,
or G_s(w_u) for a seed). The functions copy what they tune and leave their inputs as they were.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..config import AuditConfig, ProjectorConfig
from .inversion import LatentEncoder, _fit_target, _for_perceptual, encode, project
from .losses import adjacent_deltas
from .ltu import optimizer_for, select_trainable

# embeddings of images of a generator, [B, 3, R, R] -> [B, D] (the ID metric in the generator's frame)
Embed = Callable[[torch.Tensor], torch.Tensor]


def similarity(embed: Embed, photo_embedding: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """[B] cosine similarity of each image's identity to the photo's."""
    return F.cosine_similarity(embed(images), photo_embedding.expand(len(images), -1), dim=-1)


@torch.no_grad()
def render(generator, ws: torch.Tensor, batch: int = 8) -> torch.Tensor:
    return torch.cat([generator.synthesis(chunk) for chunk in ws.split(batch)])


@dataclass
class Restart:
    space: str  # "w" or "w+"
    init: str  # "w_avg", "mean_of_samples", "encoder" or "random:SEED"
    id: float  # of the projection to the photo
    loss: float  # the projector's final total loss


@dataclass
class ReinversionAttack:
    best_id: float
    best: Restart
    best_ws: torch.Tensor  # [1, num_ws, w_dim]
    best_image: torch.Tensor  # [1, 3, R, R]
    restarts: list[Restart]


def starts(generator, cfg: AuditConfig, encoder: LatentEncoder | None, photo: torch.Tensor) -> list[tuple[str, str, torch.Tensor | None]]:
    """(space, init, init_ws) for every restart: each init in W and (when the generator has more than
    one layer of latents) W+; None as init_ws means the projector's own ``init``."""
    inits: list[tuple[str, torch.Tensor | None]] = [("w_avg", None), ("mean_of_samples", None)]
    inits += [(f"random:{s}", generator.mapping(generator.z_from_seed(s))) for s in range(cfg.random_starts)]
    if encoder is not None:
        inits.append(("encoder", encode(generator, encoder, photo)))
    spaces = ["w", "w+"] if generator.num_ws > 1 else ["w"]
    return [(space, name, ws) for space in spaces for name, ws in inits]


def reinversion_attack(generator, photo: torch.Tensor, photo_embedding: torch.Tensor, embed: Embed, perceptual,
                       projector: ProjectorConfig, cfg: AuditConfig, encoder: LatentEncoder | None = None,
                       progress: Callable[[str], None] | None = None, id_net=None) -> ReinversionAttack:
    """Attack 1: the photo projected into ``generator`` from every start of ``starts``; the best ID.
    ``id_net``: the run's ID loss network, for a projector with lambda_id."""
    restarts, best = [], None
    with torch.no_grad():
        plan = starts(generator, cfg, encoder, photo)
    for space, init, init_ws in plan:
        settings = dataclasses.replace(projector, space=space, steps=cfg.projector_steps or projector.steps,
                                init="w_avg" if init.startswith(("random", "encoder")) else init)
        fit = project(generator, photo, perceptual, settings, init_ws=init_ws, id_net=id_net)
        with torch.no_grad():
            score = float(similarity(embed, photo_embedding, fit.image)[0])
        restarts.append(Restart(space, init, score, fit.losses["total"]))
        if best is None or score > best[0]:
            best = (score, restarts[-1], fit)
        if progress is not None:
            progress(f"re-inversion {len(restarts)}/{len(plan)} ({space}, {init}): ID {score:.3f}")
    score, restart, fit = best
    return ReinversionAttack(score, restart, fit.ws, fit.image, restarts)


@dataclass
class Probe:
    around: str  # "w_u" or "reinversion"
    max_id: float
    p95_id: float
    mean_id: float
    samples: int
    best_ws: torch.Tensor
    best_image: torch.Tensor


@torch.no_grad()
def neighbourhood_probe(generator, centre: torch.Tensor, around: str, photo_embedding: torch.Tensor, embed: Embed,
                        radius: float, samples: int, seed: int) -> Probe:
    """Attack 2: ``samples`` latents centre + α (w_r - centre)/||w_r - centre||, α ~ U(0, radius), w_r
    mapped from N(0, I) (Eq. 5's neighbours); the ID of each image to the photo."""
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, generator.z_dim, generator=rng).to(centre.device)
    alpha = torch.rand(samples, generator=rng).to(centre.device) * radius
    ws = centre + adjacent_deltas(centre, generator.mapping(z), alpha)
    images = render(generator, ws)
    ids = similarity(embed, photo_embedding, images)
    best = int(ids.argmax())
    return Probe(around, float(ids.max()), float(torch.quantile(ids, 0.95)), float(ids.mean()), samples,
                 ws[best:best + 1], images[best:best + 1])


@dataclass
class RelearningPoint:
    steps: int
    id_pivot: float  # the tuned generator at the pivot vs the photo (it was tuned to draw it there)
    id_elsewhere: float  # the person at the other latents (the max over them): has the person come back?
    id_elsewhere_each: list[float]
    image: torch.Tensor  # the image behind id_elsewhere


@dataclass
class RelearningAttack:
    lr: float
    pivot: torch.Tensor
    curve: list[RelearningPoint] = field(default_factory=list)


def relearning_attack(generator, photo: torch.Tensor, pivot: torch.Tensor, photo_embedding: torch.Tensor,
                      embed: Embed, perceptual, projector: ProjectorConfig, cfg: AuditConfig,
                      elsewhere: Callable[[object], tuple[torch.Tensor, torch.Tensor]],
                      trainable: str = "synthesis", progress: Callable[[str], None] | None = None) -> RelearningAttack:
    """Attack 3: a copy of ``generator`` fine-tuned on the photo at ``pivot`` (Adam at cfg.relearn_lr,
    the generator's per-tensor lr scale, the projector's lambda_perceptual x perceptual + lambda_pixel
    x MSE), measured after 0 and each of cfg.relearn_steps steps. ``elsewhere(g)`` returns the tuned
    generator's images of the person away from the pivot and their IDs to the photo."""
    g = copy.deepcopy(generator).train()
    params = select_trainable(g, trainable)
    optimizer = optimizer_for(g, params, cfg.relearn_lr)
    size = projector.perceptual_size
    target = _fit_target(photo, g)  # the projector's own sizing of the photo and of the perceptual inputs
    target_perceptual = _for_perceptual(target, size)
    attack = RelearningAttack(cfg.relearn_lr, pivot)

    def measure(steps: int) -> None:
        with torch.no_grad():
            at_pivot = float(similarity(embed, photo_embedding, g.synthesis(pivot))[0])
        images, ids = elsewhere(g)
        best = int(ids.argmax())
        attack.curve.append(RelearningPoint(steps, at_pivot, float(ids.max()), [float(v) for v in ids],
                                            images[best:best + 1]))
        if progress is not None:
            progress(f"relearning: {steps} steps: ID at the pivot {at_pivot:.3f}, elsewhere {float(ids.max()):.3f}")

    measure(0)
    for step in range(1, max(cfg.relearn_steps) + 1):
        image = g.synthesis(pivot)
        loss = (projector.lambda_perceptual * perceptual(_for_perceptual(image, size), target_perceptual).mean()
                + projector.lambda_pixel * F.mse_loss(image, target))
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"relearning diverged at step {step} (loss {float(loss)}); lower relearn_lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step in cfg.relearn_steps:
            measure(step)
    return attack
