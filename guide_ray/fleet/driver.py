"""The fleet's driver: schedules identities on Ray actors (parallel or sequential), records each
result in the ledger and MLflow, registers the unlearned generators."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections import deque
from pathlib import Path

from ..config import AuditConfig, GuideConfig, config_hash, to_dict
from ..core.verdict import VERDICTS
from ..ray_session import ray_session, size_workers, worker_env
from ..results import SCALARS, RunResult
from ..run.files import write_json
from ..run.identity import IdentitySpec
from .ledger import Ledger, ledger_row
from ..run.folder import CHECKPOINT, JOINT, REVIEW
from .report import erosion_metrics, fmt, summary_table
from .worker import IdentityWorker

NOT_ALL_ERASED = 4  # exit status: every identity ran, but not every one was erased


class FleetError(RuntimeError):
    """The fleet cannot run at all (e.g. its workers cannot load the generator)."""


class Fleet:
    """The driver: schedules identities on Ray actors, records each result in the ledger and MLflow."""

    def __init__(self, specs: list[IdentitySpec], cfg: GuideConfig, generator: str, mode: str, out: Path,
                 tracking_uri: str | None, workers: int | None, gpus_per_worker: float, show_progress: bool = True,
                 ray_address: str | None = None, audit: AuditConfig | None = None):
        from ..tracking import Tracker, model_name, resolve_uri

        self.specs, self.cfg, self.mode = specs, cfg, mode
        self.out = Path(out).resolve()
        self.cfg_hash = config_hash(cfg)
        uri = resolve_uri(tracking_uri, self.out)
        # A generator held in MLflow (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/model): its base
        # generator and its checkpoint, downloaded here before Ray starts; the workers load both. The fleet
        # key carries the checkpoint's digest (the starting weights exactly, whichever URI named them); its
        # versions go to the base generator's registered model, tagged start_generator.
        self.generator, self.checkpoint, self.start = _start_generator(generator, uri, self.out)
        start_key = f"+{self.start['checkpoint_sha256'][:8]}" if self.start else ""
        self.fleet_key = f"{mode}-{Path(self.generator).name}{start_key}-{self.cfg_hash}"
        self.runs = self.out / "runs" / self.fleet_key
        self.ledger = Ledger(self.out / "ledger.parquet")
        self.tracker = Tracker(uri, self.out / "mlartifacts")
        self.model_name = model_name(self.generator)
        self.workers, self.gpus_per_worker, self.show_progress = workers, gpus_per_worker, show_progress
        self.ray_address, self.audit = ray_address, audit  # audit: audit every finished identity at the end
        start_tags = {"start_generator": self.start["pinned"]} if self.start else {}
        self._run_tags = {"mode": mode, "generator": Path(self.generator).name, **start_tags}  # each identity's run
        self.parent = self.tracker.parent_run(
            "fleet", self.fleet_key, f"fleet {mode} {self.fleet_key}",
            {"mode": mode, "generator": self.generator, "identities": len(specs), "config": to_dict(cfg),
             **({"start_generator": self.start} if self.start else {})},
            {"mode": mode, "generator": Path(self.generator).name, **start_tags})

    def _actors(self, count: int):
        import ray

        size = size_workers(count, self.gpus_per_worker)
        remote = ray.remote(max_restarts=-1, max_task_retries=2)(IdentityWorker)
        actors = [remote.options(num_gpus=size.gpus, num_cpus=size.threads, runtime_env=worker_env()).remote(
            self.generator, to_dict(self.cfg), None, size.threads, self.checkpoint) for _ in range(size.count)]
        try:
            ray.get([a.ready.remote() for a in actors])
        except ray.exceptions.RayActorError as e:
            raise FleetError(f"the workers could not load {self.generator} and the networks: {e}") from None
        return actors

    def _live(self) -> dict:
        """Where a worker logs its identity's losses while it trains (LiveMetrics.open)."""
        return {"uri": self.tracker.uri, "artifacts": str(self.out / "mlartifacts"), "parent": self.parent,
                "fleet_key": self.fleet_key, "tags": self._run_tags}

    def _record(self, result: RunResult, step: int, done_before: dict[str, dict]) -> dict:
        run_dir = self.runs / result.identity
        mlflow_id = self.tracker.identity_run(self.parent, self.fleet_key, result, run_dir, self._run_tags)
        attempt = int(done_before.get(result.identity, {}).get("attempt") or 0) + 1
        row = {**ledger_row(self.fleet_key, self.mode, self.generator, self.cfg_hash, step, result, run_dir, attempt),
               "mlflow_run_id": mlflow_id}
        self.ledger.upsert([row])
        if self.mode == "parallel" and result.finished:
            self._register(row, [result.identity], _scalars(row), {result.identity: result.verdict})
        return row

    def _register(self, row: dict, identities: list[str], metrics: dict, verdicts: dict[str, str]) -> None:
        """Register the generator of ``row``'s run (it was asked to forget ``identities``; ``verdicts``
        says what came of each) in the Model Registry; tag all_erased says whether it may be deployed."""
        tags = {"identities": ";".join(identities), "config_hash": self.cfg_hash, "fleet_key": self.fleet_key,
                "mode": self.mode, "base_generator": self.generator, "checkpoint_uri": row["checkpoint_uri"],
                "verdicts": ";".join(f"{i}={verdicts.get(i)}" for i in identities),
                "all_erased": str(all(verdicts.get(i) == "erased" for i in identities)).lower(),
                **({"start_generator": self.start["pinned"], "start_uri": self.start["uri"]} if self.start else {}),
                **metrics}
        self.tracker.register_generator(self.model_name, row["mlflow_run_id"], tags,
                                        checkpoint=Path(row["run_dir"]) / CHECKPOINT,
                                        base_generator=self.generator, start_checkpoint=self.checkpoint)

    def _register_finished(self, rows: dict[str, dict], ok: bool, earlier: list[str]) -> None:
        """parallel: the generators of the identities an earlier run of this fleet finished (a crash
        may have come before their registration; it is idempotent), the others were registered as
        they finished; sequential: the final generator, once every identity is erased."""
        if self.mode == "parallel":
            for ident in earlier:
                self._register(rows[ident], [ident], _scalars(rows[ident]), {ident: rows[ident].get("verdict")})
        elif ok and self.mode == "joint":  # one generator for all, its model logged into the fleet's run
            checkpoint = self.runs / JOINT / CHECKPOINT
            joint = json.loads((self.runs / JOINT / "joint.json").read_text())
            row = {"mlflow_run_id": self.parent, "run_dir": str(checkpoint.parent),
                   "checkpoint_uri": checkpoint.resolve().as_uri()}
            fid = [r["fid_pre"] for r in rows.values() if r.get("fid_pre") is not None]
            metrics = {"fid_pre_vs_original": fid[0] if fid else None,
                       "pairwise_id_erased_max": joint["pairwise_id_erased"]["max"]}
            self._register(row, [s.id for s in self.specs], {k: v for k, v in metrics.items() if v is not None},
                           {i: r.get("verdict") for i, r in rows.items()})
        elif ok:
            final = json.loads((self.runs / "final.json").read_text())
            self._register(rows[self.specs[-1].id], [s.id for s in self.specs], erosion_metrics(final["erosion"]),
                           {i: r.get("verdict") for i, r in rows.items()})

    def _review(self, table: list[dict]) -> list[Path]:
        """The parent run's files: summary table (CSV, HTML), ID and FID_pre per identity, and in
        sequential mode the ID of every identity erased so far after each step."""
        from .. import review

        folder = self.runs / REVIEW
        files = review.write_summary(table, folder, f"fleet {self.fleet_key}")
        files.append(review.metrics_plot(table, folder / "metrics.png", f"fleet {self.fleet_key}"))
        if self.mode == "sequential":
            history = self.tracker.step_history(self.parent)
            order = [s.id for s in self.specs]
            ids_after = {i: history[f"id_now_{i}"] for i in order if f"id_now_{i}" in history}
            if ids_after:
                files.append(review.erosion_plot(order, ids_after, history.get("fid_pre_vs_original", {}),
                                                 folder / "erosion.png", f"fleet {self.fleet_key}: erosion"))
        return files

    def run(self) -> int:
        from tqdm import tqdm

        from .. import review
        from ..tracking import is_server

        previous = self.ledger.fleet(self.fleet_key)
        todo = [s for s in self.specs if previous.get(s.id, {}).get("status") != "finished"]
        skipped = len(self.specs) - len(todo)
        if skipped:
            print(f"resuming fleet {self.fleet_key}: {skipped} identities already finished, {len(todo)} to run",
                  file=sys.stderr)
        bar = tqdm(total=len(self.specs), initial=skipped, desc=f"fleet ({self.mode})", unit="identity",
                   disable=not self.show_progress, dynamic_ncols=True)
        counts = {"finished": skipped, "failed": 0, "running": 0}

        def note(row):
            counts[row["status"] if row["status"] == "finished" else "failed"] += 1
            bar.update(1)
            bar.set_postfix(done=counts["finished"], running=counts["running"], failed=counts["failed"])
            bar.write(f"{row['identity']}: {row['status']}  {row.get('verdict') or ''}  ID {fmt(row.get('id'))}  "
                      f"face kept {fmt(row.get('face_kept'), '.0%')}  FID_pre "
                      f"{fmt(row.get('fid_pre'), '.2f')}" + (f"  ({row['error']})" if row.get("error") else ""))

        if todo:
            with ray_session(self.ray_address):
                if self.mode == "parallel":
                    self._parallel(todo, previous, counts, note, bar)
                elif self.mode == "joint":
                    self._joint(todo, previous, counts, note)
                else:
                    self._sequential(previous, counts, note, bar)
        bar.close()
        if self.audit is not None:
            from .audit import audit_rows

            recorded = self.ledger.fleet(self.fleet_key)
            audit_rows(self.ledger, self.tracker, [recorded[s.id] for s in self.specs if s.id in recorded], self.audit,
                       say=lambda line: print(line, file=sys.stderr))
        rows = self.ledger.fleet(self.fleet_key)
        ok = all(rows.get(s.id, {}).get("status") == "finished" for s in self.specs)
        erased = sum(rows.get(s.id, {}).get("verdict") == "erased" for s in self.specs)
        table = review.summary_rows([s.id for s in self.specs], rows)
        print(summary_table(table))
        finished = [r for r in rows.values() if r["status"] == "finished"]
        self._register_finished(rows, ok, [i for i in rows if i in previous and previous[i]["status"] == "finished"])
        self.tracker.finish(self.parent, ok and erased == len(self.specs),
                            {"identities_finished": len(finished), "identities_failed": len(self.specs) - len(finished),
                             **{f"identities_{v}": sum(r.get("verdict") == v for r in rows.values()) for v in VERDICTS}},
                            self._review(table),
                            outcome=f"{erased} of {len(self.specs)} erased" + ("" if ok else ", some failed"))
        uri = self.tracker.uri
        print(f"ledger: {self.ledger.path}\nruns:   {self.runs}\nMLflow: {uri} " +
              (f"(open {uri} in a browser)" if is_server(uri) else f"(open with: mlflow ui --backend-store-uri {uri})")
              + f"; generators registered as {self.model_name}")
        if not ok:
            return 1
        return 0 if erased == len(self.specs) else NOT_ALL_ERASED

    def _parallel(self, todo, previous, counts, note, bar) -> None:
        import ray

        actors = self._actors(self.workers or 0)
        pending, inflight, idle = deque(todo), {}, list(actors)
        while pending or inflight:
            while idle and pending:
                actor, spec = idle.pop(), pending.popleft()
                inflight[actor.unlearn.remote(spec.to_dict(), str(self.runs / spec.id), live=self._live())] = (actor, spec)
            counts["running"] = len(inflight)
            bar.set_postfix(done=counts["finished"], running=counts["running"], failed=counts["failed"])
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                actor, spec = inflight.pop(ref)
                note(self._record(_get(ref, spec), -1, previous))
                idle.append(actor)

    def _joint(self, todo, previous, counts, note) -> None:
        """Every identity into one generator on Ray Train workers (fleet/joint.py); the losses go to
        the fleet's run as they come; each identity is recorded with its metrics on that generator."""
        from .joint import run_trainer

        counts["running"] = len(todo)
        try:
            results = run_trainer(specs=self.specs, cfg=self.cfg, generator=self.generator, checkpoint=self.checkpoint,
                                  runs=self.runs, name=self.fleet_key, workers=self.workers,
                                  gpus_per_worker=self.gpus_per_worker, live={**self._live(), "parent": self.parent})
        except Exception as e:  # Ray Train gave up (retries exhausted): every identity failed with its reason
            error = f"joint training failed: {type(e).__name__}: {str(e)[:500]}"
            results = [RunResult(s.id, "failed", error=error) for s in self.specs]
        todo_ids = {s.id for s in todo}
        for result in results:
            if result.identity in todo_ids:
                note(self._record(result, -1, previous))

    def _sequential(self, previous, counts, note, bar) -> None:

        (actor,) = self._actors(1)
        start_from, erased = None, []
        for step, spec in enumerate(self.specs):
            before = previous.get(spec.id, {})
            if before.get("status") == "finished":  # a resumed fleet: this step's generator is on disk
                start_from = str(self.runs / spec.id / CHECKPOINT)
                erased.append((spec.id, str(self.runs / spec.id / "latents.pt")))
                continue
            counts["running"] = 1
            ref = actor.unlearn.remote(spec.to_dict(), str(self.runs / spec.id), start_from, list(erased),
                                       live=self._live())
            result = _get(ref, spec)
            row = self._record(result, step, previous)
            if result.finished:
                start_from = result.checkpoint
                erased.append((spec.id, str(self.runs / spec.id / "latents.pt")))
                erosion = result.erosion
                self.ledger.upsert([{"fleet_key": self.fleet_key, "identity": i, "id_now": v, "id_now_after": spec.id}
                                    for i, v in erosion["id"].items()])
                self.tracker.fleet_step(self.parent, step, erosion_metrics(erosion))
                write_json(self.runs / "final.json", {"checkpoint": start_from, "after": spec.id, "step": step,
                                                      "erosion": erosion})
            note(row)


