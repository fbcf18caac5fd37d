"""Keep freed large blocks in the process (glibc malloc), so LTU does not page-fault every step.

glibc serves blocks above its mmap threshold (128 KiB to 32 MiB, adaptive) with fresh mmaps and
gives them back on free; a training step frees and re-allocates the same few hundred MB of
activations, so the kernel zero-fills them again every step. On the 2-core CPU machine that kernel
time equalled the compute time (MobileStyleGAN at 256², `sys` 47 s vs `user` 87 s) and an LTU step
took 11.3 s; with mmaps only above 1 GiB and no trimming it takes 7.1 s (the same math: nothing but
where memory comes from changes). A process-wide setting, so applied only by the processes that
train or invert (the CLIs, the fleet's, sweep's and Ray Train's workers, the benchmarks), never
on import: a process that merely imports guide_ray (an MLflow pyfunc server) keeps its malloc.
A no-op without glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = (1 << 31) - 1


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
