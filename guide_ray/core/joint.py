"""Joint unlearning (beyond the paper): one G_u that forgets N identities at once.

GUIDE's LTU (ltu.py) erases one identity. Here identities i = 1..N, each with its source latent
w_u^i and its own UFO target w_t^i (Eq. 3), share one G_u and one frozen G_s; a step takes a batch
B of ``identities_per_step`` of them (round robin) and minimises Eq. 9 averaged over the batch:

    L = 1/|B| Σ_{i∈B} (L_local^i + λ_adj L_adj^i) + λ_global L_global

L_local^i is Eq. 4 on (G_u(w_u^i), G_s(w_t^i)); L_adj^i is Eq. 7 on N_a neighbours drawn from
identity i's own pool (Eq. 5 around w_u^i); L_global is Eq. 8 on N_g global latents drawn from a
pool kept out of EVERY identity's neighbourhood (||w - w_u^i|| > α_max for all i), since a global
latent near one identity would hold G_u to that identity's old face.

Distinct identities must not be sent to one face: targets whose G_s images are the same person
(ID above a given level: the run uses the metric's calibrated same-person level) are re-aimed
(``distinct_targets``).

Data parallel: with W ranks, rank r computes the batch's identities B[r::W] and the global latents
[r::W]; averaging the ranks' gradients (DDP's all-reduce) gives exactly the one-rank gradient of L
when |B| and N_g are multiples of W. Every draw is a function of (seed, step), not of a sampler's
history, so any rank can compute any step and a resumed run needs only the step number.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import GuideConfig
from .losses import Targets, Terms, adjacent_deltas
from .ltu import LTUResult, RunRandomness, StepLoss, Unlearning, select_trainable, target_latent
from .ufo import FaceTarget, distance_scale, face_target, geometry_for

DISTINCT_TRIES = 3  # re-aimings of one identity's target before it is left as it is (and recorded)


def step_rng(seed: int, step: int, stream: int) -> torch.Generator:
    """The random stream of a step (step -1: the pools are drawn): ``stream`` 0 for the global
    latents, 1 + i for identity i's neighbours."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step + 1) * 10_007 + stream)  # step -1: the pools


def batch_of(step: int, n_identities: int, per_step: int) -> list[int]:
    """The identities of a step: round robin over all of them, ``per_step`` at a time."""
    return [(step * per_step + j) % n_identities for j in range(per_step)]


def distinct_targets(targets: list[FaceTarget], embed: Callable[[torch.Tensor], torch.Tensor], level: float,
                     reaim: Callable[[int, list[int]], FaceTarget]) -> tuple[list[FaceTarget], list[list[int]]]:
    """Targets no two of which are one person: when the ID of G_s(w_t^j) to an earlier target's image
    is above ``level``, ``reaim(j, clashing)`` gives j a target away from the clashing identities (at
    most DISTINCT_TRIES times). Returns the targets and, per identity, those it still clashes with."""
    targets = list(targets)
    emb = [F.normalize(embed(t.w_t), dim=-1) for t in targets]
    clashes: list[list[int]] = []
    for j in range(len(targets)):
        clash = [i for i in range(j) if float((emb[i] * emb[j]).sum()) > level]
        for _ in range(DISTINCT_TRIES):
            if not clash:
                break
            targets[j] = reaim(j, clash)
            emb[j] = F.normalize(embed(targets[j].w_t), dim=-1)
            clash = [i for i in range(j) if float((emb[i] * emb[j]).sum()) > level]
        clashes.append(clash)
    return targets, clashes


