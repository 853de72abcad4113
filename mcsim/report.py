"""Summaries of a result dataset: statistics over trials per sweep point, and the accuracy plot.

``summarize(ds)`` gives a pandas DataFrame with one row per sweep point and metric: mean, std,
min, 5th and 95th percentile over the trials (chips), the binomial standard error
``sqrt(p (1 - p) / n)`` of the mean accuracy ``p`` over ``n`` images (the finite-image sampling
error, beside the chip-to-chip spread), the mean's SE with both error sources and its 95 %
interval, optionally the yield (chips within ``delta`` of digital, Wilson interval) and the
``q``-quantile chip (order-statistic interval), and the digital model's accuracy; the statistics
are :mod:`mcsim.stats`' (docs/physics.md section 14). ``compare(ds, dim)`` gives paired
differences between the values of a swept dim, chip by chip.
``plot(ds, path)`` draws accuracy against the first numeric swept setting: the chip spread as a
band, the mean's 95 % interval as error bars; ``plot_yield`` draws the yield.
``summarize_energy(ds)`` gives the mean energy per image per sweep point (total and by component,
docs/physics.md section 12), and ``plot_energy(ds, path)`` draws accuracy against it.

A result scored by a loss metric (``metric: mse | perplexity | {factory: ...}``) has one metric,
named in its layout (:func:`metric_info`); its statistics are in its own units, its image term
comes from each chip's loss sums (:func:`image_se`, docs/physics.md section 14), and for mse and
perplexity lower is better (the yield counts chips at most ``delta`` above digital).

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

from mcsim import stats
from mcsim.analysis import image_se, metric_info

__all__ = ["ENERGY_COLUMNS", "LEVEL", "METRICS", "STAT_COLUMNS", "chips_common", "compare", "energy_unit",
           "image_se", "layer_sensitivity", "lower_is_better", "metric_info", "metric_label", "metrics_of", "per_class", "plot", "plot_energy", "plot_yield", "point_labels", "summarize", "summarize_energy",
           "trials_text", "x_axis"]

LAYER_DIM, NO_LAYER = "target_layer", "(none)"  # as mcsim.sweep names them

METRICS = ("top1", "top5")
STAT_COLUMNS = ("mean", "std", "min", "p5", "p95", "se_binom", "se", "ci_lo", "ci_hi")
LEVEL = 0.95  # the level of every interval of the report and the plots


def sweep_dims(ds: xr.Dataset) -> list[str]:
    return [d for d in ds["n_images"].dims if d != "trial"]


def metrics_of(ds: xr.Dataset) -> tuple[str, ...]:
    """The metrics of a result: ``top1, top5``, or the one loss metric's name."""
    info = metric_info(ds)
    return METRICS if info is None else (info["name"],)


def lower_is_better(ds: xr.Dataset) -> bool:
    info = metric_info(ds)
    return bool(info and info["lower_is_better"])


def metric_label(ds: xr.Dataset, metric: str) -> str:
    """An axis label: ``top1 accuracy``, or ``perplexity (lower is better)``."""
    if metric_info(ds) is None:
        return f"{metric} accuracy"
    return f"{metric} ({'lower' if lower_is_better(ds) else 'higher'} is better)"


def _check_metric(ds: xr.Dataset, metric: str) -> None:
    if metric not in metrics_of(ds):
        raise ValueError(f"metric: {metric!r} is not one of {', '.join(metrics_of(ds))}")


def _per_point(f, acc: np.ndarray, se: Optional[np.ndarray] = None) -> tuple[np.ndarray, ...]:
    """``f(chips)`` (a tuple of numbers) of each row of ``acc`` (chips last), on the chips run;
    with ``se`` (a loss metric's image errors, shaped as ``acc``) ``f(chips, their se)``."""
    flat = acc.reshape(-1, acc.shape[-1])
    run = ~np.isnan(flat)
    if se is None:
        rows = [f(a[r]) for a, r in zip(flat, run)]
    else:
        rows = [f(a[r], e[r]) for a, e, r in zip(flat, se.reshape(flat.shape), run)]
    return tuple(np.array(x, dtype=float).reshape(acc.shape[:-1]) for x in zip(*rows))


def trials_text(ds: xr.Dataset) -> str:
    """The chips per point: ``"20"``, or with adaptive trials ``"4 to 12"``."""
    if "n_trials" not in ds:
        return str(ds.sizes["trial"])
    lo, hi = int(ds["n_trials"].min()), int(ds["n_trials"].max())
    return str(hi) if lo == hi else f"{lo} to {hi}"


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


