"""Sweeps with real Ray Tune, Optuna and ASHA on a tiny generator: trials run and some stop early,
MLflow holds every trial with every report, the Pareto file lists exactly the non-dominated trials,
a sweep interrupted mid-trial resumes that trial from its checkpoint without rerunning finished
ones, the exported generators are the trial's and its YAML is its config, the sweep runs
through `ray job submit`, the Optuna study can live in a database file; and sweeps that cannot run
are refused before Ray starts."""

import csv
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from guide_ray import sweep
from guide_ray.config import config_hash, load_config
from guide_ray.core.evaluate import identity_similarity
from guide_ray.core.inversion import random_source
from guide_ray.models import load_generator, load_identity_net
from guide_ray.models.checkpoint import read_metadata
from guide_ray.sweep.driver import unfit_resources
from tests.helpers import NETS, require_weights, wait_for

REPO = Path(__file__).resolve().parents[1]
QUICK_BASE = "iterations: 8\ncheckpoint_every: 4\nlatent_pool: 4\ninversion: {steps: 4}\n"
# The tiny random generator draws no faces (FaceNet sees its grey images as one person, ID ~0.99999
# whatever a trial does) and holds no photo, so none of its identities can be erased at the real
# thresholds. These tests are of the sweep's machinery: its seeds' verdicts use opened-up thresholds,
# every image a face (dlib-mmod scores -1 when it finds none) and any ID below 1 erased (lr from 1e-3:
# at 1e-4 the tiny generator barely moves and its ID rounds to 1.0000001). The verdict's own tests
# are in test_verdict.py; the Pareto front's exclusion of un-erased trials in test_tracking.py.
QUICK_SET = {"evaluation.fid_samples": 8, "evaluation.fid_batch": 8, "evaluation.reinversion": False,
             "evaluation.face_threshold": -2.0, "evaluation.id_threshold": 1.0, "evaluation.face_samples": 0,
             "target_face_check": False}


def write_sweep(folder: Path, generator: Path, **changes) -> Path:
    (folder / "ids.csv").write_text("id,image,seed,others\ns3,,3,\ns4,,4,\n")
    (folder / "configs").mkdir(exist_ok=True)
    (folder / "configs" / "base.yaml").write_text(QUICK_BASE)  # relative to the sweep file, read by the driver
    spec = {"name": "tiny", "generator": str(generator), "ids": "ids.csv", "base_config": "configs/base.yaml",
            "set": QUICK_SET,
            "space": {"d": {"low": 2.0, "high": 80.0, "log": True}, "lambda_global": {"low": 0.1, "high": 10.0,
                                                                                      "log": True},
                      "lr": {"low": 1e-3, "high": 3e-2, "log": True}},
            "objectives": ["unlearning", "preservation"], "num_samples": 8, "max_concurrent": 2, "report_every": 2,
            "asha": {"grace_period": 1, "reduction_factor": 2}, "proxy_samples": 4, "seed": 1, **changes}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def mlflow_trials(out: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(sweep.EXPERIMENT)
    return client.search_runs([exp.experiment_id], "tags.kind = 'trial'", max_results=1000) if exp else []


def trial_progress(out: Path) -> dict[str, tuple[str, int | None]]:
    """{trial id: (its MLflow run's status, its latest training_iteration)}, read without locking."""
    db = out / "mlflow.db"
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            rows = con.execute(
                "select t.value, r.status, (select m.value from latest_metrics m where m.run_uuid = r.run_uuid "
                "and m.key = 'training_iteration') from runs r "
                "join tags k on k.run_uuid = r.run_uuid and k.key = 'kind' and k.value = 'trial' "
                "join tags t on t.run_uuid = r.run_uuid and t.key = 'trial_id' "
                "where r.lifecycle_stage = 'active'").fetchall()
    except sqlite3.Error:
        return {}
    return {trial: (status, None if it is None else int(it)) for trial, status, it in rows}


def history(client: MlflowClient, run_id: str, key: str) -> list:
    """A metric's points in the order they were logged."""
    return sorted(client.get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.step))


