"""The tasks of a scenario: which chips of which sweep point see which images.

Images are cut into fixed global batches of ``data.batch_size`` over the evaluation list
(batch ``k`` holds images ``[k * batch_size, (k + 1) * batch_size)``); a shard is a run of whole
batches, so its size is ``execution.shard_images`` rounded up to a multiple of the batch size.
Trials (chips) are cut into blocks of ``execution.trials_per_task``. With adaptive trials
(``trials: {target_se, min, max}``) the blocks run up to ``max`` chips, in rounds: the blocks
that cover ``min`` chips first, then one block at a time for each point whose SE is still above
the target (:func:`mcsim.runner.store.adaptive_stop` decides from the ledger). Every batch is therefore the
same whatever the shard size, block size or worker count, and so is every number.

Three kinds of task, each naming everything a worker needs besides the scenario:

* :class:`CalibrationTask`: calibrate the converter ranges of one sweep point (once per point);
* :class:`DigitalTask`: correct counts of the digital model on one shard (the baseline);
* :class:`EvalTask`: correct counts of a block of chips of one point on one shard.

No torch at import time (the keyed hash of :func:`point_seed` imports it on first use).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

from mcsim.scenario import AdaptiveTrials, Scenario
from mcsim.sweep import SweepPlan, expand

__all__ = [
    "CalibrationTask",
    "DigitalTask",
    "EvalTask",
    "RunPlan",
    "Task",
    "make_plan",
    "point_seed",
    "store_layout",
]

COMMON_POINT = -1  # the point index common chips are keyed by: no sweep point has it

def point_seed(seed: int, point: int) -> int:
    """The engine seed of sweep point ``point``: ``mcsim.engine.rng.derive(seed, point)`` (the
    keyed hash of ``(seed, point)``) with the sign bit cleared, in [0, 2**63).

    ``seed`` is taken modulo 2**64 (as the int64 with the same bits).
    """
    from mcsim.engine.rng import derive  # torch: on first use only

    seed %= 1 << 64
    return int(derive(seed - (1 << 64) if seed >= 1 << 63 else seed, point).item()) & ((1 << 63) - 1)


@dataclass(frozen=True)
class CalibrationTask:
    point: int
    seed: int  # engine seed of the point

    kind = "calibrate"

    @property
    def group(self) -> tuple:
        return ("calibrate", self.point)


@dataclass(frozen=True)
class DigitalTask:
    shard: int
    i0: int  # images [i0, i1) of the evaluation list
    i1: int
    per_image: bool = False  # also return the shard's labels

    kind = "digital"

    @property
    def group(self) -> tuple:
        return ("digital",)

    @property
    def n_images(self) -> int:
        return self.i1 - self.i0


@dataclass(frozen=True)
class EvalTask:
    point: int  # flat index of the sweep point
    seed: int  # engine seed of the point
    block: int  # trial block index
    t0: int  # chips [t0, t1)
    t1: int
    shard: int  # shard index
    i0: int  # images [i0, i1) of the evaluation list
    i1: int
    per_image: bool = False  # also return each chip's top-1 outcome per image, packed as bits

    kind = "evaluate"

    @property
    def group(self) -> tuple:
        """Tasks of one group share a converted model (a worker keeps it between them)."""
        return ("evaluate", self.point, self.block)

    @property
    def n_images(self) -> int:
        return self.i1 - self.i0

    @property
    def n_trials(self) -> int:
        return self.t1 - self.t0


Task = Union[CalibrationTask, DigitalTask, EvalTask]


@dataclass(frozen=True)
class RunPlan:
    """How a scenario's work is cut: shards, trial blocks and the tasks."""

    sweep: SweepPlan
    seed: int
    trials: int
    n_images: int
    batch_size: int
    shard_size: int  # images per shard (a multiple of batch_size)
    trials_per_task: int
    shard_images_asked: int  # execution.shard_images as written
    chips: str = "per_point"  # execution.chips
    adaptive: Optional[AdaptiveTrials] = None  # adaptive trials; ``trials`` is then their max
    per_image: bool = False  # the store keeps each chip's outcome per image
    metric_name: str = "top1"  # scenario.metric_name: adaptive trials stop on it
    metric: Optional[dict] = None  # scenario.metric_info: a loss metric's name, transform, direction

    @property
    def batches_per_shard(self) -> int:
        return self.shard_size // self.batch_size

    @property
    def n_batches(self) -> int:
        return math.ceil(self.n_images / self.batch_size)

    def engine_seed(self, point: int) -> int:
        """The engine seed of sweep point ``point``: with ``chips: common`` one seed for every point
        (``point_seed(seed, COMMON_POINT)``), so chip ``t`` is the same chip everywhere; with
        ``per_point`` :func:`point_seed` of the point (docs/physics.md section 14)."""
        return point_seed(self.seed, COMMON_POINT if self.chips == "common" else point)

    @property
    def shards(self) -> list[tuple[int, int]]:
        return [(i, min(i + self.shard_size, self.n_images)) for i in range(0, self.n_images, self.shard_size)]

    @property
    def trial_blocks(self) -> list[tuple[int, int]]:
        return [(t, min(t + self.trials_per_task, self.trials)) for t in range(0, self.trials, self.trials_per_task)]

    @property
    def min_blocks(self) -> int:
        """The trial blocks every point runs: all of them, or with adaptive trials those that cover ``min`` chips."""
        if self.adaptive is None:
            return len(self.trial_blocks)
        return math.ceil(min(self.adaptive.min, self.trials) / self.trials_per_task)

    @property
    def n_points(self) -> int:
        return len(self.sweep.points)

    def batches(self, i0: int, i1: int) -> list[tuple[int, int]]:
        """The global batches ``[b0, b1)`` covering images ``[i0, i1)`` (a shard: whole batches)."""
        return [(b, min(b + self.batch_size, i1)) for b in range(i0, i1, self.batch_size)]

    def calibration_tasks(self) -> list[CalibrationTask]:
        return [CalibrationTask(p.index, self.engine_seed(p.index)) for p in self.sweep.points]

    def digital_tasks(self) -> list[DigitalTask]:
        return [DigitalTask(s, i0, i1, self.per_image) for s, (i0, i1) in enumerate(self.shards)]

    def eval_tasks(self) -> list[EvalTask]:
        """All evaluation tasks, point-major, then trial block, then shard."""
        tasks = []
        for p in self.sweep.points:
            seed = self.engine_seed(p.index)
            for b, (t0, t1) in enumerate(self.trial_blocks):
                for s, (i0, i1) in enumerate(self.shards):
                    tasks.append(EvalTask(p.index, seed, b, t0, t1, s, i0, i1, self.per_image))
        return tasks

    def describe(self) -> list[str]:
        """Human-readable lines: the cut of the work."""
        shards, blocks = self.shards, self.trial_blocks
        def dim(d, n):
            zipped = [c for c, along in self.sweep.coord_dims.items() if along == d and c != d]
            return f"{d} {n}" + (f" (zipped: {', '.join(zipped)})" if zipped else "")

        dims = " x ".join(dim(d, n) for d, n in zip(self.sweep.dims, self.sweep.shape)) or "no sweep"
        chips = "common to every point" if self.chips == "common" else "drawn per point"
        lines = [f"sweep points: {self.n_points} ({dims})"]
        if self.adaptive is None:
            lines.append(f"trials per point: {self.trials}, in {len(blocks)} block(s) of up to "
                         f"{self.trials_per_task}; chips {chips}")
        else:
            a, first = self.adaptive, self.min_blocks
            floor = 0.5 / math.sqrt(self.n_images)
            lines.append(
                f"trials per point: adaptive, {blocks[first - 1][1]} to {self.trials} chips until the mean's SE "
                f"<= {a.target_se:g}; round 1 runs {first} block(s) of up to {self.trials_per_task}, then up to "
                f"{len(blocks) - first} more round(s) of one block per point above the target "
                f"(the stop is checked per block of {self.trials_per_task} chips); chips {chips}")
            if a.target_se < floor and self.metric is None:
                lines.append(f"note: the image term sqrt(p (1 - p) / {self.n_images}) of the SE does not shrink "
                             f"with chips (at most {floor:.4g}, at p = 0.5): points with a larger image term "
                             f"than the target {a.target_se:g} run all {self.trials} chips")
        lines.append(f"evaluation images: {self.n_images}, in batches of {self.batch_size}")
        size = f"{self.shard_size} images"
        if self.shard_size != self.shard_images_asked:
            size += (f" (execution.shard_images {self.shard_images_asked} rounded up to a multiple of the "
                     f"batch size {self.batch_size})")
        lines.append(f"image shards: {len(shards)} of {size}")
        if self.metric is not None:
            better = "lower" if self.metric["lower_is_better"] else "higher"
            lines.append(f"metric: {self.metric['name']} ({better} is better), from each chip's loss sums per batch")
        if self.per_image:
            lines.append("per-image outcomes: kept (top-1 per chip and image, packed as bits)")
        if "target_layer" in self.sweep.coords:
            lines.append(f"layers swept (target_layer): {', '.join(self.sweep.coords['target_layer'])}")
        evaluation = (f"{self.n_points * len(blocks) * len(shards)} evaluation "
                      f"({self.n_points} points x {len(blocks)} trial blocks x {len(shards)} shards)")
        if self.adaptive is not None:
            evaluation = (f"{self.n_points * self.min_blocks * len(shards)} to {evaluation.replace(' evaluation', '')}"
                          " evaluation")
        lines.append(f"tasks: {self.n_points} calibration, {len(shards)} digital baseline, {evaluation}")
        return lines


