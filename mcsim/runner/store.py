"""The result store: a Zarr (v3) store whose root is the labelled result, and a ledger beside it.

``xr.open_zarr(path)`` gives the result dataset (consolidated metadata: one read, no warning).
``S...`` are the sweep dims of :func:`mcsim.sweep.expand` (e.g. ``sigma, mapping``, or ``point``
for zipped keys; the sweep values are coordinates)::

    root: the result
    correct_top1, correct_top5   int64 (S..., trial)  images classified right by each chip
    n_images                     int64 (S..., trial)  images evaluated so far (all, when complete)
    top1, top5                   float64 (S..., trial)  correct / n_images; NaN where none yet
    complete                     bool (S...)  the point is done: every chip saw every image (adaptive
                                   trials: the point stopped, its SE at the target or all chips run)
    n_trials                     int64 (S...)  chips run to the end (adaptive: to the stop); the
                                   chips past it are NaN in top1/top5 (n_images 0)
    digital_top1, digital_top5   float64 ()  the digital model (NaN until its shards are done)
    energy_per_image             float64 (S..., trial, component)  J per image: adc, dac, array, digital
                                 (docs/physics.md section 12); NaN where none yet
    energy_counts                float64 (S..., trial, count, layer)  the counts per image and layer
    image_top1                   uint8 (S..., trial, image_byte)  with ``per_image``: chip ``t``'s top-1
                                   outcome on image ``i`` is bit ``i`` of ``np.packbits`` along the
                                   images (``np.unpackbits(..., axis=-1, count=N)``); 0 where not run
    label                        int64 (image)  with ``per_image``: the class of each image; the
                                   ``image`` coordinate is its index in the evaluation list
    calibrated                   bool (S...)  the point's hardware needed a calibration
    analog                       bool (S..., layer)  the layer is analog at that point
    weight_bits, input_bits,     float64 (S..., layer)  the layer's effective resolution (per-layer
      adc_bits                     overrides applied); NaN: continuous / ideal ADC / digital layer
    layer_overrides              str (S..., layer)  JSON of the layer's settings that differ from the
                                   point's chip ("{}": none; "": not a layer of the point)
    x_range                      float64 (S..., layer)  input (DAC) range; NaN: none
    input_signed                 int8 (S..., layer)  1/0; -1: none
    adc_slices                   int8 (S..., layer)  weight slices with an ADC range (0: none)
    adc_lo, adc_hi               float64 (S..., layer, slice)  ADC range per slice; NaN: none

    ledger/: what resume needs (``xr.open_zarr(path, group="ledger")``)
    correct_top1, correct_top5   int32 (S..., trial, shard)  chunks (1..., trials_per_task, 1)
    done                         bool (S..., trial_block, shard)  chunks 1
    digital_correct_top1/_top5   int32 (shard,)  chunks 1
    digital_done                 bool (shard,)  chunks 1
    shard_images                 int32 (shard,)  images per shard
    energy_counts                float64 (S..., trial, shard, count, layer)  sums over the shard's images
    energy_joules                float64 (S..., trial, shard, component)  chunks (1..., trials_per_task, 1, all)
    image_top1                   uint8 (S..., trial, shard, shard_byte)  with ``per_image``: each shard's
                                   bits (``np.packbits`` of its images), chunks (1..., trials_per_task, 1, all)

With a metric other than accuracy (``metric: mse | perplexity | {factory: ...}``, the layout's
``metric`` attribute: its ``name``, ``transform`` and ``lower_is_better``) the counts of top-1/top-5
hits give way to each chip's loss sums (:data:`mcsim.stats.MOMENTS`, docs/physics.md section 14)::

    root: moments                float64 (S..., trial, moment)  sums over the images done
          <name>                 float64 (S..., trial)  the chip's score (e.g. ``perplexity``); NaN where none
          digital_moments        float64 (moment,), digital_<name> float64 ()  the digital model
    ledger: moments              float64 (S..., trial, batch, moment)  per global batch, chunks
                                   (1..., trials_per_task, batches per shard, all)
          digital_moments        float64 (batch, moment)

The sums are kept per global batch and added in batch order whatever the shards, so a result does
not depend on how the images were cut into tasks, bit for bit (``per_image`` is refused).

The energy arrays exist when the scenario counts energy (``energy: true``); their ``layer`` dim is
every Conv/Linear of the model (``layout.energy_layers``), analog or kept digital, and the
calibration's ``layer`` dim is then the same list (``analog`` tells which are analog where).

A task is done when its ledger entry is. Every write covers whole chunks (zarr loses data when
concurrent writes share a chunk): an evaluation task writes its own chunk of each ledger count
array, then its own ``done`` chunk, then the result chunk of its point and trial block (counts
summed over the shards done; chunks ``(1..., trials_per_task)``). The shards of a block share
that result chunk: the driver, the store's only writer, writes results one at a time. The result
arrays are a view of the ledger: a run recomputes them all when it opens a store to resume and
when it finishes, so an interrupted store always opens with plain xarray, ``complete`` telling
which points are done.
With adaptive trials the ``trial`` dim is sized ``max`` (chunked by the trial block like every
fixed run) and a point's stop is a function of its ledger (:func:`adaptive_stop`), so it is never
stored apart from the counts it is decided from, and a resumed run decides it the same way.
The calibration arrays are written once, when every point is calibrated (they are cheap to redo),
then the ``calibration_written`` attribute (the calibration's ledger).

Attributes hold the scenario text and fingerprint, the layout (image count, batch, shard and
trial-block sizes), the mcsim and torch versions and the device type that computed the numbers
(a store is only resumed by the same ones), times and a log of the runs. Paths may be local paths
or fsspec URLs; all I/O goes through xarray/zarr (and fsspec for the existence checks).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Optional, get_args

import numpy as np
import xarray as xr
import zarr

from mcsim import stats
from mcsim.errors import InputError
from mcsim.runner.plan import RunPlan
from mcsim.scenario import Scenario

__all__ = [
    "LEDGER",
    "STORE_FORMAT",
    "ResultStore",
    "StoreError",
    "StoreInfo",
    "inspect_store",
    "open_result",
    "store_path",
]

STORE_FORMAT = 2  # bump when the layout changes (2: the result at the root, the ledger in ledger/)
LEDGER = "ledger"  # the ledger's group
COUNT_VARS = ("correct_top1", "correct_top5")
ENERGY_VARS = ("energy_counts", "energy_joules")  # ledger
IMAGE_VAR = "image_top1"  # per-image outcomes (ledger and result), with ``per_image``
# Names of the energy dims' entries: engine.counting.COUNTS and physics.prices.COMPONENTS (kept in
# step by tests/test_energy.py; this module does not import the engine).
ENERGY_COUNTS = ("adc_conversions", "dac_pulses", "row_slots", "array_g_v2", "digital_adds", "digital_macs")
ENERGY_COMPONENTS = ("adc", "dac", "array", "digital")
DIGITAL_VARS = ("digital_correct_top1", "digital_correct_top5")
MOMENT_VAR, DIGITAL_MOMENTS = "moments", "digital_moments"  # a loss metric's sums (ledger and result)
CALIBRATION_VARS = ("calibrated", "analog", "x_range", "input_signed", "adc_slices", "adc_lo", "adc_hi")
SETTING_VARS = ("weight_bits", "input_bits", "adc_bits")  # per layer, with layer_overrides
_WRITE = dict(consolidated=False, zarr_format=3)  # metadata is consolidated once all of it is written


class StoreError(InputError):
    """A result store that cannot be used as asked (refused, incomplete, not an mcsim store)."""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------
# what is at a path


#: What is at a store path: nothing, an empty folder, an mcsim store, another Zarr group, anything else.
StoreKind = Literal["absent", "empty", "mcsim", "zarr", "other"]


@dataclass(frozen=True)
class StoreInfo:
    """What is at a store path (``kind``), and the attributes of the Zarr group there."""

    path: str
    kind: StoreKind
    attrs: dict

    def __post_init__(self):
        if self.kind not in get_args(StoreKind):
            raise ValueError(f"StoreInfo.kind: {self.kind!r} is not one of {', '.join(get_args(StoreKind))}")

    @property
    def fingerprint(self) -> Optional[str]:
        return self.attrs.get("fingerprint")

    @property
    def layout(self) -> dict:
        return dict(self.attrs.get("layout") or {})


def store_path(path) -> str:
    """The path zarr is given: ``file://`` URLs become plain paths (zarr's local store makes its
    directories; fsspec's local file system would not); other URLs and paths are kept."""
    path = str(path)
    return path[len("file://"):] if path.startswith("file://") else path


