"""The suite's fixtures: the real generators, a tiny random one, a Ray head, an MLflow server."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from guide_ray import weights
from guide_ray.allocator import keep_freed_memory
from guide_ray.models.dcgan import _dcgan_net
from tests.helpers import NETS, TINY, TINY_AUDIT, fetch, free_port, require_weights, sets, stop_process_group, submit_fleet, wait_for


keep_freed_memory()  # the suite trains in its own process as the commands do (guide_ray/allocator.py)

@pytest.fixture(scope="session")
def mobilestylegan():
    from guide_ray.models import load_generator

    require_weights("mobilestylegan-ffhq1024")
    return load_generator("mobilestylegan-ffhq1024", "cpu")


@pytest.fixture(scope="session")
def dcgan():
    from guide_ray.models import load_generator

    require_weights("dcgan-digiface64")
    return load_generator("dcgan-digiface64", "cpu")


@pytest.fixture(scope="session")
def tiny_generator(tmp_path_factory) -> Path:
    """A DCGAN checkpoint with 8-d latents and 4 base channels (random weights): fast on CPU."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gen") / "tiny_dcgan.pt"
    torch.save({"netG_state_dict": {f"main.{k}": v for k, v in _dcgan_net(8, 4, 3).state_dict().items()}}, path)
    return path


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A real Ray head on loopback with its job server; its processes find this venv's python."""
    require_weights(*NETS)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "GUIDE_RAY_CACHE": str(weights.cache_dir()), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled"}  # a loopback test cluster
    os.environ["RAY_AUTH_MODE"] = "disabled"  # for the job client in this process too
    port, dash = free_port(), free_port()
    ray_bin = str(Path(sys.executable).parent / "ray")
    # the agent on a free port: an embedded Ray started by another test takes the default one (52365)
    subprocess.run([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={free_port()}",
                    "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=180)
    try:
        yield {"env": env, "gcs": f"127.0.0.1:{port}", "jobs": f"http://127.0.0.1:{dash}", "ray": ray_bin}
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def mlflow_fleet(tmp_path_factory, tiny_generator, cluster):
    """A real `mlflow server` started by tracking/server.sh on loopback (SQLite, artifacts served over
    HTTP) and two fleets submitted with `ray job submit` to the `cluster` head that logged to it with
    --tracking-uri http://127.0.0.1:PORT: identities P001 (a photo and one other photo) and s1 (a
    seed) on the tiny generator, in parallel mode then in sequential mode. Yields the tracking URI,
    the experiment, the fleets' out dir, the generator, the fleets' CLI arguments, the server's
    folder and each mode's finished job (its exit status and output)."""
    from guide_ray.tracking import EXPERIMENT

    require_weights(*NETS)
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "MLFLOW": str(Path(sys.executable).parent / "mlflow"), "MLFLOW_WORKERS": "1"}
    with open(root / "server.log", "wb") as log:
        server = subprocess.Popen(["bash", str(Path(__file__).resolve().parents[1] / "tracking" / "server.sh"),
                                   "--port", uri.rsplit(":", 1)[1], "--dir", str(root / "store")],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: fetch(f"{uri}/health") is not None or server.poll() is not None, 120, "the MLflow server")
        assert server.poll() is None, (root / "server.log").read_text()[-3000:]
        photo = "weights://openpeople/P001/assets/{}.jpg"
        ids = root / "ids.csv"
        ids.write_text(f"id,image,seed,others\nP001,{photo.format('studio_portrait')},,{photo.format('studio_posture')}"
                       "\ns1,,1,\n")
        out = root / "out"
        args = [str(ids), "--generator", str(tiny_generator), "--out", str(out), "--tracking-uri", uri,
                "--no-progress", *sets([*TINY, "iterations=4"])]
        # the parallel fleet also audits its identities (small attacks: the tiny generator draws no face)
        audit = ["--audit", *[a for s in TINY_AUDIT for a in ("--audit-set", s)]]
        jobs = {mode: submit_fleet(cluster, [*args, "--mode", mode, *(audit if mode == "parallel" else [])])
                for mode in ("parallel", "sequential")}
        yield {"uri": uri, "experiment": EXPERIMENT, "out": out, "generator": tiny_generator, "args": args,
               "server_dir": root / "store", "jobs": jobs}
    finally:
        stop_process_group(server)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave with pytest's exit status once it has reported everything: a native library's teardown at
    interpreter exit (a segmentation fault after the summary, seen once on 2026-12-02 with 387 passed and
    the failures listed) must not turn a finished run's status into 139."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(getattr(config, "_guide_ray_exit", 0))


def pytest_sessionfinish(session, exitstatus):
    session.config._guide_ray_exit = int(exitstatus)
