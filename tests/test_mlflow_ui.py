"""The MLflow UI checked in a real headless Chromium, on the `mlflow server` the fleets of the
`mlflow_fleet` fixture logged to over HTTP: the fleet's experiment lists the fleet run with its
identity runs nested under it, and an identity run's artifacts show its grid image. Screenshots
are kept for a person to look at. Also `make ui`: one command from a fleet's own store to the UI."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from guide_ray.results import RunResult
from guide_ray.tracking import Tracker, resolve_uri
from tests.browser import artifacts_dir, chromium, require_chromium, screenshot, text_xpath, wait
from tests.helpers import fetch, free_port, stop_process_group, wait_for

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fleet_runs_and_grid_in_the_mlflow_ui(mlflow_fleet, tmp_path):
    require_chromium()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    # What the UI must show: the parallel fleet's identity runs, and one identity's grid.
    client = MlflowClient(mlflow_fleet["uri"])
    experiment = client.get_experiment_by_name(mlflow_fleet["experiment"]).experiment_id
    parent = client.search_runs([experiment], "tags.kind = 'fleet' and tags.mode = 'parallel'")[0]
    children = sorted(client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"),
                      key=lambda run: run.info.run_name)  # P001 (a photo: its grid has the most panels), s1
    identities = [run.info.run_name for run in children]
    assert len(identities) >= 2, identities
    grid = Image.open(client.download_artifacts(children[0].info.run_id, "grid.png", str(tmp_path)))

    shots = artifacts_dir()
    with chromium(tmp_path / "profile") as driver:
        driver.get(mlflow_fleet["uri"])
        # MLflow 3 opens on its GenAI views: a reviewer of training runs picks "Model training".
        wait(driver, 60).until(EC.element_to_be_clickable(
            (By.XPATH, "//div[@role='button'][normalize-space()='Model training']"))).click()
        wait(driver).until(EC.element_to_be_clickable((By.XPATH, text_xpath(mlflow_fleet["experiment"], "a")))).click()
        fleet_link = wait(driver).until(EC.visibility_of_element_located(
            (By.XPATH, text_xpath(parent.info.run_name, "a"))))
        for close in driver.find_elements(By.XPATH, "//button[@data-component-id='mlflow.assistant.chat_panel.close']"):
            close.click()  # the assistant side panel: more room for the runs
        # The identity runs are nested under the fleet run, collapsed: expand it.
        assert not driver.find_elements(By.XPATH, text_xpath(identities[0], "a"))
        fleet_link.find_element(By.XPATH, "./ancestor::div[@role='gridcell']//button").click()
        for identity in identities:
            wait(driver).until(EC.visibility_of_element_located((By.XPATH, text_xpath(identity, "a"))))
        screenshot(driver, shots / "mlflow-ui-runs.png")

        # One identity's run -> its artifacts -> the grid's image preview.
        driver.find_element(By.XPATH, text_xpath(identities[0], "a")).click()
        wait(driver).until(EC.element_to_be_clickable(
            (By.XPATH, "//button[@role='tab'][normalize-space()='Artifacts']"))).click()
        wait(driver).until(EC.element_to_be_clickable(
            (By.XPATH, "//*[@data-testid='artifact-tree-node'][@artifact-name='grid.png']"))).click()
        image = wait(driver).until(EC.visibility_of_element_located((By.XPATH, "//img[@alt='grid.png']")))
        size = wait(driver).until(lambda d: d.execute_script(
            "const i = arguments[0]; return i.complete && i.naturalWidth && [i.naturalWidth, i.naturalHeight]", image))
        assert tuple(size) == grid.size  # the logged grid itself, decoded by the browser
        screenshot(driver, shots / "mlflow-ui.png")


@pytest.mark.slow
def test_make_ui_serves_a_fleet_store(tmp_path, monkeypatch):
    """`make ui OUT=DIR` on a store laid out as a fleet writes it by default (DIR/mlflow.db, artifacts
    in DIR/mlartifacts): the UI and the grid it previews are served; no store, a clear error."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "demo"
    tracker = Tracker(resolve_uri(None, out), out / "mlartifacts")
    parent = tracker.parent_run("fleet", "parallel-g-0123", "fleet parallel parallel-g-0123", {"mode": "parallel"}, {})
    run_dir = tmp_path / "P001"
    run_dir.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 96, 3), dtype=np.uint8)).save(run_dir / "grid.png")
    run_id = tracker.identity_run(parent, "parallel-g-0123", RunResult("P001", "finished"), run_dir, {})

    make = ["make", "-C", str(REPO), "-o", ".venv/.installed", f"BIN={Path(sys.executable).parent}"]
    missing = subprocess.run([*make, "ui", f"OUT={tmp_path / 'none'}"], capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "run 'make demo' first" in missing.stdout, missing

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "ui.log", "wb") as log:
        ui = subprocess.Popen([*make, "ui", f"OUT={out}", f"UI_PORT={port}"], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        wait_for(lambda: fetch(f"{url}/health") or ui.poll() is not None, 120, "make ui")
        assert ui.poll() is None, (tmp_path / "ui.log").read_text()[-3000:]
        assert b"<title>MLflow</title>" in fetch(url)
        # What the UI's artifact view requests for the grid's preview.
        png = fetch(f"{url}/get-artifact?path=grid.png&run_uuid={run_id}")
        assert png == (run_dir / "grid.png").read_bytes()
        assert Image.open(io.BytesIO(png)).size == (96, 32)
    finally:
        stop_process_group(ui)