def _fs(path: str):
    from fsspec.core import url_to_fs

    return url_to_fs(path)


def inspect_store(path: str) -> StoreInfo:
    """Look at ``path`` without changing anything."""
    path = store_path(path)
    try:
        group = zarr.open_group(path, mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError):
        group = None
    except Exception as err:  # unreadable metadata, a zarr array instead of a group, ...
        raise StoreError(f"{path}: cannot read it as a Zarr group: {err}") from err
    if group is not None:
        attrs = dict(group.attrs)
        return StoreInfo(path, "mcsim" if "fingerprint" in attrs and "mcsim_store" in attrs else "zarr", attrs)
    fs, fspath = _fs(path)
    if not fs.exists(fspath):
        return StoreInfo(path, "absent", {})
    if fs.isdir(fspath) and not fs.ls(fspath, detail=False):
        return StoreInfo(path, "empty", {})
    return StoreInfo(path, "other", {})


# --------------------------------------------------------------------------------------
# coordinates


def coord_array(values: list) -> np.ndarray:
    """A sweep coordinate as a numpy array: numbers stay numbers (None -> NaN beside numbers),
    booleans stay booleans, anything else becomes text (JSON for non-strings)."""
    if values and all(isinstance(v, bool) for v in values):
        return np.array(values, dtype=bool)
    numbers = [v for v in values if v is not None]
    if numbers and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
        if len(numbers) == len(values) and all(isinstance(v, int) for v in values):
            return np.array(values, dtype=np.int64)
        return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    return np.array([v if isinstance(v, str) else json.dumps(v, sort_keys=True) for v in values], dtype=object)


def sweep_coords(plan: RunPlan) -> dict:
    """xarray coordinates of the sweep dims (zipped keys along ``point``)."""
    sweep = plan.sweep
    return {name: (sweep.coord_dims.get(name, name), coord_array(values)) for name, values in sweep.coords.items()}


def _merge_layers(lists: list[list[str]]) -> list[str]:
    """Ordered union of the points' layer lists (each in model order)."""
    merged: list[str] = []
    for names in lists:
        prev = None
        for name in names:
            if name not in merged:
                merged.insert(merged.index(prev) + 1 if prev is not None else 0, name)
            prev = name
    return merged


# --------------------------------------------------------------------------------------
# the result as a view of the ledger


