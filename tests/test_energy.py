"""Energy per inference (docs/physics.md section 12): exact counts against hand-computed values, the
array term against sum(G v**2) built from docs/physics.md's mapping formulas, and the study's trade."""
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcsim import Hardware, convert
from mcsim.engine.counting import counting
from mcsim.hardware import Energy
from mcsim.physics import prices as price


def _counts(net, hw, x, trials=1, seed=0):
    analog = convert(net, hw, trials=trials, seed=seed, device="cpu")
    analog.calibrate([x])
    with counting(analog) as counter:
        analog(x)
    return analog, counter.result()


def _levels(x, x_range, bits, signed):
    """docs/physics.md section 5, written out: integer input levels."""
    n_max = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    return torch.clamp(torch.round(x.double() / x_range * n_max), -n_max if signed else 0, n_max), n_max


def _popcount(n):
    m = n.abs().to(torch.int64)
    return sum(((m >> k) & 1) for k in range(16)).double()


# ---------------------------------------------------------------------------------------- exact counts
@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_partitioned_linear_counts(mapping):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 3))
    x = torch.rand(4, 10) * 0.5 + 0.5  # every input well above one level: every row is driven
    hw = Hardware(mapping=mapping, rows_max=4)  # 10 rows: partitions of 4, 3, 3 rows
    _, r = _counts(net, hw, x)
    c = {k: v[0, 0] for k, v in r.counts.items()}
    assert r.images == 4 and r.layers == ["0"]
    assert c["adc_conversions"] == 3 * 3  # 3 columns x 3 partitions, one conversion per MVM
    assert c["dac_pulses"] == 10 and c["row_slots"] == 10
    if mapping == "differential":
        assert c["digital_adds"] == 3 * (3 - 1) and c["digital_macs"] == 0
    else:  # + input sum over 10 rows (9 adds) + one subtraction per column; one scaling by G_zero
        assert c["digital_adds"] == 3 * 2 + 9 + 3 and c["digital_macs"] == 1
    assert r.adc_bits.tolist() == [8]


@pytest.mark.parametrize("accumulation", ["digital", "analog"])
@pytest.mark.parametrize("signed", [False, True])
def test_strided_conv_bitserial_slices(accumulation, signed):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1))
    x = torch.randn(3, 2, 7, 7)
    x = x if signed else x.abs()
    hw = Hardware(slices=2, input_mode="bitserial", input_accumulation=accumulation)  # 7 bits: 2 slices of 4
    analog, r = _counts(net, hw, x)
    c = {k: v[0, 0] for k, v in r.counts.items()}
    pos, cols, slices, nb = 4 * 4, 4, 2, (7 if signed else 8)
    terms = slices * (nb if accumulation == "digital" else 1)
    assert c["adc_conversions"] == pos * cols * terms
    assert c["digital_adds"] == pos * cols * (terms - 1)
    assert c["row_slots"] == pos * 18 * nb
    # Pulses: every set bit of every row of every patch (padding rows carry no input).
    n, _ = _levels(x, analog.calibration()["0"]["x_range"], 8, signed)
    patches = F.unfold(_popcount(n), 3, padding=1, stride=2)  # (B, 18, 16)
    assert c["dac_pulses"] == pytest.approx(patches.sum().item() / 3, rel=0, abs=1e-9)


def test_offset_strided_conv_partitions_and_digital_accumulation():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(4, 3, 3, stride=2))  # 9x9 -> 4x4; K = 36 rows
    x = torch.rand(2, 4, 9, 9)
    hw = Hardware(mapping="offset", slices=4, rows_max=20, input_mode="bitserial", input_accumulation="digital")
    _, r = _counts(net, hw, x)
    c = {k: v[0, 0] for k, v in r.counts.items()}
    pos, cols, parts, slices, nb, k = 16, 3, 2, 4, 8, 36  # 36 rows in channel groups of 2 (18 rows each)
    terms = slices * parts * nb
    assert c["adc_conversions"] == pos * cols * terms
    assert c["digital_adds"] == pos * cols * (terms - 1) + pos * ((nb * k - 1) + cols)
    assert c["digital_macs"] == pos