class JointProblem(nn.Module):
    """What joint unlearning optimises: G_u (a registered submodule: the only parameters, so DDP
    syncs exactly them), the frozen G_s, every identity's w_u and w_t, their neighbour pools and the
    shared global pool. ``forward(step)`` is this rank's part of the step's loss."""

    def __init__(self, generator, w_us: list[torch.Tensor], cfg: GuideConfig, id_net, perceptual, *,
                 identities_per_step: int, rank: int = 0, world: int = 1, face_check=None,
                 distinct: tuple[Callable[[torch.Tensor], torch.Tensor], float] | None = None):
        super().__init__()
        n = len(w_us)
        if not 1 <= identities_per_step <= n:
            raise ValueError(f"identities_per_step must be in 1..{n} (the identities), got {identities_per_step}")
        n_global = cfg.n_global if cfg.use_global else 0
        if identities_per_step % world or n_global % world:
            raise ValueError(f"identities_per_step ({identities_per_step}) and n_global ({n_global}) must be "
                             f"multiples of the {world} workers, so that every worker computes an equal share")
        if cfg.latent_pool < max(cfg.n_adj, cfg.n_global, 1):
            raise ValueError(f"joint unlearning draws from pools: latent_pool={cfg.latent_pool} must be >= "
                             f"n_adj and n_global (and > 0)")
        self.cfg, self.g_u, self.rank, self.world, self.per_step = cfg, generator, rank, world, identities_per_step
        self._g_s = [copy.deepcopy(generator).eval().requires_grad_(False)]  # a list: not a submodule, not synced
        g_s = self.g_s
        self.w_us = [w.to(generator.device) for w in w_us]
        self.distance_scale = scale = distance_scale(generator, cfg.distance_units)
        checked = face_check if cfg.target_face_check else None
        targets = [target_latent(g_s, w_u, cfg, scale, checked) for w_u in self.w_us]
        self.clashes: list[list[int]] = [[] for _ in targets]
        if distinct is not None and n > 1:
            embed, level = distinct
            targets, self.clashes = distinct_targets(
                targets, lambda w: embed(g_s.synthesis(w)), level, lambda j, clash: self._reaim(j, clash, checked))
        self.targets = targets
        self.terms = Terms(cfg, perceptual, id_net, generator.ffhq_box)
        self.n_adj = cfg.n_adj if cfg.use_adjacency else 0
        self.n_global = n_global
        radius = cfg.alpha_max * scale
        self.adj_pools = [self._neighbours(i, radius) for i in range(n)]
        self.global_pool = self._far_latents(torch.cat(self.w_us), radius)
        self._cache: dict[tuple, Targets] = {}

    @property
    def g_s(self):
        return self._g_s[0]

    # --- the latents ---------------------------------------------------------------------------
    @torch.no_grad()
    def _mapped(self, n: int, rng: torch.Generator) -> torch.Tensor:
        return self.g_s.mapping(torch.randn(n, self.g_s.z_dim, generator=rng).to(self.g_u.device))

    def _neighbours(self, i: int, radius: float) -> torch.Tensor:
        """Identity i's pool of Eq. 5 offsets (α ~ U(0, α_max), w_r = mapping(z))."""
        rng = step_rng(self.cfg.seed, -1, 1 + i)
        w_r = self._mapped(self.cfg.latent_pool, rng)
        alpha = torch.rand(self.cfg.latent_pool, generator=rng).to(w_r.device) * radius
        return adjacent_deltas(self.w_us[i], w_r, alpha)

    def _far_latents(self, w_us: torch.Tensor, radius: float, tries: int = 20) -> torch.Tensor:
        """The global pool: mapped latents farther than ``radius`` from every w_u (redrawn until the
        pool is full; after ``tries`` rounds the pool is what was found)."""
        rng, found, need = step_rng(self.cfg.seed, -1, 0), [], self.cfg.latent_pool
        for _ in range(tries):
            w = self._mapped(need, rng)
            far = w[(torch.cdist(w.flatten(1), w_us.flatten(1)) > radius).all(dim=1)]  # whole-tensor distances
            found.append(far)
            need -= len(far)
            if need <= 0:
                break
        pool = torch.cat(found)[:self.cfg.latent_pool]
        if len(pool) < self.n_global:
            raise ValueError(f"only {len(pool)} latents lie outside every identity's neighbourhood "
                             f"(radius {radius:.3g}); n_global is {self.n_global}")
        return pool

    def _reaim(self, j: int, clash: list[int], face_check) -> FaceTarget:
        """Identity j's target, its UFO direction made orthogonal to the clashing identities' directions."""
        w_avg = self.g_s.w_avg.expand_as(self.w_us[j])
        own = self.w_us[j] - w_avg
        others = torch.stack([(self.w_us[i] - w_avg).flatten() for i in clash])
        basis, _ = torch.linalg.qr(others.T)  # the clashing identities' directions, orthonormal
        direction = own.flatten() - basis @ (basis.T @ own.flatten())
        if direction.norm() < 1e-3 * own.norm():  # j's direction is (almost) theirs: a seeded random one instead
            rand = torch.randn(own.numel(), generator=step_rng(self.cfg.seed, -1, 1 + j)).to(own.device)
            direction = rand - basis @ (basis.T @ rand)
        direction = direction.view_as(own)
        cfg = self.cfg
        geometry = geometry_for(self.g_s) if cfg.ufo_geometry == "auto" else cfg.ufo_geometry
        scorer = None if face_check is None else (lambda w_t: face_check(self.g_s.synthesis(w_t))[0])
        return face_target(w_avg + direction, self.g_s.w_avg, cfg.d * self.distance_scale, geometry, scorer,
                           None if face_check is None else face_check.threshold)

    # --- the frozen targets, cached per pool entry ------------------------------------------
    @torch.no_grad()
    def _frozen(self, key: tuple, ws: torch.Tensor, with_identity: bool) -> Targets:
        if key not in self._cache:
            image, features = self.g_s.render(ws, None)
            self._cache[key] = self.terms.targets(image, features, with_identity)
        return self._cache[key]

    # --- one step: this rank's share ------------------------------------------------------------
    def share(self, step: int) -> tuple[list[int], torch.Tensor]:
        """This rank's identities of the step and its global pool indices."""
        ids = batch_of(step, len(self.w_us), self.per_step)[self.rank::self.world]
        glob = torch.randperm(len(self.global_pool), generator=step_rng(self.cfg.seed, step, 0))[:self.n_global]
        return ids, glob[self.rank::self.world]

    def forward(self, step: int) -> StepLoss:
        cfg, terms = self.cfg, self.terms
        ids, glob = self.share(step)
        ws, parts = [], []
        for i in ids:
            adj = torch.randperm(cfg.latent_pool, generator=step_rng(cfg.seed, step, 1 + i))[:self.n_adj]
            deltas = self.adj_pools[i][adj]
            ws += [self.w_us[i], self.w_us[i] + deltas]
            parts.append(self._frozen(("local", i), self.targets[i].w_t, True))
            parts += [self._frozen(("adj", i, int(k)), self.targets[i].w_t + self.adj_pools[i][k][None], True)
                      for k in adj]
        w_glob = self.global_pool[glob]
        image, features = self.g_u.render(torch.cat([*ws, w_glob]), None)
        per_u = terms.perceptual_features(image)
        n_unlearn = len(ids) * (1 + self.n_adj)
        pairs = terms.unlearning_pairs(image[:n_unlearn], features[:n_unlearn], [f[:n_unlearn] for f in per_u],
                                       Targets.cat(parts))
        per_identity = pairs["local"].view(len(ids), 1 + self.n_adj)  # [local, its neighbours] per identity
        local, adj = per_identity[:, 0], per_identity[:, 1:]
        losses = StepLoss(l2=pairs["l2"].view_as(per_identity)[:, 0], per=pairs["per"].view_as(per_identity)[:, 0],
                          id=pairs["id"].view_as(per_identity)[:, 0], local=local)
        total = (local if cfg.use_local else torch.zeros_like(local))
        if self.n_adj:
            losses["adj"] = adj.flatten()
            total = total + cfg.lambda_adj * adj.mean(dim=1)
        total = total.mean()
        if len(glob):
            glob_t = Targets.cat([self._frozen(("global", int(k)), self.global_pool[k][None], False) for k in glob])
            losses["global"] = terms.perceptual_distance([f[n_unlearn:] for f in per_u], glob_t.perceptual)
            total = total + cfg.lambda_global * losses["global"].mean()
        losses["total"] = total
        return losses


