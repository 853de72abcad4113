"""Memory-allocator settings for the processes mcsim starts (glibc's malloc tunables).

The engine allocates and frees tensors of tens to hundreds of MB in every layer call. glibc serves
each allocation above its mmap threshold (32 MB at most by default) from a fresh mmap and returns it
on free, so every call pays page faults and page zeroing in the kernel: 20-45 % of a bench run's
CPU time was system time on ResNet18. Raising the mmap and trim thresholds keeps freed memory in
the heap for the next call: a worker keeps its peak memory reserved (the next batch needs it
again) and spends its time in user space. Only where memory comes from changes, never a result.

Tunables are read when a process starts, so they go into the environment of the processes mcsim
starts: local workers and Ray workers. A Python session that imports mcsim itself gets them by
starting with ``GLIBC_TUNABLES`` set to :data:`TUNABLES`.
"""
from __future__ import annotations

import sys
from typing import Mapping

__all__ = ["TUNABLES", "with_tunables"]

TUNABLES = "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=17179869184"


def with_tunables(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with :data:`TUNABLES` added to ``GLIBC_TUNABLES`` on Linux (a tunable the caller
    already sets keeps the caller's value); unchanged elsewhere."""
    out = dict(env)
    if sys.platform.startswith("linux"):
        theirs = [t for t in out.get("GLIBC_TUNABLES", "").split(":") if t]
        named = {t.split("=", 1)[0] for t in theirs}
        out["GLIBC_TUNABLES"] = ":".join(theirs + [t for t in TUNABLES.split(":") if t.split("=", 1)[0] not in named])
    return out
