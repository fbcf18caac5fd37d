"""The Ray session the fleet and the sweep run in, and the environment their workers get."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

from .weights import CACHE_ENV


@contextmanager
def ray_session(address: str | None):
    """Ray, found as ``ray.init`` finds it (address None: RAY_ADDRESS, else a cluster running on this
    machine, else a new embedded one; 'local': always embedded); shut down after if started here."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, **({"include_dashboard": False} if address == "local" else {}))
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def worker_env() -> dict | None:
    """The runtime_env that points Ray workers at this process's weights cache."""
    return {"env_vars": {CACHE_ENV: os.environ[CACHE_ENV]}} if CACHE_ENV in os.environ else None


@dataclass(frozen=True)
class WorkerSize:
    count: int
    gpus: float  # each worker's share of a GPU; 0: a CPU worker
    threads: int  # each worker's torch threads, the CPUs it reserves


def size_workers(count: int, gpus_per_worker: float) -> WorkerSize:
    """The fleet's workers (parallel actors or Ray Train workers) on the cluster: with GPUs, ``count``
    (0: one per ``gpus_per_worker`` of them) holding 1 CPU thread each; else ``count`` (0: 1)
    sharing the CPUs."""
    import ray

    resources = ray.cluster_resources()
    if resources.get("GPU", 0) > 0 and gpus_per_worker > 0:
        return WorkerSize(count or max(1, int(resources["GPU"] / gpus_per_worker)), gpus_per_worker, 1)
    count = count or 1
    return WorkerSize(count, 0.0, max(1, int(resources.get("CPU", 1) // count)))
