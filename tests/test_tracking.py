"""MLflow review: fleets logging over HTTP to a real `mlflow server` (tracking/server.sh), read back
with MlflowClient (runs, metrics, grids, the fleet's summary and plots, registered generators);
the review files themselves (guide_ray.review) without a server; the one tracking setting."""

import csv
import io
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from guide_ray import fleet, review
from guide_ray.models.checkpoint import apply_checkpoint
from guide_ray.models import load_generator
from guide_ray.sweep.results import pick, write_results
from guide_ray.sweep.spec import SweepError
from guide_ray.tracking import is_server, model_name, resolve_uri

REPO = Path(__file__).resolve().parents[1]
IDS = ("P001", "s1")


def _png(client: MlflowClient, run_id: str, path: str, dst: Path) -> Image.Image:
    local = client.download_artifacts(run_id, path, str(dst))
    image = Image.open(local)
    assert image.format == "PNG", path
    return image


RED, BLUE, ORANGE = (214, 39, 40), (31, 119, 180), (255, 127, 14)  # matplotlib's tab:red, tab:blue, tab:orange


def _pixels(path: Path, rgb: tuple[int, int, int]) -> int:
    """How many pixels of the image at ``path`` are within 20 levels of ``rgb``."""
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(image - np.array(rgb)).max(axis=-1) <= 20).sum())


def _runs(client: MlflowClient, experiment_id: str, query: str) -> list:
    return client.search_runs([experiment_id], query, max_results=100)


def _grid_size(cols: int, rows: int) -> tuple[int, int]:
    return cols * review.TILE, review.TITLE_H + rows * (review.LABEL_H + review.TILE)


# --- against the real server --------------------------------------------------------------------

