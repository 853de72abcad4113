"""The result store: a Zarr (v3) group written through xarray, and its ledger of finished tasks.

Layout (``S...`` are the sweep dims of :func:`mcsim.sweep.expand`, e.g. ``sigma, mapping``, or
``point`` for zipped keys; the sweep coordinates are stored as xarray coordinates)::

    correct_top1, correct_top5   int32 (S..., trial, shard)  chunks (1..., trials_per_task, 1)
    done                         bool  (S..., trial_block, shard)  chunks 1: the ledger
    digital_correct_top1/_top5   int32 (shard,)  chunks 1
    digital_done                 bool  (shard,)  chunks 1: the ledger of the digital baseline
    shard_images                 int32 (shard,)  images per shard
    calibrated                   bool  (S...)  the point's hardware needed a calibration
    analog                       bool  (S..., layer)  the layer is analog at that point
    x_range                      float64 (S..., layer)  input (DAC) range; NaN: none
    input_signed                 int8  (S..., layer)  1/0; -1: none
    adc_slices                   int8  (S..., layer)  weight slices with an ADC range (0: none)
    adc_lo, adc_hi               float64 (S..., layer, slice)  ADC range per slice; NaN: none

Every evaluation task writes exactly one chunk of each count array (then its ledger chunk), so
concurrent writers never share a chunk. The calibration arrays are written once, when every
point is calibrated (they are cheap to redo), then the ``calibration_written`` attribute (the
calibration's ledger). Attributes hold the scenario text and fingerprint, the layout (image
count, batch, shard and trial-block sizes), versions, device, times and a log of the runs.

The ledger is written after the counts: a task is done when its ledger entry is, and an
interrupted run resumes with exactly the tasks whose entry is missing. Paths may be local paths
or fsspec URLs; all I/O goes through xarray/zarr (and fsspec for the existence checks).

:func:`open_result` sums the shards into the result dataset (accuracy per point and trial).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import xarray as xr
import zarr

from mcsim.runner.plan import RunPlan
from mcsim.scenario import Scenario

__all__ = [
    "STORE_FORMAT",
    "ResultStore",
    "StoreError",
    "StoreInfo",
    "inspect_store",
    "open_result",
    "store_path",
]

STORE_FORMAT = 1  # bump when the layout changes
COUNT_VARS = ("correct_top1", "correct_top5")
DIGITAL_VARS = ("digital_correct_top1", "digital_correct_top5")
CALIBRATION_VARS = ("calibrated", "analog", "x_range", "input_signed", "adc_slices", "adc_lo", "adc_hi")
RESULT_CAL_VARS = ("x_range", "input_signed", "adc_lo", "adc_hi", "analog")
_OPEN = dict(consolidated=False)
_WRITE = dict(consolidated=False, zarr_format=3)


class StoreError(Exception):
    """A result store that cannot be used as asked (refused, incomplete, not an mcsim store)."""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------
# what is at a path


@dataclass(frozen=True)
class StoreInfo:
    """What is at a store path: ``kind`` is absent | empty | mcsim | zarr | other."""

    path: str
    kind: str
    attrs: dict

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
# the store


class ResultStore:
    """An mcsim result store at ``path`` with the layout of ``plan``."""

    def __init__(self, path: str, plan: RunPlan):
        self.path = store_path(path)
        self.plan = plan
        self.dims = list(plan.sweep.dims)
        self.shape = tuple(plan.sweep.shape)

    # ---- creation

    @classmethod
    def create(cls, path: str, scenario: Scenario, plan: RunPlan, *, overwrite: bool = False,
               extra_attrs: Optional[dict] = None) -> "ResultStore":
        """Write the empty layout (counts of zero, an empty ledger) and the attributes."""
        store = cls(path, plan)
        path = store.path
        shards = plan.shards
        n_shards, n_blocks, trials = len(shards), len(plan.trial_blocks), plan.trials
        s_dims, s_shape = store.dims, store.shape
        ones = (1,) * len(s_dims)
        data = {}
        for var in COUNT_VARS:
            data[var] = (s_dims + ["trial", "shard"], np.zeros(s_shape + (trials, n_shards), np.int32))
        data["done"] = (s_dims + ["trial_block", "shard"], np.zeros(s_shape + (n_blocks, n_shards), bool))
        for var in DIGITAL_VARS:
            data[var] = (["shard"], np.zeros(n_shards, np.int32))
        data["digital_done"] = (["shard"], np.zeros(n_shards, bool))
        data["shard_images"] = (["shard"], np.array([i1 - i0 for i0, i1 in shards], np.int32))
        coords = dict(sweep_coords(plan))
        coords["trial"] = ("trial", np.arange(trials, dtype=np.int64))
        coords["shard"] = ("shard", np.arange(n_shards, dtype=np.int64))
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
                "dims": s_dims,
                "coord_dims": dict(plan.sweep.coord_dims),
            },
            "created": now(),
            "runs": [],
            **(extra_attrs or {}),
        }
        ds = xr.Dataset(data, coords=coords, attrs=attrs)
        encoding = {var: {"chunks": ones + (plan.trials_per_task, 1)} for var in COUNT_VARS}
        encoding["done"] = {"chunks": ones + (1, 1)}
        for var in DIGITAL_VARS + ("digital_done",):
            encoding[var] = {"chunks": (1,)}
        ds.to_zarr(path, mode="w" if overwrite else "w-", encoding=encoding, **_WRITE)
        store.update_attrs(state="ready")
        return store

    # ---- attributes

    def attrs(self) -> dict:
        return dict(zarr.open_group(self.path, mode="r").attrs)

    def update_attrs(self, **values: Any) -> None:
        zarr.open_group(self.path, mode="r+").attrs.update(values)

    def record_run(self, entry: dict) -> None:
        """Add or replace (same ``started``) an entry of the ``runs`` attribute."""
        runs = [r for r in self.attrs().get("runs", []) if r.get("started") != entry.get("started")]
        self.update_attrs(runs=runs + [entry])

    # ---- ledger

    def _open(self) -> xr.Dataset:
        return xr.open_zarr(self.path, **_OPEN)

    def ledger(self) -> tuple[np.ndarray, np.ndarray]:
        """(done (S..., trial_block, shard), digital_done (shard,)) as booleans."""
        ds = self._open()
        return ds["done"].values.astype(bool), ds["digital_done"].values.astype(bool)

    def has_calibration(self) -> bool:
        """The calibration arrays are completely written (their marker is set after them)."""
        return bool(self.attrs().get("calibration_written"))

    # ---- writes

    def _region(self, point: int) -> dict:
        position = self.plan.sweep.points[point].position
        return {d: slice(i, i + 1) for d, i in zip(self.dims, position)}

    def write_eval(self, result) -> None:
        """Counts of one evaluation task, then its ledger entry."""
        task = result.task
        region = self._region(task.point)
        lead = (1,) * len(self.dims)
        counts = xr.Dataset({
            var: (self.dims + ["trial", "shard"],
                  np.asarray(getattr(result, var), dtype=np.int32).reshape(lead + (task.n_trials, 1)))
            for var in COUNT_VARS
        })
        counts.to_zarr(self.path, mode="r+", region={**region, "trial": slice(task.t0, task.t1),
                                                     "shard": slice(task.shard, task.shard + 1)}, **_OPEN)
        ledger = xr.Dataset({"done": (self.dims + ["trial_block", "shard"], np.ones(lead + (1, 1), bool))})
        ledger.to_zarr(self.path, mode="r+", region={**region, "trial_block": slice(task.block, task.block + 1),
                                                     "shard": slice(task.shard, task.shard + 1)}, **_OPEN)

    def write_digital(self, result) -> None:
        s = result.task.shard
        counts = xr.Dataset({var: (["shard"], np.array([getattr(result, var.removeprefix("digital_"))], np.int32))
                             for var in DIGITAL_VARS})
        counts.to_zarr(self.path, mode="r+", region={"shard": slice(s, s + 1)}, **_OPEN)
        xr.Dataset({"digital_done": (["shard"], np.ones(1, bool))}).to_zarr(
            self.path, mode="r+", region={"shard": slice(s, s + 1)}, **_OPEN)

    def write_calibration(self, results: list) -> None:
        """The calibration of every point (results of the calibration tasks, any order)."""
        by_point = {r.task.point: r for r in results}
        missing = [p.index for p in self.plan.sweep.points if p.index not in by_point]
        if missing:
            raise ValueError(f"calibration missing for sweep points {missing}")
        points = self.plan.sweep.points
        layers = _merge_layers([by_point[p.index].layers for p in points])
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
        for p in points:
            r, pos = by_point[p.index], p.position
            calibrated[pos] = r.state is not None
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
        ds = xr.Dataset(
            {
                "calibrated": (s_dims, calibrated),
                "analog": (s_dims + ["layer"], analog),
                "x_range": (s_dims + ["layer"], x_range),
                "input_signed": (s_dims + ["layer"], signed),
                "adc_slices": (s_dims + ["layer"], adc_slices),
                "adc_lo": (s_dims + ["layer", "slice"], lo),
                "adc_hi": (s_dims + ["layer", "slice"], hi),
            },
            coords={"layer": ("layer", np.array(layers, dtype=object)),
                    "slice": ("slice", np.arange(n_slices, dtype=np.int64))},
            attrs=self.attrs(),  # an append replaces the group's attributes: keep them
        )
        ds.to_zarr(self.path, mode="a", **_WRITE)
        self.update_attrs(calibration_written=now())  # the marker: every calibration array is complete

    def read_calibration(self) -> dict[int, Optional[dict]]:
        """Per point index, the calibration state to load into its converted model (None: none)."""
        ds = self._open()
        v = {k: ds[k].values for k in CALIBRATION_VARS}
        layers = [str(x) for x in ds["layer"].values]
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


def open_result(path: str, *, partial: bool = False) -> xr.Dataset:
    """The result of a finished run at ``path``, in memory.

    Dims: the sweep dims, ``trial`` (and ``layer``/``slice`` for calibration variables).
    Variables: ``top1``, ``top5`` (fractions), ``correct_top1``, ``correct_top5``, ``n_images``,
    ``digital_top1``, ``digital_top5``, and the calibration: ``x_range``, ``input_signed``,
    ``adc_lo``, ``adc_hi``, ``analog``. Attributes: the scenario, its fingerprint, versions, device,
    times. ``partial=True`` opens an unfinished store (accuracies over the images done so far,
    NaN where none); otherwise an unfinished store raises :class:`StoreError`.
    """
    path = store_path(path)
    info = inspect_store(path)
    if info.kind == "absent":
        raise StoreError(f"{path}: no result store there")
    if info.kind != "mcsim":
        raise StoreError(f"{path}: not an mcsim result store")
    if info.attrs.get("mcsim_store") != STORE_FORMAT:
        raise StoreError(f"{path}: store format {info.attrs.get('mcsim_store')} is not the format "
                         f"{STORE_FORMAT} of this mcsim version")
    if info.attrs.get("state") == "creating":
        raise StoreError(f"{path}: the store was never completely created; run the scenario again")
    raw = xr.open_zarr(path, **_OPEN).load()
    layout = info.layout
    tpt = int(layout["trials_per_task"])
    done, digital_done = raw["done"].values.astype(bool), raw["digital_done"].values.astype(bool)
    calibrated = bool(info.attrs.get("calibration_written")) and "x_range" in raw
    complete = bool(done.all() and digital_done.all() and calibrated)
    if not complete and not partial:
        raise StoreError(
            f"{path}: the run is not finished ({int(done.sum())} of {done.size} evaluation tasks, "
            f"{int(digital_done.sum())} of {digital_done.size} digital tasks done"
            f"{'' if calibrated else ', not calibrated'}); run the scenario again to finish it"
        )
    trial_blocks = np.arange(raw.sizes["trial"]) // tpt
    done_trial = xr.DataArray(done[..., trial_blocks, :], dims=raw["correct_top1"].dims)  # (S..., trial, shard)
    shard_images = raw["shard_images"].astype(np.int64)
    n_images = (shard_images * done_trial).sum("shard")
    out = xr.Dataset(attrs=dict(info.attrs))
    for var in COUNT_VARS:
        counts = (raw[var].astype(np.int64) * done_trial).sum("shard")
        out[var] = counts
        metric = var.removeprefix("correct_")
        out[metric] = (counts / n_images.where(n_images > 0)).astype(np.float64)
    out["n_images"] = n_images
    n_digital = int((raw["shard_images"].values * digital_done).sum())
    for var in DIGITAL_VARS:
        c = int((raw[var].values.astype(np.int64) * digital_done).sum())
        out[var.replace("_correct", "")] = c / n_digital if n_digital else math.nan
    if calibrated:
        for var in RESULT_CAL_VARS:
            out[var] = raw[var]
    out = out.drop_vars([c for c in ("shard", "trial_block") if c in out.coords])
    for name in list(out.coords):
        if out[name].dtype.kind == "T":  # numpy StringDType from zarr: plain str objects
            out = out.assign_coords({name: (out[name].dims, out[name].values.astype(object))})
    out["top1"].attrs["long_name"] = "top-1 accuracy"
    out["top5"].attrs["long_name"] = "top-5 accuracy"
    out["digital_top1"].attrs["long_name"] = "top-1 accuracy of the digital model"
    return out
