"""The driver: runs a scenario into its result store, resuming whatever an earlier run left.

:func:`run` reads as its phases:

1. :func:`prepare`: check the output (a store of another scenario, mcsim version or torch
   version is refused unless ``overwrite``; anything that is not a Zarr store is never touched),
   count the evaluation images and plan the tasks (an existing store keeps its own shard and
   trial-block sizes). A dry run stops here and reports the plan.
2. :func:`preflight`: the device and the model (built-ins train here, once), so that setup, data
   and model errors come before anything is written.
3. :func:`open_store`: create the store, or read its ledger (only the tasks not yet recorded run).
4. Inside a :class:`RunRecord` (its exit logs the run as finished, interrupted or failed):
   :func:`calibrate` every sweep point (unless stored), then :func:`evaluate` the digital
   baseline and the chips; each result is written to the store as it arrives. With adaptive
   trials the evaluation runs in rounds: after each, :func:`pending` reads every point's stop
   from the store and schedules the next trial block of the points above their target SE.
5. :func:`finish`: mark the store complete when nothing is left.

The driver prints nothing: it reports :mod:`mcsim.runner.events` to ``on_event``.

The driver process loads the model once per run (:func:`model_once`: the sweep's layer names, the
preflight and the energy layers read the same copy) and plans the run once (:func:`prepare`); each
worker process loads its own.
"""
from __future__ import annotations

import functools
import platform
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Protocol

import numpy as np

from mcsim.errors import InputError
from mcsim.runner.events import EventSink, Message, Phase, PhaseEnded, PhaseStarted, Plan, TaskDone, ignore
from mcsim.runner.plan import RunPlan, make_plan, store_layout
from mcsim.runner.store import (
    STORE_FORMAT,
    ResultStore,
    StoreError,
    StoreInfo,
    inspect_store,
    now,
    open_result,
    store_path,
)
from mcsim.scenario import Scenario
from mcsim.sweep import SweepPlan, expand, needs_layer_names

if TYPE_CHECKING:
    from torch import nn

    from mcsim.specs import ModelSpec

__all__ = ["Executor", "ExecutorFactory", "Pending", "Prepared", "RunRecord", "SetupError", "prepare", "run"]


class SetupError(InputError, ValueError):
    """The scenario cannot run here (e.g. a CUDA device asked for on a machine without one)."""

    in_scenario = True


class Executor(Protocol):
    """What the driver needs of an executor (:class:`~mcsim.runner.local.LocalExecutor`,
    :class:`~mcsim.runner.ray_executor.RayExecutor`): a context manager that runs jobs.

    ``workers`` and ``threads`` are logged in the run record once the executor has started (a
    Ray pool sizes itself then); ``device`` is known once a worker has loaded the model.
    """

    workers: Optional[int]
    threads: Optional[int]

    @property
    def device(self) -> Optional[str]: ...

    def __enter__(self) -> "Executor": ...

    def __exit__(self, *exc: Any) -> Optional[bool]: ...

    def run(self, jobs: Iterable[tuple[Any, Optional[dict]]]) -> Iterator[Any]:
        """Run ``(task, calibration)`` jobs; yield each result as its task finishes."""
        ...


#: ``factory(scenario, workers)`` makes the executor of a run.
ExecutorFactory = Callable[[Scenario, Optional[int]], Executor]


@dataclass
class Pending:
    """What is left to do in a store."""

    calibrate: bool
    digital: list
    evaluate: list
    eval_total: int  # evaluation tasks of the plan (with adaptive trials: at most)
    digital_total: int
    eval_done: int = 0

    @property
    def nothing(self) -> bool:
        return not (self.calibrate or self.digital or self.evaluate)


def versions() -> dict:
    """The versions that make the numbers (a store is only resumed by the same ones)."""
    import torch

    from mcsim._version import __version__

    return {"mcsim_version": __version__, "torch_version": str(torch.__version__)}