@pytest.mark.slow
def test_fleets_log_over_http_and_read_back(mlflow_fleet, tmp_path, monkeypatch):
    client = MlflowClient(tracking_uri=mlflow_fleet["uri"])
    exp = client.get_experiment_by_name(mlflow_fleet["experiment"])
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # the server's store, reached over HTTP
    assert not (mlflow_fleet["out"] / "mlflow.db").exists() and not (mlflow_fleet["out"] / "mlartifacts").exists()
    parents = {r.data.tags["mode"]: r for r in _runs(client, exp.experiment_id, "tags.kind = 'fleet'")}
    assert sorted(parents) == ["parallel", "sequential"]
    name = model_name(str(mlflow_fleet["generator"]))
    assert name == "guide_ray-tiny_dcgan"
    versions = client.search_model_versions(f"name = '{name}'")

    for mode, parent in parents.items():
        # every identity ran; none was erased (a tiny random generator draws no face), so the fleet failed
        assert parent.info.status == "FAILED" and parent.data.metrics["identities_finished"] == 2
        assert parent.data.tags["outcome"] == "0 of 2 erased"
        assert parent.data.metrics["identities_not_represented"] == 1  # P001's photo: not in the generator
        assert parent.data.metrics["identities_face_destroyed"] == 1  # s1: G_u(w_u) is no face
        key = parent.data.tags["fleet_key"]
        runs = {r.data.tags["identity"]: r for r in _runs(client, exp.experiment_id,
                                                          f"tags.fleet_key = '{key}' and tags.kind = 'identity'")}
        assert sorted(runs) == sorted(IDS)
        for ident, run in runs.items():
            assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert {"id", "fid_pre", "reinversion_id", "face_kept", "face_after"} <= set(run.data.metrics)
            assert run.data.tags["verdict"] == ("not_represented" if ident == "P001" else "face_destroyed")
            assert run.data.tags["represented"] == ("false" if ident == "P001" else "true")
            assert len(client.get_metric_history(run.info.run_id, "loss_total")) == 4  # one per iteration
            # one labelled grid: P001 has a photo column and a row for its other photo; the seed neither
            grid = _png(client, run.info.run_id, "grid.png", tmp_path / mode / ident)
            assert grid.size == (_grid_size(4, 2) if ident == "P001" else _grid_size(3, 1))
            # the artifact lives in the server's artifact folder, uploaded over HTTP
            assert list(mlflow_fleet["server_dir"].glob(f"artifacts/**/{run.info.run_id}/artifacts/grid.png"))

        files = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {"summary.csv", "summary.html", "metrics.png"} <= files
        assert ("erosion.png" in files) == (mode == "sequential")
        table = list(csv.DictReader(io.StringIO(Path(client.download_artifacts(
            parent.info.run_id, "summary.csv", str(tmp_path / mode))).read_text())))
        assert [r["identity"] for r in table] == list(IDS) and list(table[0]) == list(review.SUMMARY_COLUMNS)
        for row in table:
            assert row["status"] == "finished"
            assert row["verdict"] == runs[row["identity"]].data.tags["verdict"]
            assert float(row["id"]) == pytest.approx(runs[row["identity"]].data.metrics["id"], abs=1e-3)
            assert float(row["time_s"]) > 0
            assert (row["id_now"] != "") == (mode == "sequential")
            # the parallel fleet ran with --audit: every identity attacked, though none was erased to attack
            assert row["audit"] == ("not_audited" if mode == "parallel" else "")
        if mode == "parallel":  # the audit's files and numbers beside each identity's run
            for ident, run in runs.items():
                run = client.get_run(run.info.run_id)
                assert {"audit/audit.json", "audit/audit.html"} <= {
                    a.path for a in client.list_artifacts(run.info.run_id, "audit")}
                report = json.loads(Path(client.download_artifacts(run.info.run_id, "audit/audit.json",
                                                                   str(tmp_path / "audit" / ident))).read_text())
                assert report["identity"] == ident and report["run_verdict"] == run.data.tags["verdict"]
                assert run.data.tags["audit_verdict"] == "not_audited"
                for g in ("g_u", "g_s"):
                    assert run.data.metrics[f"audit_reinversion_{g}"] == pytest.approx(
                        report["attacks"]["reinversion"][g]["best_id"], rel=1e-6)
                    assert [m.step for m in client.get_metric_history(run.info.run_id, f"audit_relearning_curve_{g}")] == [0, 2]
                # P001 has another photo: after relearning it is looked for there; s1 at w_u and its neighbours
                assert report["attacks"]["relearning"]["g_u"]["elsewhere"] == (
                    "other photos, inverted" if ident == "P001" else "w_u and its neighbours")
        assert _png(client, parent.info.run_id, "metrics.png", tmp_path / mode).size[0] > 500
        html = Path(client.download_artifacts(parent.info.run_id, "summary.html", str(tmp_path / mode))).read_text()
        assert html.count('<tr class="finished not_represented">') == 1
        assert html.count('<tr class="finished face_destroyed">') == 1 and "1 face_destroyed, 1 not_represented" in html

        # registered generators: one version per identity (parallel), the final one (sequential)
        mine = [v for v in versions if v.tags["fleet_key"] == key]
        if mode == "parallel":
            assert sorted(v.tags["identities"] for v in mine) == sorted(IDS)
        else:
            assert [v.tags["identities"] for v in mine] == ["P001;s1"]
            assert mine[0].tags["verdicts"] == "P001=not_represented;s1=face_destroyed"
            assert mine[0].run_id == runs["s1"].info.run_id  # the last step's run holds the final generator
            assert float(mine[0].tags["fid_pre_vs_original"]) > 0  # two erasures changed the generator
            assert {"id_now_P001", "id_now_s1"} <= set(mine[0].tags)
        for v in mine:
            assert v.tags["all_erased"] == "false"  # registered, but marked: not to be deployed
            run = client.get_run(v.run_id)
            assert v.source == run.info.artifact_uri + "/model"  # the MLflow Model logged into the run
            assert v.tags["config_hash"] == key.rsplit("-", 1)[1] and v.tags["mode"] == mode
            assert v.tags["base_generator"] == str(mlflow_fleet["generator"])
            if mode == "parallel":
                assert float(v.tags["id"]) == pytest.approx(run.data.metrics["id"], rel=1e-6)
            assert run.data.tags["registered_model"] == f"{name} v{v.version}"
            assert {"checkpoint.safetensors", "result.json"} <= {a.path for a in client.list_artifacts(v.run_id)}
    assert len(versions) == 3

    # a reviewer promotes one, and it is fetched by its alias and loaded (tracking/README.md)
    chosen = next(v for v in versions if v.tags["identities"] == "P001")
    client.set_registered_model_alias(name, "approved", chosen.version)
    assert client.get_model_version_by_alias(name, "approved").run_id == chosen.run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_fleet["uri"])  # as `mlflow artifacts download` finds it
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}@approved",
                                                      dst_path=str(tmp_path / "approved")))
    assert folder == tmp_path / "approved"  # `mlflow artifacts download -u models:/NAME@approved -d approved/`
    generator = load_generator(chosen.tags["base_generator"], "cpu")
    meta = apply_checkpoint(generator, folder / "artifacts" / "checkpoint.safetensors")
    assert meta["identity"] == "P001" and meta["config_hash"] == chosen.tags["config_hash"]
    images = mlflow.pyfunc.load_model(f"models:/{name}@approved").predict({"seed": [1, 2]})  # over HTTP too
    assert images.shape == (2, generator.resolution, generator.resolution, 3) and images.dtype == np.uint8


