"""A sweep trial: one configuration on every identity of the sweep, a class ``tune.Trainable`` over
core.ltu.Unlearning. Each ``step`` advances every identity by ``report_every`` LTU iterations and
reports the progress (ASHA's ``progress_score``); the last one evaluates in full. Tune checkpoints the
trial after every report (``save_checkpoint``: per identity the Unlearning state), so a sweep
stopped mid-trial resumes the trial where it was, and the chosen trial's generators can be
exported from its final checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

from ray import tune

from ..results import Metrics
from .spec import Sweep

CHECKPOINT = "trial.pt"  # in each Tune checkpoint folder of a trial
FORMAT = "guide_ray.sweep-trial/1"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class Trial(tune.Trainable):
    """One configuration (Tune's sampled params) on every identity; ``sweep``, ``identities`` and
    ``sources`` (their latents, inverted once by the driver) come through ``tune.with_parameters``."""

    def setup(self, config: dict, *, sweep: Sweep, identities: list, sources: dict) -> None:
        import ray
        import torch

        from ..allocator import keep_freed_memory

        keep_freed_memory()
        resources = self.trial_resources.required_resources if self.trial_resources else {}
        torch.set_num_threads(max(1, int(resources.get("CPU", 1))))
        self.device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        self.sweep, self.identities, self.sources = sweep, identities, sources
        self.cfg = self.nets = None
        self._configure(config)

    def _configure(self, config: dict) -> None:
        """This trial's configuration; the frozen networks loaded unless the last trial's are the same."""
        from ..run.networks import Networks

        cfg = self.sweep.config(config)
        if self.nets is None or _networks_of(cfg) != _networks_of(self.cfg):
            self.nets = Networks(cfg, self.device)
        self.cfg = cfg
        self.started_at = time.time()
        self.reports = 0  # blocks done
        step = self.sweep.report_every
        self.blocks = list(range(step, cfg.iterations, step)) + [cfg.iterations]
        self.runs = None  # (id, sources, Unlearning) per identity: built by the first step or load_checkpoint

    def reset_config(self, new_config: dict) -> bool:
        """The next trial in this actor (Tune's reuse_actors): its networks (and G_s's FID statistics) kept."""
        self._configure(new_config)
        return True

    def _build(self, saved: dict | None) -> None:
        """One Unlearning per identity on a freshly loaded generator, continuing ``saved`` (per
        identity: state, status, message) when given; and the preservation proxy's fixed latents."""
        import torch

        from ..core.ltu import Unlearning
        from ..models import load_generator
        from ..run.identity import training_view

        cfg, nets, runs = self.cfg, self.nets, []
        for spec in self.identities:
            src = self.sources[spec.id].to(self.device)
            generator = training_view(load_generator(self.sweep.generator, self.device), cfg)  # ASHA's view
            entry = None if saved is None else saved[spec.id]
            run = Unlearning(generator, src.w_u, cfg, nets.id_loss, nets.perceptual, face_check=nets.faces,
                             resume=None if entry is None else entry["state"])
            if entry is not None and entry["status"] == "diverged":  # it stays stopped at its last good weights
                run.status, run.message = entry["status"], entry["message"]
            runs.append((spec.id, src, run))
        self.runs = runs
        g_s, self.terms = runs[0][2].problem.g_s, runs[0][2].problem.terms
        with torch.no_grad():  # the preservation proxy's latents and their frozen perceptual features
            rng = torch.Generator().manual_seed(cfg.evaluation.fid_seed + 1)
            self.proxy_ws = g_s.mapping(torch.randn(self.sweep.proxy_samples, g_s.z_dim, generator=rng).to(g_s.device))
            self.proxy_before = self.terms.perceptual_features(g_s.synthesis(self.proxy_ws))

    def _progress(self, step: int) -> dict:
        import torch

        from ..core.evaluate import identity_similarity

        nets, terms, views = self.nets, self.terms, self.cfg.evaluation.id_views
        # on the full generator, as the final evaluation (a training view's ID can be far below the
        # 1024² one: MobileStyleGAN's 256² view at 0.22 while 1024² stayed at 0.53); an identity whose
        # G_u(w_u) is no longer a face counts as not forgotten (1)
        with torch.no_grad():
            ids = [float(identity_similarity(nets.id_metric, run.problem.g_s.full, run.generator.full, src.w_u,
                                             views)[0])
                   if nets.faces.is_face(float(nets.faces(run.generator.full.synthesis(src.w_u))[0])) else 1.0
                   for _, src, run in self.runs]
            drift = [float(terms.perceptual_distance(terms.perceptual_features(run.generator.synthesis(self.proxy_ws)),
                                                     self.proxy_before).mean()) for _, _, run in self.runs]
        id_now, drift_now = sum(ids) / len(ids), sum(drift) / len(drift)
        return {"step": step, "id_now": id_now, "drift": drift_now,
                "progress_score": id_now + self.sweep.drift_weight * drift_now, "started_at": self.started_at}

    def _final(self) -> dict:
        """Every identity finished and evaluated in full: the objectives and each identity's figures."""
        from ..core.evaluate import evaluate_run
        from ..core.verdict import judge
        from ..run.identity import inversion_view

        cfg, nets = self.cfg, self.nets
        final = {}
        diverged = erased = 0
        unlearning, fids, id_values, other_values = [], [], [], []
        for (ident, src, run), spec in zip(self.runs, self.identities):
            ltu = run.finish()
            diverged += ltu.status == "diverged"
            photo = spec.image is not None
            m = evaluate_run(ltu.g_s.full, run.generator.full, src.w_u, ltu.w_t, src.w_others, src.source_image, cfg,
                             nets, photo, g_u_fit=inversion_view(run.generator.full, cfg))
            verdict = judge(m, photo, nets.thresholds).verdict
            erased += verdict == "erased"
            id_values.append(m.id)
            if m.id_others is not None:
                other_values.append(m.id_others)
            unlearning.append(unlearning_of(m, verdict))
            fids.append(m.fid_pre)
            final.update({f"id_{ident}": m.id, f"fid_pre_{ident}": m.fid_pre, f"face_kept_{ident}": m.face_kept,
                          f"verdict_{ident}": verdict})
        objectives = {"unlearning": _mean(unlearning), "preservation": _mean(fids)}
        objectives["score"] = objectives["unlearning"] + self.sweep.fid_weight * objectives["preservation"]
        return {**self._progress(cfg.iterations), **final, **objectives, "id": _mean(id_values),
                "id_others": _mean(other_values), "fid_pre": _mean(fids), "diverged": diverged,
                "erased": erased, "identities": len(self.runs), "seconds": time.time() - self.started_at}

    def step(self) -> dict:
        """The next block of ``report_every`` iterations on every identity: its progress report, or
        on the last block the full evaluation (done)."""
        if self.runs is None:
            self._build(None)
        until = self.blocks[self.reports]
        for _, _, run in self.runs:
            run.advance(until)
        self.reports += 1
        if until < self.cfg.iterations:
            return self._progress(until)
        return {**self._final(), "done": True}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        import torch

        identities = None if self.runs is None else {
            ident: {"state": run.state(), "status": run.status, "message": run.message}
            for ident, _, run in self.runs}
        torch.save({"format": FORMAT, "started_at": self.started_at, "reports": self.reports,
                    "identities": identities}, Path(checkpoint_dir) / CHECKPOINT)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        saved = read_checkpoint(checkpoint_dir)
        self.started_at, self.reports = saved["started_at"], saved["reports"]
        self.runs = None
        if saved["identities"] is not None:
            self._build(saved["identities"])


def _networks_of(cfg) -> tuple:
    """What run.networks.Networks is built from that a trial may search (its sections come from the
    sweep's base, the same for every trial)."""
    return cfg.perceptual_net, cfg.id_loss_net, cfg.id_metric_net


def read_checkpoint(checkpoint_dir: str | Path) -> dict:
    """A trial checkpoint: started_at, reports and per identity (or None before the first report)
    the Unlearning state (step, trainable tensors, optimiser, sampler rng), status and message."""
    import torch

    saved = torch.load(Path(checkpoint_dir) / CHECKPOINT, map_location="cpu", weights_only=True)
    if saved.get("format") != FORMAT:
        raise ValueError(f"{checkpoint_dir}: not a sweep trial checkpoint (format {saved.get('format')!r})")
    return saved


def unlearning_of(metrics: Metrics, verdict: str) -> float:
    """One identity's share of the unlearning objective: mean(ID, ID_others) (ID for a seed) when it
    was erased, 1 (the worst a cosine similarity can be for this purpose) when it was not."""
    if verdict != "erased":
        return 1.0
    return metrics.id if metrics.id_others is None else (metrics.id + metrics.id_others) / 2


def invert_all(sweep: Sweep, identities: list) -> dict:
    """Each identity's latents in G_s (photos inverted once, shared by every trial)."""
    from ..run.identity import invert_identity
    from ..run.networks import Networks
    from ..models import load_generator

    cfg = sweep.config()
    generator = load_generator(sweep.generator)
    nets = Networks(cfg, generator.device)
    return {spec.id: invert_identity(generator, spec, cfg, nets, show_progress=False).to("cpu") for spec in identities}