def test_row_spans_and_kept_digital_layers():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 6))
    x = torch.rand(2, 3, 6, 6) + 0.5
    hw = Hardware(analog_first_layer=False, cols_max=4, slices=2)  # 6 columns x 2 slices x 2 devices
    _, r = _counts(net, hw, x)
    assert r.layers == ["0", "3"]
    conv = {k: v[0, 0] for k, v in r.counts.items()}
    assert conv["digital_macs"] == 4 * 4 * 5 * 27 and conv["adc_conversions"] == 0 and r.adc_bits[0] == 0
    lin = {k: v[0, 1] for k, v in r.counts.items()}
    assert lin["row_slots"] == 80 * math.ceil(6 * 2 * 2 / 4)
    assert lin["dac_pulses"] <= lin["row_slots"]


def test_ideal_adc_is_charged_at_ideal_adc_bits():
    net = nn.Sequential(nn.Linear(8, 2))
    _, r = _counts(net, Hardware(adc={"bits": None}, energy={"ideal_adc_bits": 6}), torch.rand(2, 8))
    assert r.adc_bits.tolist() == [6] and r.counts["adc_conversions"][0, 0] == 2


# ---------------------------------------------------------------------------------------- the array term
def _expected_conductances(w, hw):
    """docs/physics.md sections 2-3 written out: per device kind, (S, C_out, K) normalized conductances."""
    w = w.double().reshape(w.shape[0], -1)
    Q = 2 ** (hw.weight_bits - 1) - 1
    q = torch.clamp(torch.round(w / w.abs().max() * Q), -Q, Q)
    bm = hw.weight_bits - 1 if hw.mapping == "differential" else hw.weight_bits
    b = math.ceil(bm / hw.slices)
    L = 2**b - 1

    def devices(value):
        digits = [((value.to(torch.int64) >> (b * s)) & L).double() for s in range(hw.slices)]
        return torch.stack([hw.gmin + (1 - hw.gmin) * d / L for d in digits])

    if hw.mapping == "differential":
        return [devices(q.clamp(min=0)), devices((-q).clamp(min=0))]
    return [devices(q + 2 ** (hw.weight_bits - 1))]


@pytest.mark.parametrize("mapping", ["differential", "offset"])
@pytest.mark.parametrize("mode", ["analog", "bitserial"])
def test_array_term_equals_sum_g_v2_of_the_mapping(mapping, mode):
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1))
    x = torch.rand(2, 3, 7, 7)
    hw = Hardware(mapping=mapping, slices=2, input_mode=mode, rows_max=12)  # partitioned: 27 rows
    analog, r = _counts(net, hw, x)
    n, n_max = _levels(x, analog.calibration()["0"]["x_range"], 8, False)
    v2 = _popcount(n) if mode == "bitserial" else (n / n_max) ** 2  # bits: v in {0, 1}, v**2 = v
    g_rows = sum(g.sum((0, 1)) for g in _expected_conductances(net[0].weight.detach(), hw))  # (K,)
    patches = F.unfold(v2, 3, padding=1, stride=2)  # (B, K, positions)
    expected = (patches * g_rows.view(1, -1, 1)).sum().item() / 2
    assert r.counts["array_g_v2"][0, 0] == pytest.approx(expected, rel=1e-5)
    joules = r.joules(hw.energy)[0]
    e = hw.energy
    assert joules[2] == pytest.approx(expected * e.v_read**2 * e.t_read * e.gmax_siemens, rel=1e-5)


def test_array_term_follows_each_programmed_chip():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(12, 5))
    x = torch.rand(3, 12)
    hw = Hardware(error={"model": "proportional", "sigma": 0.2}, slices=3)
    analog, r = _counts(net, hw, x, trials=3, seed=7)
    layer = analog.analog_layers()[0]
    layer.ctx.chips = analog.chips
    g, _ = layer._program_devices(error_free=False)  # the chips' programmed conductances
    g_rows = sum(t.double().sum((1, 2)) for t in g.values())  # (T, K)
    n, n_max = _levels(x, analog.calibration()["0"]["x_range"], 8, False)
    expected = ((n / n_max) ** 2 @ g_rows.T).sum(0) / 3  # per chip
    got = r.counts["array_g_v2"][:, 0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5)
    assert len(set(np.round(got, 9))) == 3  # each chip reads its own devices


# ---------------------------------------------------------------------------------------- opt-in, no effect
def test_counting_changes_no_output_and_is_off_by_default():
    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    x = torch.randn(4, 2, 7, 7)
    hw = Hardware(mapping="offset", slices=2, rows_max=10, input_mode="bitserial",
                  error={"model": "proportional", "sigma": 0.1}, read_noise={"model": "proportional", "sigma": 0.05})
    analog = convert(net, hw, trials=3, seed=2, device="cpu")
    analog.calibrate([x])
    ids = torch.arange(4)
    before = analog(x, image_ids=ids)
    assert analog.ctx.energy is None
    with counting(analog):
        during = analog(x, image_ids=ids)
    assert analog.ctx.energy is None
    assert torch.equal(before, during) and torch.equal(before, analog(x, image_ids=ids))