@dataclass
class JointResult:
    """One LTUResult per identity (its target; the run's status, history, trainable tensors and
    G_s, shared) and the target clashes: per identity, earlier ones whose target is still its person."""

    identities: list[LTUResult]
    clashes: list[list[int]]


class JointUnlearning(Unlearning):
    """Joint unlearning of ``w_us`` from ``generator`` in place, advanced in steps as ltu.Unlearning
    (``advance(n)``, ``state()``, ``on_checkpoint``, ``resume``; divergence keeps the last good
    weights). ``wrap`` wraps the JointProblem for data parallelism (e.g. DistributedDataParallel:
    the caller's choice); ranks agree on a stop: a non-finite loss on any rank stops all of them.
    """

    def __init__(self, generator, w_us: list[torch.Tensor], cfg: GuideConfig, id_net, perceptual, *,
                 identities_per_step: int, rank: int = 0, world: int = 1, face_check=None,
                 distinct: tuple[Callable[[torch.Tensor], torch.Tensor], float] | None = None,
                 wrap: Callable[[nn.Module], nn.Module] = lambda m: m,
                 progress: Callable[[int, dict], None] | None = None,
                 on_checkpoint: Callable[[dict], None] | None = None, resume: dict | None = None):
        self.randomness = RunRandomness(cfg.seed, generator.device)
        params = select_trainable(generator, cfg.trainable)
        with self.randomness.active():
            self.problem = JointProblem(generator, w_us, cfg, id_net, perceptual, identities_per_step=identities_per_step,
                                        rank=rank, world=world, face_check=face_check, distinct=distinct)
        self.model = wrap(self.problem)
        self._begin(generator, cfg, params, progress, on_checkpoint, resume)

    def losses(self) -> StepLoss:
        return self.model(self.step)

    def draws_state(self) -> dict:
        return {}  # the draws are functions of the step

    def finite(self, total: torch.Tensor) -> bool:
        finite = torch.isfinite(total.detach()).to(torch.int32).reshape(1)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    def finish(self) -> JointResult:
        self.close()
        return JointResult([self.result_for(t) for t in self.problem.targets], self.problem.clashes)
