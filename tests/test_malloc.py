"""The allocator settings mcsim gives the processes it starts (mcsim/runner/malloc.py)."""
import subprocess
import sys

import pytest

from mcsim.runner.malloc import TUNABLES, with_tunables

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables")


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
