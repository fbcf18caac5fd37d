"""Latent Target Unlearning (Sec. 3.3): fine-tune G_u so that G_u(w_u) becomes G_s(w_t).

Two loops with the same math and the same random draws:
- ``straightforward``: as the official code, one forward per loss term, the frozen generator's
  outputs recomputed every step;
- ``optimised`` (default): every G_u latent of a step in one batched forward; the frozen targets
  (G_s features, perceptual features, identity embeddings) computed once per latent, for the local
  pair and for a pool of neighbour and global latents (``latent_pool``), and reused.
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..config import GuideConfig
from .losses import Targets, Terms, adjacent_deltas, total_loss
from .ufo import FaceTarget, distance_scale, face_target, geometry_for


def select_trainable(generator, pattern: str) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters LTU trains: the synthesis network ("synthesis"), or those whose names match
    a regular expression. Every other parameter is frozen."""
    named = list(generator.named_parameters())
    if pattern == "synthesis":
        chosen = {id(p) for p in generator.trainable_parameters()}
        selected = [(n, p) for n, p in named if id(p) in chosen]
    else:
        regex = re.compile(pattern)
        selected = [(n, p) for n, p in named if regex.search(n)]
    if not selected:
        examples = ", ".join(n for n, _ in named[:5])
        raise ValueError(f"trainable={pattern!r} matches no parameter of {generator.name} (names look like: {examples})")
    keep = {id(p) for _, p in selected}
    for _, p in named:
        p.requires_grad_(id(p) in keep)
    return selected


def optimizer_for(generator, params: list[tuple[str, torch.nn.Parameter]], lr: float) -> torch.optim.Adam:
    """Adam over ``params``, each at lr x generator.lr_scale(parameter) (groups in first-seen order)."""
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for _, p in params:
        groups.setdefault(generator.lr_scale(p), []).append(p)
    return torch.optim.Adam([{"params": ps, "lr": lr * scale} for scale, ps in groups.items()], lr=lr)


def target_latent(generator, w_u: torch.Tensor, cfg: GuideConfig, scale: float, face_check=None) -> FaceTarget:
    """w_t: Eq. 3 at distance d x ``scale`` (see ufo.distance_scale) in ``cfg.ufo_geometry``, or the
    average latent. With ``face_check`` (images -> face scores, with a ``threshold``) the distance
    shrinks until the generator's image of w_t is a face (ufo.face_target)."""
    def score(w_t):
        with torch.no_grad():
            return face_check(generator.synthesis(w_t))[0]

    scorer = None if face_check is None else score
    if cfg.target == "average":
        w_t = generator.w_avg.expand_as(w_u).clone()
        return FaceTarget(w_t, "average", 0.0, None if scorer is None else float(scorer(w_t)), int(scorer is not None))
    geometry = geometry_for(generator) if cfg.ufo_geometry == "auto" else cfg.ufo_geometry
    return face_target(w_u, generator.w_avg, cfg.d * scale, geometry, scorer,
                       None if face_check is None else face_check.threshold)


@dataclass
class Draw:
    """One step's random latents: neighbour offsets (Eq. 5) and global latents (Eq. 8)."""

    deltas: torch.Tensor  # [N_a, num_ws, w_dim]
    w_global: torch.Tensor  # [N_g, num_ws, w_dim]
    camera: torch.Tensor | None = None  # one random camera per step (3D generators), as the official code
    adj_index: torch.Tensor | None = None  # pool entries, when drawn from a pool
    global_index: torch.Tensor | None = None
    rehearse_index: torch.Tensor | None = None  # the earlier identities rehearsed this step


