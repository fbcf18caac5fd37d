"""The sweep's driver: inverts the identities once, runs (or resumes) the Tune experiment (each
trial checkpointed after every report, so an interrupted trial resumes where it was), writes and
logs the results."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from .results import trial_rows, write_results
from .callback import EXPERIMENT, tune_callback
from .search import searcher
from .spec import Sweep, SweepError


class SweepInterrupted(RuntimeError):
    """The sweep stopped before every trial ended (Ctrl-C); its state is saved for a rerun."""


def unfit_resources(resources: dict, cluster: dict, autoscaling: bool) -> str | None:
    """Why no trial (nor the inversion task) could ever be scheduled: it asks for more CPUs or GPUs
    than the whole cluster has, and no autoscaler can add nodes; else None."""
    if autoscaling:
        return None
    for key, name in (("gpu", "GPU"), ("cpu", "CPU")):
        if resources.get(key, 0) > cluster.get(name, 0):
            return (f"resources.{key}: a trial asks for {resources[key]:g} {name}, but the Ray cluster has "
                    f"{cluster.get(name, 0):g}; give resources: {{cpu: N, gpu: F}} that fit, or run on a "
                    f"cluster with {name}s")
    return None


def run_sweep(sweep: Sweep, ray_address: str | None = None, tracking_uri: str | None = None,
              verbose: int = 1) -> tuple[list[dict], list[dict], str]:
    """Run (or resume) the sweep; returns all trials, the Pareto front and the MLflow parent run id."""
    import ray
    from ray import tune

    from ..ray_session import ray_session, worker_env
    from ..run.ids import read_ids
    from ..tracking import Tracker, resolve_uri
    from .trainable import Trial, invert_all

    out = sweep.out_dir
    saved, fingerprint = out / "sweep.json", json.loads(json.dumps(sweep.fingerprint()))
    if saved.exists() and json.loads(saved.read_text()) != fingerprint:
        raise SweepError(f"{out} holds a different sweep (another space, base config or settings); "
                         "resume it with its own file, or give another --out")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(fingerprint, indent=2))
    identities, _ = read_ids(sweep.ids)
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    sweep_key = f"{sweep.name}-{digest}"
    uri = resolve_uri(tracking_uri, out)
    tracker = Tracker(uri, out / "mlartifacts", EXPERIMENT)
    parent = tracker.parent_run("sweep", sweep_key, f"sweep {sweep_key}",
                                {"generator": sweep.generator, "ids": str(sweep.ids), "objectives": sweep.objectives,
                                 "space": {k: vars(p) for k, p in sweep.space.items()}, "base": sweep.base},
                                {"generator": Path(sweep.generator).name})
    # Intermediate reports carry ASHA's progress_score, not the searcher's objectives (final only).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # A trial checkpoints after every report and Tune then snapshots the experiment, as it should here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    with ray_session(ray_address):
        gpu = ray.cluster_resources().get("GPU", 0) > 0
        resources = sweep.resources or ({"cpu": 1, "gpu": 1} if gpu else {"cpu": 1})
        # an autoscaling cluster (started by the cluster launcher) can add the nodes a trial needs
        problem = unfit_resources(resources, ray.cluster_resources(),
                                  Path("~/ray_bootstrap_config.yaml").expanduser().exists())
        if problem:
            raise SweepError(problem)
        print(f"sweep {sweep.name}: {len(identities)} identities, {sweep.num_samples} trials, "
              f"objectives {sweep.objectives}, trial resources {resources}", file=sys.stderr)
        invert = ray.remote(invert_all).options(num_cpus=resources.get("cpu", 1), num_gpus=resources.get("gpu", 0),
                                                runtime_env=worker_env())
        sources = ray.get(invert.remote(sweep, identities))
        trainable = tune.with_resources(
            tune.with_parameters(Trial, sweep=sweep, identities=identities, sources=sources), resources)
        storage = out / "tune"
        if tune.Tuner.can_restore(storage / sweep.name):
            print(f"resuming the sweep in {storage / sweep.name}", file=sys.stderr)
            tuner = tune.Tuner.restore(str(storage / sweep.name), trainable, resume_errored=True)
        else:
            scheduler = None
            if sweep.asha:
                from ray.tune.schedulers import ASHAScheduler

                scheduler = ASHAScheduler(metric="progress_score", mode="min",
                                          max_t=sweep.reports(sweep.max_iterations), **sweep.asha)
            tuner = tune.Tuner(
                trainable, param_space={k: p.domain() for k, p in sweep.space.items()},
                # reuse_actors: a trial's actor runs the next trial with the networks it has loaded
                tune_config=tune.TuneConfig(search_alg=searcher(sweep, sweep_key), scheduler=scheduler,
                                            num_samples=sweep.num_samples, max_concurrent_trials=sweep.max_concurrent,
                                            reuse_actors=True),
                run_config=tune.RunConfig(
                    name=sweep.name, storage_path=str(storage), verbose=verbose,
                    # after every report, so a trial stopped mid-way resumes there; the last one is exported
                    checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, num_to_keep=1,
                                                            checkpoint_at_end=True),
                    callbacks=[tune_callback(uri, out / "mlartifacts", sweep_key, parent, list(sweep.space))]))
        grid = tuner.fit()
    ended = grid.num_terminated + grid.num_errors
    if ended < sweep.num_samples:
        raise SweepInterrupted(f"interrupted with {ended} of {sweep.num_samples} trials ended; the state is saved "
                               f"in {out / 'tune' / sweep.name}: run the same command again to resume")
    rows = trial_rows(grid, sweep.space)
    for row, result in zip(rows, grid):  # trials the callback missed (a crash between end and log)
        tracker.trial_run(parent, sweep_key, row["trial"], {k: row[k] for k in sweep.space}, result.metrics or {},
                          row["status"])
    front, files = write_results(sweep, rows, out)
    complete = sum(r["status"] == "complete" for r in rows)
    tracker.finish(parent, complete > 0, {"trials": len(rows), "trials_complete": complete,
                                          "trials_stopped_early": sum(r["status"] == "stopped early" for r in rows),
                                          "pareto_size": len(front)}, files)
    return rows, front, parent
