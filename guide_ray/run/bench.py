"""LTU iteration cost: the straightforward loop against the optimised one, side by side, same math.

Both loops start from the same generator weights, source latent and random draws, so their
step-0 losses agree; each then runs ``warmup`` untimed and ``iterations`` timed steps of
``core.ltu.Unlearning`` (its one-off setup, the target and the optimised loop's pool, is timed
apart as ``setup_seconds``). Peak memory is the CUDA allocator's peak on a GPU, and the peak
resident set size (sampled every 5 ms from /proc) on CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from dataclasses import dataclass

import torch

from ..config import GuideConfig
from ..core.ltu import Unlearning


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class _PeakMemory:
    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()


@dataclass
class LoopTiming:
    loop: str
    seconds_per_iteration: float
    peak_memory_mb: float
    step0_losses: dict[str, float]
    setup_seconds: float  # the one-off work before the first step: the target, and the optimised loop's pool


def time_loop(generator, w_u, cfg: GuideConfig, id_net, perceptual, loop: str, iterations: int,
              warmup: int) -> LoopTiming:
    """``Unlearning``'s own steps on a copy of ``generator``: ``warmup`` untimed, then ``iterations`` timed."""
    cfg = dataclasses.replace(cfg, iterations=warmup + iterations, checkpoint_every=warmup + iterations)
    t0 = time.perf_counter()
    run = Unlearning(copy.deepcopy(generator), w_u, cfg, id_net, perceptual, loop=loop)
    setup = time.perf_counter() - t0
    device = w_u.device
    run.advance(warmup)
    with _PeakMemory(device) as memory:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        run.advance(warmup + iterations)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - t0) / iterations
    if run.status == "diverged":
        raise RuntimeError(f"the {loop} loop diverged while timing: {run.message}")
    return LoopTiming(loop, seconds, memory.peak / 2**20, run.history[0], setup)
