"""Return the memory that freed tensors leave in the C allocator to the OS (peak RSS on CPU).

On Linux with glibc, a CPU training step frees its activations, but ``malloc`` keeps most of the freed
space: tensors of up to 32 MB come from the heap once the first large ones were freed (glibc's dynamic mmap
threshold), and freed heap pages stay resident. Each micro-batch of another length fragments the heap a
little more, so the resident set grows over the first steps to far above what is live: the quickstart's
training held 4.8 GiB between micro-batches with ~1.7 GiB live (docs/training.md "Memory").
``malloc_trim(0)`` hands every free page back (``MADV_DONTNEED``); the next micro-batch faults them in
again, which costs a little time and nothing in numerics. Elsewhere (macOS, musl, Windows) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import re
from pathlib import Path

RELEASE_MEMORY = ("never", "step", "micro_batch")
"""``TrainConfig.release_memory``: return freed memory to the OS never, after every optimizer step, or after
every micro-batch's backward pass (lowest peak RSS, a little slower)."""


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim`` or None (another C library)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory(collect: bool = False) -> bool:
    """Give the allocator's free pages back to the OS (glibc ``malloc_trim(0)``); ``collect`` runs the
    garbage collector first (for objects in reference cycles, e.g. a finished trainer). True if trimmed."""
    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def resident_memory() -> tuple[int, int]:
    """``(current, peak)`` resident set size of this process in bytes (Linux ``VmRSS``, ``VmHWM``; else 0, 0)."""
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return 0, 0
    found = {key: int(value) * 1024 for key, value in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.MULTILINE)}
    return found.get("VmRSS", 0), found.get("VmHWM", 0)
