"""Summaries of a result dataset: statistics over trials per sweep point, and the accuracy plot.

``summarize(ds)`` gives a pandas DataFrame with one row per sweep point and metric: mean, std,
min, 5th and 95th percentile over the trials (chips), the binomial standard error
``sqrt(p (1 - p) / n)`` of the mean accuracy ``p`` over ``n`` images (the finite-image sampling
error, beside the chip-to-chip spread), and the digital model's accuracy.
``plot(ds, path)`` draws accuracy against the first numeric swept setting.
``summarize_energy(ds)`` gives the mean energy per image per sweep point (total and by component,
docs/physics.md section 12), and ``plot_energy(ds, path)`` draws accuracy against it.

A layer sensitivity sweep (dim ``target_layer``, :class:`mcsim.sweep.LayerSweep`) gets its own
summary: ``layer_sensitivity(ds)`` ranks the layers by the accuracy each costs, with Monte Carlo
errors ``std / sqrt(trials)``, and ``plot`` draws that ranking as bars.
"""
from __future__ import annotations

import itertools
import math
from typing import Optional

import numpy as np
import xarray as xr

__all__ = ["ENERGY_COLUMNS", "METRICS", "STAT_COLUMNS", "energy_unit", "layer_sensitivity", "plot", "plot_energy",
           "point_labels", "summarize", "summarize_energy", "x_axis"]

LAYER_DIM, NO_LAYER = "target_layer", "(none)"  # as mcsim.sweep names them

METRICS = ("top1", "top5")
STAT_COLUMNS = ("mean", "std", "min", "p5", "p95", "se_binom")


def sweep_dims(ds: xr.Dataset) -> list[str]:
    return [d for d in ds["top1"].dims if d != "trial"]


def point_labels(ds: xr.Dataset) -> list[str]:
    """Names of the labels of a point: the swept settings in the scenario's order (a zipped
    sweep's ``point`` dim is labelled by its zipped coordinates)."""
    dims = sweep_dims(ds)
    order = list((ds.attrs.get("layout") or {}).get("coord_dims") or [])
    names = []
    for d in dims:
        along = [c for c in ds.coords if ds[c].dims == (d,) and c != d]
        along.sort(key=lambda c: order.index(c) if c in order else len(order))
        names += along if d == "point" and along else [d]
    return names


def _value(v):
    return v.item() if hasattr(v, "item") else v


def summarize(ds: xr.Dataset, metrics=METRICS):
    """One row per sweep point and metric: the point's labels, then the statistics over trials."""
    import pandas as pd

    dims = sweep_dims(ds)
    labels = point_labels(ds)
    rows = []
    shape = [ds.sizes[d] for d in dims]
    for pos in itertools.product(*(range(n) for n in shape)):
        at = dict(zip(dims, pos))
        point = ds.isel(at)
        base = {name: _value(point[name].values) for name in labels}
        for metric in metrics:
            acc = point[metric].values.astype(float)
            n = int(point["n_images"].values.max())
            mean = float(np.mean(acc))
            rows.append({
                **base,
                "metric": metric,
                "mean": mean,
                "std": float(np.std(acc, ddof=1)) if acc.size > 1 else 0.0,
                "min": float(np.min(acc)),
                "p5": float(np.percentile(acc, 5)),
                "p95": float(np.percentile(acc, 95)),
                "se_binom": math.sqrt(mean * (1 - mean) / n) if n else math.nan,
                "trials": int(acc.size),
                "n_images": n,
                "digital": float(ds[f"digital_{metric}"].values),
            })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# energy


ENERGY_COLUMNS = ("energy", "energy_std", "energy_adc", "energy_dac", "energy_array", "energy_digital")


def has_energy(ds: xr.Dataset) -> bool:
    return "energy_per_image" in ds


def _require_energy(ds: xr.Dataset) -> None:
    if not has_energy(ds):
        raise ValueError("this result has no energy (its scenario ran with energy: false, or before mcsim counted "
                         "energy); run the scenario with energy: true to get it")


def summarize_energy(ds: xr.Dataset):
    """One row per sweep point: its labels, the mean over trials (chips) of the energy per image in J
    (``energy``) and its std over trials (``energy_std``; only the array term and the activations
    differ between chips), and the mean of each component (``energy_adc``, ``energy_dac``,
    ``energy_array``, ``energy_digital``)."""
    import pandas as pd

    _require_energy(ds)
    dims, labels = sweep_dims(ds), point_labels(ds)
    e = ds["energy_per_image"]
    rows = []
    for pos in itertools.product(*(range(ds.sizes[d]) for d in dims)):
        at = dict(zip(dims, pos))
        point, per = ds.isel(at), e.isel(at)
        total = per.sum("component").values.astype(float)
        row = {name: _value(point[name].values) for name in labels}
        row["energy"] = float(np.mean(total))
        row["energy_std"] = float(np.std(total, ddof=1)) if total.size > 1 else 0.0
        for c in per["component"].values:
            row[f"energy_{c}"] = float(per.sel(component=c).mean("trial"))
        rows.append(row)
    return pd.DataFrame(rows)


