"""The errors mcsim raises: one hierarchy, two branches.

* :class:`InputError`: the input cannot be used as given (a scenario, its data or model, a result
  store, the device or cluster it names). Nothing was computed; fix the input and run again. The
  CLI exits with 2.
* :class:`RunFailure`: the run started and could not finish (a task failed after its retries, a
  worker could not start, a solve did not converge). A run keeps its results so far; run again to
  resume. The CLI exits with 1.

Each module keeps its own error class beside the code that raises it (``ScenarioError`` in
:mod:`mcsim.validation`, ``StoreError`` in :mod:`mcsim.runner.store`, ...); every one derives
from a branch here. Classes that callers caught as ``ValueError`` or ``RuntimeError`` before this
hierarchy existed still derive from those too.

Messages speak the library's language: a fix is named as the Python API's keyword argument,
spelled ``name=value`` (``overwrite=True``, ``address='auto'``); the CLI puts its own option
(``--overwrite``) in its place. This module imports nothing from mcsim.
"""
from __future__ import annotations

from typing import ClassVar

__all__ = ["InputError", "MCSimError", "RunFailure"]


class MCSimError(Exception):
    """The base of every error mcsim raises on purpose."""


class InputError(MCSimError):
    """The input cannot be used as given; nothing was computed (CLI exit code 2)."""

    #: True when the message is about a setting of the scenario being run and does not name the
    #: scenario's file itself (the CLI then puts the file's path in front).
    in_scenario: ClassVar[bool] = False


class RunFailure(MCSimError):
    """The run could not finish; its results so far are kept (CLI exit code 1)."""
