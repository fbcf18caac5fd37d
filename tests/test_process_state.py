"""Process-wide state is changed only where a user asked for it: malloc by the commands that train,
torch's global RNG never by a run."""

import platform
import subprocess
import sys

import pytest
import torch

from guide_ray.config import load_config
from guide_ray.core.ltu import Unlearning
from tests.tiny import TinyGenerator, TinyIdentity, TinyPerceptual

# In a fresh process: does glibc give a freed 256 MiB block back to the kernel (RSS falls again)?
# First after importing the modules a pyfunc server or a user's script imports, then after the
# commands' own keep_freed_memory(), which must change the answer (or the probe proves nothing).
PROBE = """
import ctypes, importlib
for name in ("guide_ray", "guide_ray.cli", "guide_ray.fleet.cli", "guide_ray.sweep.cli", "guide_ray.mlflow_model",
             "guide_ray.run.identity", "guide_ray.core.ltu"):
    importlib.import_module(name)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
def freed_block_returned():
    size = 256 << 20
    before = rss()
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    held = rss() - before
    libc.free(block)
    assert held > size * 0.9, held
    return rss() - before < size // 4
print(freed_block_returned())
from guide_ray.allocator import keep_freed_memory
keep_freed_memory()
print(freed_block_returned())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not sys.platform.startswith("linux"),
                    reason="the malloc tuning is glibc's")
def test_importing_guide_ray_leaves_malloc_alone_and_the_commands_tune_it():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]


class NoisyGenerator(TinyGenerator):
    """Draws from torch's global RNG in every synthesis, as EG3D's renderer does with random sampling."""

    def _synthesize(self, ws):
        return super()._synthesize(ws + 0.05 * torch.randn_like(ws))


def _run(steps: int = 6, **kwargs):
    cfg = load_config(overrides=["distance_units=absolute", "d=2.0", "alpha_max=1.0", "latent_pool=8",
                                 "iterations=6", "checkpoint_every=3", "lr=1e-2"])
    with torch.random.fork_rng(devices=[]):  # the tiny test nets seed torch as they are built
        g, identity, perceptual = NoisyGenerator(), TinyIdentity(), TinyPerceptual()
    run = Unlearning(g, g.mapping(g.z_from_seed(1)), cfg, identity, perceptual, **kwargs)
    run.advance(steps)
    return g, run


def test_a_run_keeps_its_own_random_streams_and_leaves_the_callers():
    torch.manual_seed(123)
    caller = torch.get_rng_state()
    states = []
    first, _ = _run(on_checkpoint=states.append)
    assert torch.equal(torch.get_rng_state(), caller)  # a run neither reseeds nor consumes the caller's stream
    torch.manual_seed(456)  # another caller state: the run's draws are its own
    second, _ = _run()
    for (name, a), b in zip(first.named_parameters(), second.parameters()):
        assert torch.equal(a, b), name
    # a checkpoint carries the streams as they were at its step, and a resumed run draws on from there
    assert not torch.equal(states[0]["torch_rng"]["cpu"], states[1]["torch_rng"]["cpu"])
    _, resumed = _run(steps=0, resume=states[0])
    assert torch.equal(resumed.randomness.state["cpu"], states[0]["torch_rng"]["cpu"])