def test_prices():
    e = Energy()
    assert price.adc_conversion_energy(8, e.adc_fom_j) == pytest.approx(256 * 10e-15)
    assert price.array_energy(1.0, 0.1, 10e-9, 16e-6) == pytest.approx(1.6e-15)  # Imax * V * t
    assert price.digital_energy(10, 2, e.add_j, e.mac_j) == pytest.approx(10 * 0.1e-12 + 2 * 0.3e-12)
    assert Hardware(energy={"adc_fom_j": 1e-15}).energy.adc_fom_j == 1e-15
    with pytest.raises(ValueError, match="energy.v_read"):
        Hardware(energy={"v_read": 0})


# ---------------------------------------------------------------------------------------- the study's trade
@pytest.fixture(scope="module")
def workload():
    from mcsim.data import calibration_images, load_split
    from mcsim.models import load_model
    from mcsim.specs import DataSpec, ModelSpec

    model = load_model(ModelSpec(name="builtin:mnist-cnn"))
    test = load_split(DataSpec(name="mnist5k"), "test")
    xs = torch.stack([test[i][0] for i in range(100)])
    cal = calibration_images(DataSpec(name="mnist5k", calibration={"split": "train", "count": 100}))
    return model, xs, cal


def _energy(workload, hw):
    model, xs, cal = workload
    analog = convert(model, hw, trials=1, seed=0, device="cpu")
    analog.calibrate([cal])
    with counting(analog) as counter:
        analog(xs)
    return counter.result().joules(hw.energy)[0]


@pytest.mark.slow
def test_differential_reads_less_array_energy_than_offset(workload):
    diff = _energy(workload, Hardware(mapping="differential"))
    off = _energy(workload, Hardware(mapping="offset"))
    # Small weights draw little current: on mnist-cnn (on/off 100) differential reads ~55 % of offset.
    assert diff[2] < 0.75 * off[2], (diff, off)
    assert diff[0] == off[0]  # the same conversions
    assert diff.sum() < off.sum()  # and no digital offset term


# ---------------------------------------------------------------------------------------- in the result
def test_names_of_the_store_follow_the_engine():
    from mcsim.engine import counting as engine_counting
    from mcsim.runner import store

    assert store.ENERGY_COUNTS == engine_counting.COUNTS
    assert store.ENERGY_COMPONENTS == price.COMPONENTS


@pytest.fixture(scope="module")
def energy_run(tmp_path_factory):
    """The tiny study (digits-cnn): differential vs offset, 2 chips, two shards of 50 images; and
    the same without energy."""
    from mcsim.api import run_scenario
    from mcsim.scenario import load_scenario
    from runner_support import write_scenario

    d = tmp_path_factory.mktemp("energy")
    path = write_scenario(d, data={"limit": 100, "batch_size": 25},
                          sweep={"zip": {"hardware.mapping": ["differential", "offset"], "hardware.adc.bits": [6, 8]}},
                          trials=2, execution={"shard_images": 50, "trials_per_task": 2, "workers": 1})
    ds = run_scenario(path, progress=False)
    off = write_scenario(d, name="off.yaml", output=d / "off.zarr", data={"limit": 50, "batch_size": 25},
                         sweep={}, trials=1, energy=False, execution={"shard_images": 50, "trials_per_task": 1, "workers": 1})
    return load_scenario(path), ds, d / "out.zarr", run_scenario(off, progress=False), d / "off.zarr"