class LatentSampler:
    """Draws N_a neighbours (α ~ U(0, α_max), w_r = mapping(z), ψ = 1) and N_g global latents
    per step, from a fixed pool of each (disjoint, so global latents are never neighbours) or
    fresh each step (``pool`` = 0). Seeded; its state is part of a checkpoint."""

    def __init__(self, generator, w_u: torch.Tensor, n_adj: int, n_global: int, alpha_max: float,
                 pool: int, seed: int, n_rehearse: int = 0, rehearse_per_step: int = 0):
        self.generator, self.w_u = generator, w_u
        self.n_adj, self.n_global, self.alpha_max, self.pool = n_adj, n_global, alpha_max, pool
        self.n_rehearse, self.rehearse_per_step = n_rehearse, min(rehearse_per_step, n_rehearse)
        self.rng = torch.Generator().manual_seed(seed)
        if pool:
            if pool < max(n_adj, n_global):
                raise ValueError(f"latent_pool={pool} is smaller than n_adj/n_global")
            self.pool_deltas = self._deltas(pool)
            self.pool_global = self._mapped(pool)

    @torch.no_grad()
    def _mapped(self, n: int) -> torch.Tensor:
        z = torch.randn(n, self.generator.z_dim, generator=self.rng).to(self.w_u.device)
        return self.generator.mapping(z)

    def _deltas(self, n: int) -> torch.Tensor:
        w_r = self._mapped(n)
        alpha = torch.rand(n, generator=self.rng).to(self.w_u.device) * self.alpha_max
        return adjacent_deltas(self.w_u, w_r, alpha)

    def draw(self) -> Draw:
        camera = self.generator.sample_camera(1, self.rng)
        if not self.pool:
            draw = Draw(self._deltas(self.n_adj), self._mapped(self.n_global), camera)
        else:
            adj = torch.randperm(self.pool, generator=self.rng)[:self.n_adj]
            glob = torch.randperm(self.pool, generator=self.rng)[:self.n_global]
            draw = Draw(self.pool_deltas[adj], self.pool_global[glob], camera, adj, glob)
        if self.rehearse_per_step:  # drawn only with rehearsal: runs without it keep their random stream
            draw.rehearse_index = torch.randperm(self.n_rehearse, generator=self.rng)[:self.rehearse_per_step]
        return draw


class StepLoss(dict):
    """The step's loss terms as tensors; ``total`` is what is minimised."""

    def floats(self) -> dict[str, float]:
        return {k: float(v.detach().mean()) if v.numel() > 1 else float(v.detach()) for k, v in self.items()}


