"""Helpers the tests share (the fixtures are in conftest.py)."""

import os
import signal
import socket
import subprocess
import time

import pytest

from guide_ray import weights

NETS = ("stlpips-vgg", "dlib-resnet34", "facenet-vggface2", "fid-inception", "openpeople", "dlib-mmod")


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
