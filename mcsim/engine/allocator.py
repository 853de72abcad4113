"""The memory-allocator settings of a process that runs the engine (glibc's malloc thresholds).

The engine allocates and frees tensors of tens to hundreds of MB in every layer call. glibc serves
each allocation above its mmap threshold (32 MB at most by default) from a fresh mmap and returns it
on free, so every call pays page faults and page zeroing in the kernel: 20-45 % of a bench run's
CPU time was system time on ResNet18. Raising the mmap threshold and turning trimming off keep freed
memory in the heap for the next call: the process keeps its peak memory reserved (the next batch
needs it again) and spends its time in user space. Only where memory comes from changes, never a
result.

:func:`reuse_large_buffers` sets them in the running process through glibc's ``mallopt`` (an
:class:`~mcsim.engine.convert.AnalogModel` calls it, once per process), so ``mcsim.convert`` in a
notebook, ``mcsim run``'s workers and the bench run at the same speed. ``mallopt`` takes a C
``int``: the mmap threshold is 2 GiB - 1 (a larger single buffer is still mapped per call), and
``-1`` turns trimming off (``man mallopt``). glibc 2.36 accepts both; a glibc that refuses a value
(``mallopt`` returns 0) keeps its own. Left alone: a threshold that the process was started with
(``GLIBC_TUNABLES`` or ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``: the caller's choice,
or :mod:`mcsim.runner.malloc`'s for the processes mcsim starts), every C library but glibc, and
every process where ``MCSIM_MALLOPT=0``.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys
from typing import Mapping

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "reuse_large_buffers", "set_thresholds"]

#: ``mallopt`` parameters (glibc's malloc.h) and mcsim's values for them.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 2**31 - 1  # the largest C int: allocations up to 2 GiB come from the heap
TRIM_THRESHOLD = -1  # never give the top of the heap back

#: threshold -> (mallopt parameter, value, the names a process's environment sets it by)
_SETTINGS = {
    "mmap_threshold": (M_MMAP_THRESHOLD, MMAP_THRESHOLD, ("glibc.malloc.mmap_threshold", "MALLOC_MMAP_THRESHOLD_")),
    "trim_threshold": (M_TRIM_THRESHOLD, TRIM_THRESHOLD, ("glibc.malloc.trim_threshold", "MALLOC_TRIM_THRESHOLD_")),
}


def _is_glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # no such name here: not glibc
        return False


def set_thresholds(environ: Mapping[str, str]) -> tuple[str, ...]:
    """Set through ``mallopt`` each threshold that ``environ`` (the process's environment) leaves
    to mcsim; returns the names of those set (none where ``MCSIM_MALLOPT=0`` or not on glibc)."""
    if environ.get("MCSIM_MALLOPT", "1").strip() == "0" or not _is_glibc():
        return ()
    tunables = {t.split("=", 1)[0] for t in environ.get("GLIBC_TUNABLES", "").split(":")}
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = []
    for name, (param, value, (tunable, variable)) in _SETTINGS.items():
        if tunable not in tunables and variable not in environ and mallopt(param, value) == 1:
            done.append(name)
    return tuple(done)


@functools.cache
def reuse_large_buffers() -> tuple[str, ...]:
    """:func:`set_thresholds` of this process's environment, once per process (later calls
    return the first answer)."""
    return set_thresholds(os.environ)