class Problem:
    """Everything one unlearning run optimises: G_u, the frozen G_s, w_u, w_t and the loss nets.
    ``face_check`` (images -> face scores) makes sure G_s(w_t) is a face (cfg.target_face_check).

    ``rehearse`` (beyond the paper; sequential fleets): the source latents of identities erased
    from G_s before. With cfg.rehearsal > 0, each step adds cfg.rehearsal x the mean Eq. 4 loss of
    ``rehearse_per_step`` of them between G_u(w_u^i) and G_s(w_u^i), their erased faces as G_s
    draws them, so that training on a new identity does not bring an earlier one back."""

    def __init__(self, generator, w_u: torch.Tensor, cfg: GuideConfig, id_net, perceptual, face_check=None,
                 rehearse: torch.Tensor | None = None):
        self.cfg, self.g_u, self.w_u = cfg, generator, w_u
        self.rehearse = rehearse if rehearse is not None and len(rehearse) and cfg.rehearsal > 0 else None
        self.g_s = copy.deepcopy(generator).eval().requires_grad_(False)
        self.distance_scale = scale = distance_scale(generator, cfg.distance_units)  # computed once: 10k mappings
        self.target = target_latent(self.g_s, w_u, cfg, scale, face_check if cfg.target_face_check else None)
        self.w_t = self.target.w_t
        self.terms = Terms(cfg, perceptual, id_net, generator.ffhq_box)
        self.sampler = LatentSampler(generator, w_u, cfg.n_adj if cfg.use_adjacency else 0,
                                     cfg.n_global if cfg.use_global else 0, cfg.alpha_max * scale,
                                     cfg.latent_pool, cfg.seed, 0 if self.rehearse is None else len(self.rehearse),
                                     cfg.rehearse_per_step)
        self._cache: dict[str, dict[int, Targets]] = {"adj": {}, "global": {}, "rehearse": {}}
        self._local_target: Targets | None = None

    # --- the frozen targets -------------------------------------------------------------
    @torch.no_grad()
    def frozen(self, ws: torch.Tensor, camera, with_identity: bool) -> Targets:
        image, features = self.g_s.render(ws, camera)
        return self.terms.targets(image, features, with_identity)

    def local_target(self, camera) -> Targets:
        if camera is not None:  # a new view every step: nothing to reuse
            return self.frozen(self.w_t, camera, with_identity=True)
        if self._local_target is None:
            self._local_target = self.frozen(self.w_t, None, with_identity=True)
        return self._local_target

    def fill_pool(self, batch: int = 16) -> None:
        """Compute every pool entry's frozen targets now (camera-free generators only)."""
        if not self.sampler.pool or self.g_s.sample_camera(1) is not None:
            return
        index = torch.arange(self.sampler.pool)
        for kind, latents in (("adj", self.w_t + self.sampler.pool_deltas), ("global", self.sampler.pool_global)):
            if (kind == "adj" and not self.sampler.n_adj) or (kind == "global" and not self.sampler.n_global):
                continue
            for chunk in index.split(batch):
                draw = Draw(self.sampler.pool_deltas[chunk], self.sampler.pool_global[chunk], None, chunk, chunk)
                self.pooled(kind, draw, latents[chunk])

    def pooled(self, kind: str, draw: Draw, ws: torch.Tensor) -> Targets:
        """Targets of the drawn latents ``ws``: from the pool's cache (filled on first use) when
        they come from the pool and the generator has no camera, else computed now."""
        index = {"adj": draw.adj_index, "global": draw.global_index, "rehearse": draw.rehearse_index}[kind]
        if index is None or draw.camera is not None:
            return self.frozen(ws, draw.camera, with_identity=kind != "global")
        cache = self._cache[kind]
        missing = [i for i, k in enumerate(index.tolist()) if k not in cache]
        if missing:
            fresh = self.frozen(ws[missing], None, with_identity=kind != "global")
            for j, i in enumerate(missing):
                cache[int(index[i])] = fresh.select(torch.tensor([j]))
        return Targets.cat([cache[int(k)] for k in index.tolist()])

    # --- one step, two ways ---------------------------------------------------------------
    def step_optimised(self, draw: Draw) -> StepLoss:
        cfg, terms = self.cfg, self.terms
        n_local = 1 if cfg.use_local else 0
        n_adj, n_glob = len(draw.deltas), len(draw.w_global)
        w_rehearse = self.rehearsed(draw)
        ws = torch.cat([self.w_u.expand(n_local, -1, -1), self.w_u + draw.deltas, draw.w_global,
                        *([] if w_rehearse is None else [w_rehearse])])
        image, features = self.g_u.render(ws, draw.camera)
        per_u = terms.perceptual_features(image)
        parts: list[Targets] = []
        if n_local:
            parts.append(self.local_target(draw.camera))
        if n_adj:
            parts.append(self.pooled("adj", draw, self.w_t + draw.deltas))
        losses = StepLoss()
        n_unlearn = n_local + n_adj
        if n_unlearn:
            pairs = terms.unlearning_pairs(image[:n_unlearn], features[:n_unlearn],
                                           [f[:n_unlearn] for f in per_u], Targets.cat(parts))
            if n_local:
                losses.update({k: v[:1] for k, v in pairs.items()})
            if n_adj:
                losses["adj"] = pairs["local"][n_local:]
        if n_glob:
            glob_t = self.pooled("global", draw, draw.w_global)
            losses["global"] = terms.perceptual_distance([f[n_unlearn:n_unlearn + n_glob] for f in per_u],
                                                         glob_t.perceptual)
        if w_rehearse is not None:
            at = n_unlearn + n_glob
            losses["rehearse"] = terms.unlearning_pairs(image[at:], features[at:], [f[at:] for f in per_u],
                                                        self.pooled("rehearse", draw, w_rehearse))["local"]
        losses["total"] = self.total(losses)
        return losses

    def rehearsed(self, draw: Draw) -> torch.Tensor | None:
        return None if self.rehearse is None else self.rehearse[draw.rehearse_index]

    def total(self, losses: StepLoss) -> torch.Tensor:
        """Eq. 9, plus the rehearsal of earlier identities when there is one."""
        total = total_loss(losses.get("local"), losses.get("adj"), losses.get("global"), self.cfg)
        if "rehearse" in losses:
            total = total + self.cfg.rehearsal * losses["rehearse"].mean()
        return total

    def step_straightforward(self, draw: Draw) -> StepLoss:
        """The official code's loop: one G_u and one G_s forward per term, targets recomputed."""
        cfg, terms = self.cfg, self.terms

        def pair(w_source, w_target):
            image, features = self.g_u.render(w_source, draw.camera)
            return terms.unlearning_pairs(image, features, terms.perceptual_features(image),
                                          self.frozen(w_target, draw.camera, with_identity=True))

        losses = StepLoss()
        if cfg.use_local:
            losses.update(pair(self.w_u, self.w_t))
        if len(draw.deltas):
            losses["adj"] = torch.cat([pair(self.w_u + d[None], self.w_t + d[None])["local"] for d in draw.deltas])
        if len(draw.w_global):
            per = []
            for w in draw.w_global:
                image, _ = self.g_u.render(w[None], draw.camera)
                per.append(terms.perceptual_distance(terms.perceptual_features(image),
                                                     self.frozen(w[None], draw.camera, with_identity=False).perceptual))
            losses["global"] = torch.cat(per)
        w_rehearse = self.rehearsed(draw)
        if w_rehearse is not None:
            losses["rehearse"] = torch.cat([pair(w[None], w[None])["local"] for w in w_rehearse])
        losses["total"] = self.total(losses)
        return losses