@pytest.mark.slow
def test_run_stores_energy_per_image_beside_accuracy(energy_run):
    from mcsim.data import evaluation_dataset
    from mcsim.models import load_model
    from mcsim.runner.plan import make_plan
    from mcsim.runner.store import ResultStore
    from mcsim.sweep import expand

    sc, ds, store, ds_off, _ = energy_run
    assert ds["energy_per_image"].dims == ("point", "trial", "component")
    assert list(ds["component"].values) == ["adc", "dac", "array", "digital"]
    assert ds["energy_counts"].dims == ("point", "trial", "count", "layer")
    assert list(ds["layer"].values) == ["0", "3", "7"]
    e = ds["energy_per_image"]
    assert np.isfinite(e.values).all() and (e.sel(component="adc") > 0).all()
    assert (e.sel(point=1, component="array") > e.sel(point=0, component="array")).all()  # offset: more current
    # The stored counts (two shards of 50 images) are the engine's own on the same chips and images.
    model, data = load_model(sc.model), evaluation_dataset(sc.data)
    xs = torch.stack([torch.as_tensor(data[i][0]) for i in range(100)])
    plan = make_plan(sc, 100)
    calibrations = ResultStore(str(store), plan).read_calibration()
    for p, point in enumerate(expand(sc).points):
        analog = convert(model, point.hardware, trials=2, seed=plan.engine_seed(p), device="cpu")
        analog.load_calibration(calibrations[p])
        with counting(analog) as counter:
            for i in range(0, 100, 25):
                analog(xs[i:i + 25], image_ids=torch.arange(i, i + 25))
        r = counter.result()
        np.testing.assert_allclose(ds["energy_counts"].isel(point=p).values, r.stacked(), rtol=1e-9)
        np.testing.assert_allclose(e.isel(point=p).values, r.joules(point.hardware.energy), rtol=1e-9)
    assert "energy_per_image" not in ds_off and "top1" in ds_off  # energy: false stores none


@pytest.mark.slow
def test_report_and_plot_energy(energy_run, tmp_path):
    from typer.testing import CliRunner

    from mcsim.cli import app

    _, ds, store, _, off = energy_run
    cli = CliRunner()
    csv = tmp_path / "r.csv"
    result = cli.invoke(app, ["report", str(store), "--energy", "--csv", str(csv)])
    assert result.exit_code == 0, result.output
    assert re.search(r"energy per image in [pnum]?J", result.output) and "array" in result.output
    import pandas as pd

    df = pd.read_csv(csv)
    total = ds["energy_per_image"].sum("component").mean("trial").values
    np.testing.assert_allclose(df[df.metric == "top1"]["energy"].values, total, rtol=1e-12)
    png = tmp_path / "e.png"
    result = cli.invoke(app, ["plot", str(store), "--energy", "-o", str(png)])
    assert result.exit_code == 0 and png.stat().st_size > 0, result.output
    result = cli.invoke(app, ["report", str(off), "--energy"])
    assert result.exit_code == 2 and "energy: false" in result.output


def test_grouped_conv_counts_and_array_term():
    torch.manual_seed(8)
    net = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, groups=2))  # 2 groups: 3 columns on 18 rows each
    x = torch.rand(2, 4, 5, 5)
    hw = Hardware(mapping="offset", rows_max=10, input_mode="bitserial", input_accumulation="digital")
    analog, r = _counts(net, hw, x)
    c = {k: v[0, 0] for k, v in r.counts.items()}
    pos, parts, nb = 25, 2, 8  # 2 channels of 9 rows per group: one channel per 10-row array
    assert c["adc_conversions"] == pos * 6 * parts * nb
    assert c["digital_adds"] == pos * 6 * (parts * nb - 1) + pos * (2 * (nb * 18 - 1) + 6)
    assert c["row_slots"] == pos * 2 * 18 * nb
    n, _ = _levels(x, analog.calibration()["0"]["x_range"], 8, False)
    g = _expected_conductances(net[0].weight.detach(), hw)[0].sum(0)  # (6, 18)
    expected = 0.0
    for grp in range(2):
        patches = F.unfold(_popcount(n[:, 2 * grp:2 * grp + 2]), 3, padding=1)  # (B, 18, 25)
        expected += (patches * g[3 * grp:3 * grp + 3].sum(0).view(1, -1, 1)).sum().item()
    assert r.counts["array_g_v2"][0, 0] == pytest.approx(expected / 2, rel=1e-9)
    assert c["dac_pulses"] == F.unfold(_popcount(n), 3, padding=1).sum().item() / 2


def test_each_layer_is_priced_at_its_own_hardware_energy():
    torch.manual_seed(9)
    net = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.rand(4, 8)
    hw = Hardware(layers={"2": {"energy": {"adc_fom_j": 1e-12}, "adc": {"bits": 6}}})
    _, r = _counts(net, hw, x)
    assert r.adc_bits.tolist() == [8, 6]
    per_layer = r.joules_per_layer()[0, 0]  # ADC joules per layer
    assert per_layer[0] == pytest.approx(6 * 10e-15 * 2**8) and per_layer[1] == pytest.approx(3 * 1e-12 * 2**6)
    assert r.joules(Energy())[0, 0] == pytest.approx(6 * 10e-15 * 2**8 + 3 * 10e-15 * 2**6)  # one price for all
