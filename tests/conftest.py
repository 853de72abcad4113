"""Shared fixtures: a private model cache for the whole test session."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def mcsim_cache_dir(tmp_path_factory):
    """MCSIM_CACHE_DIR for the session (worker subprocesses inherit it): built-ins train once.

    MCSIM_THREADS=1: the test models are small, and one torch thread per worker process keeps
    the tests fast on a machine shared with other jobs.
    """
    path = tmp_path_factory.mktemp("mcsim-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("MCSIM_CACHE_DIR", str(path))
    mp.setenv("MCSIM_THREADS", "1")
    yield path
    mp.undo()
