"""Adaptive trials (docs/physics.md section 14): ``trials: {target_se, min, max}`` runs chips per point
until the mean's SE reaches the target. The stop rule is checked against the SE computed here by hand
(chip spread over T and the binomial image term), the numbers against a fixed-trials run of the same
chips, resume after SIGKILL against an uninterrupted run. Real runs on the digits data set."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from mcsim.api import open_result, run_scenario
from mcsim.report import summarize
from mcsim.runner.plan import make_plan
from mcsim.runner.store import adaptive_stop, inspect_store
from mcsim.scenario import ScenarioError, load_scenario, parse_scenario
from runner_support import BASE, kill_mid_run, ledger_count, merge, results_only, run_cli, write_scenario

MAX, MIN, TPT = 12, 4, 2
#: two points: no programming error (chips agree) and a large one (chips spread widely)
SMALL = {"sweep": {"grid": {"hardware.error.sigma": [0.0, 0.2]}}, "hardware": {"mapping": "offset", "adc": {"bits": 8}},
         "execution": {"shard_images": 100, "trials_per_task": TPT, "workers": 1}}
VARS = ["top1", "top5", "correct_top1", "correct_top5", "n_images", "energy_per_image"]


def se_by_hand(acc: np.ndarray, n_images: int) -> float:
    """sqrt(s**2 / T + p (1 - p) / N), written out."""
    t, p = acc.size, acc.mean()
    s2 = ((acc - p) ** 2).sum() / (t - 1)
    return math.sqrt(s2 / t + p * (1 - p) / n_images)


def stop_by_hand(acc: np.ndarray, n_images: int, target: float) -> int:
    """The chips a point runs: the first block end >= MIN whose SE is at most the target, else MAX."""
    for t1 in range(TPT, MAX + 1, TPT):
        if t1 >= MIN and se_by_hand(acc[:t1], n_images) <= target:
            return t1
    return MAX


def scenario_text(trials, **changes) -> str:
    data = merge(merge(BASE, SMALL), {"trials": trials, **changes})
    data["output"] = "out.zarr"
    return yaml.safe_dump(data, sort_keys=False)


# ---------------------------------------------------------------- the setting and the plan (no torch work)


def test_trials_is_a_number_or_the_adaptive_settings():
    fixed = parse_scenario(scenario_text(6))
    assert fixed.trials == 6 and fixed.max_trials == 6 and fixed.adaptive is None
    adaptive = parse_scenario(scenario_text({"target_se": 0.01, "min": 4, "max": 12}))
    assert adaptive.max_trials == 12 and adaptive.adaptive.target_se == 0.01
    assert parse_scenario(adaptive.text) == adaptive
    assert adaptive.fingerprint != parse_scenario(scenario_text(12)).fingerprint  # the trials change results
    for bad, message in (({"target_se": 0.01, "min": 8, "max": 4}, "max: 4 is below min 8"),
                         ({"target_se": 0, "max": 4}, "target_se"),
                         ({"target_se": 0.01, "min": 1, "max": 4}, "min"),
                         ({"target_se": 0.01}, "max"),
                         ({"target_se": 0.01, "max": 4, "rounds": 2}, "rounds"),
                         (0, "^<string>: trials: give at least 1 trial")):
        with pytest.raises(ScenarioError, match=message):
            parse_scenario(scenario_text(bad))


def test_the_plan_says_what_is_known_before_the_run():
    sc = parse_scenario(scenario_text({"target_se": 0.01, "min": 5, "max": 12}))
    plan = make_plan(sc, 200)
    assert plan.trials == 12 and plan.trials_per_task == TPT and plan.min_blocks == 3
    text = "\n".join(plan.describe())
    assert "adaptive, 6 to 12 chips until the mean's SE <= 0.01" in text
    assert "round 1 runs 3 block(s) of up to 2, then up to 3 more round(s)" in text
    assert "checked per block of 2 chips" in text
    assert "12 to 24 (2 points x 6 trial blocks x 2 shards) evaluation" in text
    assert "image term" in text  # 0.01 < 0.5 / sqrt(200): the note on the SE's floor


def test_stop_rule_on_a_synthetic_ledger():
    """adaptive_stop against the rule computed by hand, on counts of a known spread."""
    rng = np.random.default_rng(0)
    n_shards, shard = 2, 100
    correct = rng.integers(50, 100, size=(3, MAX, n_shards)).astype(np.int32)
    correct[0] = 90  # chips that agree: only the image term, 0.9 * 0.1 / 200
    done = np.ones((3, MAX // TPT, n_shards), bool)
    done[2, 3:, :] = False  # the third point has run 6 chips
    done[2, 2, 1] = False  # ... and block 2 is missing a shard: 4 chips run
    images = np.full(n_shards, shard, np.int32)
    target = 0.025
    chips, ended = adaptive_stop(correct, done, images, TPT, {"target_se": target, "min": MIN, "max": MAX})
    acc = correct.sum(-1) / (n_shards * shard)
    assert chips[0] == MIN and ended[0]
    assert (chips[1], ended[1]) == (stop_by_hand(acc[1], 200, target), True)
    expect = stop_by_hand(acc[2][:4], 200, target)
    assert (chips[2], ended[2]) == ((4, True) if expect == 4 else (4, False))
    fixed = adaptive_stop(correct, done, images, TPT, None)
    assert fixed[0].tolist() == [MAX, MAX, 4] and fixed[1].tolist() == [True, True, False]


# ---------------------------------------------------------------- runs


def pick_target(acc: np.ndarray, n_images: int) -> float:
    """A target that stops the widest point after ``MIN`` chips and before ``MAX``: half way between its
    SE at a block end and the lowest SE of its earlier checks, where the first is the lower."""
    widest = int(np.argmax([se_by_hand(a[:MIN], n_images) for a in acc]))
    ses = [se_by_hand(acc[widest][:t1], n_images) for t1 in range(MIN, MAX, TPT)]
    for j in range(1, len(ses)):
        if ses[j] < min(ses[:j]):
            return (ses[j] + min(ses[:j])) / 2
    pytest.skip(f"the widest point's SE never falls below its first check: {ses}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A fixed run of MAX chips, and the adaptive run with a target picked from it."""
    d = tmp_path_factory.mktemp("adaptive")
    fixed_path = write_scenario(d, "fixed.yaml", output=d / "fixed.zarr", trials=MAX, **SMALL)
    fixed = run_scenario(fixed_path, progress=False)
    acc = fixed["top1"].values.reshape(-1, MAX)
    target = pick_target(acc, 200)
    trials = {"target_se": target, "min": MIN, "max": MAX}
    path = write_scenario(d, "adaptive.yaml", output=d / "adaptive.zarr", trials=trials, **SMALL)
    return fixed, run_scenario(path, progress=False), target, path


