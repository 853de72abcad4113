"""Questions asked of a result dataset by name: the analysis docs/findings.md is written from.

A point is selected by its labels (:func:`pick`: grid dims by value, zipped coordinates matched
together, ``None`` for a null setting), summarised as a :class:`mcsim.stats.PointStat`
(:func:`stat`), and a swept axis is bracketed where its accuracy stops being within
:data:`TOLERANCE` of the digital model (:func:`threshold`, :func:`mcsim.stats.bracket`).
:func:`bit_position_drops` measures the study's bit-position effect of parasitic resistance on
the circuit (docs/physics.md section 8). ``scripts/findings.py`` keeps only the page's prose and
layout.
"""
from __future__ import annotations

import math
from datetime import datetime
from typing import Optional

import numpy as np
import xarray as xr

from mcsim.stats import PointStat, Threshold, bracket, chips_run, metric_values, point_stat

__all__ = ["TOLERANCE", "bit_position_drops", "digital", "fewest", "image_se", "metric_info", "pick", "plain_dims", "stat", "stat_of",
           "threshold", "tolerated", "values", "wall_seconds"]

TOLERANCE = 0.02  # "tolerated": mean accuracy within 2 percentage points of the digital model


def plain_dims(ds: xr.Dataset) -> xr.Dataset:
    """Per-layer sweep dims renamed to their setting (``7.rp`` -> ``rp``) where that name is free."""
    return ds.rename({d: d.split(".")[-1] for d in ds.dims if "." in d and d.split(".")[-1] not in ds.dims})


def wall_seconds(ds: xr.Dataset) -> float:
    """Wall time of the runs recorded in a store (summed over resumed runs)."""
    total = 0.0
    for r in ds.attrs.get("runs", []):
        if r.get("started") and r.get("ended"):
            total += (datetime.fromisoformat(r["ended"]) - datetime.fromisoformat(r["started"])).total_seconds()
    return total