def summarize(ds: xr.Dataset, metrics=None, *, yield_delta: Optional[float] = None,
              quantile: Optional[float] = None):
    """One row per sweep point and metric (default: :func:`metrics_of`): the point's labels, then
    the statistics over trials.

    ``se`` is the mean's SE with both error sources (chips and images, :func:`mcsim.stats.se_mean`),
    ``ci_lo``/``ci_hi`` its 95 % interval; ``se_binom`` is the image term alone (a loss metric: the
    root mean square of the chips' :func:`image_se`). ``yield_delta`` (a fraction: 0.01 is one
    accuracy point; a loss metric: in its own units) adds ``yield``, ``yield_lo``, ``yield_hi``: the
    share of chips within it of the digital value (a loss: at most ``yield_delta`` above it), with
    its Wilson interval; ``quantile`` (e.g. 0.01) adds ``q_acc``, ``q_lo``, ``q_hi``: the
    accuracy of the ``q``-quantile chip with its order-statistic interval (an end that so few chips
    cannot give is infinite)."""
    import pandas as pd

    metrics = metrics_of(ds) if metrics is None else metrics
    dims = sweep_dims(ds)
    labels = point_labels(ds)
    lower = lower_is_better(ds)
    rows = []
    shape = [ds.sizes[d] for d in dims]
    for pos in itertools.product(*(range(n) for n in shape)):
        at = dict(zip(dims, pos))
        point = ds.isel(at)
        base = {name: _value(point[name].values) for name in labels}
        for metric in metrics:
            values = point[metric].values
            acc = stats.chips_run(values)
            se_img = image_se(point, metric)
            se_img = None if se_img is None else np.asarray(se_img.values)[~np.isnan(values)]
            n = int(point["n_images"].values.max())
            digital = float(ds[f"digital_{metric}"].values)
            mean, lo, hi = (stats.mean_interval(acc, n, LEVEL, se_img) if n
                            else (float(np.mean(acc)), math.nan, math.nan))
            image_term = stats.se_binom(mean, n) if se_img is None else np.sqrt(np.mean(se_img**2))
            row = {
                **base,
                "metric": metric,
                "mean": float(mean),
                "std": float(stats.chip_spread(acc)),
                "min": float(np.min(acc)),
                "p5": float(np.percentile(acc, 5)),
                "p95": float(np.percentile(acc, 95)),
                "se_binom": float(image_term) if n else math.nan,
                "se": float(stats.se_mean(acc, n, se_img)) if n else math.nan,
                "ci_lo": float(lo),
                "ci_hi": float(hi),
            }
            if yield_delta is not None:
                row["yield"], row["yield_lo"], row["yield_hi"] = map(
                    float, stats.yield_interval(acc, digital, yield_delta, LEVEL, lower))
            if quantile is not None:
                row["q_acc"], row["q_lo"], row["q_hi"] = map(float, stats.quantile_interval(acc, quantile, LEVEL))
            rows.append({**row, "trials": int(acc.size), "n_images": n, "digital": digital})
    return pd.DataFrame(rows)


def per_class(ds: xr.Dataset):
    """One row per sweep point and class, from the per-image outcomes (``output: {per_image: true}``):
    the point's labels, ``class``, ``images`` of the class, and over the point's chips run the top-1
    accuracy on the class's images: ``mean``, ``std`` (chip spread), ``se`` (both error sources, the
    class's images as N) and ``ci_lo``/``ci_hi`` (:func:`mcsim.stats.mean_interval`)."""
    import pandas as pd

    if "image_top1" not in ds:
        raise ValueError("per-class accuracy needs the per-image outcomes, which this store does not keep; run "
                         "its scenario with output: {path: ..., per_image: true}")
    dims, names = sweep_dims(ds), point_labels(ds)
    labels = ds["label"].values
    classes = np.unique(labels)
    rows = []
    for pos in itertools.product(*(range(ds.sizes[d]) for d in dims)):
        point = ds.isel(dict(zip(dims, pos)))
        run = ~np.isnan(point["top1"].values)  # the chips run (adaptive trials stop early)
        hits = np.unpackbits(point["image_top1"].values[run], axis=-1, count=labels.size)  # (chip, image)
        base = {name: _value(point[name].values) for name in names}
        for c in classes:
            acc = hits[:, labels == c].mean(-1)
            n = int((labels == c).sum())
            mean, lo, hi = stats.mean_interval(acc, n, LEVEL)
            rows.append({**base, "class": int(c), "images": n, "mean": float(mean),
                         "std": float(stats.chip_spread(acc)), "se": float(stats.se_mean(acc, n)),
                         "ci_lo": float(lo), "ci_hi": float(hi), "trials": int(acc.size)})
    return pd.DataFrame(rows)


