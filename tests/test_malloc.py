"""The allocator settings: set in-process by the engine (mcsim/engine/allocator.py), and in the
environment of the processes mcsim starts (mcsim/runner/malloc.py)."""
import json
import os
import subprocess
import sys

import pytest

from mcsim.engine.allocator import _is_glibc
from mcsim.runner.malloc import TUNABLES, with_tunables

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables")
glibc = pytest.mark.skipif(not _is_glibc(), reason="glibc's mallopt")


@linux
def test_tunables_are_added_and_the_callers_own_win():
    assert with_tunables({})["GLIBC_TUNABLES"] == TUNABLES
    env = with_tunables({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1:glibc.cpu.x86_ibt=on"})
    assert env["PATH"] == "/bin"
    parts = env["GLIBC_TUNABLES"].split(":")
    assert parts[:2] == ["glibc.malloc.trim_threshold=1", "glibc.cpu.x86_ibt=on"]  # the caller's, first and kept
    assert parts[2:] == ["glibc.malloc.mmap_threshold=4294967295"]  # only mcsim's that the caller leaves unset


@linux
def test_a_worker_started_with_them_runs_torch():
    """glibc accepts the values (an invalid tunable would be ignored or abort the start)."""
    out = subprocess.run([sys.executable, "-c", "import os, torch; print(torch.ones(2**24).sum().item(), "
                          "os.environ['GLIBC_TUNABLES'])"], env=with_tunables({"PATH": "/usr/bin:/bin"}),
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(float(2**24)), TUNABLES]


#: Converts a small model, then reports the thresholds the engine set and whether a 64 MiB tensor
#: was mapped on its own (glibc's mallinfo2: bytes in mmapped chunks).
PROBE = """
import ctypes, json, torch, mcsim
from mcsim.engine.allocator import reuse_large_buffers
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks "
                                                "fordblks keepcost").split()]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
mcsim.convert(torch.nn.Linear(4, 2), trials=1)
before = mallinfo2().hblkhd
x = torch.empty(64 << 20, dtype=torch.uint8)
print(json.dumps({"set": reuse_large_buffers(), "mapped": mallinfo2().hblkhd - before >= 64 << 20}))
"""


def _probe(**env):
    names = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MCSIM_MALLOPT")
    clean = {k: v for k, v in os.environ.items() if k not in names}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.slow
@glibc
def test_converting_a_model_keeps_large_buffers_in_the_heap():
    """In a plain process (no tunables), the first conversion sets both thresholds: a large
    tensor comes from the heap, not from an mmap of its own; MCSIM_MALLOPT=0 keeps glibc's."""
    assert _probe() == {"set": ["mmap_threshold", "trim_threshold"], "mapped": False}
    assert _probe(MCSIM_MALLOPT="0") == {"set": [], "mapped": True}


@pytest.mark.slow
@glibc
def test_thresholds_the_process_was_started_with_are_left_alone():
    assert _probe(GLIBC_TUNABLES="glibc.malloc.mmap_threshold=1048576")["set"] == ["trim_threshold"]
    assert _probe(MALLOC_TRIM_THRESHOLD_="1")["set"] == ["mmap_threshold"]
