"""The study's cost up front (mcsim/runner/cost.py): MACs against closed forms, a point's time per
image-chip against the measured rates it is built from, and the dry run's lines."""
from __future__ import annotations

import pytest
import torchvision
from torch import nn
from typer.testing import CliRunner

from mcsim import Hardware
from mcsim.cli import app
from mcsim.runner.cost import RATES, macs, point_seconds
from runner_support import write_scenario


def test_macs_of_conv_and_linear_layers_match_their_closed_forms():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=4, stride=2),
                        nn.Flatten(), nn.Linear(8 * 7 * 7, 10))
    expected = 8 * 16 * 16 * 3 * 9 + 8 * 7 * 7 * 2 * 9 + 8 * 7 * 7 * 10
    assert macs(net, (3, 16, 16)) == expected
    # the published figure for ResNet18 at 224x224: 1.82 GMAC (convolutions and the classifier)
    assert macs(torchvision.models.resnet18(), (3, 224, 224)) == pytest.approx(1.8136e9, rel=1e-3)


def test_a_point_costs_its_measured_rate_scaled_by_slices_bits_and_macs():
    ref = RATES["cpu", "a"]
    ref_macs = macs(torchvision.models.get_model(ref.model.split(":")[1]), ref.shape)
    hw = Hardware(weight_bits=8, input_bits=8, adc={"bits": 8})
    t, notes = point_seconds(hw, ref_macs, "cpu")
    assert t == pytest.approx(1 / ref.image_chips_per_s) and notes == []
    assert point_seconds(hw, 2 * ref_macs, "cpu")[0] == pytest.approx(2 / ref.image_chips_per_s)
    sliced = hw.model_copy(update={"mapping": "offset", "slices": 4})  # config (b) as measured
    assert point_seconds(sliced, ref_macs, "cpu")[0] == pytest.approx(1 / RATES["cpu", "b"].image_chips_per_s)
    serial = Hardware(weight_bits=8, input_bits=8, adc={"bits": 8}, input_mode="bitserial",
                      input_accumulation="digital")  # config (c) as measured
    assert point_seconds(serial, ref_macs, "cpu")[0] == pytest.approx(1 / RATES["cpu", "c"].image_chips_per_s)
    four = serial.model_copy(update={"input_bits": 4})
    assert point_seconds(four, ref_macs, "cpu")[0] == pytest.approx(0.5 / RATES["cpu", "c"].image_chips_per_s)
    gated = Hardware(weight_bits=8, input_bits=8, adc={"bits": 8}, input_mode="bitserial",
                     input_accumulation="digital", parasitics={"rp": 1e-4, "rows": "gated"})
    t, notes = point_seconds(gated, ref_macs, "cpu")
    assert t == pytest.approx(30 / RATES["cpu", "c"].image_chips_per_s) and "gated rows" in notes[0]
    # CUDA has (a) measured only: its (c) is its (a) times the CPU's (c)/(a), and says so
    t, notes = point_seconds(serial, ref_macs, "cuda")
    a = RATES["cuda", "a"]
    cuda_ref = macs(torchvision.models.get_model(a.model.split(":")[1]), a.shape)
    scale = RATES["cpu", "c"].image_chips_per_s / RATES["cpu", "a"].image_chips_per_s
    assert t == pytest.approx(ref_macs / cuda_ref / (a.image_chips_per_s * scale)) and "scaled" in notes[0]


def test_dry_run_prints_the_image_chips_and_the_estimated_hours(tmp_path):
    path = write_scenario(tmp_path)  # 4 points x 6 chips x 200 images, parallel inputs, no slices
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "cost: 4,800 image-chips (4 points x 6 chips x 200 images)" in result.output
    line = next(ln for ln in result.output.splitlines() if "estimated:" in ln)
    assert "CPU-hours" in line and "GPU-hours (H200)" in line
    assert not (tmp_path / "out.zarr").exists()


def test_a_model_whose_macs_cannot_be_counted_costs_the_estimate_not_the_dry_run(tmp_path, monkeypatch):
    from mcsim.runner import cost
    from mcsim.runner.plan import make_plan
    from mcsim.scenario import load_scenario

    def fails(scenario):
        raise RuntimeError("no meta kernel")

    monkeypatch.setattr(cost, "_scenario_macs", fails)
    sc = load_scenario(write_scenario(tmp_path))
    assert cost.estimate_lines(sc, make_plan(sc, 200)) == [
        "cost: 4,800 image-chips (4 points x 6 chips x 200 images); no time estimate (the model's MACs could not "
        "be counted: RuntimeError: no meta kernel)"]