def device_type(device: Optional[str]) -> Optional[str]:
    """``"cuda:1"`` -> ``"cuda"``; None stays None."""
    return None if device is None else str(device).split(":")[0]


_AGAIN = "pass overwrite=True to delete it and start again, or choose another output path"


def check_output(path: str, scenario: Scenario, overwrite: bool) -> StoreInfo:
    """Refuse an output that this run must not touch; returns what is there."""
    info = inspect_store(path)
    if info.kind == "other":
        raise StoreError(f"{path} exists and is not a Zarr store; mcsim never deletes it "
                         "(choose another output path)")
    if overwrite:
        return info
    if info.kind == "zarr":
        raise StoreError(f"{path} is a Zarr store that mcsim did not write; pass overwrite=True "
                         "to replace it, or choose another output path")
    if info.kind == "mcsim" and info.attrs.get("state") != "creating":
        if info.fingerprint != scenario.fingerprint:
            other = info.attrs.get("name", "?")
            raise StoreError(
                f"{path} holds the results of another scenario ({other!r}, fingerprint "
                f"{str(info.fingerprint)[:12]}; this scenario {scenario.name!r} has "
                f"{scenario.fingerprint[:12]}); a store is only resumed by the scenario that wrote it. "
                + _AGAIN[0].upper() + _AGAIN[1:]
            )
        if info.attrs.get("mcsim_store") != STORE_FORMAT:
            raise StoreError(f"{path} was written in store format {info.attrs.get('mcsim_store')}, not "
                             f"{STORE_FORMAT}; {_AGAIN}")
        if info.attrs.get("state") != "complete":
            check_versions(path, info.attrs, versions())
    return info


def check_versions(path: str, attrs: dict, ours: dict) -> None:
    """Refuse to add numbers of other versions to a store: they may differ in the last bit."""
    for key, what in (("mcsim_version", "mcsim"), ("torch_version", "torch")):
        theirs = attrs.get(key)
        if theirs is not None and theirs != ours[key]:
            raise StoreError(f"{path} was computed with {what} {theirs}, this is {what} {ours[key]}: resuming "
                             f"would mix numbers of two versions; {_AGAIN}")


def check_device_type(path: str, attrs: dict, device: Optional[str]) -> None:
    """Refuse to add numbers of another device type (cpu, cuda) to a store."""
    theirs, ours = device_type(attrs.get("device")), device_type(device)
    if theirs is not None and ours is not None and theirs != ours:
        raise StoreError(f"{path} was computed on {theirs}, this run computes on {ours}: resuming would mix "
                         f"numbers of two device types; set execution.device: {theirs}, or {_AGAIN}")


def count_images(scenario: Scenario) -> int:
    from mcsim.data import evaluation_dataset

    return len(evaluation_dataset(scenario.data))


@dataclass(frozen=True)
class Prepared:
    """The checked output and the plan of a run."""

    path: str
    info: StoreInfo  # what was at ``path`` before the run
    plan: RunPlan
    overwrite: bool

    @property
    def complete(self) -> bool:
        """The store at ``path`` holds a finished run (and is kept)."""
        return not self.overwrite and self.info.attrs.get("state") == "complete"

    @property
    def fresh(self) -> bool:
        """The run creates the store (nothing there, or it replaces it)."""
        return self.overwrite or self.info.kind in ("absent", "empty") or self.info.attrs.get("state") == "creating"


#: A run's model: ``model()`` loads it on the first call and returns the same module after.
ModelLoader = Callable[[], "nn.Module"]


def model_once(spec: "ModelSpec") -> ModelLoader:
    """The model of ``spec``, loaded on the first call only (a built-in trains then, once)."""

    @functools.cache
    def model() -> "nn.Module":
        from mcsim.models import load_model

        return load_model(spec)

    return model


def model_layer_names(model: "nn.Module") -> list[str]:
    """The model's Conv2d/Linear layers: the names ``hardware.layers`` patterns match."""
    from mcsim.engine.convert import crossbar_layers

    return crossbar_layers(model)