@dataclass
class LTUResult:
    target: FaceTarget  # w_t, the geometry and distance used, the face score of G_s(w_t)
    distance_scale: float  # config distances -> this generator's latent units
    status: str  # "finished" | "diverged"
    message: str
    steps: int  # the run's steps from 0, over every attempt (a resumed run included)
    seconds: float  # LTU time of those steps (an attempt's steps after its last checkpoint are redone, not counted)
    history: list[dict[str, float]] = field(default_factory=list)  # the losses of those steps, in order
    resumed_from: int = 0  # the step this attempt started at (> 0: resumed from a checkpoint)
    trainable: list[str] = field(default_factory=list)
    g_s: torch.nn.Module | None = None  # the frozen pre-trained generator

    @property
    def w_t(self) -> torch.Tensor:
        return self.target.w_t


def trainable_state(params: list[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in params}


class RunRandomness:
    """torch's global random streams as one run sees them, seeded by ``cfg.seed`` and kept apart
    from the process's: the run's own draws take explicit generators, but a network may draw from
    the global streams (EG3D's renderer with ``deterministic_sampling=False``); inside ``active()``
    those draws continue the run's streams, and the caller's streams are as they were after."""

    def __init__(self, seed: int, device: torch.device):
        self.device = torch.device(device)
        self.cuda, self.live = self.device.type == "cuda", False
        with self._forked():
            torch.default_generator.manual_seed(seed)
            if self.cuda:
                with torch.cuda.device(self.device):
                    torch.cuda.manual_seed(seed)
            self.state = self._capture()

    def _forked(self):
        return torch.random.fork_rng(devices=[self.device] if self.cuda else [])

    def _capture(self) -> dict:
        return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(self.device) if self.cuda else None}

    def snapshot(self) -> dict:
        """The streams now (for a checkpoint, inside ``active()`` or not)."""
        return self._capture() if self.live else dict(self.state)

    @contextlib.contextmanager
    def active(self):
        with self._forked():
            torch.set_rng_state(self.state["cpu"])
            if self.cuda:
                torch.cuda.set_rng_state(self.state["cuda"], self.device)
            self.live = True
            try:
                yield
            finally:
                self.state, self.live = self._capture(), False