@pytest.mark.slow
def test_each_point_stops_at_the_first_block_within_the_target(runs):
    fixed, ds, target, path = runs
    assert inspect_store(str(load_scenario(path).output)).attrs["state"] == "complete"
    assert ds.sizes["trial"] == MAX and bool(ds["complete"].all())
    n_trials = ds["n_trials"].values.ravel()
    acc = fixed["top1"].values.reshape(-1, MAX)
    assert n_trials.tolist() == [stop_by_hand(a, 200, target) for a in acc]
    assert MIN < n_trials.max() < MAX  # the target was picked so that one point goes on, then stops
    for point, n in zip(ds["top1"].values.reshape(-1, MAX), n_trials):
        assert np.isfinite(point[:n]).all() and np.isnan(point[n:]).all()  # the chips never run are NaN
        assert se_by_hand(point[:n], 200) <= target or n == MAX
        if n - TPT >= MIN:
            assert se_by_hand(point[:n - TPT], 200) > target  # within one block of the target
    # the report sees the chips run only
    table = summarize(ds, metrics=("top1",))
    assert table["trials"].tolist() == n_trials.tolist()
    assert np.allclose(table["mean"], [a[:n].mean() for a, n in zip(acc, n_trials)], rtol=0, atol=1e-15)


@pytest.mark.slow
def test_identical_to_the_fixed_run_over_the_chips_it_ran(runs):
    """Chip t is keyed by t alone: a point's chips are the fixed run's first n_trials chips, bit for bit."""
    fixed, ds, _, _ = runs
    for i, pos in enumerate(np.ndindex(ds["n_trials"].shape)):
        n = int(ds["n_trials"].values[pos])
        at = dict(zip(ds["n_trials"].dims, pos))
        for var in VARS:
            np.testing.assert_array_equal(ds[var].isel(at).isel(trial=slice(0, n)).values,
                                          fixed[var].isel(at).isel(trial=slice(0, n)).values, err_msg=var)
    for var in ("digital_top1", "digital_top5", "x_range", "adc_lo", "adc_hi"):
        xr.testing.assert_identical(ds[var], fixed[var])


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_result(runs, tmp_path):
    _, reference, target, _ = runs
    trials = {"target_se": target, "min": MIN, "max": MAX}
    changes = merge(SMALL, {"execution": {"shard_images": 50}})  # 4 shards: more tasks to catch
    scenario = write_scenario(tmp_path, trials=trials, **changes)
    store = tmp_path / "out.zarr"
    kill_mid_run(scenario, store)
    done, total = ledger_count(store)
    assert total == 2 * (MAX // TPT) * 4 and 0 < done, f"the run was not caught ({done}/{total})"
    with pytest.raises(Exception, match="not finished"):
        open_result(store)
    dry = run_cli("run", str(scenario), "--dry-run")
    assert dry.returncode == 0 and f"resume: {done} of up to {total} evaluation tasks done" in dry.stdout + dry.stderr
    second = run_cli("run", str(scenario), "--quiet")
    assert second.returncode == 0, second.stderr
    ds = open_result(store)
    xr.testing.assert_identical(results_only(ds), results_only(reference))
    xr.testing.assert_identical(ds[["n_trials", "complete"]].drop_attrs(), reference[["n_trials", "complete"]].drop_attrs())
    third = run_cli("run", str(scenario))
    assert third.returncode == 0 and "already complete" in third.stderr


@pytest.mark.slow
def test_plots_draw_the_chips_run(runs, tmp_path):
    from mcsim.report import _mean_ci, plot, plot_yield

    _, ds, _, _ = runs
    mean, _ = _mean_ci(ds["top1"], ds)
    acc, n = ds["top1"].values.reshape(-1, MAX), ds["n_trials"].values.ravel()
    np.testing.assert_allclose(mean.ravel(), [a[:k].mean() for a, k in zip(acc, n)], rtol=0, atol=1e-15)
    assert Path(plot(ds, str(tmp_path / "a.png"))).exists()
    assert Path(plot_yield(ds, str(tmp_path / "y.png"), 0.05)).exists()