def sweep_plan(scenario: Scenario, model: Optional[ModelLoader] = None) -> SweepPlan:
    """The sweep's points; a layer sweep, or per-layer overrides, load the model for its layer
    names (the layer sweep's points are one per layer; every pattern must match a layer), through
    ``model`` when given. A pattern that matches no layer is a :class:`SetupError` naming the field."""
    if not needs_layer_names(scenario):
        return expand(scenario)
    from mcsim.hardware import LayerNameError

    try:
        return expand(scenario, model_layer_names((model or model_once(scenario.model))()))
    except LayerNameError as err:
        raise SetupError(str(err)) from None


def prepare(scenario: Scenario, *, output: Optional[str] = None, overwrite: bool = False,
            model: Optional[ModelLoader] = None) -> Prepared:
    """Check the output and plan the work (no writes; loads the evaluation data set, and the model,
    through ``model`` when given, when the sweep needs its layer names)."""
    path = store_path(output or scenario.output)
    info = check_output(path, scenario, overwrite)
    n_images = count_images(scenario)
    resume = info.kind == "mcsim" and not overwrite and info.attrs.get("state") != "creating"
    layout = info.layout if resume else {}
    if resume and int(layout.get("n_images", -1)) != n_images:
        raise StoreError(f"{path} was written over {layout.get('n_images')} evaluation images, but the data "
                         f"set now has {n_images}; {_AGAIN}")
    plan = make_plan(scenario, n_images, sweep_plan(scenario, model),
                     shard_images=layout.get("shard_size"), trials_per_task=layout.get("trials_per_task"),
                     per_image=layout.get("per_image", False) if resume else None)
    return Prepared(path, info, plan, overwrite)


def layout_note(scenario: Scenario, plan: RunPlan) -> Optional[str]:
    """A note when an existing store's layout differs from this scenario's execution settings."""
    if store_layout(scenario) == (plan.shard_size, plan.trials_per_task) and scenario.per_image == plan.per_image:
        return None
    return (f"note: the store keeps its own layout (shards of {plan.shard_size} images, trial blocks of "
            f"{plan.trials_per_task}, per-image outcomes {'kept' if plan.per_image else 'not kept'}); "
            "execution.shard_images/trials_per_task and output.per_image apply to new stores only")


def pending(store: ResultStore, plan: RunPlan) -> Pending:
    """What is left, from the ledger. With adaptive trials, the tasks of the next round only: for each
    point that has not stopped (:func:`mcsim.runner.store.adaptive_stop`), the blocks that cover
    ``min`` chips, or else the first block not yet done."""
    done, digital_done = store.ledger()
    if plan.adaptive is None:
        wanted = None
    else:
        full = done.all(axis=-1)
        _, ended = store.stops()
        wanted = {p.index: set() if ended[p.position]
                  else set(range(plan.min_blocks)) | {int(np.argmin(full[p.position]))}
                  for p in plan.sweep.points}
    evaluate = [t for t in plan.eval_tasks() if not done[plan.sweep.points[t.point].position + (t.block, t.shard)]
                and (wanted is None or t.block in wanted[t.point])]
    digital = [t for t in plan.digital_tasks() if not digital_done[t.shard]]
    return Pending(not store.has_calibration(), digital, evaluate, int(done.size), int(digital_done.size),
                   int(done.sum()))


def describe_store(prep: Prepared) -> list[str]:
    """What a run would do to its output, in lines."""
    info, path = prep.info, prep.path
    if info.kind in ("absent", "empty"):
        return [f"output: {path} (new)"]
    if prep.overwrite:
        return [f"output: {path} (exists: it would be deleted and written again)"]
    if info.kind == "mcsim" and info.attrs.get("state") != "creating":
        left = pending(ResultStore(path, prep.plan), prep.plan)
        to_run = f"{len(left.evaluate)} to run" + (" in the next round" if prep.plan.adaptive is not None else "")
        return [f"output: {path} (exists, same scenario)",
                f"resume: {left.eval_done} of {'up to ' if prep.plan.adaptive is not None else ''}{left.eval_total} "
                f"evaluation tasks done, {to_run}" + ("; calibration to run" if left.calibrate else "")]
    return [f"output: {path}"]


