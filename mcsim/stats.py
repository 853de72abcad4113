"""Statistics that decide between designs (docs/physics.md section 14): pure functions of arrays.

A sweep point is evaluated on ``T`` chips (trials), all on the same ``N`` images. Its mean accuracy
``p`` has two error sources: the chip-to-chip spread (std ``s`` over the chips) and the finite image
set (binomial, which averaging over chips does not reduce):

    SE = sqrt(s**2 / T + p (1 - p) / N)                                  (:func:`se_mean`)

The spread itself is described distribution-free: the ``q``-quantile chip (e.g. the worst 1 %)
with an order-statistic interval (:func:`quantile_interval`), and the yield, the share of chips
within ``delta`` of the digital accuracy, with a Wilson interval (:func:`yield_interval`). Both
describe the chips on this image set (the image error is the mean's, not theirs).

A metric other than accuracy (mse, perplexity, a user's) is a function ``f`` of a chip's mean
loss ``m = sum_i L_i / sum_i c_i`` over the images ``i`` (``L_i`` the image's summed loss, ``c_i``
its elements or tokens); a chip keeps the five sums :data:`MOMENTS`, which add over shards
exactly as counts do. Its finite-image error is the ratio estimator's,
``Var(m) = N sum_i (L_i - m c_i)**2 / ((N - 1) (sum_i c_i)**2)``, carried through ``f``
(:func:`metric_values`), and takes the binomial term's place in the SE of the mean.

With common random numbers (``execution.chips: common``) chip ``t`` is the same manufactured chip
at every point, so a difference between two points is estimated per chip
(:func:`paired_difference`): ``SE_diff = std_t(a_t - b_t) / sqrt(T)``, against the unpaired
``sqrt(SE_a**2 + SE_b**2)``.

:class:`PointStat`, :class:`Margin` and :class:`Threshold` (with :func:`bracket`) are the records
docs/findings.md is written from: a point's mean and SE, the margin between two points, and where
along a swept axis the accuracy stops being tolerated, as a bracket.

Nothing here imports the rest of mcsim. Accuracies are fractions in [0, 1]; functions that take
per-chip accuracies reduce over the last axis, so many points (or simulated repetitions) go at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Optional, Sequence

import numpy as np

__all__ = [
    "MOMENTS",
    "Margin",
    "PointStat",
    "Threshold",
    "bracket",
    "chip_spread",
    "chips_run",
    "mean_interval",
    "metric_values",
    "moment_sums",
    "paired_difference",
    "point_stat",
    "quantile_interval",
    "se_binom",
    "se_mean",
    "wilson_interval",
    "yield_interval",
    "z_value",
]


#: The per-chip sums a loss metric keeps: of ``L_i``, ``c_i``, ``L_i**2``, ``L_i c_i`` and ``c_i**2``.
MOMENTS = ("loss", "count", "loss_sq", "loss_count", "count_sq")


def moment_sums(loss, count) -> np.ndarray:
    """The :data:`MOMENTS` ``(..., 5)`` of per-image losses ``loss (..., B)`` and counts ``count (B,)``
    (float64; each sum over the last axis, so a chip's sums do not depend on the other chips)."""
    loss = np.asarray(loss, dtype=np.float64)
    count = np.broadcast_to(np.asarray(count, dtype=np.float64), loss.shape)
    return np.stack([loss.sum(-1), count.sum(-1), (loss * loss).sum(-1), (loss * count).sum(-1),
                     (count * count).sum(-1)], axis=-1)


def metric_values(moments, n_images, transform: str = "identity"):
    """``(value, se_image)`` of each chip from its :data:`MOMENTS` ``(..., 5)`` over ``n_images``
    images: ``value = f(m)``, ``m = sum L / sum c``, and the finite-image error
    ``|f'(m)| sqrt(N sum (L_i - m c_i)**2 / ((N - 1) (sum c)**2))``; ``f`` is ``identity`` (mse, a
    factory metric) or ``exp`` (perplexity). NaN where no image is counted (SE: fewer than two)."""
    if transform not in ("identity", "exp"):
        raise ValueError(f"transform: {transform!r} is not 'identity' or 'exp'")
    mo = np.asarray(moments, dtype=np.float64)
    loss, count, loss_sq, loss_count, count_sq = np.moveaxis(mo, -1, 0)
    n = np.asarray(n_images, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(count > 0, loss / count, np.nan)
        resid = np.clip(loss_sq - 2 * m * loss_count + m * m * count_sq, 0.0, None)
        var = np.where(n > 1, n * resid / ((n - 1) * count**2), np.nan)
        value = np.exp(m) if transform == "exp" else m
        slope = value if transform == "exp" else 1.0
        return value, np.abs(slope) * np.sqrt(var)


def z_value(level: float = 0.95) -> float:
    """The two-sided normal quantile of a ``level`` interval (1.96 for 0.95)."""
    if not 0 < level < 1:
        raise ValueError(f"level: {level!r} is not in (0, 1); give e.g. 0.95")
    return NormalDist().inv_cdf(0.5 + level / 2)


def chips_run(values) -> np.ndarray:
    """One point's per-chip values without the chips never run (NaN): with adaptive trials a point
    stops early and the store's later chips are NaN (docs/physics.md section 14)."""
    values = np.asarray(values, dtype=float).ravel()
    return values[~np.isnan(values)]


def se_binom(p, n_images):
    """The finite-image error of an accuracy ``p`` measured on ``n_images``: ``sqrt(p (1 - p) / N)``."""
    p = np.asarray(p, dtype=float)
    return np.sqrt(np.clip(p * (1 - p), 0.0, None) / n_images)


def chip_spread(acc) -> np.ndarray:
    """The std over chips (last axis, ``ddof=1``; 0 for a single chip)."""
    acc = np.asarray(acc, dtype=float)
    return np.std(acc, axis=-1, ddof=1) if acc.shape[-1] > 1 else np.zeros(acc.shape[:-1])


def se_mean(acc, n_images, se_image=None):
    """The standard error of the mean accuracy over chips (last axis) with both error sources:
    ``sqrt(s_chips**2 / T + p (1 - p) / N_images)``. For another metric ``se_image`` gives each
    chip's finite-image error (:func:`metric_values`, same shape as ``acc``); the mean of their
    squares replaces the binomial term."""
    acc = np.asarray(acc, dtype=float)
    t = acc.shape[-1]
    image = (se_binom(acc.mean(axis=-1), n_images) ** 2 if se_image is None
             else np.mean(np.asarray(se_image, dtype=float) ** 2, axis=-1))
    return np.sqrt(chip_spread(acc) ** 2 / t + image)


def mean_interval(acc, n_images, level: float = 0.95, se_image=None):
    """``(mean, lo, hi)``: the mean over chips (last axis) and its normal ``level`` interval
    ``mean +- z SE`` (:func:`se_mean`), clipped to [0, 1] for an accuracy (``se_image`` None)."""
    acc = np.asarray(acc, dtype=float)
    mean, half = acc.mean(axis=-1), z_value(level) * se_mean(acc, n_images, se_image)
    if se_image is not None:
        return mean, mean - half, mean + half
    return mean, np.clip(mean - half, 0.0, 1.0), np.clip(mean + half, 0.0, 1.0)


def _order_ranks(n: int, q: float, level: float) -> tuple[Optional[int], Optional[int]]:
    """1-based ranks ``(l, u)`` with ``P(x_(l) <= xi_q) >= 1 - a/2`` and ``P(x_(u) >= xi_q) >= 1 - a/2``
    (``a = 1 - level``), the tightest such; None where no order statistic of ``n`` is one."""
    from scipy.stats import binom

    alpha = 1 - level
    cdf = binom.cdf(np.arange(n + 1), n, q)  # cdf[k] = P(B <= k), B = #{x_i <= xi_q} ~ Bin(n, q)
    # x_(j) <= xi_q  <=>  B >= j, so P(x_(j) > xi_q) = cdf[j - 1]
    lows = [j for j in range(1, n + 1) if cdf[j - 1] <= alpha / 2]
    highs = [j for j in range(1, n + 1) if cdf[j - 1] >= 1 - alpha / 2]
    return (lows[-1] if lows else None), (highs[0] if highs else None)


def quantile_interval(x, q: float, level: float = 0.95):
    """``(estimate, lo, hi)`` for the ``q``-quantile of the chips' distribution (last axis of ``x``):
    the sample quantile and the distribution-free order-statistic interval ``[x_(l), x_(u)]``,
    whose ranks come from ``#{x_i <= xi_q} ~ Binomial(T, q)`` (coverage >= ``level`` for any
    continuous distribution). An end no order statistic of ``T`` chips can give is infinite
    (e.g. ``lo = -inf`` for the worst 1 % of fewer than 367 chips at 95 %: ``0.99**T > 0.025``)."""
    if not 0 < q < 1:
        raise ValueError(f"quantile: {q!r} is not in (0, 1); give e.g. 0.01 for the worst 1 % of chips")
    x = np.sort(np.asarray(x, dtype=float), axis=-1)
    n = x.shape[-1]
    lo_rank, hi_rank = _order_ranks(n, q, level)
    lo = x[..., lo_rank - 1] if lo_rank else np.full(x.shape[:-1], -np.inf)
    hi = x[..., hi_rank - 1] if hi_rank else np.full(x.shape[:-1], np.inf)
    return np.quantile(x, q, axis=-1), lo, hi


def wilson_interval(k, n, level: float = 0.95):
    """``(share, lo, hi)``: the share ``k / n`` of successes and its Wilson score interval."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    z = z_value(level)
    p = k / n
    center = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return p, np.clip(center - half, 0.0, 1.0), np.clip(center + half, 0.0, 1.0)


def yield_interval(acc, digital, delta: float, level: float = 0.95, lower_is_better: bool = False):
    """``(yield, lo, hi)``: the share of chips (last axis of ``acc``) whose accuracy is within
    ``delta`` (a fraction: 0.01 is one accuracy point) of ``digital``, i.e. ``acc >= digital - delta``,
    with its Wilson interval. ``lower_is_better`` (a loss, in its own units): ``acc <= digital + delta``."""
    if delta < 0:
        raise ValueError(f"yield delta: {delta!r} is negative; give the accuracy a chip may lose, e.g. 0.01")
    acc = np.asarray(acc, dtype=float)
    digital = np.asarray(digital, dtype=float)[..., None]
    good = (acc <= digital + delta + 1e-12 if lower_is_better else acc >= digital - delta - 1e-12).sum(axis=-1)
    return wilson_interval(good, acc.shape[-1], level)


def paired_difference(a, b, n_images: int, se_image_a=None, se_image_b=None) -> dict:
    """The difference ``mean(a) - mean(b)`` of two points measured on the same chips (last axis:
    chip ``t`` the same manufactured chip in ``a`` and ``b``) and the same images.

    ``se_paired = std_t(a_t - b_t) / sqrt(T)``: the shared images cancel in each chip's difference,
    and with common chips so does most of the chip's own deviation. Beside it what independent
    chips would give: ``se_unpaired = sqrt(SE_a**2 + SE_b**2)`` (each with both error sources,
    :func:`se_mean`) and its chip part alone, ``se_unpaired_chips = sqrt((s_a**2 + s_b**2) / T)``.
    ``reduction = se_unpaired_chips**2 / se_paired**2``: the variance common chips remove (about 1
    for chips drawn per point; NaN where neither point varies between chips). ``se_image_a``/``_b``:
    the chips' finite-image errors of a metric other than accuracy (:func:`se_mean`).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired difference: the points have {a.shape[-1]} and {b.shape[-1]} chips; "
                         "pairing needs the same chips at both")
    t = a.shape[-1]
    se_paired = chip_spread(a - b) / math.sqrt(t)
    chips = np.sqrt((chip_spread(a) ** 2 + chip_spread(b) ** 2) / t)
    tiny = 1e-12  # below it a spread is rounding: identical chips' results
    with np.errstate(divide="ignore", invalid="ignore"):
        reduction = np.where(chips > tiny, chips**2 / np.where(se_paired > tiny, se_paired, 0.0) ** 2, np.nan)
    return {"diff": a.mean(axis=-1) - b.mean(axis=-1), "se_paired": se_paired,
            "se_unpaired": np.hypot(se_mean(a, n_images, se_image_a), se_mean(b, n_images, se_image_b)), "se_unpaired_chips": chips,
            "reduction": reduction}


# --------------------------------------------------------------------------------------
# the records docs/findings.md is written from


@dataclass(frozen=True)
class PointStat:
    """Top-1 accuracy of one sweep point over its chips: mean, chip-to-chip std (``ddof=1``; 0 for
    one chip), the number of chips and of images; for a loss metric ``se_image``, the root mean
    square of the chips' image errors (:func:`metric_values`), in place of the binomial term."""

    mean: float
    std: float
    trials: int
    n_images: int
    se_image: Optional[float] = None

    @property
    def se_binom(self) -> float:
        """The image term: binomial for an accuracy, ``se_image`` for a loss metric."""
        return float(se_binom(self.mean, self.n_images)) if self.se_image is None else self.se_image

    @property
    def se(self) -> float:
        """The SE of the mean with both error sources (:func:`se_mean`)."""
        return math.sqrt(self.std**2 / self.trials + self.se_binom**2)

    def fmt(self) -> str:
        if self.trials > 1:
            return f"{100 * self.mean:.1f} ± {100 * self.std:.1f}"
        return f"{100 * self.mean:.1f}"


def point_stat(acc, n_images: int, se_image=None) -> PointStat:
    """The :class:`PointStat` of per-chip accuracies ``acc`` (a loss metric: per-chip values and
    their image errors ``se_image``)."""
    acc = np.asarray(acc, dtype=float).ravel()
    image = None if se_image is None else float(np.sqrt(np.mean(np.asarray(se_image, dtype=float) ** 2)))
    return PointStat(float(acc.mean()), float(chip_spread(acc)), int(acc.size), int(n_images), image)


@dataclass(frozen=True)
class Margin:
    """``a - b`` between two points, with the unpaired SE ``sqrt(SE_a**2 + SE_b**2)`` (conservative
    for points on the same images) and ``z = value / se``."""

    a: PointStat
    b: PointStat

    @property
    def value(self) -> float:
        return self.a.mean - self.b.mean

    @property
    def se(self) -> float:
        return math.sqrt(self.a.se**2 + self.b.se**2)

    @property
    def z(self) -> float:
        return self.value / self.se if self.se > 0 else math.inf * np.sign(self.value)

    def fmt(self) -> str:
        return f"{100 * self.value:+.1f} ± {100 * self.se:.1f} pts (z = {self.z:.1f})"


@dataclass(frozen=True)
class Threshold:
    """Where along a swept axis the accuracy stops being within a tolerance of the digital model,
    with its Monte Carlo uncertainty (:func:`bracket`). ``ok`` is the last value of the unbroken run,
    from the benign end, whose mean is above the floor by more than 2 SE (clearly tolerated), and
    ``fail`` the first value whose mean is below it by more than 2 SE (clearly not); values in
    between are undecided at this many chips and images. The threshold lies between ``ok`` and
    ``fail``: a bracket, not a number. ``None`` for ``ok``: not even the first value is clearly
    tolerated; ``None`` for ``fail``: no value clearly fails."""

    ok: object
    fail: object
    axis_values: tuple
    direction: str  # "up": larger values are worse (sigma, rp); "down": smaller are worse (bits)

    def interval(self) -> tuple[float, float]:
        """The range the threshold can lie in: from ``ok`` to ``fail``, open-ended where either is
        missing."""
        if self.direction == "up":
            return (-math.inf if self.ok is None else self.ok, math.inf if self.fail is None else self.fail)
        return (-math.inf if self.fail is None else self.fail, math.inf if self.ok is None else self.ok)

    def overlaps(self, other: "Threshold") -> bool:
        (a, b), (c, d) = self.interval(), other.interval()
        return a <= d and c <= b

    def short(self) -> str:
        """``0.01–0.03``: the bracket as a range of the axis (the threshold lies in it)."""
        if self.ok is None and self.fail is None:
            return "undecided"
        if self.ok is None:
            return f"< {self.fail:g}" if self.direction == "up" else f"> {self.fail:g}"
        if self.fail is None:
            return f"≥ {self.ok:g}" if self.direction == "up" else f"≤ {self.ok:g}"
        return f"{self.ok:g}–{self.fail:g}"


def bracket(points: Sequence[tuple[object, PointStat]], floor: float, direction: str = "up",
            k: float = 2.0) -> Threshold:
    """The :class:`Threshold` of ``points``, ``(axis value, stat)`` pairs, against ``floor`` (e.g.
    the digital accuracy minus a tolerance): walking the values from the benign end (ascending for
    ``direction="up"``, descending for ``"down"``), ``ok`` is the last of the unbroken run with
    ``mean - floor > k SE`` and ``fail`` the first with ``floor - mean > k SE``."""
    if direction not in ("up", "down"):
        raise ValueError(f"direction: {direction!r} is not 'up' (larger is worse) or 'down' (smaller is worse)")
    order = sorted(points, key=lambda vs: vs[0], reverse=direction == "down")
    ok, fail, unbroken = None, None, True
    for v, st in order:
        if unbroken and st.mean - floor > k * st.se:
            ok = v
        else:
            unbroken = False
        if fail is None and floor - st.mean > k * st.se:
            fail = v
    return Threshold(ok, fail, tuple(v for v, _ in order), direction)