@pytest.mark.slow
def test_rerun_through_MLFLOW_TRACKING_URI_adds_nothing(mlflow_fleet, monkeypatch, capsys):
    """The same fleet again, finding the server through MLFLOW_TRACKING_URI alone: every identity is
    done, so no run and no model version is added (and no local store appears)."""
    client = MlflowClient(tracking_uri=mlflow_fleet["uri"])
    exp = client.get_experiment_by_name(mlflow_fleet["experiment"])
    name = model_name(str(mlflow_fleet["generator"]))

    def counts():
        return len(_runs(client, exp.experiment_id, "")), len(client.search_model_versions(f"name = '{name}'"))

    before = counts()
    args = list(mlflow_fleet["args"])
    del args[args.index("--tracking-uri"):args.index("--tracking-uri") + 2]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_fleet["uri"])
    assert fleet.main(args) == fleet.NOT_ALL_ERASED  # the same verdicts, read back from the ledger
    assert "2 identities already finished, 0 to run" in capsys.readouterr().err
    assert counts() == before
    assert not (mlflow_fleet["out"] / "mlflow.db").exists()


# --- the tracking setting and the server script ---------------------------------------------------

def test_one_setting_finds_the_server(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert resolve_uri(None, tmp_path) == "http://mlflow.internal:5000"
    assert resolve_uri("http://other:5000", tmp_path) == "http://other:5000"  # --tracking-uri wins
    assert is_server("https://x") and not is_server("sqlite:///x.db") and not is_server("postgresql://h/db")
    assert model_name("/models/ffhq rebalanced 512.pkl") == "guide_ray-ffhq-rebalanced-512"
    assert model_name("mobilestylegan-ffhq1024") == "guide_ray-mobilestylegan-ffhq1024"


@pytest.mark.parametrize("args,message", [(["--bogus"], "unknown option '--bogus'"), (["--port"], "--port needs a value")])
def test_server_script_rejects_bad_options(args, message):
    done = subprocess.run(["bash", str(REPO / "tracking" / "server.sh"), *args], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2 and message in done.stderr


# --- review files, no server --------------------------------------------------------------------

def _solid(value: int) -> np.ndarray:
    return np.full((8, 8, 3), value, np.uint8)


def _dark(a: np.ndarray) -> bool:
    return bool((a.min(axis=-1) < 100).any())


def test_identity_grid_layout_and_labels():
    t = 160  # wide enough for every label
    grid = review.identity_grid("P001 | tiny | ID 0.123", _solid(201), _solid(202), _solid(203), photo=_solid(200),
                                others=[(_solid(210), _solid(211), _solid(213)), (None, _solid(221), _solid(223))],
                                tile=t)
    assert grid.shape == (review.TITLE_H + 3 * (review.LABEL_H + t), 4 * t, 3)
    assert _dark(grid[:review.TITLE_H])  # the title is drawn

    def cell(r, c):
        y, x = review.TITLE_H + r * (review.LABEL_H + t), c * t
        return grid[y:y + review.LABEL_H, x:x + t], grid[y + review.LABEL_H:y + review.LABEL_H + t, x:x + t]

    # row 0: photo, before, target, after; other rows: photo, before, (nothing), after
    expected = {(0, 0): 200, (0, 1): 201, (0, 2): 202, (0, 3): 203, (1, 0): 210, (1, 1): 211, (1, 3): 213,
                (2, 1): 221, (2, 3): 223}
    for r in range(3):
        for c in range(4):
            label, picture = cell(r, c)
            if (r, c) in expected:
                assert (picture == expected[r, c]).all(), (r, c)
                assert _dark(label), (r, c)  # each picture has its label
            else:
                assert (picture == 255).all() and (label == 255).all(), (r, c)
    seed = review.identity_grid("s1", _solid(1), _solid(2), _solid(3), tile=t)
    assert seed.shape == (review.TITLE_H + review.LABEL_H + t, 3 * t, 3)  # no photo column


def test_fleet_summary_and_plots(tmp_path):
    ledger = {"a": {"status": "finished", "verdict": "erased", "id": 0.1234567, "id_others": None,
                    "fid_pre": 3.5, "face_kept": 1.0, "reinversion_id": 0.2, "id_now": 0.05,
                    "timings_json": '{"total_s": 12.5}'},
              "b": {"status": "failed", "id": None, "fid_pre": None, "timings_json": "{}",
                    "error": "no face in <b.png>"}}
    rows = review.summary_rows(["a", "b", "c"], ledger)
    assert [r["status"] for r in rows] == ["finished", "failed", "not run"]
    assert rows[0]["id"] == 0.1234567 and rows[0]["time_s"] == 12.5 and rows[0]["id_others"] is None
    csv_path, html_path = review.write_summary(rows, tmp_path, "fleet X")
    table = list(csv.DictReader(csv_path.open()))
    assert list(table[0]) == list(review.SUMMARY_COLUMNS)
    assert table[0]["id"] == "0.1235" and table[0]["id_now"] == "0.05" and table[1]["id"] == ""
    assert table[0]["verdict"] == "erased" and table[0]["face_kept"] == "1" and table[1]["verdict"] == ""
    html = html_path.read_text()
    assert "1 of 3 identities finished: 1 erased" in html and "no face in &lt;b.png&gt;" in html
    assert html.count("<tr class=") == 3 and '<tr class="failed">' in html and '<tr class="finished erased">' in html
    console = fleet.summary_table(rows)
    assert "verdicts: 1 erased of 3 identities" in console and "100%" in console.splitlines()[2]

    # the bars are the values: beside a bar of 0.9, an ID of 0.12 draws less red than an ID of 0.9;
    # FID_pre's bars are blue
    rows[1]["id"] = 0.9
    short = _pixels(review.metrics_plot(rows, tmp_path / "metrics.png", "fleet X"), RED)
    rows[0]["id"] = 0.9
    long = _pixels(review.metrics_plot(rows, tmp_path / "metrics2.png", "fleet X"), RED)
    assert 0 < short < 0.8 * long and _pixels(tmp_path / "metrics.png", BLUE) > 0
    erosion = review.erosion_plot(["a", "b", "c"], {"a": {0: 0.1, 1: 0.15, 2: 0.2}, "b": {1: 0.1, 2: 0.12}},
                                  {0: 1.0, 1: 2.0, 2: 3.5}, tmp_path / "erosion.png", "erosion")
    # a line per identity erased so far (matplotlib's first two cycle colours: blue, orange) and FID_pre's
    assert _pixels(erosion, ORANGE) > 50 and _pixels(erosion, BLUE) > 100


def test_sweep_results_include_parallel_coordinates(tmp_path):
    sweep = SimpleNamespace(name="demo", space={"d": SimpleNamespace(log=False), "lr": SimpleNamespace(log=True),
                                                "loss": SimpleNamespace(log=False)},
                            base={"d": 30.0, "lr": 1e-3, "loss": "l2"})
    rows = [{"trial": f"t{i}", "status": "complete", "d": 10.0 * (i + 1), "lr": 10 ** -(i + 2), "loss": ["l2", "l1"][i % 2],
             "unlearning": 0.5 - 0.1 * i, "preservation": 1.0 + i, "score": 0.51 - 0.09 * i, "erased": 2,
             "identities": 2} for i in range(4)]
    rows.append({"trial": "t4", "status": "stopped early", "d": 25.0, "lr": 1e-4, "loss": "l1", "unlearning": None,
                 "preservation": None, "score": None, "erased": None, "identities": None})
    # the best FID of all, but one identity not erased: not a candidate, whatever its objectives
    rows.append({"trial": "t5", "status": "complete", "d": 5.0, "lr": 1e-5, "loss": "l1", "unlearning": 0.55,
                 "preservation": 0.5, "score": 0.555, "erased": 1, "identities": 2})
    front, files = write_results(sweep, rows, tmp_path)
    assert [r["trial"] for r in front] == ["t3", "t2", "t1", "t0"] and tmp_path / "parallel_coordinates.png" in files
    assert "over the 4 trials that erased every identity" in (tmp_path / "pareto.md").read_text()
    with pytest.raises(SweepError, match="did not erase every identity"):
        pick(rows, front, "t5")
    image = Image.open(tmp_path / "parallel_coordinates.png")
    assert image.format == "PNG" and image.size[0] >= 600
    with pytest.raises(ValueError, match="no axes"):
        review.parallel_coordinates(rows, [], tmp_path / "x.png")
