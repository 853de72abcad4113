"""The worker: runs tasks of one scenario with its model and data loaded once.

A :class:`Worker` is what an executor runs in each of its processes (local) or actors (Ray):
it loads the model and the evaluation data set when built, then runs any number of tasks and
returns only small results (correct counts per chip; with a metric other than accuracy, each
chip's loss sums per global batch, :data:`mcsim.stats.MOMENTS`). It knows nothing of processes,
queues or stores.

Evaluation of a task: the model is converted for the point's hardware and the task's chips
(kept while the next task shares point and trial block), the point's calibration is loaded,
and the task's shard is evaluated in its global batches, passing the images' global indices
(read noise is keyed by them).

Data: each batch is decoded once and kept (up to ``cache_bytes``) for every later task (chips) on
it. For image folders (``imagenet``, ``imagefolder``: JPEG decoding) a batch's images decode in
a few threads (libjpeg and PIL release the GIL), and the next batch of a task decodes in the
background while the current one is evaluated; on CUDA the kept batches are in pinned memory and
go to the device without blocking. The images are the same either way (same order, same values).
"""
from __future__ import annotations

import copy
import json
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from mcsim.data import calibration_images, evaluation_dataset, import_object
from mcsim.engine.convert import convert, crossbar_layers, pick_device
from mcsim.engine.counting import counting
from mcsim.metrics import MetricError, image_losses
from mcsim.models import load_model
from mcsim.runner.plan import CalibrationTask, DigitalTask, EvalTask, Task
from mcsim.scenario import FactoryMetric, Scenario
from mcsim.stats import moment_sums
from mcsim.sweep import expand, needs_layer_names

__all__ = ["CalibrationResult", "DigitalResult", "EnergySums", "EvalResult", "Worker", "TOPK"]

TOPK = 5  # the second accuracy metric: top-5 (top-k with k = min(5, classes))
#: Data sets decoded from image files: their items load in threads (a factory's may not be thread-safe).
THREADED_DATA = ("imagenet", "imagefolder")


@dataclass(frozen=True)
class CalibrationResult:
    task: CalibrationTask
    layers: list[str]  # the point's analog layers, in model order
    state: Optional[dict]  # AnalogModel.calibration(), or None when the point needs none
    seconds: float
    #: every Conv2d/Linear of the model (model order) -> its effective settings (:func:`layer_settings`)
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DigitalResult:
    task: DigitalTask
    correct_top1: Optional[int]  # None with a metric other than accuracy
    correct_top5: Optional[int]
    n_images: int
    seconds: float
    labels: Optional[np.ndarray] = None  # (n_images,) int64, when the task keeps per-image outcomes
    moments: Optional[np.ndarray] = None  # (n_batches, 5) float64: a loss metric's sums per global batch


@dataclass(frozen=True)
class EvalResult:
    task: EvalTask
    correct_top1: Optional[np.ndarray]  # (n_trials,) int64: images classified right by each chip; None
    correct_top5: Optional[np.ndarray]  # with a metric other than accuracy (then ``moments``)
    n_images: int
    seconds: float
    energy: Optional["EnergySums"] = None  # when the scenario counts energy
    #: (n_trials, ceil(n_images / 8)) uint8: each chip's top-1 outcome per image of the shard,
    #: ``np.packbits`` along the images; when the task keeps per-image outcomes
    image_top1: Optional[np.ndarray] = None
    #: (n_trials, n_batches, 5) float64: with a metric other than accuracy, each chip's sums
    #: (:data:`mcsim.stats.MOMENTS`) per global batch of the shard
    moments: Optional[np.ndarray] = None


@dataclass(frozen=True)
class EnergySums:
    """Energy counts of a task's chips, summed over its images (docs/physics.md section 12)."""

    layers: list[str]  # the counted layers (analog and kept-digital Conv/Linear), in model order
    counts: np.ndarray  # (n_trials, len(engine.counting.COUNTS), n_layers) float64
    joules: np.ndarray  # (n_trials, len(physics.prices.COMPONENTS)) float64, each layer at its hardware.energy


def _diff(value, base):
    """The parts of ``value`` (nested dicts) that differ from ``base``."""
    if isinstance(value, dict) and isinstance(base, dict):
        out = {k: _diff(v, base.get(k)) for k, v in value.items() if v != base.get(k)}
        return {k: v for k, v in out.items() if v != {}}
    return value


def layer_settings(hw, chip) -> dict:
    """What the result records of a layer whose effective hardware is ``hw`` on a point whose chip
    is ``chip``: ``analog``, the ``weight_bits``/``input_bits``/``adc_bits`` it runs with (None:
    continuous, ideal or digital) and ``overrides``, the JSON of its settings that differ from
    the chip's."""
    skip = {"layers", "design", "analog_first_layer", "analog_last_layer"}
    diff = _diff(hw.model_dump(mode="json", exclude=skip), chip.model_dump(mode="json", exclude=skip))
    on = hw.analog
    return {"analog": on, "weight_bits": hw.weight_bits if on else None, "input_bits": hw.input_bits if on else None,
            "adc_bits": hw.adc.bits if on else None, "overrides": json.dumps(diff, sort_keys=True)}


