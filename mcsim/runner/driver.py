"""The driver: runs a scenario into its result store, resuming whatever an earlier run left.

1. Check the output: a store of another scenario is refused (unless ``overwrite``), anything
   that is not a Zarr store is never touched.
2. Preflight: count the evaluation images and load the model (built-ins train here, once), so
   that data and model errors come before anything is written.
3. Plan the tasks; an existing store keeps its own shard and trial-block sizes.
4. Create the store, or read its ledger: only the tasks not yet recorded run.
5. Calibrate every sweep point (unless stored), then run the digital baseline and the
   evaluation tasks; each result is written to the store as it arrives.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from mcsim.runner.plan import RunPlan, make_plan
from mcsim.runner.store import ResultStore, StoreError, StoreInfo, inspect_store, now, open_result, store_path
from mcsim.scenario import Scenario
from mcsim.sweep import expand

__all__ = ["Pending", "SetupError", "prepare", "run"]


class SetupError(ValueError):
    """The scenario cannot run here (e.g. a CUDA device asked for on a machine without one)."""


@dataclass
class Pending:
    """What is left to do in a store."""

    calibrate: bool
    digital: list
    evaluate: list
    eval_total: int
    digital_total: int

    @property
    def nothing(self) -> bool:
        return not (self.calibrate or self.digital or self.evaluate)


def _versions() -> dict:
    import torch

    import mcsim

    return {"mcsim_version": mcsim.__version__, "torch_version": str(torch.__version__)}


def check_output(path: str, scenario: Scenario, overwrite: bool) -> StoreInfo:
    """Refuse an output that this run must not touch; returns what is there."""
    info = inspect_store(path)
    if info.kind == "other":
        raise StoreError(f"{path} exists and is not a Zarr store; mcsim never deletes it "
                         "(choose another output path)")
    if overwrite:
        return info
    if info.kind == "zarr":
        raise StoreError(f"{path} is a Zarr store that mcsim did not write; use --overwrite to replace it, "
                         "or choose another output path")
    if info.kind == "mcsim" and info.attrs.get("state") != "creating":
        if info.fingerprint != scenario.fingerprint:
            other = info.attrs.get("name", "?")
            raise StoreError(
                f"{path} holds the results of another scenario ({other!r}, fingerprint "
                f"{str(info.fingerprint)[:12]}; this scenario {scenario.name!r} has "
                f"{scenario.fingerprint[:12]}); a store is only resumed by the scenario that wrote it. "
                "Use --overwrite to delete it and start again, or choose another output path"
            )
        from mcsim.runner.store import STORE_FORMAT

        if info.attrs.get("mcsim_store") != STORE_FORMAT:
            raise StoreError(f"{path} was written in store format {info.attrs.get('mcsim_store')}, not "
                             f"{STORE_FORMAT}; use --overwrite to start again")
    return info


def count_images(scenario: Scenario) -> int:
    from mcsim.data import evaluation_dataset

    return len(evaluation_dataset(scenario.data))


def prepare(scenario: Scenario, output: Optional[str] = None, overwrite: bool = False
            ) -> tuple[str, StoreInfo, RunPlan]:
    """Check the output and plan the work (no writes; loads the evaluation data set)."""
    path = store_path(output or scenario.output)
    info = check_output(path, scenario, overwrite)
    n_images = count_images(scenario)
    resume = info.kind == "mcsim" and not overwrite and info.attrs.get("state") != "creating"
    layout = info.layout if resume else {}
    if resume and int(layout.get("n_images", -1)) != n_images:
        raise StoreError(f"{path} was written over {layout.get('n_images')} evaluation images, but the data "
                         f"set now has {n_images}; use --overwrite to start again")
    plan = make_plan(scenario, n_images, expand(scenario),
                     shard_images=layout.get("shard_size"), trials_per_task=layout.get("trials_per_task"))
    return path, info, plan


def layout_note(scenario: Scenario, plan: RunPlan) -> Optional[str]:
    """A note when an existing store's layout differs from this scenario's execution settings."""
    own = make_plan(scenario, plan.n_images, plan.sweep)
    if (own.shard_size, own.trials_per_task) == (plan.shard_size, plan.trials_per_task):
        return None
    return (f"note: the store keeps its own layout (shards of {plan.shard_size} images, trial blocks of "
            f"{plan.trials_per_task}); execution.shard_images/trials_per_task apply to new stores only")


def pending(store: ResultStore, plan: RunPlan) -> Pending:
    done, digital_done = store.ledger()
    evaluate = [t for t in plan.eval_tasks() if not done[plan.sweep.points[t.point].position + (t.block, t.shard)]]
    digital = [t for t in plan.digital_tasks() if not digital_done[t.shard]]
    return Pending(not store.has_calibration(), digital, evaluate, int(done.size), int(digital_done.size))


def describe_store(info: StoreInfo, plan: RunPlan, path: str, overwrite: bool) -> list[str]:
    if info.kind in ("absent", "empty"):
        return [f"output: {path} (new)"]
    if overwrite:
        return [f"output: {path} (exists: it would be deleted and written again)"]
    if info.kind == "mcsim" and info.attrs.get("state") != "creating":
        store = ResultStore(path, plan)
        left = pending(store, plan)
        lines = [f"output: {path} (exists, same scenario)"]
        lines.append(f"resume: {left.eval_total - len(left.evaluate)} of {left.eval_total} evaluation tasks "
                     f"done, {len(left.evaluate)} to run" + ("; calibration to run" if left.calibrate else ""))
        return lines
    return [f"output: {path}"]


# --------------------------------------------------------------------------------------
# progress


class _Progress:
    """A rich progress bar (tasks done, images/s, ETA) or nothing."""

    def __init__(self, enabled: bool, console=None):
        self.enabled = enabled
        self.console = console
        self._progress = None

    def message(self, text: str) -> None:
        if self.enabled:
            self._console().print(text, highlight=False, markup=False, soft_wrap=True)

    def _console(self):
        if self.console is None:
            from rich.console import Console

            self.console = Console(stderr=True)
        return self.console

    def phase(self, name: str, n_tasks: int, work: int):
        return _Phase(self, name, n_tasks, work)


class _Phase:
    def __init__(self, parent: _Progress, name: str, n_tasks: int, work: int):
        self.parent, self.name, self.n_tasks, self.work = parent, name, n_tasks, max(work, 1)
        self.done = 0
        self.images = 0
        self.start = time.perf_counter()
        self.bar = None

    def __enter__(self):
        self.plain = self.parent.enabled and not self.parent._console().is_terminal
        self.last = 0.0
        if self.plain:  # a log (e.g. a Ray job's): a line every few seconds instead of a bar
            self.parent.message(f"{self.name}: 0/{self.n_tasks} tasks")
        elif self.parent.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(),
                TextColumn("{task.fields[tasks]} tasks"), TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=self.parent._console(), transient=False,
            )
            self.bar.__enter__()
            self.id = self.bar.add_task(self.name, total=self.work, tasks=f"0/{self.n_tasks}", rate="")
        return self

    def advance(self, work: int, images: int) -> None:
        self.done += 1
        self.images += images
        if self.plain:
            t = time.perf_counter()
            if t - self.last >= 5 or self.done == self.n_tasks:
                self.last = t
                rate = self.images / max(t - self.start, 1e-9)
                self.parent.message(f"{self.name}: {self.done}/{self.n_tasks} tasks"
                                    + (f", {rate:,.0f} images/s" if self.images else "")
                                    + f", {t - self.start:.0f} s")
        if self.bar is not None:
            rate = self.images / max(time.perf_counter() - self.start, 1e-9)
            self.bar.update(self.id, advance=work, tasks=f"{self.done}/{self.n_tasks}",
                            rate=f"{rate:,.0f} images/s" if self.images else "")

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


# --------------------------------------------------------------------------------------
# the run


def run(
    scenario: Scenario,
    *,
    output: Optional[str] = None,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    workers: Optional[int] = None,
    console=None,
    executor_factory: Optional[Callable] = None,
    check_device: bool = True,
):
    """Run ``scenario`` (resuming its store) and return the result dataset; None for a dry run.

    ``executor_factory(scenario, workers)`` makes the executor (default: :class:`LocalExecutor`;
    :class:`mcsim.runner.ray.RayExecutor` runs on Ray);
    it must be a context manager with ``run(jobs)`` yielding results and a ``device`` attribute.
    ``check_device=False`` skips the check that ``execution.device`` exists on this machine (a
    Ray executor's workers run elsewhere: the driver of a GPU study may run on a CPU head).
    """
    out = _Progress(progress, console)
    path, info, plan = prepare(scenario, output, overwrite)
    if dry_run:
        if progress:
            from rich.console import Console

            con = console or Console(highlight=False, soft_wrap=True)
            con.print(f"scenario {scenario.name!r} (fingerprint {scenario.fingerprint[:12]}): dry run, "
                      "nothing computed or written", markup=False)
            for line in plan.describe() + describe_store(info, plan, path, overwrite):
                con.print("  " + line, markup=False)
        return None

    from mcsim.engine.convert import pick_device
    from mcsim.models import load_model

    if check_device:
        try:
            pick_device(scenario.execution.device)
        except RuntimeError as err:
            raise SetupError(f"execution.device: {err}") from None
    load_model(scenario.model)  # model errors now, before any write; trains a built-in once
    versions = _versions()
    fresh = overwrite or info.kind in ("absent", "empty") or info.attrs.get("state") == "creating"
    if fresh:
        store = ResultStore.create(path, scenario, plan, overwrite=info.kind not in ("absent", "empty"),
                                   extra_attrs=versions)
    else:
        store = ResultStore(path, plan)
    left = pending(store, plan)
    started = now()
    if left.nothing:
        out.message(f"{path}: already complete, nothing to run")
        return open_result(path)
    if not fresh:
        note = layout_note(scenario, plan)
        if note:
            out.message(note)
        out.message(f"resuming {path}: {left.eval_total - len(left.evaluate)} of {left.eval_total} evaluation "
                    f"tasks already done; running {len(left.evaluate)}"
                    + (", and the calibration" if left.calibrate else ""))
    for line in plan.describe():
        out.message(line)

    if executor_factory is None:
        from mcsim.runner.local import LocalExecutor

        def executor_factory(sc, n):
            return LocalExecutor(sc, workers=n)

    computed = {"calibrate": 0, "digital": 0, "evaluate": 0}
    entry = {"started": started, "status": "running", "computed": computed, **versions,
             "host": platform.node()}
    store.record_run(entry)
    executor = executor_factory(scenario, workers)
    status = "failed"
    try:
        with executor:
            for key in ("workers", "threads"):  # known once started (a Ray pool sizes itself then)
                if getattr(executor, key, None) is not None:
                    entry[key] = getattr(executor, key)
            if left.calibrate:
                results = []
                tasks = plan.calibration_tasks()
                with out.phase("calibrating", len(tasks), len(tasks)) as bar:
                    for result in executor.run((t, None) for t in tasks):
                        results.append(result)
                        computed["calibrate"] += 1
                        bar.advance(1, 0)
                store.write_calibration(results)
            calibrations = store.read_calibration()
            jobs = [(t, None) for t in left.digital] + [(t, calibrations[t.point]) for t in left.evaluate]
            work = sum(t.n_images for t in left.digital) + sum(t.n_images * t.n_trials for t in left.evaluate)
            with out.phase("evaluating", len(jobs), work) as bar:
                for result in executor.run(jobs):
                    task = result.task
                    if task.kind == "digital":
                        _check_count(result, task)
                        store.write_digital(result)
                        computed["digital"] += 1
                        bar.advance(task.n_images, task.n_images)
                    else:
                        _check_count(result, task)
                        store.write_eval(result)
                        computed["evaluate"] += 1
                        bar.advance(task.n_images * task.n_trials, task.n_images * task.n_trials)
            entry["device"] = executor.device
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        entry.update(status=status, ended=now())
        try:
            store.record_run(entry)
        except Exception:  # noqa: BLE001 - never hide the original error
            pass
    left = pending(store, plan)
    attrs = {"device": entry.get("device"), **versions}
    if left.nothing:
        attrs.update(state="complete", finished=now())
    store.update_attrs(**attrs)
    return open_result(path)


def _check_count(result, task) -> None:
    if result.n_images != task.n_images:
        raise RuntimeError(f"task {task}: the worker evaluated {result.n_images} images, not {task.n_images}")
    for name in ("correct_top1", "correct_top5"):
        values = np.asarray(getattr(result, name))
        if values.min() < 0 or values.max() > task.n_images:
            raise RuntimeError(f"task {task}: {name} out of range: {values}")