def _start_generator(generator: str, tracking_uri: str, out: Path) -> tuple[str, str | None, dict | None]:
    """(base generator, local checkpoint, what the fleet starts from) of ``--generator``: a name or a
    path as it is; a generator URI downloaded into OUT/start/ (the workers read it there), with an
    alias pinned to its version."""
    from ..mlflow_model import ModelUriError, is_model_uri, resolve_generator, sha256

    if not is_model_uri(generator):
        return generator, None, None
    (out / "start").mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=out / "start") as tmp:
            found = resolve_generator(generator, tracking_uri, Path(tmp) / "model")
            sha = sha256(found.checkpoint)
            local = out / "start" / f"{sha[:16]}.safetensors"
            if not local.exists():
                shutil.copyfile(found.checkpoint, local)
    except ModelUriError as e:
        raise FleetError(f"--generator {e}") from None
    return found.base, str(local), {"uri": generator, "pinned": found.pinned, "base": found.base,
                                    "checkpoint_sha256": sha, "identities": found.reference.get("identities")}


def _scalars(row: dict) -> dict[str, float]:
    """A ledger row's one-number metrics (as the registry's version tags)."""
    return {name: row[name] for name in SCALARS if row.get(name) is not None}


def _get(ref, spec: IdentitySpec) -> RunResult:
    import ray

    try:
        return ray.get(ref)
    except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:  # retries exhausted
        return RunResult(spec.id, "failed", error=f"worker lost: {type(e).__name__}: {str(e)[:500]}")