def chips_common(ds: xr.Dataset) -> bool:
    """Whether the result's chips are common random numbers (``execution.chips: common``): chip ``t``
    the same manufactured chip at every point. Stores written before the setting existed keyed
    chips per point."""
    import yaml

    scenario = yaml.safe_load(ds.attrs.get("scenario") or "{}") or {}
    return (scenario.get("execution") or {}).get("chips", "per_point") == "common"


def compare(ds: xr.Dataset, dim: str, values: Optional[list] = None, metric: Optional[str] = None):
    """Paired differences between the values of the swept dim ``dim``, chip by chip, at every point of
    the other dims: one row per pair ``(a, b)`` (all pairs of ``values``, default every value of the
    dim, in order): ``diff = mean(a) - mean(b)``, ``se_paired = std_t(a_t - b_t) / sqrt(T)``,
    ``se_unpaired = sqrt(SE_a**2 + SE_b**2)`` and ``reduction``, the variance ratio
    (:func:`mcsim.stats.paired_difference`). Pairing holds only where the chips are common random
    numbers (:func:`chips_common`); with per-point chips ``se_paired`` estimates the unpaired error.
    ``metric``: default the result's first (:func:`metrics_of`)."""
    import pandas as pd

    metric = metric or metrics_of(ds)[0]
    se_img = image_se(ds, metric)
    if dim not in sweep_dims(ds):
        raise ValueError(f"compare: {dim!r} is not a swept dim of this result; its dims: {', '.join(sweep_dims(ds))}"
                         " (a zipped setting is compared along 'point')")
    known = [_value(v) for v in ds[dim].values]
    chosen = known if values is None else [_match(dim, v, known) for v in values]
    if len(chosen) < 2:
        raise ValueError(f"compare: {dim} needs two values to compare, got {chosen}")
    others = [d for d in sweep_dims(ds) if d != dim]
    labels = [n for n in point_labels(ds) if ds[n].dims != (dim,)]
    rows = []
    for pos in itertools.product(*(range(ds.sizes[d]) for d in others)):
        sub = ds.isel(dict(zip(others, pos)))
        n = int(sub["n_images"].values.max())
        base = {name: _value(sub[name].values) for name in labels}
        for a, b in itertools.combinations(chosen, 2):
            acc_a = sub[metric].isel({dim: known.index(a)}).values.astype(float)
            acc_b = sub[metric].isel({dim: known.index(b)}).values.astype(float)
            both = ~(np.isnan(acc_a) | np.isnan(acc_b))  # the chips run at both (adaptive trials)
            acc_a, acc_b = acc_a[both], acc_b[both]
            se_ab = [None, None] if se_img is None else [
                se_img.isel(dict(zip(others, pos))).isel({dim: known.index(v)}).values[both] for v in (a, b)]
            d = stats.paired_difference(acc_a, acc_b, n, *se_ab)
            rows.append({**base, "a": a, "b": b, **{k: float(v) for k, v in d.items()}, "trials": acc_a.size})
    return pd.DataFrame(rows)


def _match(dim: str, value, known: list):
    """The value of ``dim`` written ``value`` (text from the command line: ``8`` matches 8.0)."""
    for k in known:
        if str(k) == str(value) or _fmt(k) == str(value):
            return k
        try:
            if float(k) == float(value):
                return k
        except (TypeError, ValueError):
            pass
    raise ValueError(f"compare: {dim} has no value {value!r}; its values: {', '.join(_fmt(k) for k in known)}")


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
        total = stats.chips_run(per.sum("component", skipna=False).values)
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

    _check_metric(ds, metric)
    _require_energy(ds)
    dims = sweep_dims(ds)
    total = ds["energy_per_image"].sum("component", skipna=False)
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
    ax.set_ylabel(metric_label(ds, metric))
    ax.set_title(title or f"{ds.attrs.get('name', '')}: mean over {trials_text(ds)} chips, bars +-1 std")
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
    acc = stats.chips_run(acc)
    return float(np.mean(acc)), (float(np.std(acc, ddof=1)) / math.sqrt(acc.size) if acc.size > 1 else 0.0)