def energy_unit(joules: float) -> tuple[str, float]:
    """(unit, factor) that shows ``joules`` with a few digits before the point: pJ, nJ, uJ, mJ or J."""
    for unit, factor in (("pJ", 1e12), ("nJ", 1e9), ("uJ", 1e6), ("mJ", 1e3)):
        if abs(joules) * factor < 1e4:
            return unit, factor
    return "J", 1.0


def plot_energy(ds: xr.Dataset, path: str, metric: str = "top1", title: Optional[str] = None) -> str:
    """Accuracy against energy per image, one point per sweep point (mean over chips, error bars
    +-1 std over chips on both axes), each labelled by its settings; the digital accuracy dashed.
    Energy on a log axis. Writes ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if metric not in METRICS:
        raise ValueError(f"metric: {metric!r} is not one of {', '.join(METRICS)}")
    _require_energy(ds)
    dims = sweep_dims(ds)
    total = ds["energy_per_image"].sum("component")
    acc = ds[metric]
    multi = ds.sizes["trial"] > 1
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for pos in itertools.product(*(range(ds.sizes[d]) for d in dims)):
        at = dict(zip(dims, pos))
        e, a = total.isel(at), acc.isel(at)
        x, y = float(e.mean()), float(a.mean())
        xerr, yerr = (float(e.std(ddof=1)), float(a.std(ddof=1))) if multi else (0.0, 0.0)
        label = ", ".join(_label(ds, d, i) for d, i in at.items()) or metric
        ax.errorbar([x], [y], xerr=[xerr], yerr=[yerr], fmt="o", capsize=3, label=label)
    digital = float(ds[f"digital_{metric}"].values)
    ax.axhline(digital, color="black", linestyle="--", linewidth=1, label=f"digital ({digital:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("energy per image (J, first order: ADC + DAC + array + digital)")
    ax.set_ylabel(f"{metric} accuracy")
    ax.set_title(title or f"{ds.attrs.get('name', '')}: mean over {ds.sizes['trial']} chips, bars +-1 std")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------
# layer sensitivity


def layer_sweep_mode(ds: xr.Dataset) -> Optional[str]:
    """``only_analog`` / ``only_ideal`` for a layer sensitivity result, else None."""
    if LAYER_DIM not in ds.dims:
        return None
    return (ds.attrs.get("layout") or {}).get("layer_sweep") or "only_analog"


def _mc(acc: np.ndarray) -> tuple[float, float]:
    """Mean over trials and its Monte Carlo standard error ``std / sqrt(trials)``."""
    acc = acc.astype(float)
    return float(np.mean(acc)), (float(np.std(acc, ddof=1)) / math.sqrt(acc.size) if acc.size > 1 else 0.0)


def layer_sensitivity(ds: xr.Dataset, metric: str = "top1"):
    """The layers ranked by the accuracy each costs, per point of the other sweep dims.

    ``only_analog``: ``cost = digital - mean`` (the accuracy lost when only this layer is
    analog). ``only_ideal``: ``cost = mean - mean[(none)]`` (the accuracy recovered when only this
    layer is ideal, vs the chip with every layer analog). ``cost_se`` is the Monte Carlo standard
    error (``std / sqrt(trials)``, combined in quadrature with the reference's for only_ideal);
    rank 1 costs the most. Also ``loss_vs_digital = digital - mean`` for both modes.
    """
    import pandas as pd

    mode = layer_sweep_mode(ds)
    if mode is None:
        raise ValueError(f"no layer sensitivity sweep in this result (no '{LAYER_DIM}' dim)")
    digital = float(ds[f"digital_{metric}"].values)
    others = [d for d in sweep_dims(ds) if d != LAYER_DIM]
    labels = [n for n in point_labels(ds) if n != LAYER_DIM]
    rows = []
    for pos in itertools.product(*(range(ds.sizes[d]) for d in others)):
        sub = ds.isel(dict(zip(others, pos)))
        base = {n: _value(sub[n].values) for n in labels}
        names = [str(v) for v in sub[LAYER_DIM].values]
        stats = {n: _mc(sub[metric].isel({LAYER_DIM: i}).values) for i, n in enumerate(names)}
        ref = stats.get(NO_LAYER)
        group = []
        for name in names:
            if name == NO_LAYER:
                continue
            mean, se = stats[name]
            if mode == "only_ideal":
                cost, cost_se = mean - ref[0], math.hypot(se, ref[1])
            else:
                cost, cost_se = digital - mean, se
            group.append({**base, "layer": name, "mean": mean, "se": se, "cost": cost, "cost_se": cost_se,
                          "loss_vs_digital": digital - mean, "digital": digital,
                          "reference": ref[0] if ref else digital, "mode": mode})
        group.sort(key=lambda r: -r["cost"])
        rows += [{"rank": i + 1, **r} for i, r in enumerate(group)]
    return pd.DataFrame(rows)


def plot_layer_sensitivity(ds: xr.Dataset, path: str, metric: str = "top1", title: Optional[str] = None) -> str:
    """Horizontal bars of the accuracy each layer costs (:func:`layer_sensitivity`), the most
    costly on top, with +-1 Monte Carlo standard error; one bar colour per point of the other dims."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = layer_sensitivity(ds, metric)
    mode = df["mode"].iloc[0]
    labels = [n for n in point_labels(ds) if n != LAYER_DIM]
    groups = list(df.groupby(labels, sort=False)) if labels else [((), df)]
    order = groups[0][1]["layer"].tolist()  # ranked by the first group
    ys = np.arange(len(order))
    height = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.35 * len(order) * max(1, len(groups) ** 0.5)))
    for g, (key, sub) in enumerate(groups):
        sub = sub.set_index("layer").loc[order]
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{n}={_fmt(v)}" for n, v in zip(labels, key)) or None
        ax.barh(ys + (g - (len(groups) - 1) / 2) * height, 100 * sub["cost"], height=height,
                xerr=100 * sub["cost_se"], capsize=3, label=label)
    ax.set_yticks(ys, order)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    what = ("accuracy lost with only this layer analog (vs digital)" if mode == "only_analog"
            else "accuracy recovered with only this layer ideal (vs all analog)")
    ax.set_xlabel(f"{metric} {what}, % (+-1 MC s.e.)")
    ax.set_title(title or f"{ds.attrs.get('name', '')}: layer sensitivity ({mode}), {ds.sizes['trial']} chips")
    ax.grid(True, axis="x", alpha=0.3)
    if len(groups) > 1:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------