# --------------------------------------------------------------------------------------
# the phases


def report_dry_run(scenario: Scenario, prep: Prepared, on_event: EventSink) -> None:
    """Report the plan, its estimated cost (:mod:`mcsim.runner.cost`) and what the store holds;
    compute and write nothing."""
    from mcsim.runner.cost import estimate_lines

    title = (f"scenario {scenario.name!r} (fingerprint {scenario.fingerprint[:12]}): dry run, "
             "nothing computed or written")
    lines = prep.plan.describe() + estimate_lines(scenario, prep.plan) + describe_store(prep)
    on_event(Plan(title, tuple(lines), dry_run=True))


def preflight(scenario: Scenario, prep: Prepared, model: ModelLoader, *, check_device: bool) -> None:
    """Setup and model errors before any write: the device exists here (unless the tasks run
    elsewhere), the store's device type is this one, the model loads (a built-in trains once), a
    loss metric scores its outputs (:func:`check_metric`)."""
    from mcsim.engine.convert import pick_device

    if check_device:
        try:
            device = pick_device(scenario.execution.device)
        except RuntimeError as err:
            raise SetupError(f"execution.device: {err}") from None
        if not prep.fresh and not prep.complete:
            check_device_type(prep.path, prep.info.attrs, str(device))
    net = model()
    if scenario.metric_info is not None:
        check_metric(scenario, net)


def check_metric(scenario: Scenario, net) -> None:
    """A loss metric scores the digital model on the first two evaluation images: a factory that
    does not import or fails, or targets the metric cannot use, raise :class:`mcsim.metrics.MetricError`
    (an input error) before anything is written."""
    import torch

    from mcsim.data import evaluation_dataset, import_object
    from mcsim.metrics import MetricError, image_losses
    from mcsim.scenario import FactoryMetric

    metric = scenario.metric
    fn = import_object(metric.factory, "metric.factory", MetricError) if isinstance(metric, FactoryMetric) else None
    data = evaluation_dataset(scenario.data)
    items = [data[i] for i in range(min(2, len(data)))]
    x = torch.stack([torch.as_tensor(item[0]) for item in items])
    y = torch.stack([torch.as_tensor(item[1]) for item in items])
    with torch.no_grad():
        image_losses(net(x).unsqueeze(0), y, scenario.metric_name, fn, getattr(metric, "kwargs", None))


def open_store(scenario: Scenario, prep: Prepared, model: ModelLoader) -> ResultStore:
    """Create the store (recording the versions), or open it to resume (its result arrays
    recomputed from its ledger, in case an interruption left them behind)."""
    if prep.fresh:
        return ResultStore.create(prep.path, scenario, prep.plan, extra_attrs=versions(),
                                  overwrite=prep.info.kind not in ("absent", "empty"),
                                  energy_layers=energy_layers(scenario, model))
    store = ResultStore(prep.path, prep.plan)
    if not prep.complete:
        store.refresh()
    return store


def energy_layers(scenario: Scenario, model: ModelLoader) -> Optional[list[str]]:
    """The layers whose energy a run counts (every Conv/Linear of the model); None: no counting."""
    if not scenario.energy:
        return None
    from mcsim.engine.counting import layer_names

    return layer_names(model())


def announce(scenario: Scenario, prep: Prepared, left: Pending, on_event: EventSink) -> None:
    """Tell what this run will do."""
    if not prep.fresh:
        note = layout_note(scenario, prep.plan)
        if note:
            on_event(Message(note))
        upto = "up to " if prep.plan.adaptive is not None else ""
        on_event(Message(f"resuming {prep.path}: {left.eval_done} of {upto}{left.eval_total} "
                         f"evaluation tasks already done; running {len(left.evaluate)}"
                         + (", and the calibration" if left.calibrate else "")))
    on_event(Plan(f"scenario {scenario.name!r}", tuple(prep.plan.describe())))


