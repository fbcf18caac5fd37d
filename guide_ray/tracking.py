"""MLflow for fleets and sweeps: the only module that talks to MLflow.

A fleet (or a sweep) is a parent run; each identity (or trial) a nested run (tag
``mlflow.parentRunId``). An identity's run has the resolved config as params, ID / ID_others /
re-inversion ID / FID_pre and the losses over iterations as metrics, the grid, result.json and the
checkpoint as artifacts; a trial's, its sampled params and last report. Unlearned generators
are registered in the Model Registry (one registered model per base generator, a version per
generator with its identities, config hash and metrics as tags). Logging is idempotent: a rerun
finds the parent by its key and skips identities (trials) and versions already logged, so a
resumed fleet or sweep never duplicates a record.

The store: ``--tracking-uri``, else MLFLOW_TRACKING_URI, else a SQLite file with local artifacts
under the fleet's (sweep's) out dir.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from .results import RunResult
from .run.folder import CHECKPOINT

log = logging.getLogger(__name__)

EXPERIMENT = "guide_ray-fleet"
MAX_CHECKPOINT_ARTIFACT_MB = 200  # larger checkpoints are logged as a pointer (tag checkpoint_uri)
_BATCH = 100  # MLflow accepts at most 100 params / 1000 metrics per log_batch call


def resolve_uri(explicit: str | None, out: Path) -> str:
    """The tracking URI: ``explicit`` (--tracking-uri), else MLFLOW_TRACKING_URI, else OUT/mlflow.db."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(out) / 'mlflow.db').resolve()}"


def is_server(uri: str) -> bool:
    """A tracking server (which owns its artifact store), not a database or folder read directly."""
    return uri.startswith(("http://", "https://", "databricks"))


def model_name(generator: str) -> str:
    """The registered model holding the unlearned generators of ``generator`` (a name or a path)."""
    return "guide_ray-" + re.sub(r"[^A-Za-z0-9_-]+", "-", Path(generator).stem).strip("-")


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