class Unlearning:
    """One LTU run on ``generator`` in place (it becomes G_u), advanced in steps: ``advance(n)``
    runs up to step n, ``finish()`` returns the result. G_s is kept as a frozen copy.

    ``on_checkpoint(state)`` receives, every ``checkpoint_every`` steps and at the end, a dict
    with the step, the trainable tensors, the optimiser and sampler states; passing such a dict as
    ``resume`` continues the run exactly. A non-finite loss stops the run and restores the last
    checkpointed weights (status "diverged"). torch's global RNG is the caller's before and after
    (RunRandomness). ``face_check`` (images -> face scores with a
    ``threshold``, models.face_check.FaceCheck) makes sure the target G_s(w_t) is a face.
    """

    def __init__(self, generator, w_u: torch.Tensor, cfg: GuideConfig, id_net, perceptual, *,
                 face_check=None, loop: str = "optimised", progress: Callable[[int, dict], None] | None = None,
                 on_checkpoint: Callable[[dict], None] | None = None, resume: dict | None = None,
                 rehearse: torch.Tensor | None = None):
        if loop not in ("optimised", "straightforward"):
            raise ValueError(f"loop must be 'optimised' or 'straightforward', not {loop!r}")
        self.randomness = RunRandomness(cfg.seed, generator.device)
        params = select_trainable(generator, cfg.trainable)
        with self.randomness.active():
            self.problem = Problem(generator, w_u, cfg, id_net, perceptual, face_check, rehearse)
            if loop == "optimised":
                self.problem.fill_pool()
        self.step_fn = self.problem.step_optimised if loop == "optimised" else self.problem.step_straightforward
        self._begin(generator, cfg, params, progress, on_checkpoint, resume)
        if resume is not None:
            self.problem.sampler.rng.set_state(resume["sampler_rng"])

    def _begin(self, generator, cfg: GuideConfig, params, progress, on_checkpoint, resume: dict | None) -> None:
        """The optimiser over ``params`` and the step counter, from ``resume`` when given."""
        self.cfg, self.generator, self.params = cfg, generator, params
        self.progress, self.on_checkpoint = progress, on_checkpoint
        self.optimizer = optimizer_for(generator, params, cfg.lr)
        self.start, self.history, self.seconds = 0, [], 0.0
        if resume is not None:
            with torch.no_grad():
                for name, p in params:
                    p.copy_(resume["trainable"][name])
            self.optimizer.load_state_dict(resume["optimizer"])
            self.start = resume["step"]
            # the earlier attempts' losses and time (a checkpoint written before it carried them has none)
            self.history, self.seconds = list(resume.get("history", [])), float(resume.get("seconds", 0.0))
            if "torch_rng" in resume:  # nor, then, the run's own random streams
                self.randomness.state = resume["torch_rng"]
        self.good, self.good_step = trainable_state(params), self.start
        self.step, self.status, self.message = self.start, "running", ""
        self.advancing_since: float | None = None  # perf_counter() at the start of the advance() under way

    def losses(self) -> StepLoss:
        """The next step's losses."""
        return self.step_fn(self.problem.sampler.draw())

    def finite(self, total: torch.Tensor) -> bool:
        return bool(torch.isfinite(total))

    @property
    def done(self) -> bool:
        return self.status != "running"

    def state(self) -> dict:
        """What ``resume`` continues from: the step, the trainable tensors, the optimiser, sampler and
        random states, the losses and seconds so far (the dict ``on_checkpoint`` receives), taken now."""
        running = time.perf_counter() - self.advancing_since if self.advancing_since is not None else 0.0
        return {"step": self.step, "trainable": trainable_state(self.params),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()), "torch_rng": self.randomness.snapshot(),
                "history": list(self.history), "seconds": self.seconds + running, **self.draws_state()}

    def draws_state(self) -> dict:
        """What the random draws need to continue: the sampler's generator state."""
        return {"sampler_rng": self.problem.sampler.rng.get_state()}

    def _checkpoint(self) -> None:
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.state())

    def advance(self, until: int) -> None:
        """Run steps up to ``until`` (at most ``iterations``); the generator is in eval mode after."""
        until, self.advancing_since = min(until, self.cfg.iterations), time.perf_counter()
        self.generator.train()
        with self.randomness.active():
            self._steps(until)
        self.seconds += time.perf_counter() - self.advancing_since
        self.advancing_since = None
        if self.step == self.cfg.iterations and not self.done:
            self.status = "finished"
            self._checkpoint()
        self.generator.eval()

    def _steps(self, until: int) -> None:
        while not self.done and self.step < until:
            losses = self.losses()
            total = losses["total"]
            if not self.finite(total):
                with torch.no_grad():
                    for name, p in self.params:
                        p.copy_(self.good[name])
                self.status = "diverged"
                self.message = (f"the loss became {total.item()} at step {self.step}; stopped and kept the weights "
                                f"of step {self.good_step} (the last good checkpoint)")
                break
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            self.history.append(losses.floats())
            if self.progress is not None:
                self.progress(self.step, self.history[-1])
            self.step += 1
            if self.step % self.cfg.checkpoint_every == 0:
                self.good, self.good_step = trainable_state(self.params), self.step
                self._checkpoint()

    def close(self) -> None:
        """End the run: one stopped before ``iterations`` counts as finished at its last step."""
        if self.status == "running":
            self.status = "finished"
            self._checkpoint()
        for _, p in self.params:
            p.grad = None

    def result_for(self, target: FaceTarget) -> LTUResult:
        """The run's record for one identity's ``target``."""
        return LTUResult(target=target, distance_scale=self.problem.distance_scale, status=self.status,
                         message=self.message, steps=self.step, resumed_from=self.start, seconds=self.seconds,
                         history=self.history, trainable=[n for n, _ in self.params], g_s=self.problem.g_s)

    def finish(self) -> LTUResult:
        self.close()
        return self.result_for(self.problem.target)


def unlearn(generator, w_u: torch.Tensor, cfg: GuideConfig, id_net, perceptual, **kwargs) -> LTUResult:
    """Run LTU to ``cfg.iterations`` (see Unlearning for the keyword arguments)."""
    run = Unlearning(generator, w_u, cfg, id_net, perceptual, **kwargs)
    run.advance(cfg.iterations)
    return run.finish()


def seconds_per_iteration(result: LTUResult) -> float:
    return result.seconds / result.steps if result.steps else math.nan