def make_plan(
    scenario: Scenario,
    n_images: int,
    sweep: Optional[SweepPlan] = None,
    *,
    shard_images: Optional[int] = None,
    trials_per_task: Optional[int] = None,
    per_image: Optional[bool] = None,
) -> RunPlan:
    """The plan of ``scenario`` over ``n_images`` evaluation images.

    ``shard_images`` / ``trials_per_task`` / ``per_image`` default to the scenario's settings; an
    existing store passes its own (the layout of a store never changes once written).
    """
    if n_images < 1:
        raise ValueError("the evaluation data set is empty")
    asked = shard_images if shard_images is not None else scenario.execution.shard_images
    shard_size, tpt = store_layout(scenario, shard_images=asked, trials_per_task=trials_per_task)
    return RunPlan(
        sweep=sweep if sweep is not None else expand(scenario),
        seed=scenario.seed,
        trials=scenario.max_trials,
        n_images=n_images,
        batch_size=scenario.data.batch_size,
        shard_size=shard_size,
        trials_per_task=tpt,
        shard_images_asked=asked,
        chips=scenario.execution.chips,
        adaptive=scenario.adaptive,
        per_image=scenario.per_image if per_image is None else per_image,
        metric_name=scenario.metric_name,
        metric=scenario.metric_info,
    )


def store_layout(scenario: Scenario, *, shard_images: Optional[int] = None,
                 trials_per_task: Optional[int] = None) -> tuple[int, int]:
    """``(shard size, trials per task)`` of a new store of ``scenario``: ``execution.shard_images``
    rounded up to whole batches, ``execution.trials_per_task`` capped at the (most) trials (either taken
    from the arguments when given)."""
    bs = scenario.data.batch_size
    asked = shard_images if shard_images is not None else scenario.execution.shard_images
    tpt = trials_per_task if trials_per_task is not None else scenario.execution.trials_per_task
    return max(1, math.ceil(asked / bs)) * bs, min(tpt, scenario.max_trials)