def _summary(counts: dict, done: np.ndarray, shard_images: np.ndarray, trials_per_task: int) -> dict:
    """The result arrays of ledger entries: ``counts[var]`` (..., trial, shard) and ``done``
    (..., trial_block, shard) give counts, ``n_images`` and accuracies (..., trial)."""
    n_trials = counts[COUNT_VARS[0]].shape[-2]
    done_trial = done[..., np.arange(n_trials) // trials_per_task, :]  # (..., trial, shard)
    n_images = (done_trial * shard_images.astype(np.int64)).sum(-1)
    out = {"n_images": n_images}
    with np.errstate(invalid="ignore", divide="ignore"):
        for var in COUNT_VARS:
            correct = (counts[var].astype(np.int64) * done_trial).sum(-1)
            out[var] = correct
            out[var.removeprefix("correct_")] = np.where(n_images > 0, correct / np.maximum(n_images, 1), np.nan)
    return out


def _batch_sum(moments: np.ndarray) -> np.ndarray:
    """A loss metric's sums ``(..., batch, moment)`` added over the batches, in batch order: the same
    numbers whatever the rest of the array (no dependence on how shards or chips were cut)."""
    return np.ascontiguousarray(np.moveaxis(moments, -2, -1)).sum(-1)


def _metric_summary(moments: np.ndarray, done: np.ndarray, shard_images: np.ndarray, trials_per_task: int,
                    batches_per_shard: int, metric: dict) -> dict:
    """The result arrays of a loss metric's ledger: ``moments`` (..., trial, batch, moment) and
    ``done`` (..., trial_block, shard) give ``n_images``, ``moments`` and the score (..., trial)."""
    n_trials, n_batches = moments.shape[-3], moments.shape[-2]
    done_trial = done[..., np.arange(n_trials) // trials_per_task, :]  # (..., trial, shard)
    n_images = (done_trial * shard_images.astype(np.int64)).sum(-1)
    done_batch = done_trial[..., np.arange(n_batches) // batches_per_shard]  # (..., trial, batch)
    sums = _batch_sum(np.where(done_batch[..., None], moments, 0.0))
    value, _ = stats.metric_values(sums, n_images, metric["transform"])
    return {"n_images": n_images, MOMENT_VAR: sums, metric["name"]: value}


def adaptive_stop(correct: np.ndarray, done: np.ndarray, shard_images: np.ndarray, trials_per_task: int,
                  adaptive: Optional[dict], metric: Optional[dict] = None) -> tuple[np.ndarray, np.ndarray]:
    """Per point ``(S...)``: the chips run to its end, and whether it has ended.

    ``correct`` (S..., trial, shard) and ``done`` (S..., trial_block, shard) are the ledger's top-1
    counts and entries. The chips run are those of the leading blocks whose shards are all done.
    Without ``adaptive`` a point ends when every block is done. With it (``{target_se, min, max}``,
    docs/physics.md section 14) a point ends at the first of its leading blocks that brings it to at
    least ``min`` chips with :func:`mcsim.stats.se_mean` of their top-1 accuracies at most
    ``target_se`` (the stop is checked per block), or when all ``max`` chips are run. With a loss
    ``metric`` (the layout's) ``correct`` is the ledger's sums ``(S..., trial, batch, moment)`` and the
    SE's image term is the chips' (:func:`mcsim.stats.metric_values`).
    """
    n_trials = correct.shape[-2] if metric is None else correct.shape[-3]
    full = done.all(axis=-1)  # (S..., block)
    n_images = int(shard_images.astype(np.int64).sum())
    if metric is None:  # (S..., trial), valid in full blocks
        acc, se_image = correct.astype(np.int64).sum(-1) / n_images, None
    else:
        acc, se_image = stats.metric_values(_batch_sum(correct), n_images, metric["transform"])
    chips = np.zeros(full.shape[:-1], np.int64)
    ended = np.zeros(full.shape[:-1], bool)
    for pos in np.ndindex(chips.shape):
        lead = int(np.argmin(full[pos])) if not full[pos].all() else full.shape[-1]
        chips[pos] = min(lead * trials_per_task, n_trials)
        ended[pos] = lead == full.shape[-1]
        if adaptive is None:
            continue
        for block in range(lead):
            t1 = min((block + 1) * trials_per_task, n_trials)
            image = None if se_image is None else se_image[pos][:t1]
            if t1 >= adaptive["min"] and stats.se_mean(acc[pos][:t1], n_images, image) <= adaptive["target_se"]:
                chips[pos], ended[pos] = t1, True
                break
    return chips, ended


def _energy_summary(m: dict, done: np.ndarray, n_images: np.ndarray, trials_per_task: int) -> dict:
    """Per image: the energy ledger ``(..., trial, shard, ...)`` summed over the shards done and
    divided by the images done ``(..., trial)``; NaN where none."""
    n_trials = m["energy_joules"].shape[-3]
    done_trial = done[..., np.arange(n_trials) // trials_per_task, :]  # (..., trial, shard)
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for ledger_var, var, extra in (("energy_joules", "energy_per_image", 1), ("energy_counts", "energy_counts", 2)):
            d = done_trial.reshape(done_trial.shape + (1,) * extra)
            total = np.where(d, m[ledger_var], 0.0).sum(-1 - extra)
            n = n_images.reshape(n_images.shape + (1,) * extra)
            out[var] = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    return out


def _image_bits(bits: np.ndarray, done_trial: np.ndarray, shard_images: np.ndarray) -> np.ndarray:
    """The result's per-image bits ``(..., trial, image_byte)`` of the ledger's per-shard bits
    ``(..., trial, shard, shard_byte)``: each shard's images unpacked, the shards not done zero,
    concatenated along the images and packed again."""
    parts = [np.unpackbits(bits[..., s, :], axis=-1, count=int(n)) * done_trial[..., s, None].astype(np.uint8)
             for s, n in enumerate(shard_images)]
    return np.packbits(np.concatenate(parts, axis=-1), axis=-1)


def _digital_summary(counts: dict, done: np.ndarray, shard_images: np.ndarray) -> dict:
    """``digital_top1``/``digital_top5`` over the digital shards done (NaN: none yet)."""
    n = int((shard_images.astype(np.int64) * done).sum())
    return {var.replace("_correct", ""): (int((counts[var].astype(np.int64) * done).sum()) / n if n else math.nan)
            for var in DIGITAL_VARS}


def _consolidate(path: str) -> None:
    """Write the consolidated metadata (plain ``xr.open_zarr`` reads it without a warning)."""
    with warnings.catch_warnings():  # zarr notes that consolidation is not in the v3 spec yet
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(path, zarr_format=3)


def _energy_coords(layers: list[str]) -> dict:
    return {"layer": ("layer", np.array(layers, dtype=object)),
            "count": ("count", np.array(ENERGY_COUNTS, dtype=object)),
            "component": ("component", np.array(ENERGY_COMPONENTS, dtype=object))}


# --------------------------------------------------------------------------------------
# the store


class ResultStore:
    """An mcsim result store at ``path`` with the layout of ``plan``.

    The driver is its only writer. The ledger is read once (:meth:`ledger` loads it) and kept in
    memory beside the store, so that each finished task updates its result chunk without reading
    the other shards back.
    """

    def __init__(self, path: str, plan: RunPlan):
        self.path = store_path(path)
        self.plan = plan
        self.dims = list(plan.sweep.dims)
        self.shape = tuple(plan.sweep.shape)
        self._group = None  # the root group, opened for writing on first use
        self._mirror: Optional[dict] = None  # the ledger's arrays, once read
        self._energy_layers: Optional[list[str]] = None  # set by create, else read from the layout

    @property
    def energy_layers(self) -> list[str]:
        """The layers of the energy counts; empty when the store does not count energy."""
        if self._energy_layers is None:
            self._energy_layers = list(self.attrs().get("layout", {}).get("energy_layers") or [])
        return self._energy_layers

    # ---- creation

    @classmethod
    def create(cls, path: str, scenario: Scenario, plan: RunPlan, *, overwrite: bool = False,
               extra_attrs: Optional[dict] = None, energy_layers: Optional[list[str]] = None) -> "ResultStore":
        """Write the empty result, the empty ledger and the attributes. ``energy_layers``: the
        model's Conv/Linear layers, when the run counts energy (None: no energy arrays)."""
        store = cls(path, plan)
        store._energy_layers = list(energy_layers or [])
        attrs = {
            "mcsim_store": STORE_FORMAT,
            "state": "creating",
            "name": scenario.name,
            "fingerprint": scenario.fingerprint,
            "scenario": scenario.text,
            "layout": {
                "n_images": plan.n_images,
                "batch_size": plan.batch_size,
                "shard_size": plan.shard_size,
                "trials": plan.trials,
                "trials_per_task": plan.trials_per_task,
                "per_image": plan.per_image,
                "adaptive": plan.adaptive.model_dump() if plan.adaptive is not None else None,
                "dims": store.dims,
                "coord_dims": dict(plan.sweep.coord_dims),
                "energy_layers": store._energy_layers,
                # the layer sensitivity sweep's mode (its dim: target_layer), None without one
                "layer_sweep": scenario.sweep.layers.mode if scenario.sweep.layers is not None else None,
                "metric_name": plan.metric_name,  # adaptive trials stop on it
                "metric": plan.metric,  # a loss metric's name, transform and direction; None: top1/top5
            },
            "created": now(),
            "runs": [],
            **(extra_attrs or {}),
        }
        result, encoding = store._empty_result(attrs)
        result.to_zarr(store.path, mode="w" if overwrite else "w-", encoding=encoding, **_WRITE)
        ledger, encoding = store._empty_ledger()
        ledger.to_zarr(store.path, group=LEDGER, mode="w-", encoding=encoding, **_WRITE)
        _consolidate(store.path)
        store.update_attrs(state="ready")
        return store

    def _empty_result(self, attrs: dict) -> tuple[xr.Dataset, dict]:
        plan, s_dims, s_shape = self.plan, self.dims, self.shape
        trials, ones = plan.trials, (1,) * len(self.dims)
        per_trial = s_dims + ["trial"]
        data = {} if plan.metric else {
            "correct_top1": (per_trial, np.zeros(s_shape + (trials,), np.int64)),
            "correct_top5": (per_trial, np.zeros(s_shape + (trials,), np.int64)),
            "n_images": (per_trial, np.zeros(s_shape + (trials,), np.int64)),
            "top1": (per_trial, np.full(s_shape + (trials,), np.nan), {"long_name": "top-1 accuracy"}),
            "top5": (per_trial, np.full(s_shape + (trials,), np.nan), {"long_name": "top-5 accuracy"}),
            "digital_top1": ((), np.nan, {"long_name": "top-1 accuracy of the digital model"}),
            "digital_top5": ((), np.nan, {"long_name": "top-5 accuracy of the digital model"}),
        }
        data["n_images"] = (per_trial, np.zeros(s_shape + (trials,), np.int64))
        data["complete"] = (s_dims, np.zeros(s_shape, bool))
        data["n_trials"] = (s_dims, np.zeros(s_shape, np.int64), {"long_name": "chips run"})
        coords = dict(sweep_coords(plan))
        coords["trial"] = ("trial", np.arange(trials, dtype=np.int64))
        per_chip = ("n_images",) + (("correct_top1", "correct_top5", "top1", "top5") if not plan.metric else ())
        if plan.metric:
            name, n_m = plan.metric["name"], len(stats.MOMENTS)
            data[name] = (per_trial, np.full(s_shape + (trials,), np.nan), {"long_name": name})
            data[MOMENT_VAR] = (per_trial + ["moment"], np.zeros(s_shape + (trials, n_m)),
                                {"long_name": "sums over the images of each chip's loss metric"})
            data[f"digital_{name}"] = ((), np.nan, {"long_name": f"{name} of the digital model"})
            data[DIGITAL_MOMENTS] = (["moment"], np.zeros(n_m))
            coords["moment"] = ("moment", np.array(stats.MOMENTS, dtype=object))
            per_chip += (name,)
            encoding = {MOMENT_VAR: {"chunks": ones + (plan.trials_per_task, n_m)}}
        else:
            encoding = {}
        encoding.update({var: {"chunks": ones + (plan.trials_per_task,)} for var in per_chip})
        encoding["complete"] = {"chunks": ones}
        encoding["n_trials"] = {"chunks": ones}
        if self._energy_layers:
            n_layers, n_c, n_k = len(self._energy_layers), len(ENERGY_COMPONENTS), len(ENERGY_COUNTS)
            data["energy_per_image"] = (per_trial + ["component"], np.full(s_shape + (trials, n_c), np.nan),
                                        {"long_name": "energy per image", "units": "J"})
            data["energy_counts"] = (per_trial + ["count", "layer"], np.full(s_shape + (trials, n_k, n_layers), np.nan),
                                     {"long_name": "operations per image"})
            coords.update(_energy_coords(self._energy_layers))
            encoding["energy_per_image"] = {"chunks": ones + (plan.trials_per_task, n_c)}
            encoding["energy_counts"] = {"chunks": ones + (plan.trials_per_task, n_k, n_layers)}
        if plan.per_image:
            n_bytes = -(-plan.n_images // 8)
            data[IMAGE_VAR] = (per_trial + ["image_byte"], np.zeros(s_shape + (trials, n_bytes), np.uint8),
                               {"long_name": "top-1 outcome per image, np.packbits along the images"})
            data["label"] = ("image", np.full(plan.n_images, -1, np.int64), {"long_name": "class of the image"})
            coords["image"] = ("image", np.arange(plan.n_images, dtype=np.int64))
            encoding[IMAGE_VAR] = {"chunks": ones + (plan.trials_per_task, n_bytes)}
            encoding["label"] = {"chunks": (plan.shard_size,)}
        return xr.Dataset(data, coords=coords, attrs=attrs), encoding

    def _empty_ledger(self) -> tuple[xr.Dataset, dict]:
        plan, s_dims, s_shape = self.plan, self.dims, self.shape
        n_shards, n_blocks, ones = len(plan.shards), len(plan.trial_blocks), (1,) * len(self.dims)
        if plan.metric:  # a loss metric's sums, per global batch (chunks: a shard's batches)
            n_b, n_m, bps = plan.n_batches, len(stats.MOMENTS), plan.batches_per_shard
            data = {MOMENT_VAR: (s_dims + ["trial", "batch", "moment"], np.zeros(s_shape + (plan.trials, n_b, n_m))),
                    DIGITAL_MOMENTS: (["batch", "moment"], np.zeros((n_b, n_m)))}
            encoding = {MOMENT_VAR: {"chunks": ones + (plan.trials_per_task, bps, n_m)},
                        DIGITAL_MOMENTS: {"chunks": (bps, n_m)}}
        else:
            data = {var: (s_dims + ["trial", "shard"], np.zeros(s_shape + (plan.trials, n_shards), np.int32))
                    for var in COUNT_VARS}
            data.update({var: (["shard"], np.zeros(n_shards, np.int32)) for var in DIGITAL_VARS})
            encoding = {var: {"chunks": ones + (plan.trials_per_task, 1)} for var in COUNT_VARS}
            encoding.update({var: {"chunks": (1,)} for var in DIGITAL_VARS})
        data["done"] = (s_dims + ["trial_block", "shard"], np.zeros(s_shape + (n_blocks, n_shards), bool))
        data["digital_done"] = (["shard"], np.zeros(n_shards, bool))
        data["shard_images"] = (["shard"], np.array([i1 - i0 for i0, i1 in plan.shards], np.int32))
        encoding["done"] = {"chunks": ones + (1, 1)}
        encoding["digital_done"] = {"chunks": (1,)}
        if self._energy_layers:
            n_layers, n_c, n_k = len(self._energy_layers), len(ENERGY_COMPONENTS), len(ENERGY_COUNTS)
            base = s_dims + ["trial", "shard"]
            shape = s_shape + (plan.trials, n_shards)
            data["energy_counts"] = (base + ["count", "layer"], np.zeros(shape + (n_k, n_layers)))
            data["energy_joules"] = (base + ["component"], np.zeros(shape + (n_c,)))
            encoding["energy_counts"] = {"chunks": ones + (plan.trials_per_task, 1, n_k, n_layers)}
            encoding["energy_joules"] = {"chunks": ones + (plan.trials_per_task, 1, n_c)}
        if plan.per_image:
            n_bytes = -(-plan.shard_size // 8)
            data[IMAGE_VAR] = (s_dims + ["trial", "shard", "shard_byte"],
                               np.zeros(s_shape + (plan.trials, n_shards, n_bytes), np.uint8))
            encoding[IMAGE_VAR] = {"chunks": ones + (plan.trials_per_task, 1, n_bytes)}
        return xr.Dataset(data), encoding

    # ---- attributes

    def _root(self):
        if self._group is None:
            self._group = zarr.open_group(self.path, mode="r+")
        return self._group

    def attrs(self) -> dict:
        return dict(zarr.open_group(self.path, mode="r").attrs)

    def update_attrs(self, **values: Any) -> None:
        self._root().attrs.update(values)

    def record_run(self, entry: dict) -> None:
        """Add or replace (same ``started``) an entry of the ``runs`` attribute."""
        runs = [r for r in self.attrs().get("runs", []) if r.get("started") != entry.get("started")]
        self.update_attrs(runs=runs + [entry])

    # ---- ledger

    def _ledger(self) -> dict:
        if self._mirror is None:
            group = zarr.open_group(self.path, mode="r")[LEDGER]
            names = (MOMENT_VAR, DIGITAL_MOMENTS) if self.plan.metric else COUNT_VARS + DIGITAL_VARS
            names += ("done", "digital_done", "shard_images")
            names += ENERGY_VARS if self.energy_layers else ()
            names += (IMAGE_VAR,) if self.plan.per_image else ()
            self._mirror = {name: np.asarray(group[name][...]) for name in names}
        return self._mirror

    def ledger(self) -> tuple[np.ndarray, np.ndarray]:
        """(done (S..., trial_block, shard), digital_done (shard,)) as booleans."""
        m = self._ledger()
        return m["done"].astype(bool), m["digital_done"].astype(bool)

    def has_calibration(self) -> bool:
        """The calibration arrays are completely written (their marker is set after them)."""
        return bool(self.attrs().get("calibration_written"))

    # ---- writes

    def write_eval(self, result) -> None:
        """Counts of one evaluation task, its ledger entry, then its point's result chunk."""
        task, m = result.task, self._ledger()
        pos = self.plan.sweep.points[task.point].position
        ledger = self._root()[LEDGER]
        if self.plan.metric:  # the shard's batches: whole chunks
            b0 = task.shard * self.plan.batches_per_shard
            at = pos + (slice(task.t0, task.t1), slice(b0, b0 + result.moments.shape[1]))
            ledger[MOMENT_VAR][at] = result.moments
            m[MOMENT_VAR][at] = result.moments
        for var in () if self.plan.metric else COUNT_VARS:
            values = np.asarray(getattr(result, var), dtype=np.int32)
            ledger[var][pos + (slice(task.t0, task.t1), task.shard)] = values
            m[var][pos + (slice(task.t0, task.t1), task.shard)] = values
        if self.energy_layers:
            self._write_energy(result, pos, ledger, m)
        if self.plan.per_image:
            bits = np.zeros((task.n_trials, m[IMAGE_VAR].shape[-1]), np.uint8)
            bits[:, : result.image_top1.shape[-1]] = result.image_top1
            ledger[IMAGE_VAR][pos + (slice(task.t0, task.t1), task.shard)] = bits
            m[IMAGE_VAR][pos + (slice(task.t0, task.t1), task.shard)] = bits
        ledger["done"][pos + (task.block, task.shard)] = True
        m["done"][pos + (task.block, task.shard)] = True
        self._write_result(pos, task.block)

    def _write_energy(self, result, pos: tuple, ledger, m: dict) -> None:
        """A task's energy sums into its ledger chunk, its layers placed by name."""
        task, energy = result.task, result.energy
        if energy is None:
            raise ValueError(f"task {task}: the store counts energy, the worker's result has none")
        known = [i for i, n in enumerate(energy.layers) if n in self.energy_layers]
        unknown = [n for i, n in enumerate(energy.layers) if i not in known and np.any(energy.counts[..., i])]
        if unknown:  # a module the converted model holds but never calls (counts 0) is left out
            raise ValueError(f"task {task}: energy counted for layers {unknown} the store does not know "
                             f"({self.energy_layers})")
        counts = np.zeros((task.n_trials, len(ENERGY_COUNTS), len(self.energy_layers)))
        counts[..., [self.energy_layers.index(energy.layers[i]) for i in known]] = energy.counts[..., known]
        at = pos + (slice(task.t0, task.t1), task.shard)
        for var, values in (("energy_counts", counts), ("energy_joules", np.asarray(energy.joules, np.float64))):
            ledger[var][at] = values
            m[var][at] = values

    def _write_result(self, pos: tuple, block: int) -> None:
        """Recompute the result chunk of one point and trial block from the ledger."""
        m, tpt = self._ledger(), self.plan.trials_per_task
        t0, t1 = self.plan.trial_blocks[block]
        done = m["done"][pos][[block]]  # (1 block, shard)
        summary = self._summary({var: m[var][pos][t0:t1] for var in self._count_vars}, done)
        root = self._root()
        for var, values in summary.items():
            root[var][pos + (slice(t0, t1),)] = values
        if self.energy_layers:
            ledger = {var: m[var][pos][t0:t1] for var in ENERGY_VARS}
            for var, values in _energy_summary(ledger, done, summary["n_images"], tpt).items():
                root[var][pos + (slice(t0, t1),)] = values
        if self.plan.per_image:
            done_trial = np.broadcast_to(done, (t1 - t0,) + done.shape[1:])
            root[IMAGE_VAR][pos + (slice(t0, t1),)] = _image_bits(m[IMAGE_VAR][pos][t0:t1], done_trial,
                                                                   m["shard_images"])
        chips, ended = self.stops(pos)
        root["complete"][pos] = bool(ended)
        if "n_trials" in root:  # stores written before n_trials lack it
            root["n_trials"][pos] = int(chips)

    @property
    def _count_vars(self) -> tuple:
        """The ledger's per-chip counts: the loss sums of a loss metric, else the top-1/top-5 hits."""
        return (MOMENT_VAR,) if self.plan.metric else COUNT_VARS

    def _summary(self, counts: dict, done: np.ndarray) -> dict:
        """The per-chip result arrays of ledger counts and entries (:func:`_summary`, :func:`_metric_summary`)."""
        m, plan = self._ledger(), self.plan
        if plan.metric:
            return _metric_summary(counts[MOMENT_VAR], done, m["shard_images"], plan.trials_per_task,
                                   plan.batches_per_shard, plan.metric)
        return _summary(counts, done, m["shard_images"], plan.trials_per_task)

    def stops(self, pos: tuple = ()) -> tuple[np.ndarray, np.ndarray]:
        """:func:`adaptive_stop` of the points at ``pos`` (default: all) from the ledger."""
        m = self._ledger()
        adaptive = self.plan.adaptive.model_dump() if self.plan.adaptive is not None else None
        counts = MOMENT_VAR if self.plan.metric else f"correct_{self.plan.metric_name}"
        return adaptive_stop(m[counts][pos], m["done"][pos], m["shard_images"], self.plan.trials_per_task,
                             adaptive, self.plan.metric)

    def write_digital(self, result) -> None:
        """Counts of one digital task, its ledger entry, then the digital accuracies."""
        s, m = result.task.shard, self._ledger()
        ledger = self._root()[LEDGER]
        if self.plan.metric:
            b0 = s * self.plan.batches_per_shard
            ledger[DIGITAL_MOMENTS][b0:b0 + len(result.moments)] = result.moments
            m[DIGITAL_MOMENTS][b0:b0 + len(result.moments)] = result.moments
        for var in () if self.plan.metric else DIGITAL_VARS:
            value = int(getattr(result, var.removeprefix("digital_")))
            ledger[var][s] = value
            m[var][s] = value
        if self.plan.per_image:
            task = result.task
            self._root()["label"][task.i0:task.i1] = np.asarray(result.labels, np.int64)
        ledger["digital_done"][s] = True
        m["digital_done"][s] = True
        self._write_digital_result()

    def _write_digital_result(self) -> None:
        m, root = self._ledger(), self._root()
        if self.plan.metric:  # the digital model as one chip whose every block is done when its shards are
            summary = _metric_summary(m[DIGITAL_MOMENTS][None], m["digital_done"][None], m["shard_images"], 1,
                                      self.plan.batches_per_shard, self.plan.metric)
            root[DIGITAL_MOMENTS][...] = summary[MOMENT_VAR][0]
            root[f"digital_{self.plan.metric['name']}"][()] = summary[self.plan.metric["name"]][0]
            return
        counts = {var: m[var] for var in DIGITAL_VARS}
        for var, value in _digital_summary(counts, m["digital_done"], m["shard_images"]).items():
            root[var][()] = value

    def refresh(self) -> None:
        """Recompute every result array from the ledger (after an interruption, the result may
        lag its ledger by the task being written)."""
        m, root = self._ledger(), self._root()
        summary = self._summary({var: m[var] for var in self._count_vars}, m["done"])
        summary["n_trials"], summary["complete"] = self.stops()
        for var, values in summary.items():
            if var in root:  # stores written before n_trials lack it
                root[var][...] = values
        if self.energy_layers:
            energy = _energy_summary({var: m[var] for var in ENERGY_VARS}, m["done"], summary["n_images"],
                                     self.plan.trials_per_task)
            for var, values in energy.items():
                root[var][...] = values
        if self.plan.per_image:  # a point at a time: the unpacked bits are 8 times the packed
            blocks = np.arange(self.plan.trials) // self.plan.trials_per_task
            for p in self.plan.sweep.points:
                root[IMAGE_VAR][p.position] = _image_bits(m[IMAGE_VAR][p.position], m["done"][p.position][blocks],
                                                          m["shard_images"])
        self._write_digital_result()

    def write_calibration(self, results: list) -> None:
        """The calibration of every point (results of the calibration tasks, any order), then
        its marker; the root's metadata is consolidated again (it has new arrays)."""
        ds = self._calibration_dataset(results)
        ds.attrs.update(self.attrs())  # an append replaces the group's attributes: keep them
        ds.to_zarr(self.path, mode="a", **_WRITE)
        _consolidate(self.path)
        self._group = None  # reopen: the root has new arrays
        self.update_attrs(calibration_written=now())  # the marker: every calibration array is complete

    def _calibration_dataset(self, results: list) -> xr.Dataset:
        """The calibration arrays (over the sweep dims, ``layer`` and ``slice``) of the results."""
        by_point = {r.task.point: r for r in results}
        missing = [p.index for p in self.plan.sweep.points if p.index not in by_point]
        if missing:
            raise ValueError(f"calibration missing for sweep points {missing}")
        points = self.plan.sweep.points
        layers = _merge_layers([self.energy_layers]
                               + [list(by_point[p.index].settings) or by_point[p.index].layers for p in points])
        if self.energy_layers and layers != self.energy_layers:  # one `layer` dim for both
            raise ValueError(f"layers {[n for n in layers if n not in self.energy_layers]} are not among "
                             f"the model's Conv/Linear layers {self.energy_layers}")
        n_slices = max([len(st["adc_range"][0]) for r in results if r.state
                        for st in r.state.values() if st.get("adc_range") is not None] or [1])
        shape, n_layers = self.shape, len(layers)
        calibrated = np.zeros(shape, bool)
        analog = np.zeros(shape + (n_layers,), bool)
        x_range = np.full(shape + (n_layers,), np.nan)
        signed = np.full(shape + (n_layers,), -1, np.int8)
        adc_slices = np.zeros(shape + (n_layers,), np.int8)
        lo = np.full(shape + (n_layers, n_slices), np.nan)
        hi = np.full(shape + (n_layers, n_slices), np.nan)
        bits = {var: np.full(shape + (n_layers,), np.nan) for var in SETTING_VARS}
        overrides = np.full(shape + (n_layers,), "", dtype=object)
        for p in points:
            r, pos = by_point[p.index], p.position
            calibrated[pos] = r.state is not None
            for name, st in r.settings.items():
                at = pos + (layers.index(name),)
                overrides[at] = st["overrides"]
                for var in SETTING_VARS:
                    bits[var][at] = np.nan if st[var] is None else float(st[var])
            for name in r.layers:
                j = layers.index(name)
                analog[pos + (j,)] = True
                st = (r.state or {}).get(name)
                if not st:
                    continue
                if st.get("x_range") is not None:
                    x_range[pos + (j,)] = float(st["x_range"])
                if st.get("signed") is not None:
                    signed[pos + (j,)] = int(bool(st["signed"]))
                if st.get("adc_range") is not None:
                    los, his = st["adc_range"]
                    adc_slices[pos + (j,)] = len(los)
                    lo[pos + (j,)][: len(los)] = np.asarray(los, np.float64)
                    hi[pos + (j,)][: len(his)] = np.asarray(his, np.float64)
        s_dims = self.dims
        return xr.Dataset(
            {
                "calibrated": (s_dims, calibrated),
                "analog": (s_dims + ["layer"], analog),
                "x_range": (s_dims + ["layer"], x_range),
                "input_signed": (s_dims + ["layer"], signed),
                "adc_slices": (s_dims + ["layer"], adc_slices),
                "adc_lo": (s_dims + ["layer", "slice"], lo),
                "adc_hi": (s_dims + ["layer", "slice"], hi),
                **{var: (s_dims + ["layer"], bits[var]) for var in SETTING_VARS},
                "layer_overrides": (s_dims + ["layer"], overrides),
            },
            coords={"layer": ("layer", np.array(layers, dtype=object)),
                    "slice": ("slice", np.arange(n_slices, dtype=np.int64))},
        )

    def read_calibration(self) -> dict[int, Optional[dict]]:
        """Per point index, the calibration state to load into its converted model (None: none)."""
        group = zarr.open_group(self.path, mode="r")
        v = {k: np.asarray(group[k][...]) for k in CALIBRATION_VARS}
        layers = [str(x) for x in np.asarray(group["layer"][...])]
        out: dict[int, Optional[dict]] = {}
        for p in self.plan.sweep.points:
            pos = p.position
            if not v["calibrated"][pos]:
                out[p.index] = None
                continue
            state = {}
            for j, name in enumerate(layers):
                at = pos + (j,)
                if not v["analog"][at]:
                    continue
                n = int(v["adc_slices"][at])
                xr_ = float(v["x_range"][at])
                sg = int(v["input_signed"][at])
                state[name] = {
                    "x_range": None if math.isnan(xr_) else xr_,
                    "signed": None if sg < 0 else bool(sg),
                    "adc_range": None if n == 0 else (
                        [float(a) for a in v["adc_lo"][at][:n]], [float(a) for a in v["adc_hi"][at][:n]]),
                }
            out[p.index] = state
        return out


# --------------------------------------------------------------------------------------
# the result


def check_readable(info: StoreInfo) -> None:
    """Raise :class:`StoreError` unless ``info`` is an mcsim store of this format, created whole."""
    path = info.path
    if info.kind == "absent":
        raise StoreError(f"{path}: no result store there")
    if info.kind != "mcsim":
        raise StoreError(f"{path}: not an mcsim result store")
    if info.attrs.get("mcsim_store") != STORE_FORMAT:
        raise StoreError(f"{path}: store format {info.attrs.get('mcsim_store')} is not the format "
                         f"{STORE_FORMAT} of this mcsim version; run the scenario again with overwrite=True "
                         "to rewrite it")
    if info.attrs.get("state") == "creating":
        raise StoreError(f"{path}: the store was never completely created; run the scenario again")


def open_result(path: str, *, partial: bool = False) -> xr.Dataset:
    """The result of a run at ``path``, loaded into memory: ``xr.open_zarr(path)``, checked.

    Args:
        path: the result store (a local path or an fsspec URL).
        partial: open an unfinished store too (accuracies over the images done so far, NaN
            where none; ``complete`` tells which sweep points are done).

    Returns:
        The ``xarray.Dataset`` at the store's root. Dims: the sweep dims, ``trial`` (and
        ``layer``/``slice`` for the calibration). Variables: ``top1``, ``top5`` (fractions),
        ``correct_top1``, ``correct_top5``, ``n_images``, ``complete``, ``digital_top1``,
        ``digital_top5``, ``n_trials`` (chips run; with adaptive trials the chips past it are NaN),
        and the calibration (``x_range``, ``input_signed``, ``adc_lo``,
        ``adc_hi``, ``adc_slices``, ``analog``, ``calibrated``); when the scenario counts energy,
        ``energy_per_image`` (J, along ``component``) and ``energy_counts`` (along ``count``,
        ``layer``). Attributes: the scenario, its
        fingerprint, versions, device, times, the log of the runs.

    Raises:
        StoreError: no mcsim store of this format at ``path``, or (unless ``partial``) an
            unfinished run.

    >>> ds = open_result("outputs/quickstart.zarr")  # doctest: +SKIP
    >>> ds["top1"].mean("trial").sel(sigma=0.05)  # doctest: +SKIP
    """
    path = store_path(path)
    info = inspect_store(path)
    check_readable(info)
    if not partial:
        group = zarr.open_group(path, mode="r")
        ledger = group[LEDGER]
        done = np.asarray(ledger["done"][...])
        digital_done = np.asarray(ledger["digital_done"][...])
        calibrated = bool(info.attrs.get("calibration_written"))
        layout = info.layout
        metric = layout.get("metric")
        counts = MOMENT_VAR if metric else f"correct_{layout.get('metric_name', 'top1')}"
        _, ended = adaptive_stop(np.asarray(ledger[counts][...]), done, np.asarray(ledger["shard_images"][...]),
                                 int(layout["trials_per_task"]), layout.get("adaptive"), metric)
        if not (ended.all() and digital_done.all() and calibrated):
            raise StoreError(
                f"{path}: the run is not finished ({int(done.sum())} of {done.size} evaluation tasks, "
                f"{int(digital_done.sum())} of {digital_done.size} digital tasks done"
                f"{'' if calibrated else ', not calibrated'}); run the scenario again to finish it, "
                "or open it with partial=True"
            )
    out = xr.open_zarr(path).load()
    for name in list(out.variables):
        if out[name].dtype.kind == "T":  # numpy StringDType from zarr: plain str objects
            values = (out[name].dims, out[name].values.astype(object))
            out = out.assign_coords({name: values}) if name in out.coords else out.assign({name: values})
    return out