@dataclass
class RunRecord:
    """One entry of the store's ``runs`` log, as a context manager: written as ``running`` on
    entry, and on exit as ``finished``, ``interrupted`` (Ctrl-C) or ``failed``.

    It also guards the device type: :meth:`check` is called before each result is written, and
    refuses results of another device type than the store's (recording it when the store has none).
    """

    store: ResultStore
    entry: dict = field(default_factory=dict)
    _device_checked: bool = False

    def __enter__(self) -> "RunRecord":
        self.entry = {"started": now(), "status": "running",
                      "computed": {"calibrate": 0, "digital": 0, "evaluate": 0},
                      **versions(), "host": platform.node()}
        self.store.record_run(self.entry)
        return self

    def executor(self, executor: Executor) -> None:
        """Log the executor's size (known once started: a Ray pool sizes itself then)."""
        for key in ("workers", "threads"):
            if getattr(executor, key, None) is not None:  # a wrapper (bench/) may lack them
                self.entry[key] = getattr(executor, key)

    def check(self, device: Optional[str]) -> None:
        if self._device_checked or device is None:
            return
        attrs = self.store.attrs()
        check_device_type(self.store.path, attrs, device)
        if attrs.get("device") is None:
            self.store.update_attrs(device=device_type(device))
        self.entry["device"] = device_type(device)
        self._device_checked = True

    def computed(self, kind: str) -> None:
        self.entry["computed"][kind] += 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        status = ("finished" if exc_type is None
                  else "interrupted" if issubclass(exc_type, KeyboardInterrupt) else "failed")
        self.entry.update(status=status, ended=now())
        try:
            self.store.record_run(self.entry)
        except Exception:  # noqa: BLE001 - never hide the original error
            if exc_type is None:
                raise
        return False


@contextmanager
def _phase(on_event: EventSink, phase: Phase, tasks: int, work: int) -> Iterator[None]:
    """A phase's start and end events; the end also when it fails (a display closes its bar)."""
    on_event(PhaseStarted(phase, tasks, max(work, 1)))
    try:
        yield
    finally:
        on_event(PhaseEnded(phase))


def calibrate(store: ResultStore, plan: RunPlan, executor: Executor, record: RunRecord, on_event: EventSink) -> None:
    """Calibrate every sweep point, then store the calibrations at once."""
    tasks = plan.calibration_tasks()
    results = []
    with _phase(on_event, "calibrating", len(tasks), len(tasks)):
        for result in executor.run((t, None) for t in tasks):
            record.check(executor.device)
            results.append(result)
            record.computed("calibrate")
            on_event(TaskDone("calibrating", 1, 0))
    store.write_calibration(results)


def evaluate(store: ResultStore, plan: RunPlan, left: Pending, executor: Executor, record: RunRecord,
             on_event: EventSink) -> None:
    """The digital baseline and the chips, each result stored as it arrives; in rounds with adaptive
    trials (one round without), each round's tasks from :func:`pending` after the one before."""
    calibrations = store.read_calibration()
    rounds = 0
    while left.digital or left.evaluate:
        rounds += 1
        if plan.adaptive is not None:
            points = sorted({t.point for t in left.evaluate})
            chips = sorted({(t.t0, t.t1) for t in left.evaluate})
            on_event(Message(f"adaptive trials, round {rounds}: chips {chips[0][0]}-{chips[-1][1] - 1} of "
                             f"{len(points)} point(s)" + (" above the target SE" if rounds > 1 else "")
                             if chips else f"adaptive trials, round {rounds}: the digital baseline"))
        evaluate_round(store, left, calibrations, executor, record, on_event)
        left = pending(store, plan)


