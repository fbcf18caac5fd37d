import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from guide_ray import weights
from guide_ray.models.dcgan import _dcgan_net

NETS = ("stlpips-vgg", "dlib-resnet34", "facenet-vggface2", "fid-inception", "openpeople")


def require_weights(*names: str) -> None:
    """Fail (not skip) when a real weight the test needs is not cached: `make test` pulls them."""
    for name in names:
        state = weights.status(name)
        if state != "cached":
            pytest.fail(f"weight {name!r} is {state}; run `python -m guide_ray weights pull {name}`")


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    subprocess.run([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash}", "--disable-usage-stats"], env=env, check=True, capture_output=True,
                   timeout=180)
    try:
        yield {"env": env, "gcs": f"127.0.0.1:{port}", "jobs": f"http://127.0.0.1:{dash}", "ray": ray_bin}
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)


def wait_for(predicate, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        found = predicate()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")
