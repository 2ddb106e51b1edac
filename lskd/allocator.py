"""glibc malloc settings for training with large (tokens x V) tensors on CPU.

By default glibc serves every block above a moving threshold (at most 32 MiB) with a fresh
``mmap`` and gives it back on free, and trims the heap when its free top grows past twice that. A
training step allocates several (tokens x V) tensors of about that size, so each step pays page
faults on fresh memory; the KD criterion, which adds a teacher's distribution, pays more of them.
Keeping freed memory in the heap removes most of that cost (``benchmarks/kd_throughput.py``).
``GLIBC_TUNABLES`` does the same before a process starts (``recipes/lib.sh`` exports it); this
module does it from inside a running process, for a plain ``fairseq-train``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest value glibc accepts on 64-bit systems
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: 2 GiB
OPT_OUT = "LSKD_MALLOC_TUNING"


def keep_freed_memory() -> bool:
    """Apply the settings above unless already given by ``GLIBC_TUNABLES`` or switched off by
    ``LSKD_MALLOC_TUNING=0``; True when they are in force. A no-op away from glibc."""
    if os.environ.get(OPT_OUT) == "0":
        return False
    if "glibc.malloc.mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        applied = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt, Windows)
        return False
    if applied:
        logger.info(f"glibc malloc keeps freed memory (mmap threshold 32 MiB, trim threshold 2 GiB) so that large "
                    f"tensors do not page-fault every step; {OPT_OUT}=0 keeps glibc's defaults")
    return applied