def layer_sensitivity(ds: xr.Dataset, metric: str = "top1"):
    """The layers ranked by the accuracy each costs, per point of the other sweep dims.

    ``only_analog``: ``cost = digital - mean`` (the accuracy lost when only this layer is
    analog). ``only_ideal``: ``cost = mean - mean[(none)]`` (the accuracy recovered when only this
    layer is ideal, vs the chip with every layer analog). ``cost_se`` is the Monte Carlo standard
    error (``std / sqrt(trials)``, combined in quadrature with the reference's for only_ideal);
    rank 1 costs the most. Also ``loss_vs_digital = digital - mean`` for both modes. For a loss
    metric (lower is better) the signs turn: the cost is what the loss rises by.
    """
    import pandas as pd

    mode = layer_sweep_mode(ds)
    if mode is None:
        raise ValueError(f"no layer sensitivity sweep in this result (no '{LAYER_DIM}' dim)")
    digital = float(ds[f"digital_{metric}"].values)
    sign = -1.0 if lower_is_better(ds) else 1.0  # a loss costs by rising
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
                cost, cost_se = sign * (mean - ref[0]), math.hypot(se, ref[1])
            else:
                cost, cost_se = sign * (digital - mean), se
            group.append({**base, "layer": name, "mean": mean, "se": se, "cost": cost, "cost_se": cost_se,
                          "loss_vs_digital": sign * (digital - mean), "digital": digital,
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
    ax.set_title(title or f"{ds.attrs.get('name', '')}: layer sensitivity ({mode}), {trials_text(ds)} chips")
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


def _mean_ci(line: xr.DataArray, ds: xr.Dataset, se_line: Optional[xr.DataArray] = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """The mean over trials and the half-widths below/above of its 95 % interval (both error
    sources; ``se_line``: a loss metric's image errors of the same chips), along the last remaining
    dim of ``line`` (trial last)."""
    acc = line.transpose(..., "trial").values.astype(float)
    n = int(ds["n_images"].values.max())
    if se_line is None:
        mean, lo, hi = _per_point(lambda a: stats.mean_interval(a, n, LEVEL), acc)
    else:
        se = se_line.transpose(..., "trial").values.astype(float)
        mean, lo, hi = _per_point(lambda a, e: stats.mean_interval(a, n, LEVEL, e), acc, se)
    return mean, np.stack([mean - lo, hi - mean])


def _legend_with_bands(ax, spread: str) -> None:
    """The legend, with two grey entries that say what the band and the bars are."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles, labels = ax.get_legend_handles_labels()
    handles += [Patch(color="grey", alpha=0.25, linewidth=0),
                Line2D([], [], color="grey", marker="|", linestyle="none", markersize=10)]
    labels += [f"band: chip spread ({spread})", f"bars: {100 * LEVEL:g} % CI of the mean (chips + images)"]
    ax.legend(handles, labels, fontsize="small")


def _setup_x(ds: xr.Dataset):
    """(xdim, xcoord, xs, order, numeric) of the x axis (:func:`x_axis`)."""
    xdim, xcoord = x_axis(ds)
    xv = ds[xcoord].values
    numeric = _numeric(xv)
    xs = xv.astype(float) if numeric else np.arange(len(xv))
    return xdim, xcoord, xs, np.argsort(xs, kind="stable"), numeric


def plot(ds: xr.Dataset, path: str, metric: str = "top1", band: str = "std", title: Optional[str] = None) -> str:
    """Accuracy vs the first numeric swept setting, one line per value of the other dims: the mean
    over trials with its 95 % interval (chips and images, :func:`mcsim.stats.mean_interval`) as
    error bars, the chip spread (+-1 std or 5-95 percentile) as a band, the digital accuracy dashed.
    Writes ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _check_metric(ds, metric)
    if layer_sweep_mode(ds) is not None:
        return plot_layer_sensitivity(ds, path, metric, title)
    acc, se_img = ds[metric], image_se(ds, metric)
    spread = "5-95 percentile" if band == "percentile" else "+-1 std"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if sweep_dims(ds):
        xdim, xcoord, xs, order, numeric = _setup_x(ds)
        others = [d for d in sweep_dims(ds) if d != xdim]
        for pos in itertools.product(*(range(ds.sizes[d]) for d in others)):
            sel = dict(zip(others, pos))
            line = acc.isel(sel)
            mean, err = _mean_ci(line, ds, None if se_img is None else se_img.isel(sel))
            mean, err = mean[order], err[:, order]
            if band == "percentile":
                lo, hi = line.quantile(0.05, "trial").values[order], line.quantile(0.95, "trial").values[order]
            else:
                std = line.std("trial", ddof=1).values[order] if ds.sizes["trial"] > 1 else 0 * mean
                lo, hi = mean - std, mean + std
            label = ", ".join(_label(ds, d, i) for d, i in sel.items()) or metric
            handle = ax.errorbar(xs[order], mean, yerr=err, marker="o", capsize=3, label=label)
            ax.fill_between(xs[order], lo, hi, color=handle.lines[0].get_color(), alpha=0.2, linewidth=0)
        if not numeric:
            ax.set_xticks(xs, [_fmt(v) for v in ds[xcoord].values])
        ax.set_xlabel(xcoord)
    else:  # a single point: the mean with its interval, the spread as a box
        mean, err = _mean_ci(acc, ds, se_img)
        std = float(acc.std(ddof=1)) if ds.sizes["trial"] > 1 else 0.0
        handle = ax.errorbar([0], [float(mean)], yerr=err.reshape(2, 1), fmt="o", capsize=4, label=metric)
        ax.fill_between([-0.2, 0.2], float(mean) - std, float(mean) + std, color=handle.lines[0].get_color(),
                        alpha=0.2, linewidth=0)
        ax.set_xlim(-1, 1)
        ax.set_xticks([])
        spread = "+-1 std"
    digital = float(ds[f"digital_{metric}"].values)
    shown = f"{digital:.3f}" if metric_info(ds) is None else f"{digital:.4g}"
    ax.axhline(digital, color="black", linestyle="--", linewidth=1, label=f"digital ({shown})")
    ax.set_ylabel(metric_label(ds, metric))
    ax.set_title(title or f"{ds.attrs.get('name', '')}: mean over {trials_text(ds)} chips, band {spread}, "
                 f"bars {100 * LEVEL:g} % CI")
    ax.grid(True, alpha=0.3)
    _legend_with_bands(ax, spread)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_yield(ds: xr.Dataset, path: str, delta: float, metric: str = "top1", title: Optional[str] = None) -> str:
    """The yield, the share of chips within ``delta`` (a fraction; a loss metric: its own units, at
    most ``delta`` above) of the digital value, with its 95 % Wilson interval as error bars, vs the
    first numeric swept setting, one line per value of the other dims
    (:func:`mcsim.stats.yield_interval`). Writes ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _check_metric(ds, metric)
    digital, lower = float(ds[f"digital_{metric}"].values), lower_is_better(ds)
    acc = ds[metric]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    dims = sweep_dims(ds)
    if dims:
        xdim, xcoord, xs, order, numeric = _setup_x(ds)
        others = [d for d in dims if d != xdim]
        for pos in itertools.product(*(range(ds.sizes[d]) for d in others)):
            sel = dict(zip(others, pos))
            y, lo, hi = _per_point(lambda a: stats.yield_interval(a, digital, delta, LEVEL, lower),
                                   acc.isel(sel).transpose(..., "trial").values)
            label = ", ".join(_label(ds, d, i) for d, i in sel.items()) or metric
            ax.errorbar(xs[order], y[order], yerr=np.stack([y - lo, hi - y])[:, order], marker="o", capsize=3,
                        label=label)
        if not numeric:
            ax.set_xticks(xs, [_fmt(v) for v in ds[xcoord].values])
        ax.set_xlabel(xcoord)
    else:
        y, lo, hi = map(float, stats.yield_interval(stats.chips_run(acc.values), digital, delta, LEVEL, lower))
        ax.errorbar([0], [y], yerr=[[y - lo], [hi - y]], fmt="o", capsize=4, label=metric)
        ax.set_xticks([])
    ax.set_ylim(-0.02, 1.02)
    if metric_info(ds) is None:
        ax.set_ylabel(f"yield: chips with {metric} >= {100 * digital:.2f} - {100 * delta:g} %")
        what = f"{100 * digital:.2f} %"
    else:
        ax.set_ylabel(f"yield: chips with {metric} {'<=' if lower else '>='} {digital:.4g} {'+' if lower else '-'} "
                      f"{delta:g}")
        what = f"{digital:.4g}"
    ax.set_title(title or f"{ds.attrs.get('name', '')}: yield over {trials_text(ds)} chips, bars "
                 f"{100 * LEVEL:g} % Wilson CI; digital {what}")
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
