"""Common random numbers (``execution.chips: common``, docs/physics.md section 14): chip ``t`` is the
same manufactured chip at every sweep point, so a difference between points is paired chip by chip."""
from __future__ import annotations

import pytest
import torch
from runner_support import write_scenario

from mcsim import Hardware, convert
from mcsim.api import open_result, run_scenario
from mcsim.report import chips_common, compare
from mcsim.runner.plan import make_plan, point_seed
from mcsim.scenario import load_scenario, scenario_fingerprint


def _plan(tmp_path, chips):
    sc = load_scenario(write_scenario(tmp_path, f"{chips}.yaml", sweep={"grid": {"hardware.error.sigma": [0.05, 0.1]}},
                                      execution={"chips": chips}))
    return sc, make_plan(sc, 200)


def _deviation(seed: int, sigma: float) -> torch.Tensor:
    """Programmed minus exact weights of 3 chips of a 6 x 4 layer: its outputs on the unit inputs,
    ideal converters, proportional programming error ``sigma`` (unclipped)."""
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(6, 4, bias=False))
    hw = Hardware(mapping="differential", weight_bits=None, input_bits=None, adc={"bits": None},
                  error={"model": "proportional", "sigma": sigma, "clip": False})
    analog = convert(layer, hw, trials=3, seed=seed, device="cpu")
    eye = torch.eye(6)
    analog.calibrate([eye])
    with torch.no_grad():
        return analog(eye, image_ids=torch.arange(6)) - layer(eye)


def test_chip_t_draws_the_same_normals_at_every_point(tmp_path):
    """With common chips both points get one engine seed, and a layer's programming errors at
    sigma 0.1 are exactly twice those at 0.05 (the same normals, state-proportional error); with
    per-point chips they are other draws."""
    sc, plan = _plan(tmp_path, "common")
    seeds = {t.point: t.seed for t in plan.eval_tasks()}
    assert seeds[0] == seeds[1] == point_seed(sc.seed, -1)
    assert {t.seed for t in plan.calibration_tasks()} == {seeds[0]}
    small, large = _deviation(seeds[0], 0.05), _deviation(seeds[1], 0.1)
    assert small.abs().max() > 1e-3
    torch.testing.assert_close(large, 2 * small, rtol=1e-4, atol=1e-6)
    _, own = _plan(tmp_path, "per_point")
    seeds = {t.point: t.seed for t in own.eval_tasks()}
    assert seeds == {0: point_seed(sc.seed, 0), 1: point_seed(sc.seed, 1)}
    assert not torch.allclose(_deviation(seeds[1], 0.1), 2 * _deviation(seeds[0], 0.05), rtol=0.1)


def test_the_fingerprint_holds_common_chips_only(tmp_path):
    """A store written before the setting (chips keyed per point) keeps its fingerprint under
    ``per_point`` and is refused under the default ``common``."""
    common, _ = _plan(tmp_path, "common")
    per_point, _ = _plan(tmp_path, "per_point")
    assert common.execution.chips == "common" and "chips: common" in common.text
    data = {k: v for k, v in per_point.canonical().items() if k not in ("execution", "output", "per_image", "metric")}
    import hashlib

    from mcsim.validation import canonical_json
    assert scenario_fingerprint(per_point) == hashlib.sha256(canonical_json(data).encode()).hexdigest()
    assert scenario_fingerprint(common) != scenario_fingerprint(per_point)


@pytest.fixture(scope="module")
def close_points(tmp_path_factory):
    """The tiny study's offset chips at two close error levels, common chips and per-point chips."""
    d = tmp_path_factory.mktemp("crn")
    out = {}
    for chips in ("common", "per_point"):
        path = write_scenario(d, f"{chips}.yaml", output=d / f"{chips}.zarr", trials=8,
                              hardware={"mapping": "offset"},
                              sweep={"grid": {"hardware.error.sigma": [0.25, 0.3]}},
                              execution={"chips": chips, "trials_per_task": 8, "shard_images": 200})
        run_scenario(path, progress=False)
        out[chips] = open_result(d / f"{chips}.zarr")
    return out


def test_pairing_shrinks_the_error_of_a_difference(close_points):
    common, per_point = close_points["common"], close_points["per_point"]
    assert chips_common(common) and not chips_common(per_point)
    row = compare(common, "sigma").iloc[0]
    assert (row["a"], row["b"]) == (0.25, 0.3)
    assert row["se_paired"] < 0.5 * row["se_unpaired_chips"] and row["reduction"] > 4, row
    assert row["se_paired"] < compare(per_point, "sigma").iloc[0]["se_paired"]
