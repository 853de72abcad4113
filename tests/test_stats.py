"""mcsim.stats against known truth: closed forms, and the coverage of its 95 % intervals on a
synthetic workload where the truth is known (docs/physics.md section 14).

The workload: image ``i`` has a difficulty ``u_i ~ U(0, 1)``, chip ``t`` an accuracy
``p_t ~ Beta(a, b)``, and chip ``t`` classifies image ``i`` correctly iff ``u_i < p_t``. So chip
``t``'s accuracy over all images is ``p_t``, every chip sees the same ``N`` images (their error is
shared, as in a run), and its measured accuracy is ``F_N(p_t)`` (``F_N`` the images' empirical
distribution). Truths: the mean accuracy ``a / (a + b)`` (over chips and images); given the images,
the ``q``-quantile of the measured accuracies ``F_N(Beta.ppf(q))`` and the yield
``P(F_N(p) >= c) = 1 - Beta.cdf(u_(ceil(c N)))``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta as beta_dist
from scipy.stats import binom

from mcsim import stats

REPS, N_IMAGES = 1000, 10_000
A, B = 360.0, 40.0  # chips: mean accuracy 0.9, std 0.015


def workload(chips: int, seed: int):
    """``(u, acc)``: the sorted image difficulties ``(REPS, N)`` and measured accuracies ``(REPS, chips)``."""
    rng = np.random.default_rng(seed)
    u = np.sort(rng.random((REPS, N_IMAGES)), axis=1)
    p = rng.beta(A, B, (REPS, chips))
    acc = np.stack([np.searchsorted(u[r], p[r]) for r in range(REPS)]) / N_IMAGES
    return u, acc


def coverage(truth, lo, hi) -> float:
    return float(np.mean((lo <= truth) & (truth <= hi)))


def test_mean_interval_covers_the_true_accuracy():
    _, acc = workload(50, seed=1)
    _, lo, hi = stats.mean_interval(acc, N_IMAGES)
    assert 0.93 <= coverage(A / (A + B), lo, hi) <= 0.97


def test_the_image_term_is_needed():
    """Without the finite-image term the interval covers far less than 95 % (75 % here): the images' error is
    shared by all chips and does not shrink with T."""
    _, acc = workload(50, seed=1)
    mean = acc.mean(axis=-1)
    half = 1.96 * stats.chip_spread(acc) / math.sqrt(50)
    assert coverage(A / (A + B), mean - half, mean + half) < 0.85


def test_quantile_interval_covers_the_chips_quantile():
    u, acc = workload(100, seed=2)
    q = 0.1
    truth = np.array([np.searchsorted(row, beta_dist.ppf(q, A, B)) for row in u]) / N_IMAGES
    _, lo, hi = stats.quantile_interval(acc, q)
    assert 0.93 <= coverage(truth, lo, hi) <= 0.97


def test_yield_interval_covers_the_share_of_good_chips():
    u, acc = workload(100, seed=3)
    digital, delta = 0.91, 0.02
    k = math.ceil((digital - delta) * N_IMAGES - 1e-9)  # F_N(p) >= c  <=>  p > u_(k)
    truth = 1 - beta_dist.cdf(u[:, k - 1], A, B)
    _, lo, hi = stats.yield_interval(acc, np.full(REPS, digital), delta)
    assert 0.93 <= coverage(truth, lo, hi) <= 0.97


@pytest.mark.parametrize("n", [10, 37, 100, 500])
@pytest.mark.parametrize("q", [0.01, 0.1, 0.5, 0.9])
def test_order_statistic_ranks_hold_their_level_exactly(n, q):
    """The interval's coverage for a continuous distribution is ``P(l <= B < u)``, B ~ Bin(n, q):
    at least 95 %, and each end at least 97.5 %."""
    lo, hi = stats._order_ranks(n, q, 0.95)
    below = binom.cdf(lo - 1, n, q) if lo else 0.0  # P(x_(l) > xi_q)
    above = 1 - binom.cdf(hi - 1, n, q) if hi else 0.0  # P(x_(u) < xi_q)
    assert below <= 0.025 + 1e-12 and above <= 0.025 + 1e-12
    if lo and lo < n:  # the next rank up would break the level: the tightest
        assert binom.cdf(lo, n, q) > 0.025


def test_open_ends():
    """The worst 1 % of 50 chips has no order-statistic lower bound at 95 %."""
    x = np.linspace(0.8, 0.9, 50)
    est, lo, hi = stats.quantile_interval(x, 0.01)
    assert lo == -np.inf and x[0] <= hi <= x[-1] and x[0] <= est <= x[1]


def test_closed_forms():
    assert stats.z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    p, lo, hi = stats.wilson_interval(8, 10)  # Wilson (1927); Newcombe (1998) Table I: 0.4902-0.9433
    assert (p, round(float(lo), 4), round(float(hi), 4)) == (0.8, 0.4902, 0.9433)
    _, lo, hi = stats.wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    acc = np.array([0.90, 0.92, 0.94])
    se = math.sqrt(0.02**2 / 3 + 0.92 * 0.08 / 500)
    assert stats.se_mean(acc, 500) == pytest.approx(se)
    m, lo, hi = stats.mean_interval(acc, 500)
    assert (m, hi - m) == (pytest.approx(0.92), pytest.approx(1.959964 * se, rel=1e-6))
    y, _, _ = stats.yield_interval(acc, 0.93, 0.01)  # within 1 point of 0.93: 0.92 and 0.94
    assert y == pytest.approx(2 / 3)


def test_paired_difference():
    rng = np.random.default_rng(0)
    chip = rng.normal(0.9, 0.02, 200)
    a, b = chip, chip - 0.01 + rng.normal(0, 0.001, 200)  # the same chips, a small change
    d = stats.paired_difference(a, b, n_images=10**9)
    assert d["diff"] == pytest.approx(0.01, abs=3e-4)
    assert d["se_paired"] == pytest.approx(0.001 / math.sqrt(200), rel=0.15)
    assert d["se_unpaired"] == pytest.approx(0.02 * math.sqrt(2 / 200), rel=0.15)
    assert d["se_unpaired_chips"] == pytest.approx(d["se_unpaired"], rel=1e-4)  # images: n = 1e9
    assert d["reduction"] > 300
    independent = stats.paired_difference(a, rng.normal(0.89, 0.02, 200), n_images=10**9)
    assert 0.7 < independent["reduction"] < 1.4
    assert math.isnan(stats.paired_difference(np.ones(5), np.ones(5), 100)["reduction"])  # no chip varies
    with pytest.raises(ValueError, match="same chips"):
        stats.paired_difference(a, a[:10], 100)


def test_bracket():
    floor = 0.88
    st = lambda m: stats.PointStat(m, 0.0, 10, 10_000)  # se = sqrt(m (1 - m) / 1e4) ~ 0.003
    pts = [(0.0, st(0.92)), (0.1, st(0.90)), (0.2, st(0.881)), (0.3, st(0.86)), (0.4, st(0.89))]
    t = stats.bracket(pts, floor, "up")
    assert (t.ok, t.fail, t.short()) == (0.1, 0.3, "0.1–0.3")
    bits = [(8, st(0.92)), (4, st(0.85)), (6, st(0.90))]
    t = stats.bracket(bits, floor, "down")
    assert (t.ok, t.fail, t.axis_values, t.short()) == (6, 4, (8, 6, 4), "6–4")
    assert stats.bracket([(1, st(0.5))], floor).short() == "< 1"
    assert stats.bracket([(1, st(0.95))], floor).short() == "≥ 1"
    assert stats.bracket([(0.2, st(0.95))], floor).overlaps(stats.bracket(pts, floor))
    assert not stats.bracket([(1, st(0.95))], floor).overlaps(stats.bracket(pts, floor))