def evaluate_round(store: ResultStore, left: Pending, calibrations: dict, executor: Executor, record: RunRecord,
                   on_event: EventSink) -> None:
    """Run the tasks of ``left``, each result stored as it arrives."""
    jobs = [(t, None) for t in left.digital] + [(t, calibrations[t.point]) for t in left.evaluate]
    work = sum(t.n_images for t in left.digital) + sum(t.n_images * t.n_trials for t in left.evaluate)
    with _phase(on_event, "evaluating", len(jobs), work):
        for result in executor.run(jobs):
            task = result.task
            check_counts(result, task)
            record.check(executor.device)
            if task.kind == "digital":
                store.write_digital(result)
                work = task.n_images
            else:
                store.write_eval(result)
                work = task.n_images * task.n_trials
            record.computed(task.kind)
            on_event(TaskDone("evaluating", work, work))


def finish(store: ResultStore, plan: RunPlan) -> None:
    """Bring the result arrays up to date with the ledger; mark the store complete when it is."""
    store.refresh()
    if pending(store, plan).nothing:
        store.update_attrs(state="complete", finished=now())


def _local_executor(scenario: Scenario, workers: Optional[int]) -> Executor:
    from mcsim.runner.local import LocalExecutor

    return LocalExecutor(scenario, workers=workers)


# --------------------------------------------------------------------------------------
# the run


def run(
    scenario: Scenario,
    *,
    output: Optional[str] = None,
    overwrite: bool = False,
    dry_run: bool = False,
    workers: Optional[int] = None,
    on_event: Optional[EventSink] = None,
    executor_factory: Optional[ExecutorFactory] = None,
    check_device: bool = True,
):
    """Run ``scenario`` (resuming its store) and return the result dataset; None for a dry run.

    ``executor_factory(scenario, workers)`` makes the executor (default: :class:`LocalExecutor`;
    :class:`mcsim.runner.ray_executor.RayExecutor` runs on Ray); it must be a context manager with
    ``run(jobs)`` yielding results and a ``device`` attribute. ``check_device=False`` skips
    the check that ``execution.device`` exists on this machine (a Ray executor's workers run
    elsewhere: the driver of a GPU study may run on a CPU head). ``on_event`` receives the
    :mod:`mcsim.runner.events` of the run.
    """
    on_event = on_event or ignore
    model = model_once(scenario.model)
    prep = prepare(scenario, output=output, overwrite=overwrite, model=model)
    if dry_run:
        report_dry_run(scenario, prep, on_event)
        return None
    preflight(scenario, prep, model, check_device=check_device)
    store = open_store(scenario, prep, model)
    left = pending(store, prep.plan)
    if left.nothing:
        on_event(Message(f"{prep.path}: already complete, nothing to run"))
        if not prep.complete:  # an earlier run was stopped between its last task and its end
            finish(store, prep.plan)
        return open_result(prep.path)
    announce(scenario, prep, left, on_event)
    make_executor = executor_factory or _local_executor
    with RunRecord(store) as record, make_executor(scenario, workers) as executor:
        record.executor(executor)
        if left.calibrate:
            calibrate(store, prep.plan, executor, record, on_event)
        evaluate(store, prep.plan, left, executor, record, on_event)
    finish(store, prep.plan)
    return open_result(prep.path)


def check_counts(result, task) -> None:
    """A worker's counts must be possible: as many images as the task's, counts within them (a loss
    metric's sums finite, each batch counting elements)."""
    if result.n_images != task.n_images:
        raise RuntimeError(f"task {task}: the worker evaluated {result.n_images} images, not {task.n_images}")
    if result.moments is not None:  # a loss metric: sums per batch of the task's shard
        counts = result.moments[..., 1]
        if not np.isfinite(result.moments).all() or counts.min() <= 0:
            raise RuntimeError(f"task {task}: loss sums not finite or without images: {result.moments}")
        return
    for name in ("correct_top1", "correct_top5"):
        values = np.asarray(getattr(result, name))
        if values.min() < 0 or values.max() > task.n_images:
            raise RuntimeError(f"task {task}: {name} out of range: {values}")