@pytest.mark.slow
@pytest.mark.weights
def test_sweep_interrupted_mid_trial_resumed_pareto_mlflow_and_export(tiny_generator, tmp_path):
    require_weights(*NETS)
    config = write_sweep(tmp_path, tiny_generator)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "guide_ray.sweep", "--config", str(config), "--out", str(out), "--ray-address",
           "local", "--quiet"]
    # 1. Interrupt the driver (SIGINT) once two trials have finished and another is mid-way: it has
    #    reported, and not since 2 s (Tune checkpoints it right after a report), but has not finished.
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: dict[tuple[str, int], float] = {}

    def caught_mid_trial() -> bool:
        if driver.poll() is not None:
            return True
        state = trial_progress(out)
        now = time.time()
        for trial, (status, iteration) in state.items():
            if status == "RUNNING" and iteration:
                seen.setdefault((trial, iteration), now)
        return sum(status == "FINISHED" for status, _ in state.values()) >= 2 and any(
            status == "RUNNING" and iteration and now - seen[trial, iteration] >= 2
            for trial, (status, iteration) in state.items())

    try:
        wait_for(caught_mid_trial, 1200, "two finished trials and one mid-way")
    finally:
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=180)
    before = {r.data.tags["trial_id"]: r for r in mlflow_trials(out)}
    assert driver.returncode == 130 and "run the same command again to resume" in err, err[-3000:]
    finished_before = {t for t, r in before.items() if r.info.status == "FINISHED"}
    interrupted = {t: int(r.data.metrics["training_iteration"]) for t, r in before.items()
                   if r.info.status == "RUNNING" and "training_iteration" in r.data.metrics}
    assert len(finished_before) >= 2 and interrupted, {t: r.info.status for t, r in before.items()}
    assert len(finished_before) < 8, "the sweep ended before it could be interrupted"

    # 2. Resume it and export the best trial (its configuration and its generators).
    exported = tmp_path / "best.yaml"
    restarted = time.time()
    done = subprocess.run(cmd + ["--export-best", str(exported)], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "resuming the sweep" in done.stderr
    rows = read_csv(out / "trials.csv")
    assert len(rows) == 8 and len({r["trial"] for r in rows}) == 8
    runs = {r.data.tags["trial_id"]: r for r in mlflow_trials(out)}
    assert sorted(runs) == sorted(r["trial"] for r in rows)  # MLflow holds every trial, once
    by_trial = {r["trial"]: r for r in rows}
    for trial_id in finished_before:  # trials finished before the interruption were not run again
        assert runs[trial_id].info.run_id == before[trial_id].info.run_id
        assert float(by_trial[trial_id]["started_at"]) == pytest.approx(before[trial_id].data.metrics["started_at"])
    for row in rows:
        assert set(sweep.load_sweep(config).space) <= set(runs[row["trial"]].data.params)
        assert runs[row["trial"]].data.tags["status"] == row["status"]
        assert runs[row["trial"]].info.status == "FINISHED"

    # Every report is in the trial's MLflow run, at step = training_iteration, in the order they came.
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    for row in rows:
        points = history(client, runs[row["trial"]].info.run_id, "training_iteration")
        assert [m.step for m in points] == [int(m.value) for m in points] == list(range(1, int(row["reports"]) + 1))
        assert len({m.timestamp for m in points}) == len(points)
        assert [m.step for m in history(client, runs[row["trial"]].info.run_id, "progress_score")] == \
            [m.step for m in points]

    # The trial caught mid-way resumed from its checkpoint: in its own run, the first report after the
    # restart is the next block (training_iteration and the LTU step go on), not a new start at 1.
    for trial_id, last in interrupted.items():
        run_id = runs[trial_id].info.run_id
        assert run_id == before[trial_id].info.run_id
        points = history(client, run_id, "training_iteration")
        earlier = [int(m.value) for m in points if m.timestamp < restarted * 1000]
        later = [int(m.value) for m in points if m.timestamp >= restarted * 1000]
        assert earlier == list(range(1, last + 1)) and later and later[0] == last + 1, (earlier, later)
        steps = [int(m.value) for m in history(client, run_id, "step") if m.timestamp >= restarted * 1000]
        assert steps[0] == 2 * (last + 1)  # report_every 2: LTU iterations 2 (last + 1)
        assert len({m.value for m in history(client, run_id, "started_at")}) == 1  # the trial's own start kept

    # ASHA stopped some trials after fewer reports; the others reported 4 times (8 iterations / 2).
    # How many complete depends on the order trials reach each rung; the first to reach a rung always
    # goes on, so at least one completes.
    complete = [r for r in rows if r["status"] == "complete"]
    stopped = [r for r in rows if r["status"] == "stopped early"]
    assert stopped and complete, [(r["status"], r["reports"]) for r in rows]
    assert all(int(r["reports"]) < 4 for r in stopped) and all(int(r["reports"]) == 4 for r in complete)

    # The Pareto file lists exactly the trials that erased both identities (here all, see QUICK_SET) and
    # that no other such trial dominates.
    feasible = [r for r in complete if r["erased"] == "2"]
    assert feasible == complete, [(r["lr"], r["erased"]) for r in complete]

    def point(r):
        return float(r["unlearning"]), float(r["preservation"])

    def dominated(r):
        return any(point(o)[0] <= point(r)[0] and point(o)[1] <= point(r)[1] and point(o) != point(r)
                   for o in feasible)

    front = {r["trial"] for r in read_csv(out / "pareto.csv")}
    assert front == {r["trial"] for r in feasible if not dominated(r)}
    assert (out / "pareto.png").stat().st_size > 10_000
    parent = runs[rows[0]["trial"]].data.tags["mlflow.parentRunId"]
    assert {"pareto.png", "pareto.csv", "trials.csv"} <= {a.path for a in client.list_artifacts(parent)}

    # The same --out with another search space is refused (it would silently resume the old one).
    (tmp_path / "other").mkdir()
    other = write_sweep(tmp_path / "other", tiny_generator, space={"d": {"low": 1.0, "high": 5.0}})
    assert sweep.main(["--config", str(other), "--out", str(out)]) == 2

    # 3. The exported configuration is the front's lowest score; its generators, taken from the trial's
    #    final checkpoint, are what the trial evaluated (they reproduce its ID), and the YAML is its config.
    best = min((r for r in complete if r["trial"] in front), key=lambda r: float(r["score"]))
    cfg = yaml.safe_load(exported.read_text())
    assert cfg["d"] == pytest.approx(float(best["d"])) and cfg["lr"] == pytest.approx(float(best["lr"]))
    g_s = load_generator(str(tiny_generator), "cpu")
    facenet = load_identity_net("facenet-vggface2", "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trial (one CPU) computed it
    try:
        for identity, seed in (("s3", 3), ("s4", 4)):
            path = tmp_path / "best" / identity / "checkpoint.safetensors"
            meta = read_metadata(path)
            assert (meta["trial"], meta["identity"], meta["step"]) == (best["trial"], identity, "8")
            g_u = load_generator(str(tiny_generator), "cpu", checkpoint=path)
            assert any(not torch.equal(a, b) for a, b in zip(g_u.parameters(), g_s.parameters()))
            with torch.no_grad():
                id_now = float(identity_similarity(facenet, g_s, g_u, random_source(g_s, seed))[0])
            assert id_now == pytest.approx(runs[best["trial"]].data.metrics[f"id_{identity}"], abs=1e-7)
    finally:
        torch.set_num_threads(threads)
    # the exported file, read as the fleet reads --config, is exactly the configuration the trial ran
    assert config_hash(load_config(exported)) == meta["config_hash"]


@pytest.mark.slow
@pytest.mark.weights
def test_sweep_through_ray_job_submit(cluster, tiny_generator, tmp_path):
    config = write_sweep(tmp_path, tiny_generator, num_samples=2, asha=False, include_defaults=False)
    out = tmp_path / "out"
    cmd = [cluster["ray"], "job", "submit", "--address", cluster["jobs"], "--working-dir", str(REPO), "--",
           "python", "-m", "guide_ray.sweep", "--config", str(config), "--out", str(out), "--quiet"]
    done = subprocess.run(cmd, env=cluster["env"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    rows = read_csv(out / "trials.csv")
    assert [r["status"] for r in rows] == ["complete", "complete"]
    assert len(mlflow_trials(out)) == 2


@pytest.mark.parametrize("change, message", [
    ({"space": {"d": {"low": 1, "high": 5}, "lambda_foo": {"low": 0, "high": 1}}}, "unknown key 'space.lambda_foo'"),
    ({"space": {"id_metric_net": {"choices": ["facenet-vggface2"]}}},
     "unknown key 'space.id_metric_net' (the ID metric measures the objectives)"),
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"space": {"d": {"low": 40, "high": 5}}}, "space.d: low (40) is greater than high (5)"),
    ({"space": {"d": {"low": 1, "high": float("inf")}}}, "space.d.high: a range's bounds are finite numbers"),
    ({"space": {"d": {"low": 1, "high": "x"}}}, "space.d.high: expected a number"),
    ({"space": {"iterations": {"low": 4, "high": 8.5}}}, "space.iterations.high: expected an integer"),
    ({"space": {"d": {"low": 1, "hi": 5}}}, "unknown key 'space.d.hi'"),
    ({"space": {"target": {"low": 0, "high": 1}}}, "space.target: target is not a number"),
    ({"space": {"use_global": {"choices": [True, "maybe"]}}}, "space.use_global.choices: expected true or false"),
    ({"space": {"target": {"choices": ["average", "median"]}}}, "space.target.choices: 'median' is not one of"),
    # range rules are GuideConfig.validate's, on every corner of the space
    ({"space": {"lambda_adj": {"low": -1, "high": 2}}},
     "space.lambda_adj.low: lambda_adj = -1.0 makes an invalid configuration: lambda_adj must be >= 0"),
    ({"space": {"lambda_id": {"choices": [0.1, -0.5]}}},
     "space.lambda_id.choices: lambda_id = -0.5 makes an invalid configuration: lambda_id must be >= 0"),
    ({"space": {"lr": {"low": 0, "high": 1e-3}}}, "space.lr.low: lr = 0.0 makes an invalid configuration: lr must be > 0"),
    ({"space": {"iterations": {"low": 0, "high": 8}}}, "space.iterations.low: iterations = 0 makes an invalid"),
    ({"space": {"use_local": {"choices": [True, False]}, "use_adjacency": {"choices": [False]},
                "use_global": {"choices": [True, False]}}},
     "space: the corner use_adjacency = False, use_global = False, use_local = False makes an invalid configuration: "
     "at least one of use_local"),
    ({"space": {"lambda_l2": {"low": 0, "high": 1, "log": True}}}, "space.lambda_l2: a log range must lie above 0"),
    ({"objectives": ["unlearning", "speed"]}, "objectives:"),
    ({"set": {"lambda_idd": 1}}, "unknown config key 'lambda_idd'"),
    # ASHA's first rung after more reports than the longest trial makes (Ray: "grace_period must be <= max_t!")
    ({"asha": {"grace_period": 5, "reduction_factor": 2}},
     "asha.grace_period (5) is more than the 4 report(s) of the longest trial (iterations 8 / report_every 2)"),
    ({"space": {"iterations": {"low": 2, "high": 4}}, "asha": {"grace_period": 3}},
     "asha.grace_period (3) is more than the 2 report(s) of the longest trial (iterations 4 / report_every 2)"),
    ({"asha": {"grace_period": 1, "reduction_factor": 1}}, "asha.reduction_factor: must be > 1"),
    ({"asha": {"grace_period": 0}}, "asha.grace_period: must be at least 1"),
    ({"asha": {"grace": 1}}, "unknown config key 'asha.grace'"),
    ({"asha": {"grace_period": 1.5}}, "asha.grace_period: expected an integer"),
    ({"num_samples": 0}, "num_samples: must be at least 1"),
    ({"report_every": 0}, "report_every: must be at least 1"),
    ({"max_concurrent": "two"}, "max_concurrent: expected an integer"),
    ({"fid_weight": -0.1}, "fid_weight: must be a number >= 0"),
    ({"drift_weight": "x"}, "drift_weight: expected a number"),
    ({"searcher": "random"}, "searcher: 'random' is not one of"),
    ({"include_defaults": "yes"}, "include_defaults: expected true or false"),
    ({"resources": {"cpu": -1}}, "resources: amounts are finite and not negative"),
    ({"resources": {"gpus": 1}}, "unknown config key 'resources.gpus'"),
    ({"optuna_storage": "not a database"}, "optuna_storage: 'not a database' is not a database URL"),
    ({"optuna_storage": "sqlite://"}, "optuna_storage: 'sqlite://' is an in-memory database"),
    ({"ids": "missing.csv"}, "ids: "),
    ({}, "generator: "),  # this one's generator is no file and no known name
])
def test_bad_sweep_is_refused_before_ray_starts(tmp_path, change, message, capsys):
    config = write_sweep(tmp_path, tmp_path / "missing-generator.pt", **change)
    with pytest.raises(sweep.SweepError, match=re.escape(message)):
        sweep.load_sweep(config)
    assert sweep.main(["--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert message.split(":")[0] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing started
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()


def test_ids_rows_are_checked_before_ray_starts(tmp_path, tiny_generator):
    config = write_sweep(tmp_path, tiny_generator)
    (tmp_path / "ids.csv").write_text("id,image,seed,others\nP1,missing.jpg,,\n")
    with pytest.raises(sweep.SweepError, match=r"(?s)ids: .*1 bad row.*line 2 \(P1\): .*missing.jpg: file not found"):
        sweep.load_sweep(config)


def test_dcgan_sweep_with_fewer_reports_than_ashas_grace_period_is_refused(tmp_path, capsys):
    # 40 iterations at report_every 50: one report, where asha.grace_period is 2; Ray would die in ASHA
    # ("grace_period must be <= max_t!") after inverting the photos.
    argv = ["--config", str(REPO / "jobs/sweep/dcgan-cpu.yaml"), "--set", "set.iterations=40", "--out",
            str(tmp_path / "out")]
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err
    assert all(key in err for key in ("asha.grace_period", "report_every", "iterations")), err
    assert not (tmp_path / "out").exists()


def test_sweep_ranges_agree_with_guide_config(tmp_path, tiny_generator):
    # GuideConfig allows alpha_max = 0 (no neighbours' spread), so the sweep does too; any searchable key
    # is typed as GuideConfig types it (iterations: integers; use_global: booleans).
    s = sweep.load_sweep(write_sweep(tmp_path, tiny_generator, space={
        "alpha_max": {"low": 0, "high": 5}, "iterations": {"low": 4, "high": 8},
        "use_global": {"choices": [True, False]}}, resources={"cpu": 2}, asha=False))
    assert s.space["alpha_max"].low == 0.0 and s.space["iterations"].integer and not s.space["alpha_max"].integer
    assert s.space["use_global"].choices == [True, False] and s.max_iterations == 8 and s.asha is None
    assert s.resources == {"cpu": 2.0, "gpu": 0.0}
    assert s.config({"alpha_max": 0.0, "iterations": 4, "use_global": False}).alpha_max == 0.0


def test_resources_the_cluster_cannot_give_are_refused():
    # checked once Ray is up (the cluster's resources are known only then), before anything is scheduled
    assert "resources.gpu: a trial asks for 1 GPU, but the Ray cluster has 0" in \
        unfit_resources({"cpu": 1, "gpu": 1}, {"CPU": 2.0}, autoscaling=False)
    assert "resources.cpu" in unfit_resources({"cpu": 4}, {"CPU": 2.0}, autoscaling=False)
    assert unfit_resources({"cpu": 2, "gpu": 0.5}, {"CPU": 2.0, "GPU": 1.0}, autoscaling=False) is None
    assert unfit_resources({"cpu": 1, "gpu": 1}, {"CPU": 2.0}, autoscaling=True) is None  # nodes can come


def test_optuna_storage_keeps_the_study_in_its_file(tmp_path, tiny_generator):
    import optuna

    from guide_ray.sweep.search import searcher

    config = write_sweep(tmp_path, tiny_generator, optuna_storage="sqlite:///studies/optuna.db",
                         space={"d": {"low": 2.0, "high": 80.0, "log": True}})
    s = sweep.load_sweep(config)
    db = tmp_path / "studies" / "optuna.db"  # relative to the sweep file
    assert s.optuna_storage == f"sqlite:///{db}" and s.fingerprint()["optuna_storage"] == s.optuna_storage
    search = searcher(s, "tiny-0123")
    search.set_search_properties(None, None, {k: p.domain() for k, p in s.space.items()})
    first = search.suggest("trial_1")
    assert db.is_file()
    study = optuna.load_study(study_name="tiny-0123", storage=s.optuna_storage)
    assert [t.params for t in study.trials] == [first]
    assert first == {k: s.base[k] for k in s.space}  # the base configuration is evaluated first


def test_trial_reports_go_to_one_run_per_trial_and_ended_runs_stay_ended(tmp_path):
    from guide_ray.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts", sweep.EXPERIMENT)
    parent = tracker.parent_run("sweep", "k1", "sweep k1", {}, {})
    first = tracker.trial_report(parent, "k1", "t1", {"d": 3.0}, {"training_iteration": 1, "id_now": 0.9})
    assert tracker.trial_report(parent, "k1", "t1", {"d": 3.0}, {"training_iteration": 2, "id_now": 0.8}) == first
    run = tracker.client.get_run(first)
    assert run.info.status == "RUNNING" and run.data.params == {"d": "3.0"} and run.data.tags["status"] == "running"
    # a resumed trial (a new driver, a new Tracker) reports on in its run, then ends it with its last report
    again = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts", sweep.EXPERIMENT)
    final = {"training_iteration": 3, "id_now": 0.7, "unlearning": 0.5, "done": True}
    assert again.trial_report(parent, "k1", "t1", {"d": 3.0}, final) == first
    assert again.trial_run(parent, "k1", "t1", {"d": 3.0}, final, "complete") == first
    assert again.trial_run(parent, "k1", "t1", {"d": 3.0}, {**final, "training_iteration": 4}, "complete") == first
    points = history(again.client, first, "id_now")
    assert [(m.step, m.value) for m in points] == [(1, 0.9), (2, 0.8), (3, 0.7)]  # nothing logged twice
    run = again.client.get_run(first)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "complete" and "done" not in run.data.metrics
    # a trial that failed before reporting still gets its (FAILED) run, once
    failed = again.trial_run(parent, "k1", "t2", {"d": 4.0}, {}, "error")
    assert again.trial_run(parent, "k1", "t2", {"d": 4.0}, {}, "error") == failed
    assert again.client.get_run(failed).info.status == "FAILED"
    assert len(mlflow_trials(tmp_path)) == 2


def test_pareto_front_keeps_exactly_the_non_dominated():
    rows = [{"t": i, "unlearning": u, "preservation": p} for i, (u, p) in
            enumerate([(0.1, 9.0), (0.2, 5.0), (0.3, 5.0), (0.15, 9.5), (0.4, 1.0), (0.4, 1.0), (0.5, 2.0)])]
    assert [r["t"] for r in sweep.pareto_front(rows)] == [0, 1, 4, 5]
