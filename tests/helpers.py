"""Helpers the tests share (the fixtures are in conftest.py)."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from guide_ray import weights

REPO = Path(__file__).resolve().parents[1]
NETS = ("stlpips-vgg", "dlib-resnet34", "facenet-vggface2", "fid-inception", "openpeople", "dlib-mmod")
# Config overrides for runs on the tiny random generator (conftest's tiny_generator), which draws no
# face: a few steps on small pools, FID on one batch of 8, and none of the face checks of images it
# cannot draw (random face samples, the UFO target's check) nor the measurement of FaceNet's
# different-person level (given: 0.232, as it was). Tests of those are in test_verdict.py and test_method.py.
TINY = ["iterations=6", "checkpoint_every=2", "evaluation.fid_samples=8", "evaluation.fid_batch=8",
        "inversion.steps=4", "latent_pool=4", "evaluation.face_samples=0", "target_face_check=false",
        "evaluation.id_threshold=0.232"]

# The erasure audit's smallest attacks (config.AuditConfig), for its mechanics on the tiny generator.
TINY_AUDIT = ["random_starts=0", "projector_steps=4", "probe_samples=4", "relearn_steps=[2]", "elsewhere_samples=2"]


def sets(overrides: list[str]) -> list[str]:
    """``--set`` arguments for a command line."""
    return [a for s in overrides for a in ("--set", s)]


def require_weights(*names: str) -> None:
    """Fail (not skip) when a real weight the test needs is not cached: `make test` pulls them."""
    for name in names:
        state = weights.status(name)
        if state != "cached":
            pytest.fail(f"weight {name!r} is {state}; run `python -m guide_ray weights pull {name}`")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        found = predicate()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM a process started with start_new_session=True and its children; SIGKILL after 30 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def fetch(url: str) -> bytes | None:
    """The body at ``url``, or None when it cannot be had (not up yet, an error status)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read()
    except OSError:
        return None


def submit_fleet(cluster: dict, args: list[str], wait: bool = True) -> subprocess.CompletedProcess | str:
    """`ray job submit --working-dir REPO -- python -m guide_ray.fleet ARGS` to the conftest ``cluster``
    head, waiting for the job's end; with ``wait=False`` the job submitted by the SDK, its id returned."""
    if not wait:
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(cluster["jobs"]).submit_job(
            entrypoint=" ".join(["python", "-m", "guide_ray.fleet", *args]), runtime_env={"working_dir": str(REPO)})
    cmd = [cluster["ray"], "job", "submit", "--address", cluster["jobs"], "--working-dir", str(REPO)]
    return subprocess.run(cmd + ["--", "python", "-m", "guide_ray.fleet", *args], env=cluster["env"],
                          capture_output=True, text=True, timeout=900)
