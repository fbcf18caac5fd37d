"""The Ray actor of a fleet: a generator, its pristine copy and the frozen networks, loaded once;
it unlearns one identity per call and, in sequential mode, re-measures the identities erased before."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from ..config import GuideConfig, config_hash, from_dict
from ..run.identity import IdentitySpec


class IdentityWorker:
    """Holds a generator, its pristine copy and the frozen networks; unlearns one identity per call."""

    def __init__(self, generator: str, cfg: dict, device: str | None = None, threads: int | None = None):
        import torch

        from ..models import load_generator
        from ..run.networks import Networks

        if threads:
            torch.set_num_threads(threads)
        self.cfg = from_dict(GuideConfig, cfg)
        self.generator = load_generator(generator, device)
        self.original = copy.deepcopy(self.generator).requires_grad_(False)
        self.nets = Networks(self.cfg, self.generator.device)

    def ready(self) -> int:
        return os.getpid()

    def unlearn(self, spec: dict, run_dir: str, start_from: str | None = None,
                earlier: list[tuple[str, str]] | None = None) -> dict:
        """Unlearn ``spec`` from the original generator, or from the one saved at ``start_from``.
        ``earlier`` (sequential mode): (id, latents.pt) of identities already erased, re-measured
        afterwards with FID_pre against the original. Never raises: a failure is a result."""
        run_dir = Path(run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "worker.pid").write_text(str(os.getpid()))
            result = self._unlearn(IdentitySpec(**spec), run_dir, start_from)
            if earlier is not None and result["status"] == "finished":
                result["erosion"] = self._erosion(earlier + [(spec["id"], str(run_dir / "latents.pt"))])
            return result
        except Exception as e:  # one bad identity never takes the fleet down: it is recorded as failed
            return {"id": spec["id"], "status": "failed", "error": f"{type(e).__name__}: {e}"}

    def _unlearn(self, spec: IdentitySpec, run_dir: Path, start_from: str | None) -> dict:
        from ..models.checkpoint import apply_checkpoint
        from ..run.identity import run_identity

        finished = run_dir / "result.json"
        if finished.exists():  # a retried call whose first attempt completed
            result = json.loads(finished.read_text())
            if result.get("config_hash") == config_hash(self.cfg):
                return result
        self.generator.load_state_dict(self.original.state_dict())
        if start_from:
            apply_checkpoint(self.generator, start_from)
        return run_identity(self.generator, spec, self.cfg, self.nets, run_dir, overwrite=finished.exists(),
                            show_progress=False)

    def _erosion(self, erased: list[tuple[str, str]]) -> dict:
        import torch

        from ..core.evaluate import (default_fid_samples, fid_scores, generator_fingerprint, generator_stats,
                                    identity_similarity)

        ev = self.cfg.evaluation
        ids = {}
        for ident, latents in erased:
            w_u = torch.load(latents, map_location=self.generator.device, weights_only=True)["w_u"]
            ids[ident] = float(identity_similarity(self.nets.id_metric, self.original, self.generator, w_u,
                                                   ev.id_views)[0])
        samples = ev.fid_samples or default_fid_samples(self.nets.device)
        key = (generator_fingerprint(self.original), samples, ev.fid_seed)
        if key not in self.nets.fid_cache:
            self.nets.fid_cache[key] = generator_stats(self.original, self.nets.inception, samples, ev.fid_seed,
                                                       ev.fid_batch)
        fid = fid_scores(self.original, self.generator, self.nets.inception, samples, ev.fid_seed, ev.fid_batch,
                         None, self.nets.fid_cache[key])
        return {"id": ids, "fid_pre_vs_original": fid.fid_pre}
