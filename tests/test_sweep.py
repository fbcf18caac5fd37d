"""Sweeps with real Ray Tune, Optuna and ASHA on a tiny generator: trials run and some stop early,
MLflow holds every trial, the Pareto file lists exactly the non-dominated trials, an interrupted
sweep resumes without rerunning finished trials, the exported YAML runs in the fleet, the sweep
runs through `ray job submit`; and bad search spaces are refused before any trial starts."""

import csv
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from guide_ray import fleet, sweep
from tests.conftest import NETS, require_weights, wait_for

REPO = Path(__file__).resolve().parents[1]
QUICK_BASE = "iterations: 8\ncheckpoint_every: 4\nlatent_pool: 4\ninversion: {steps: 4}\n"
# The tiny random generator draws no faces (FaceNet sees its grey images as one person, ID ~0.99999
# whatever a trial does) and holds no photo, so none of its identities can be erased at the real
# thresholds. These tests are of the sweep's machinery: its seeds' verdicts use opened-up thresholds,
# every image a face (dlib-mmod scores -1 when it finds none) and any ID below 1 erased (lr from 1e-3:
# at 1e-4 the tiny generator barely moves and its ID rounds to 1.0000001). The verdict's own tests
# are in test_verdict.py; the Pareto front's exclusion of un-erased trials in test_tracking.py.
QUICK_SET = {"evaluation.fid_samples": 16, "evaluation.fid_batch": 8, "evaluation.reinversion": False,
             "evaluation.face_threshold": -2.0, "evaluation.id_threshold": 1.0, "evaluation.face_samples": 0}


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


def finished_trial_runs(out: Path) -> int:
    db = out / "mlflow.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("select count(*) from runs r join tags t on r.run_uuid = t.run_uuid "
                               "where t.key = 'kind' and t.value = 'trial' and r.status = 'FINISHED'").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.weights
def test_sweep_interrupted_resumed_pareto_mlflow_and_export_to_fleet(tiny_generator, tmp_path):
    require_weights(*NETS)
    config = write_sweep(tmp_path, tiny_generator)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "guide_ray.sweep", "--config", str(config), "--out", str(out), "--ray-address",
           "local", "--quiet"]
    # 1. Interrupt the driver (SIGINT) once two trials have finished and been logged.
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: finished_trial_runs(out) >= 2 or driver.poll() is not None, 600, "two finished trials")
    finally:
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=180)
    before = {r.data.tags["trial_id"]: r for r in mlflow_trials(out)}
    assert len(before) >= 2, err[-3000:]
    assert driver.returncode == 130 and "run the same command again to resume" in err, err[-3000:]
    assert len(before) < 8, "the sweep ended before it could be interrupted"

    # 2. Resume it and export the best configuration.
    exported = tmp_path / "best.yaml"
    done = subprocess.run(cmd + ["--export-best", str(exported)], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "resuming the sweep" in done.stderr
    rows = read_csv(out / "trials.csv")
    assert len(rows) == 8 and len({r["trial"] for r in rows}) == 8
    runs = {r.data.tags["trial_id"]: r for r in mlflow_trials(out)}
    assert sorted(runs) == sorted(r["trial"] for r in rows)  # MLflow holds every trial, once
    by_trial = {r["trial"]: r for r in rows}
    for trial_id, run in before.items():  # trials finished before the interruption were not run again
        assert runs[trial_id].info.run_id == run.info.run_id
        assert float(by_trial[trial_id]["started_at"]) == pytest.approx(run.data.metrics["started_at"])
    for row in rows:
        assert set(sweep.load_sweep(config).space) <= set(runs[row["trial"]].data.params)
        assert runs[row["trial"]].data.tags["status"] == row["status"]

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
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    parent = runs[rows[0]["trial"]].data.tags["mlflow.parentRunId"]
    assert {"pareto.png", "pareto.csv", "trials.csv"} <= {a.path for a in client.list_artifacts(parent)}

    # The same --out with another search space is refused (it would silently resume the old one).
    (tmp_path / "other").mkdir()
    other = write_sweep(tmp_path / "other", tiny_generator, space={"d": {"low": 1.0, "high": 5.0}})
    assert sweep.main(["--config", str(other), "--out", str(out)]) == 2

    # 3. The exported configuration is the front's lowest score, and the fleet runs it.
    best = min((r for r in complete if r["trial"] in front), key=lambda r: float(r["score"]))
    cfg = yaml.safe_load(exported.read_text())
    assert cfg["d"] == pytest.approx(float(best["d"])) and cfg["lr"] == pytest.approx(float(best["lr"]))
    ids = tmp_path / "fleet.csv"
    ids.write_text("id,image,seed,others\ns3,,3,\n")
    assert fleet.main([str(ids), "--generator", str(tiny_generator), "--config", str(exported), "--out",
                       str(tmp_path / "fleet"), "--ray-address", "local", "--no-progress"]) == 0  # s3 erased again


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
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"space": {"d": {"low": 40, "high": 5}}}, "space.d: low (40) is greater than high (5)"),
    ({"space": {"lambda_adj": {"low": -1, "high": 2}}}, "lambda_adj is a weight or size and cannot be negative"),
    ({"space": {"lambda_id": {"choices": [0.1, -0.5]}}}, "space.lambda_id.choices: -0.5 is negative"),
    ({"space": {"lr": {"low": 0, "high": 1e-3, "log": True}}}, "space.lr.low: lr must be > 0"),
    ({"space": {"lambda_l2": {"low": 0, "high": 1, "log": True}}}, "space.lambda_l2: a log range must lie above 0"),
    ({"space": {"d": {"low": 1, "high": "x"}}}, "space.d.high: expected a number"),
    ({"objectives": ["unlearning", "speed"]}, "objectives:"),
    ({"set": {"lambda_idd": 1}}, "unknown config key 'lambda_idd'"),
])
def test_bad_search_space_is_refused_before_any_trial(tmp_path, change, message, capsys):
    config = write_sweep(tmp_path, tmp_path / "no-generator-needed.pt", **change)
    with pytest.raises(sweep.SweepError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sweep.load_sweep(config)
    assert sweep.main(["--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert message.split(":")[0] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing started


def test_pareto_front_keeps_exactly_the_non_dominated():
    rows = [{"t": i, "unlearning": u, "preservation": p} for i, (u, p) in
            enumerate([(0.1, 9.0), (0.2, 5.0), (0.3, 5.0), (0.15, 9.5), (0.4, 1.0), (0.4, 1.0), (0.5, 2.0)])]
    assert [r["t"] for r in sweep.pareto_front(rows)] == [0, 1, 4, 5]
