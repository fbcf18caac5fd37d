"""The Ray actor of a fleet: a generator, its pristine copy and the frozen networks, loaded once;
it unlearns one identity per call and, in sequential mode, re-measures the identities erased before."""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path

from ..config import GuideConfig, config_hash, from_dict, to_dict
from ..results import RunResult
from ..run.identity import IdentitySpec

log = logging.getLogger(__name__)


class LiveMetrics:
    """An identity's LTU losses sent to its MLflow run while it trains (every ``FLUSH_EVERY`` steps,
    each with its own time), and the machine's system metrics where MLflow can sample them. A
    logging failure is reported once and never stops the identity."""

    FLUSH_EVERY = 10

    def __init__(self, tracker, run_id: str):
        self.tracker, self.run_id, self.pending, self.failed = tracker, run_id, [], False
        self.monitor = None
        try:  # needs psutil; samples CPU, memory, disk, network (and GPUs) every 10 s
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self.monitor = SystemMetricsMonitor(run_id, tracking_uri=tracker.uri, resume_logging=True)
            self.monitor.start()
        except Exception as e:  # system metrics are a nicety: the identity runs without them
            log.warning("no system metrics for MLflow run %s: %s", run_id, e)

    @classmethod
    def open(cls, identity: str, cfg: GuideConfig, *, uri: str, artifacts: str, parent: str, fleet_key: str,
             tags: dict[str, str]) -> LiveMetrics | None:
        """The live log of ``identity`` in the fleet's parent run ``parent``; None when its run is finished."""
        from ..tracking import Tracker

        tracker = Tracker(uri, Path(artifacts))
        run_id = tracker.live_identity_run(parent, fleet_key, identity, to_dict(cfg), tags)
        return None if run_id is None else cls(tracker, run_id)

    def __call__(self, step: int, losses: dict[str, float]) -> None:
        self.pending.append((step, time.time(), losses))
        if len(self.pending) >= self.FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        steps, self.pending = self.pending, []
        if steps and not self.failed:
            try:
                self.tracker.log_steps(self.run_id, steps)
            except Exception as e:  # the store is unreachable: the identity goes on, its files hold the losses
                self.failed = True
                log.warning("stopped logging losses to MLflow run %s: %s", self.run_id, e)

    def close(self) -> None:
        self.flush()
        if self.monitor is not None:
            self.monitor.finish()


class IdentityWorker:
    """Holds a generator, its pristine copy and the frozen networks; unlearns one identity per call."""

    def __init__(self, generator: str, cfg: dict, device: str | None = None, threads: int | None = None,
                 checkpoint: str | None = None):
        """``checkpoint``: an unlearned generator's checkpoint.safetensors applied to ``generator`` (a
        fleet started from a registered version): the generator the identities are erased from, and
        the pristine copy they are measured against."""
        import torch

        from ..models import load_generator
        from ..allocator import keep_freed_memory
        from ..run.networks import Networks

        keep_freed_memory()
        if threads:
            torch.set_num_threads(threads)
        self.cfg = from_dict(GuideConfig, cfg)
        self.generator = load_generator(generator, device, checkpoint=checkpoint)
        self.original = copy.deepcopy(self.generator).requires_grad_(False)
        self.nets = Networks(self.cfg, self.generator.device)

    def ready(self) -> int:
        return os.getpid()

    def unlearn(self, spec: dict, run_dir: str, start_from: str | None = None,
                earlier: list[tuple[str, str]] | None = None, live: dict | None = None) -> RunResult:
        """Unlearn ``spec`` from the original generator, or from the one saved at ``start_from``.
        ``earlier`` (sequential mode): (id, latents.pt) of identities already erased, re-measured
        afterwards with FID_pre against the original. ``live``: where to log the identity's losses as
        it trains (``LiveMetrics``'s arguments). Never raises: a failure is a result."""
        run_dir = Path(run_dir)
        metrics = None
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "worker.pid").write_text(str(os.getpid()))
            metrics = LiveMetrics.open(spec["id"], self.cfg, **live) if live else None
            result = self._unlearn(IdentitySpec(**spec), run_dir, start_from, metrics, earlier or [])
            if earlier is not None and result.finished:
                result.erosion = self._erosion(earlier + [(spec["id"], str(run_dir / "latents.pt"))])
            return result
        except Exception as e:  # one bad identity never takes the fleet down: it is recorded as failed
            return RunResult(spec["id"], "failed", error=f"{type(e).__name__}: {e}")
        finally:
            if metrics is not None:
                metrics.close()

    def _unlearn(self, spec: IdentitySpec, run_dir: Path, start_from: str | None,
                 metrics: LiveMetrics | None, earlier: list[tuple[str, str]]) -> RunResult:
        import torch

        from ..models.checkpoint import apply_checkpoint
        from ..run.identity import run_identity

        finished = run_dir / "result.json"
        if finished.exists():  # a retried call whose first attempt completed
            result = RunResult.from_dict(json.loads(finished.read_text()))
            if result.config_hash == config_hash(self.cfg):
                return result
        self.generator.load_state_dict(self.original.state_dict())
        if start_from:
            apply_checkpoint(self.generator, start_from)
        rehearse = torch.cat([torch.load(latents, map_location=self.generator.device, weights_only=True)["w_u"]
                              for _, latents in earlier]) if earlier and self.cfg.rehearsal > 0 else None
        return run_identity(self.generator, spec, self.cfg, self.nets, run_dir, overwrite=finished.exists(),
                            show_progress=False, on_step=metrics, rehearse=rehearse)

    def _erosion(self, erased: list[tuple[str, str]]) -> dict:
        import torch

        from ..core.evaluate import default_fid_samples, fid_scores, generator_fingerprint, identity_similarity

        ev = self.cfg.evaluation
        ids = {}
        for ident, latents in erased:
            w_u = torch.load(latents, map_location=self.generator.device, weights_only=True)["w_u"]
            ids[ident] = float(identity_similarity(self.nets.id_metric, self.original, self.generator, w_u,
                                                   ev.id_views)[0])
        samples = ev.fid_samples or default_fid_samples(self.nets.device)
        before = self.nets.pretrained_stats(self.original, generator_fingerprint(self.original), samples, ev.fid_seed,
                                            ev.fid_batch)
        fid = fid_scores(self.original, self.generator, self.nets.inception, samples, ev.fid_seed, ev.fid_batch,
                         None, before)
        return {"id": ids, "fid_pre_vs_original": fid.fid_pre}
