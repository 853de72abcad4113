"""The allocator settings in the environment of the processes mcsim starts (glibc's malloc tunables).

Large buffers are kept in the heap for the next call instead of being mapped anew on every call
(why: :mod:`mcsim.engine.allocator`, which also sets the thresholds in any process that converts a
model). Tunables are read when a process starts, so a worker started with :data:`TUNABLES` has them
from its first allocation (data loading and the digital baseline, before any conversion), with the
values ``mallopt`` cannot take: an mmap threshold of 4 GiB and a trim threshold of 16 GiB.
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
