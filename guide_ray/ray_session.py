"""The Ray session the fleet and the sweep run in, and the environment their workers get."""

from __future__ import annotations

import os
from contextlib import contextmanager

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
