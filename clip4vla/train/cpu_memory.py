"""CPU training: keep freed memory in the process instead of handing it back to the kernel.

A training step allocates its activations afresh and frees them after the backward. glibc serves
every block above its mmap threshold with a fresh ``mmap`` and unmaps it on free, so every step
faults in and zeroes gigabytes page by page: on the ViT-B/32 pre-training step, 1.8-2.8 M page
faults and 2.6-4 s of kernel time per fp32 step (7-11 % of its CPU time, benchmarks/RESULTS.md).

What is kept, measured on that step (RESULTS.md, "CPU speed in the package"):

* blocks up to 32 MB (glibc's largest mmap threshold) always come from the heap, which is not
  trimmed below 2 GiB: fp32 kernel time 9.5 -> 6.7 %, peak RSS +1 %;
* with bf16/fp16 autocast, larger blocks too (no ``mmap`` at all): kernel time 2.8 -> 0.1 %, peak
  RSS +2-3 %. In fp32 the same costs +17-27 % peak RSS (its many large blocks fragment the
  heap), so fp32 keeps ``mmap`` for them; a launcher that prefers speed sets
  ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736`` (kernel time 0.2 %).

Why not transparent huge pages (torch's ``THP_MEM_ALLOC_ENABLE``): it cuts the faults 10x but
raises kernel time (page compaction), 19.2 -> 23-26 s per fp32 step.

Not applied with activation checkpointing: a run that recomputes its activations does so to hold
less memory. The setting is the process's (``mallopt``); it changes where memory comes from,
never a value computed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

__all__ = ["keep_freed_memory"]

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h) and defaults
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc refuses more (64-bit)
_DEFAULT_MMAP_MAX = 65536
_INT_MAX = 2**31 - 1  # mallopt takes an int: the largest trim threshold it can set (2 GiB)

_mode: bool | None = None  # large blocks kept too, as last set in this process
_ENVIRONMENT = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def keep_freed_memory(large_blocks: bool) -> bool:
    """Keep freed blocks up to 32 MB on the heap (never trimmed below 2 GiB), and with
    ``large_blocks`` every block (no ``mmap``); glibc only, process-wide. True when in effect;
    elsewhere (macOS, musl), or when the environment sets glibc's allocator (``MALLOC_*_``,
    ``GLIBC_TUNABLES``), nothing changes."""
    global _mode
    if _mode is large_blocks:
        return True
    if not sys.platform.startswith("linux"):
        return False
    chosen = [name for name in _ENVIRONMENT if name in os.environ and (name != "GLIBC_TUNABLES" or "malloc" in
                                                                       os.environ[name])]
    if chosen:  # a launcher chose the allocator's behaviour: it stays the launcher's
        log.info("CPU allocator: as the environment sets it (%s)", ", ".join(chosen))
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl has neither)
    except (OSError, AttributeError):
        log.info("the C library is not glibc: the CPU allocator keeps its defaults")
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, _INT_MAX),
                (_M_MMAP_MAX, 0 if large_blocks else _DEFAULT_MMAP_MAX))
    if not all(mallopt(param, value) == 1 for param, value in settings):
        log.info("glibc refused the allocator settings: the CPU allocator keeps its defaults")
        return False
    _mode = large_blocks
    log.info("CPU allocator: freed activation memory is kept for the next step (%s; clip4vla.train.cpu_memory)",
             "all blocks" if large_blocks else "blocks up to 32 MB")
    return True
