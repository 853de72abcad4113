"""Python entry points: what the CLI calls, so that notebooks need no subprocess.

``run_scenario(path_or_scenario)`` runs (or resumes) a scenario into its result store and
returns the result dataset; ``open_result(path)`` opens a finished store.
"""
from __future__ import annotations

import os
from typing import Optional, Union

from mcsim.scenario import Scenario, load_scenario

__all__ = ["open_result", "run_scenario"]


def run_scenario(
    scenario: Union[str, os.PathLike, Scenario],
    overwrite: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    *,
    output: Optional[str] = None,
    workers: Optional[int] = None,
    address: Optional[str] = None,
):
    """Run a scenario (a YAML path or a :class:`~mcsim.scenario.Scenario`) and return its result.

    The result store (``output``, default the scenario's ``output``) is resumed when it holds an
    unfinished run of the same scenario; a store of another scenario is refused unless
    ``overwrite`` (then it is deleted first). ``dry_run`` prints the plan and returns None.
    ``workers`` overrides ``execution.workers``. ``address`` runs the tasks on Ray
    (:class:`~mcsim.runner.ray.RayExecutor`): ``"local"`` starts a Ray instance on this machine,
    ``"auto"``, ``"host:6379"`` or ``"ray://host:10001"`` use a running cluster; None (default)
    runs them in local worker processes. Returns the ``xarray.Dataset`` of
    :func:`open_result`.
    """
    from mcsim.runner import driver

    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    factory = None
    if address is not None:
        from mcsim.runner.ray import RayExecutor, check_address

        if not dry_run:  # an unreachable cluster is reported before anything is written
            check_address(address)

        def factory(sc, n):
            return RayExecutor(sc, n, address=address)
    return driver.run(scenario, output=None if output is None else str(output), overwrite=overwrite,
                      dry_run=dry_run, progress=progress, workers=workers, executor_factory=factory,
                      check_device=address is None)


def open_result(path: Union[str, os.PathLike], partial: bool = False):
    """The result dataset of a finished run (see :func:`mcsim.runner.store.open_result`)."""
    from mcsim.runner.store import open_result as _open

    return _open(str(path), partial=partial)
