"""Python entry points: what the CLI calls, so that notebooks need no subprocess.

``run_scenario(path_or_scenario)`` runs (or resumes) a scenario into its result store and
returns the result dataset; ``open_result(path)`` opens a store (plain ``xr.open_zarr(path)``
gives the same dataset).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Optional, Union

from mcsim.scenario import Scenario, load_scenario

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["open_result", "run_scenario"]


def run_scenario(
    scenario: Union[str, os.PathLike, Scenario],
    *,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    output: Optional[Union[str, os.PathLike]] = None,
    workers: Optional[int] = None,
    address: Optional[str] = None,
    on_event: Optional[Callable] = None,
) -> Optional[xr.Dataset]:
    """Run a scenario and return its result: what ``mcsim run`` does, without a subprocess.

    The result store is resumed when it holds an unfinished run of the same scenario, computed by
    the same mcsim and torch versions on the same device type; anything else there is refused
    unless ``overwrite``. Bad input raises an :class:`~mcsim.errors.InputError` before anything is
    computed; a run that cannot finish, a :class:`~mcsim.errors.RunFailure` (:mod:`mcsim.errors`).

    Args:
        scenario: a YAML path or a :class:`~mcsim.scenario.Scenario`.
        overwrite: delete an existing store at the output first (also one of another scenario,
            version or device) and start again. A folder that is not a Zarr store is never deleted.
        dry_run: report the plan (and what a resume would do); compute and write nothing.
        progress: draw the run's progress on stderr (rich), as the CLI does.
        output: the result store (path or fsspec URL); default the scenario's ``output``.
        workers: worker processes (or Ray workers); default ``execution.workers``.
        address: run the tasks on Ray (:class:`~mcsim.runner.ray_executor.RayExecutor`): ``"local"``
            starts a Ray instance on this machine; ``"auto"``, ``"host:6379"`` or
            ``"ray://host:10001"`` use a running cluster. None (default): local worker processes.
        on_event: receives each :mod:`mcsim.runner.events` event of the run (instead of the
            progress display).

    Returns:
        The result ``xarray.Dataset`` (see :func:`open_result`); None for a dry run.

    Raises:
        ScenarioError: an invalid scenario file.
        StoreError: a store at ``output`` that this run may not use (another scenario, mcsim or
            torch version, device type, or not an mcsim store).
        SetupError: ``execution.device`` is not available here.
        ConnectError: the Ray cluster at ``address`` cannot be reached (or started).
        RunError: a task failed after its retries (the results so far are kept: run again).

    Examples:
        >>> ds = run_scenario("scenarios/quickstart.yaml", progress=False)  # doctest: +SKIP
        >>> ds["top1"].mean("trial")  # doctest: +SKIP
    """
    from mcsim.runner import driver

    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    factory = None
    if address is not None:
        from mcsim.runner.ray_executor import RayExecutor, check_address

        if not dry_run:  # an unreachable cluster is reported before anything is written
            check_address(address)

        def factory(sc, n):
            return RayExecutor(sc, n, address=address)
    if on_event is None and progress:
        from mcsim.progress import ProgressView

        on_event = ProgressView()
    return driver.run(scenario, output=None if output is None else str(output), overwrite=overwrite,
                      dry_run=dry_run, workers=workers, on_event=on_event, executor_factory=factory,
                      check_device=address is None)


def open_result(path: Union[str, os.PathLike], *, partial: bool = False) -> xr.Dataset:
    """The result dataset of a run: ``xr.open_zarr(path)``, checked and loaded.

    Plain ``xarray.open_zarr(path)`` opens the same dataset lazily; this checks that the store
    is an mcsim store of this format and (unless ``partial``) finished.

    Args:
        path: the result store (a local path or an fsspec URL).
        partial: open an unfinished store too (``complete`` tells which points are done; the
            accuracies are over the images done so far, NaN where none).

    Returns:
        An ``xarray.Dataset``: ``top1``, ``top5``, ``correct_top1``, ``correct_top5``, ``n_images``
        over the sweep dims and ``trial``; ``complete``; ``digital_top1``, ``digital_top5``; the
        calibration; the scenario and run log as attributes.

    Raises:
        StoreError: no mcsim store at ``path``, one of another store format, or an unfinished
            one (unless ``partial``); an :class:`~mcsim.errors.InputError`.

    Examples:
        >>> ds = open_result("outputs/quickstart.zarr")  # doctest: +SKIP
        >>> ds["top1"].quantile([0.05, 0.95], dim="trial")  # doctest: +SKIP
        >>> open_result("outputs/half-done.zarr", partial=True)["complete"]  # doctest: +SKIP
    """
    from mcsim.runner.store import open_result as _open

    return _open(str(path), partial=partial)