def _hits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, whether top-1 and top-k are right: ``logits (..., B, C)`` -> two bool ``(..., B)``."""
    labels = labels.to(logits.device)
    k = min(TOPK, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices  # (..., B, k), best first
    hit = top == labels.unsqueeze(-1)
    return hit[..., 0], hit.any(-1)


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per leading index (chip), the number of top-1 and top-k correct images. ``logits (..., B, C)``."""
    top1, topk = _hits(logits, labels)
    return top1.sum(-1).cpu(), topk.sum(-1).cpu()


class Worker:
    """Runs the tasks of one scenario; model and evaluation data are loaded once, here.

    ``threads`` sets torch's intra-op threads (None: leave torch's default).
    ``cache_bytes`` bounds the images kept in memory between tasks.
    """

    def __init__(self, scenario: Scenario, *, threads: Optional[int] = None, cache_bytes: int = 1 << 30):
        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))
        self.scenario = scenario
        self.device = pick_device(scenario.execution.device)
        self.model = load_model(scenario.model)  # on CPU; convert moves its copy to the device
        self.points = expand(scenario, crossbar_layers(self.model) if needs_layer_names(scenario) else None).points
        self.digital_model = self.model if self.device.type == "cpu" else copy.deepcopy(self.model).to(self.device)
        self.dataset = evaluation_dataset(scenario.data)
        self.loss_metric = scenario.metric_info is not None  # scored by a loss, not by top-1/top-5 hits
        metric = scenario.metric
        self._metric_fn = (import_object(metric.factory, "metric.factory", MetricError)
                           if isinstance(metric, FactoryMetric) else None)
        self.n_images = len(self.dataset)
        self._cache_bytes = cache_bytes
        self._batches: OrderedDict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        files = scenario.data.name in THREADED_DATA
        self._decode = ThreadPoolExecutor(min(8, os.cpu_count() or 1), "mcsim-decode") if files else None
        self._ahead = ThreadPoolExecutor(1, "mcsim-prefetch") if files else None
        self._pin = self.device.type == "cuda" and torch.cuda.is_available()
        self._calibration_images: Optional[torch.Tensor] = None
        self._analog_key: Optional[tuple] = None
        self._analog = None

    # ------------------------------------------------------------------ data
    def _load(self, b0: int, b1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[b0, b1)`` decoded (in threads for image files), pinned on CUDA; no caching."""
        get = self.dataset.__getitem__
        items = list(self._decode.map(get, range(b0, b1)) if self._decode else map(get, range(b0, b1)))
        x = torch.stack([torch.as_tensor(item[0]) for item in items])
        if self.loss_metric:  # targets of any shape and type
            y = torch.stack([torch.as_tensor(item[1]) for item in items])
        else:
            y = torch.tensor([int(item[1]) for item in items], dtype=torch.int64)
        return (x.pin_memory() if self._pin else x), y

    def _keep(self, key: tuple[int, int], batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        self._batches[key] = batch
        total = sum(v[0].numel() * v[0].element_size() for v in self._batches.values())
        while total > self._cache_bytes and len(self._batches) > 1:
            _, (old, _) = self._batches.popitem(last=False)
            total -= old.numel() * old.element_size()

    def batch(self, b0: int, b1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[b0, b1)`` of the evaluation list and their labels (kept while memory allows)."""
        key = (b0, b1)
        if key not in self._batches:
            self._keep(key, self._load(b0, b1))
        self._batches.move_to_end(key)
        return self._batches[key]

    def batches(self, i0: int, i1: int):
        """``(b0, (images, labels))`` of the global batches covering ``[i0, i1)``, the next one
        decoding in the background (image files) while the caller works on this one; the images
        are a copy, on the device (a model with an in-place first op cannot spoil the kept batch)."""
        bs = self.scenario.data.batch_size
        keys = [(b0, min(b0 + bs, i1)) for b0 in range(i0, i1, bs)]
        ahead = None
        for n, key in enumerate(keys):
            if ahead is not None:
                self._keep(key, ahead.result())
            x, y = self.batch(*key)
            following = keys[n + 1] if n + 1 < len(keys) else None
            ahead = (self._ahead.submit(self._load, *following)
                     if self._ahead and following and following not in self._batches else None)
            yield key[0], (x.to(self.device, non_blocking=True) if self._pin else x.clone(), y)

    # ------------------------------------------------------------------ tasks
    def run(self, task: Task, calibration: Optional[dict] = None):
        """Run any task (dispatch on its kind)."""
        if isinstance(task, EvalTask):
            return self.evaluate(task, calibration)
        if isinstance(task, DigitalTask):
            return self.digital(task)
        if isinstance(task, CalibrationTask):
            return self.calibrate(task)
        raise TypeError(f"not a task: {task!r}")

    def _convert(self, point: int, chips, seed: int):
        return convert(self.model, self.points[point].hardware, trials=chips, seed=seed, device=self.device)

    @torch.no_grad()
    def calibrate(self, task: CalibrationTask) -> CalibrationResult:
        """The converter ranges of one sweep point (None when its hardware needs no calibration)."""
        start = time.perf_counter()
        analog = self._convert(task.point, [0], task.seed)
        state = None
        if analog.needs_calibration():
            if self._calibration_images is None:
                self._calibration_images = calibration_images(self.scenario.data)
            state = analog.calibrate(self._calibration_images.split(self.scenario.data.batch_size))
        chip = self.points[task.point].hardware
        settings = {name: layer_settings(hw, chip) for name, hw in analog.layer_hardware.items()}
        return CalibrationResult(task, list(analog.layer_names), state, time.perf_counter() - start, settings)

    def _moments(self, outputs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
        """Each chip's loss sums ``(C, 5)`` on one batch (``outputs (C, B, ...)``)."""
        metric = self.scenario.metric
        fn, kwargs = (self._metric_fn, metric.kwargs) if self._metric_fn is not None else (None, None)
        loss, count = image_losses(outputs, targets, self.scenario.metric_name, fn, kwargs)
        return moment_sums(loss, count)

    @torch.no_grad()
    def digital(self, task: DigitalTask) -> DigitalResult:
        """Correct counts (a loss metric: loss sums per batch) of the digital model on the task's shard."""
        start = time.perf_counter()
        if self.loss_metric:
            sums = [self._moments(self.digital_model(x.to(self.device)).unsqueeze(0), y)[0]
                    for _, (x, y) in self.batches(task.i0, task.i1)]
            return DigitalResult(task, None, None, task.n_images, time.perf_counter() - start, moments=np.stack(sums))
        top1 = top5 = 0
        labels = []
        for _, (x, y) in self.batches(task.i0, task.i1):
            c1, c5 = _correct(self.digital_model(x.to(self.device)), y)
            top1, top5 = top1 + int(c1), top5 + int(c5)
            labels.append(y)
        labels = torch.cat(labels).numpy() if task.per_image else None
        return DigitalResult(task, top1, top5, task.n_images, time.perf_counter() - start, labels)

    @torch.no_grad()
    def evaluate(self, task: EvalTask, calibration: Optional[dict] = None) -> EvalResult:
        """Correct counts (a loss metric: loss sums per batch) of each chip ``[t0, t1)`` of the
        task's point on its shard.

        ``calibration``: the point's calibration (:meth:`calibrate`'s ``state``); required when
        the point's hardware needs one.
        """
        start = time.perf_counter()
        key = (task.point, task.seed, task.t0, task.t1)
        if self._analog_key != key:
            self._analog, self._analog_key = None, None  # free the previous chips first
            analog = self._convert(task.point, list(range(task.t0, task.t1)), task.seed)
            if analog.needs_calibration():
                if calibration is None:
                    raise ValueError(f"sweep point {task.point} needs a calibration and none was given")
                analog.load_calibration(calibration)
            self._analog, self._analog_key = analog, key
        analog = self._analog
        top1 = torch.zeros(task.n_trials, dtype=torch.int64)
        top5 = torch.zeros(task.n_trials, dtype=torch.int64)
        images = []  # per batch, the chips' top-1 outcomes (n_trials, B)
        losses = []  # per batch, a loss metric's sums (n_trials, 5)
        with counting(analog) if self.scenario.energy else nullcontext() as counter:
            for b0, (x, y) in self.batches(task.i0, task.i1):
                ids = torch.arange(b0, b0 + len(y), dtype=torch.int64)
                outputs = analog(x, image_ids=ids)
                if self.loss_metric:
                    losses.append(self._moments(outputs, y))
                    continue
                h1, h5 = _hits(outputs, y)
                top1 += h1.sum(-1).cpu()
                top5 += h5.sum(-1).cpu()
                if task.per_image:
                    images.append(h1.cpu())
        bits = np.packbits(torch.cat(images, -1).numpy(), axis=-1) if task.per_image else None
        energy = None
        if counter is not None:
            sums = counter.result(per_image=False)
            energy = EnergySums(sums.layers, sums.stacked(), sums.joules())  # each layer at its own prices
        if self.loss_metric:
            return EvalResult(task, None, None, task.n_images, time.perf_counter() - start, energy,
                              moments=np.stack(losses, axis=1))
        return EvalResult(task, top1.numpy(), top5.numpy(), task.n_images, time.perf_counter() - start, energy,
                          bits)