def _is_null(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def pick(ds: xr.Dataset, **labels) -> xr.Dataset:
    """The sub-dataset of one sweep point: grid dims selected by value (None selects the NaN that
    stores a null setting, e.g. an infinite on/off ratio), zipped coordinates (along ``point``)
    matched together."""
    grid = {k: v for k, v in labels.items() if k in ds.dims}
    zipped = {k: v for k, v in labels.items() if k not in ds.dims}
    out = ds
    for k, v in grid.items():
        if _is_null(v):
            idx = np.flatnonzero(np.isnan(np.asarray(out[k].values, dtype=float)))
            out = out.isel({k: int(idx[0])})
        else:
            out = out.sel({k: v})
    if zipped:
        mask = np.ones(out.sizes["point"], dtype=bool)
        for k, v in zipped.items():
            mask &= np.asarray(out[k].values == v)
        idx = np.flatnonzero(mask)
        if len(idx) != 1:
            raise KeyError(f"{labels}: {len(idx)} matching points")
        out = out.isel(point=int(idx[0]))
    return out


def metric_info(ds: xr.Dataset) -> Optional[dict]:
    """A loss metric's ``name``, ``transform`` and ``lower_is_better`` (the store's layout); None for
    a classification result (top1 and top5)."""
    return (ds.attrs.get("layout") or {}).get("metric")


def image_se(ds: xr.Dataset, metric: str) -> Optional[xr.DataArray]:
    """Each chip's finite-image error of a loss metric (:func:`mcsim.metric_values` of its
    sums), shaped as ``ds[metric]``; None for an accuracy (the binomial term applies)."""
    info = metric_info(ds)
    if info is None or metric != info["name"]:
        return None
    n = ds["n_images"]
    _, se = metric_values(ds["moments"].transpose(*n.dims, "moment").values, n.values, info["transform"])
    return xr.DataArray(se, dims=n.dims, coords=n.coords).transpose(*ds[metric].dims)


def stat_of(point: xr.Dataset, metric: str = "top1") -> PointStat:
    """The :class:`PointStat` of one selected point (its chips along ``trial``, those run); a loss
    metric's (e.g. ``perplexity``) with its chips' image errors (:func:`image_se`)."""
    values = point[metric].values
    se = image_se(point, metric)
    return point_stat(chips_run(values), int(np.asarray(point["n_images"].values).max()),
                      None if se is None else np.asarray(se.values)[~np.isnan(values)])


def stat(ds: xr.Dataset, **labels) -> PointStat:
    """The top-1 :class:`PointStat` of the point ``labels`` (:func:`pick`)."""
    return stat_of(pick(ds, **labels))


def digital(ds: xr.Dataset, metric: str = "top1") -> float:
    return float(ds[f"digital_{metric}"].values)


def values(ds: xr.Dataset, name: str) -> list:
    """The distinct values of a coordinate, sorted (numbers before strings)."""
    return sorted(set(np.asarray(ds[name].values).tolist()), key=lambda v: (isinstance(v, str), v))


def threshold(ds: xr.Dataset, axis: str, vals, direction: str = "up", **labels) -> Threshold:
    """The :class:`Threshold` of the accuracy along ``axis`` (``vals``) at the point ``labels``, against
    the floor ``digital - TOLERANCE`` (:func:`mcsim.stats.bracket`, 2 SE)."""
    return bracket([(v, stat(ds, **{axis: v}, **labels)) for v in vals], digital(ds) - TOLERANCE, direction)


def tolerated(ds: xr.Dataset, axis: str, vals, **labels):
    """The largest value along ``axis`` clearly tolerated (see :class:`Threshold`)."""
    return threshold(ds, axis, vals, "up", **labels).ok


def fewest(ds: xr.Dataset, axis: str, vals, **labels):
    """The smallest value along ``axis`` from which on the accuracy is clearly tolerated."""
    return threshold(ds, axis, vals, "down", **labels).ok


def bit_position_drops(rp: float, images: int = 500, rows: int = 784, bits: int = 8) -> list[dict]:
    """The study's bit-position effect, measured on the circuit: per input bit k, the share of rows
    switched on and the share of column current lost to the wires, on gated rows.

    The trained builtin:mnist-cnn's classifier (1568 rows, two arrays of ``rows`` rows, as
    scenario 04's 1152-row setting partitions it) holds its 8-bit weights as differential pairs with
    Gmin = 0 (``G+ = max(q, 0)``, ``G- = max(-q, 0)`` in units of Gmax). Its inputs are the first
    ``images`` mnist5k test images' activations, quantized to ``bits`` unsigned levels (range: their
    maximum) and split into bit planes. Lost share of bit k = sum over (image, array, column) of
    ``(u_k G - I_k) / sum u_k G``, I_k from :func:`mcsim.physics.parasitics.gated_column_currents`
    (exact, float64)."""
    import torch

    from mcsim.data import load_split
    from mcsim.models import load_model
    from mcsim.physics.parasitics import gated_column_currents
    from mcsim.specs import DataSpec, ModelSpec

    model = load_model(ModelSpec(name="builtin:mnist-cnn"))
    test = load_split(DataSpec(name="mnist5k"), "test")
    xs = torch.stack([test[i][0] for i in range(images)])
    with torch.no_grad():
        act = model[:7](xs).double()  # the classifier's inputs (N, 1568), after ReLU
    w = model[7].weight.detach().double().T  # (1568, 10)
    q = torch.round(w / w.abs().max() * (2 ** (bits - 1) - 1)) / (2 ** (bits - 1) - 1)
    G = torch.cat([q.clamp(min=0), (-q).clamp(min=0)], 1).reshape(-1, rows, 20)  # (arrays, rows, cols)
    levels = torch.round(act / act.max() * (2**bits - 1)).to(torch.int64)
    out = []
    for k in range(bits):
        u = ((levels >> k) & 1).double().reshape(images, -1, rows).transpose(0, 1)  # (arrays, images, rows)
        ideal = u @ G
        lost = (ideal - gated_column_currents(G.unsqueeze(1), u, rp)).sum() / ideal.sum()
        out.append({"bit": k, "active": float(u.mean()), "lost": float(lost)})
    return out
