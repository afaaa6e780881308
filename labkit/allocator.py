"""Keep freed tensor memory in the process instead of giving it back to the OS after every step.

PyTorch's CPU tensors come from the C library's ``malloc``. With glibc's defaults a block larger
than a threshold (128 kB, raised as large blocks are freed, at most 32 MB) is mapped fresh from
the OS and unmapped when freed, and free memory at the top of the heap is returned once it passes
twice that threshold. A training step allocates and frees its activations and gradients every
time, so each step faulted its memory in page by page again: a VGG-11 width 0.5 at batch 256 on
two cores took about 65,000 page faults per step and trained at 800-830 images/s. With the
thresholds raised (:func:`keep_freed_memory`), freed blocks stay in the heap and are reused:
about 300 faults per step and 1,090-1,360 images/s, the same numbers. The faults also kept two
threads from scaling (two one-thread processes side by side did better than one two-thread
process); without them two threads train 1.98x as fast as one. Measured 2026-12-08, two cores,
glibc 2.36 (``/tmp`` probe, numbers in the README). What a fault costs depends on the machine's
state: ``python -m bench --only allocator`` measured 1.44x / 1.44x / 1.26x (VGG-11 w0.25, w0.5,
ResNet-18) in one run and 1.11x / 1.55x / 0.97x in another; no run showed a loss beyond noise.

The price: a process keeps its heap until it exits instead of shrinking between steps, and
blocks freed where a new one does not fit stay too, so the peak grows a little: 1,007 -> 1,163 MB
in that training run, 547 -> 623 MB for 200 blocks of 40 MB. Nothing changes where glibc is not
the C library (macOS, Windows, musl), when ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``
is set in the environment (glibc read it at start-up; the user's choice wins), or with
``LABKIT_KEEP_FREED_MEMORY=0``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory", "minor_faults", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

# glibc's mallopt parameters (malloc.h): M_TRIM_THRESHOLD = -1, M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 1 << 30  # bytes: blocks below 1 GiB come from the heap and are reused
TRIM_THRESHOLD = (1 << 31) - 1  # bytes (mallopt takes an int): memory goes back only past 2 GiB free

_state: dict[str, bool] = {}


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); True when they are set.

    Called by :func:`labkit.profile.setup_notebook` and :func:`labkit.train.fit`, so every
    notebook and every training run gets it. Idempotent and cheap after the first call.
    """
    if "set" in _state:
        return _state["set"]
    _state["set"] = ok = _apply()
    return ok


def _apply() -> bool:
    if not sys.platform.startswith("linux") or os.environ.get("LABKIT_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False  # the user chose; glibc already applied it
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        if not ctypes.CDLL(None).gnu_get_libc_version:  # raises AttributeError outside glibc
            return False
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # both, or the trim threshold alone would freeze glibc's dynamic mmap threshold at 128 kB
    # (measured: slower than the defaults, 540 against 700-830 images/s)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def minor_faults() -> int:
    """This process's minor page faults so far (Linux ``/proc/self/stat``; what the benchmark and tests count)."""
    with open("/proc/self/stat", encoding="ascii") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])  # minflt: field 10, the 8th after "(comm)"