class Tracker:
    def __init__(self, uri: str, artifact_root: Path | None = None, experiment: str = EXPERIMENT):
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            local = artifact_root and not is_server(uri)
            location = Path(artifact_root).resolve().as_uri() if local else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = found.experiment_id

    def _find(self, tags: dict[str, str]) -> list:
        query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
        return self.client.search_runs([self.experiment_id], filter_string=query, max_results=10)

    def parent_run(self, kind: str, key: str, name: str, params: dict, tags: dict[str, str]) -> str:
        """A fleet's or sweep's (``kind``) parent run: found by its key (tag KIND_key) when resuming,
        else created."""
        for run in self._find({f"{kind}_key": key, "kind": kind}):
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags={f"{kind}_key": key, "kind": kind, **tags})
        self._params(run.info.run_id, params)
        return run.info.run_id

    def _params(self, run_id: str, params: dict) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in _flatten(params).items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, params=items[i:i + _BATCH])

    def _identity_runs(self, fleet_key: str, identity: str) -> tuple[str | None, str | None]:
        """The identity's finished run, else its live (RUNNING) one; any other is a half-logged run
        from a crash, deleted so that it is logged again."""
        live = None
        for run in self._find({"fleet_key": fleet_key, "identity": identity, "kind": "identity"}):
            if run.info.status == "FINISHED":
                return run.info.run_id, None
            if run.info.status == "RUNNING" and live is None:
                live = run.info.run_id
            else:
                self.client.delete_run(run.info.run_id)
        return None, live

    def live_identity_run(self, parent_id: str, fleet_key: str, identity: str, config: dict,
                          tags: dict[str, str]) -> str | None:
        """The identity's run, opened by its worker as it starts (RUNNING, tag status 'running') so that
        its losses show while it trains; a retried attempt reuses the run the first one opened. None
        when the identity's run is already finished."""
        finished, live = self._identity_runs(fleet_key, identity)
        if finished or live:
            return None if finished else live
        run = self.client.create_run(self.experiment_id, run_name=identity,
                                     tags={"mlflow.parentRunId": parent_id, "fleet_key": fleet_key,
                                           "identity": identity, "kind": "identity", "status": "running", **tags})
        self._params(run.info.run_id, config)
        return run.info.run_id

    def log_steps(self, run_id: str, steps: list[tuple[int, float, dict[str, float]]]) -> None:
        """LTU steps (step, wall-clock time in s, losses) as the run's loss_* curves."""
        metrics = [Metric(f"loss_{k}", float(v), int(t * 1000), step) for step, t, losses in steps
                   for k, v in losses.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])

    def identity_run(self, parent_id: str, fleet_key: str, result: RunResult, run_dir: Path,
                     tags: dict[str, str]) -> str:
        """One nested run per identity with its config, metrics, loss curves and files (idempotent).
        The run its worker opened (``live_identity_run``, which logged the losses) is completed."""
        identity = result.identity
        finished, live = self._identity_runs(fleet_key, identity)
        if finished:
            return finished
        failed = not result.finished
        outcome = {"status": result.status, **tags,
                   **({"verdict": result.verdict, "represented": str(result.verdict_detail["represented"]).lower(),
                       "verdict_reason": result.verdict_detail["reason"][:5000]} if result.verdict else {}),
                   **({"error": str(result.error or result.message or "")[:5000]} if failed else {})}
        if live is None:
            run_id = self.client.create_run(
                self.experiment_id, run_name=identity,
                tags={"mlflow.parentRunId": parent_id, "fleet_key": fleet_key, "identity": identity,
                      "kind": "identity", **outcome}).info.run_id
            if result.config:
                self._params(run_id, result.config)
        else:
            run_id = live
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in outcome.items()])
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in (result.metrics.scalars() if result.metrics else {}).items()]
        metrics += [Metric(f"time_{k}", float(v), now, 0) for k, v in result.timings.items() if v is not None]
        losses = run_dir / "losses.json"
        if live is None and losses.exists():  # no worker logged them as they came
            for row in json.loads(losses.read_text()):
                metrics += [Metric(f"loss_{k}", float(v), now, int(row["step"])) for k, v in row.items() if k != "step"]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
        for name in ("grid.png", "result.json", "losses.json"):
            if (run_dir / name).exists():
                self.client.log_artifact(run_id, str(run_dir / name))
        checkpoint = run_dir / CHECKPOINT
        if checkpoint.exists():
            if checkpoint.stat().st_size <= MAX_CHECKPOINT_ARTIFACT_MB * 1e6:
                self.client.log_artifact(run_id, str(checkpoint))
            self.client.set_tag(run_id, "checkpoint_uri", checkpoint.resolve().as_uri())
        self.client.set_terminated(run_id, status="FINISHED" if not failed else "FAILED")
        return run_id

    def log_audit(self, run_id: str, folder: Path, report: dict) -> None:
        """An erasure audit (run/audit.py) beside the identity's run: audit.json and audit.html under
        audit/, the best ID of each attack on G_u and G_s as metrics, the audit's verdict as tags."""
        for name in ("audit.json", "audit.html"):
            self.client.log_artifact(run_id, str(Path(folder) / name), "audit")
        now = int(time.time() * 1000)
        metrics = [Metric(f"audit_{attack}_{g}", float(report["attacks"][attack][g][key]), now, 0)
                   for attack, key in report["attack_values"].items() for g in ("g_u", "g_s")]
        curve = report["attacks"]["relearning"]
        metrics += [Metric(f"audit_relearning_curve_{g}", float(point["id_elsewhere"]), now, int(point["steps"]))
                    for g in ("g_u", "g_s") for point in curve[g]["curve"]]
        self.client.log_batch(run_id, metrics=metrics, tags=[
            RunTag("audit_verdict", report["audit_verdict"]), RunTag("audit_reason", report["audit_reason"][:5000]),
            RunTag("audit_broken_by", ";".join(report["broken_by"]))])

    def fleet_step(self, parent_id: str, step: int, values: dict[str, float]) -> None:
        """Sequential mode: what was measured after step ``step`` (ID of earlier identities, FID_pre)."""
        now = int(time.time() * 1000)
        self.client.log_batch(parent_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def _trial(self, sweep_key: str, trial_id: str):
        runs = self._find({"sweep_key": sweep_key, "trial_id": trial_id, "kind": "trial"})
        return runs[0] if runs else None

    def _trial_metrics(self, run_id: str, result: dict, timestamp_ms: int) -> None:
        """A trial report's numbers at step = its training_iteration."""
        step = int(result.get("training_iteration") or 0)
        metrics = [Metric(k, float(v), timestamp_ms, step) for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])

    def _new_trial(self, parent_id: str, sweep_key: str, trial_id: str, params: dict, status: str) -> str:
        run = self.client.create_run(self.experiment_id, run_name=trial_id,
                                     tags={"mlflow.parentRunId": parent_id, "sweep_key": sweep_key,
                                           "trial_id": trial_id, "kind": "trial", "status": status})
        self._params(run.info.run_id, params)
        return run.info.run_id

    def trial_report(self, parent_id: str, sweep_key: str, trial_id: str, params: dict, result: dict) -> str:
        """One report of a sweep trial, logged now (step = its training_iteration) to the trial's
        nested run: created by its first report with the sampled params, found again by a resumed
        trial (one resumed after an error is running again)."""
        run = self._trial(sweep_key, trial_id)
        if run is None:
            run_id = self._new_trial(parent_id, sweep_key, trial_id, params, "running")
        else:
            run_id = run.info.run_id
            if run.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
                self.client.set_tag(run_id, "status", "running")
        self._trial_metrics(run_id, result, int(time.time() * 1000))
        return run_id

    def trial_run(self, parent_id: str, sweep_key: str, trial_id: str, params: dict, result: dict,
                  status: str) -> str:
        """End a sweep trial's nested run with its ``status`` (FAILED for "error"): its last report
        logged unless ``trial_report`` already did, the run created when the trial never reported.
        Idempotent: a trial's run that has ended is left as it is, never logged twice."""
        run = self._trial(sweep_key, trial_id)
        if run is not None and run.info.status != "RUNNING":
            return run.info.run_id
        if run is None:
            run_id, last = self._new_trial(parent_id, sweep_key, trial_id, params, status), None
        else:
            run_id, last = run.info.run_id, run.data.metrics.get("training_iteration")
        iteration = result.get("training_iteration")
        if result and (last is None or iteration is None or int(last) != int(iteration)):
            self._trial_metrics(run_id, result, int(1000 * (result.get("timestamp") or time.time())))
        self.client.set_tag(run_id, "status", status)
        self.client.set_terminated(run_id, status="FAILED" if status == "error" else "FINISHED")
        return run_id

    def step_history(self, parent_id: str) -> dict[str, dict[int, float]]:
        """What ``fleet_step`` logged (with the parent's other metrics): {metric: {step: value}}; a
        step logged twice, by a rerun, keeps its latest value."""
        history = {}
        for key in self.client.get_run(parent_id).data.metrics:
            points = sorted(self.client.get_metric_history(parent_id, key), key=lambda m: m.timestamp)
            history[key] = {m.step: m.value for m in points}
        return history

    def register_generator(self, name: str, run_id: str, tags: dict[str, object],
                           checkpoint: str | Path | None = None, base_generator: str | None = None,
                           start_checkpoint: str | Path | None = None) -> str:
        """Register the unlearned generator of ``run_id`` as a version of ``name``; return the version.
        The version is an MLflow Model (pyfunc, guide_ray.mlflow_model) logged into the run as artifact
        path ``model``: ``checkpoint`` (default: the tag checkpoint_uri) on top of ``base_generator``
        (default: the tag base_generator), with ``start_checkpoint`` (the generator a fleet started
        from) merged under it. A run already registered under ``name`` keeps its version (a resumed
        fleet); a run whose model was logged before a crash is not logged again."""
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        from .mlflow_model import has_model, log_generator_model, model_source

        for version in self.client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
            return version.version
        if not self.client.search_registered_models(f"name = '{name}'"):
            self.client.create_registered_model(
                name, description="Unlearned generators made by guide_ray (GUIDE) from one base generator. "
                "Each version is an MLflow Model: mlflow.pyfunc.load_model('models:/NAME@ALIAS').predict("
                "{'seed': [1, 2]}) renders it, `guide-ray sample --generator models:/NAME@ALIAS` too; its "
                "tags name the identities, the base generator and the metrics. Promote the one you approve "
                "with an alias.")
        if not has_model(self.client, run_id):
            checkpoint = Path(checkpoint or url2pathname(urlparse(str(tags["checkpoint_uri"])).path))
            result = checkpoint.parent / "result.json"
            resolution = json.loads(result.read_text()).get("resolution") if result.exists() else None
            log_generator_model(self.client, run_id, checkpoint, str(base_generator or tags["base_generator"]),
                                str(tags.get("identities") or "").split(";"), resolution, start_checkpoint,
                                embed_checkpoint=checkpoint.stat().st_size <= MAX_CHECKPOINT_ARTIFACT_MB * 1e6)
        source = model_source(self.client, run_id)
        version = self.client.create_model_version(
            name, source=source, run_id=run_id, tags={k: str(v) for k, v in tags.items() if v is not None},
            await_creation_for=0)
        self.client.set_tag(run_id, "registered_model", f"{name} v{version.version}")
        return version.version

    def finish(self, parent_id: str, ok: bool, summary: dict[str, float], files: list[Path] = (),
               outcome: str | None = None) -> None:
        """End a parent run: its files, summary metrics and an ``outcome`` tag (default: all finished /
        some failed); FINISHED when ``ok``, else FAILED."""
        now = int(time.time() * 1000)
        for path in files:
            self.client.log_artifact(parent_id, str(path))
        self.client.log_batch(parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()],
                              tags=[RunTag("outcome", outcome or ("all finished" if ok else "some failed"))])
        self.client.set_terminated(parent_id, status=RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED))