# plot


def _numeric(values: np.ndarray) -> bool:
    return values.dtype.kind in "iuf" and values.dtype.kind != "b"


def x_axis(ds: xr.Dataset) -> tuple[str, str]:
    """(dim, coordinate) of the x axis: the first swept setting, in the scenario's order, whose
    values are all numbers (a zipped coordinate counts: its dim is ``point``); then one with
    numbers and nulls; with no numeric setting, the first dim."""
    labels = point_labels(ds)
    for finite in (True, False):
        for c in labels:
            values = ds[c].values
            if _numeric(values) and (not finite or np.isfinite(values.astype(float)).all()):
                return ds[c].dims[0], c
    dims = sweep_dims(ds)
    if not dims:
        return "", ""
    return dims[0], dims[0]


def plot(ds: xr.Dataset, path: str, metric: str = "top1", band: str = "std", title: Optional[str] = None) -> str:
    """Accuracy (mean over trials, band: +-1 std or 5-95 percentile) vs the first numeric swept
    setting, one line per value of the other dims; the digital accuracy dashed. Writes ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if metric not in METRICS:
        raise ValueError(f"metric: {metric!r} is not one of {', '.join(METRICS)}")
    if layer_sweep_mode(ds) is not None:
        return plot_layer_sensitivity(ds, path, metric, title)
    acc = ds[metric]
    xdim, xcoord = x_axis(ds)
    others = [d for d in sweep_dims(ds) if d != xdim]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if xdim:
        xv = ds[xcoord].values
        numeric = _numeric(xv)
        xs = xv.astype(float) if numeric else np.arange(len(xv))
        order = np.argsort(xs, kind="stable")
        for pos in itertools.product(*(range(ds.sizes[d]) for d in others)):
            sel = dict(zip(others, pos))
            line = acc.isel(sel)
            mean = line.mean("trial").values[order]
            if band == "percentile":
                lo, hi = line.quantile(0.05, "trial").values[order], line.quantile(0.95, "trial").values[order]
            else:
                std = line.std("trial", ddof=1).values[order] if ds.sizes["trial"] > 1 else 0 * mean
                lo, hi = mean - std, mean + std
            label = ", ".join(_label(ds, d, i) for d, i in sel.items()) or metric
            (handle,) = ax.plot(xs[order], mean, marker="o", label=label)
            ax.fill_between(xs[order], lo, hi, color=handle.get_color(), alpha=0.2, linewidth=0)
        if not numeric:
            ax.set_xticks(xs, [_fmt(v) for v in xv])
        ax.set_xlabel(xcoord)
    else:  # a single point: one bar with its error
        mean, std = float(acc.mean()), float(acc.std(ddof=1)) if ds.sizes["trial"] > 1 else 0.0
        ax.errorbar([0], [mean], yerr=[std], fmt="o", capsize=4, label=metric)
        ax.set_xticks([])
    digital = float(ds[f"digital_{metric}"].values)
    ax.axhline(digital, color="black", linestyle="--", linewidth=1, label=f"digital ({digital:.3f})")
    ax.set_ylabel(f"{metric} accuracy")
    spread = "5-95 percentile" if band == "percentile" else "+-1 std"
    ax.set_title(title or f"{ds.attrs.get('name', '')}: mean over {ds.sizes['trial']} chips, band {spread}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _label(ds: xr.Dataset, dim: str, i: int) -> str:
    """``name=value`` of position ``i`` along ``dim`` (a zipped dim: each zipped coordinate)."""
    names = point_labels(ds) if dim == "point" else [dim]
    names = [n for n in names if ds[n].dims == (dim,)] or [dim]
    return ", ".join(f"{n}={_fmt(ds[n].values[i])}" for n in names)


def _fmt(v) -> str:
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, float):
        return "null" if v != v else f"{v:g}"
    return str(v)
