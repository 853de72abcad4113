"""Multi-bit input slices (docs/physics.md section 16): bit-serial inputs applied ``k`` bits at a time
through a ``k``-bit DAC, against analog inputs, the loop references (tests/reference.py, the gated
nodal reference of tests/test_gated_engine.py) and closed forms."""
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from mcsim import Hardware, convert
from mcsim.engine.counting import counting
from mcsim.physics import dac, parasitics
from reference import analog_linear
from test_gated_engine import _run_case, nodal_columns

SERIAL = dict(input_mode="bitserial")
NOISY = dict(error={"model": "proportional", "sigma": 0.05}, read_noise={"model": "independent", "sigma": 0.01})


def _net():
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 5))


def _run(hw, x, cal, trials=1, seed=7, calibration=None):
    m = convert(_net(), hw, trials=trials, seed=seed)
    if calibration is None:
        m.calibrate([cal])
    else:
        m.load_calibration(calibration)
    return m, m(x, image_ids=torch.arange(len(x)))


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits", [5, 8, 9])
def test_slice_levels_recombine_exactly(bits, signed):
    """Every level n: the slices are the base-2**k digits of |n| with n's sign, the most significant
    one short when k does not divide the magnitude bits, and their weights give v = n / n_max exactly.
    At k = 1 they are section 5's bit planes and weights 2**i / n_max, bit for bit."""
    n_max = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    n = torch.arange(-n_max if signed else 0, n_max + 1, dtype=torch.float32)
    mag_bits = bits - 1 if signed else bits
    mag = n.abs().long()
    bit_planes = torch.stack([((mag >> i) & 1) * (n.sign() if signed else 1) for i in range(mag_bits)]).float()
    assert torch.equal(dac.bit_planes(n, bits, signed), bit_planes)
    assert dac.slice_weights(bits, signed) == [2.0**i / n_max for i in range(mag_bits)]
    for k in (2, 3, 4, mag_bits, 16):
        planes = dac.bit_planes(n, bits, signed, slice_bits=k)
        kk = min(k, mag_bits)
        assert planes.shape[0] == math.ceil(mag_bits / kk) == dac.n_slices(bits, signed, k)
        assert planes.abs().max(1).values.tolist()[:-1] == [2**kk - 1] * (planes.shape[0] - 1)
        assert planes[-1].abs().max() == 2 ** (mag_bits - kk * (planes.shape[0] - 1)) - 1  # the short one
        w = torch.tensor(dac.slice_weights(bits, signed, k), dtype=torch.float64)
        v = (planes.double() / dac.slice_full_scale(bits, signed, k) * w.view(-1, 1)).sum(0)
        torch.testing.assert_close(v, n.double() / n_max, rtol=1e-15, atol=0)


@pytest.mark.parametrize("acc", ["digital", "analog"])
@pytest.mark.parametrize("k", [2, 3])
def test_slices_with_ideal_adc_equal_analog_inputs(k, acc):
    """Ideal ADC: the slices recombine to v = n / n_max, on plain wires (folded) and through the gated
    per-slice solves at a negligible rp (float64 solves, relative drop ~ rows * rp)."""
    torch.manual_seed(0)
    x, cal = torch.randn(4, 3, 4, 4), torch.randn(8, 3, 4, 4)
    ideal = dict(adc={"bits": None}, input_bits=7)
    _, ref = _run(Hardware(**ideal), x, cal)
    for par in ({}, {"parasitics": {"rp": 1e-9, "rows": "gated"}}):
        m, out = _run(Hardware(**SERIAL, input_accumulation=acc, input_slice_bits=k, **ideal, **par), x, cal)
        assert m.analog_layers()[0]._pass().gated == bool(par)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("par", [{}, {"parasitics": {"rp": 1e-3, "rows": "driven"}}])
def test_slices_with_fine_adc_equal_analog_inputs(par):
    """A 20-bit ADC per slice (full range): the slices' columns digitized apart and recombined equal
    analog inputs through an ideal ADC to the ADC's steps, on plain and voltage-driven resistive wires
    (one layer: a next layer's DAC would turn the steps into level flips)."""
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(40, 5))
    x = torch.rand(6, 40)
    outs = []
    for hw in (Hardware(adc={"bits": None}, **par),
               Hardware(**SERIAL, input_accumulation="digital", input_slice_bits=3, adc={"bits": 20, "range": "max"},
                        **par)):
        m = convert(lin, hw, trials=1)
        m.calibrate([x])
        outs.append(m(x)[0])
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-4 * outs[0].abs().max().item())


# (input_bits, k, signed): 8 bits in slices of 3 -> 3, 3, 2 (unsigned) or 7 magnitude bits -> 3, 3, 1
CASES = [
    dict(mapping="differential", slices=1, bits=8, k=3, signed=True, lim=(-2.1, 1.9)),
    dict(mapping="offset", slices=2, bits=8, k=3, signed=False, lim=(0.1, 7.1)),
    dict(mapping="differential", slices=2, bits=5, k=2, signed=False, lim=(-1.6, 1.4), analog_acc=True),
    dict(mapping="offset", slices=1, bits=6, k=4, signed=True, lim=(-5.0, 6.0)),
]


@pytest.mark.parametrize("case", CASES)
def test_adc_per_slice_matches_reference(case):
    """Partitions, weight slices, k-bit input slices (each digitized, or summed in analog before one
    conversion) and a real ADC on one Linear layer vs tests/reference.py's loops."""
    torch.manual_seed(1)
    rows, n_out, rows_max, gmin = 50, 6, 16, 0.02
    lin = nn.Linear(rows, n_out)
    x = torch.randn(7, rows) if case["signed"] else torch.rand(7, rows) * 1.2
    hw = Hardware(
        mapping=case["mapping"], slices=case["slices"], weight_bits=8, input_bits=case["bits"], rows_max=rows_max,
        on_off_ratio=1 / gmin, input_mode="bitserial", input_slice_bits=case["k"],
        input_accumulation="analog" if case.get("analog_acc") else "digital",
        adc={"bits": 6, "range": "explicit", "limits": case["lim"]},
    )
    analog = convert(nn.Sequential(lin), hw, trials=1)
    analog.load_calibration({"0": {"x_range": 1.0, "signed": case["signed"], "adc_range": None}})
    out = analog(x)[0].double().numpy()
    ref = analog_linear(
        lin.weight.detach().numpy(), lin.bias.detach().numpy(), x.numpy(), mapping=case["mapping"], weight_bits=8,
        slices=case["slices"], input_bits=case["bits"], x_range=1.0, signed=case["signed"], rows_max=rows_max,
        gmin=gmin, adc_bits=6, adc_lo=case["lim"][0], adc_hi=case["lim"][1], bitserial=True,
        digital_accumulation=not case.get("analog_acc"), input_slice_bits=case["k"],
    )
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


# input_bits 5: unsigned 5 bits in slices of 2 -> 2, 2, 1; signed 4 magnitude bits in slices of 3 -> 3, 1
GATED = [
    dict(mapping="differential", slices=1, signed=False, acc="digital", lim=(-2.1, 1.9), k=2),
    dict(mapping="differential", slices=2, signed=True, acc="analog", lim=(-1.1, 0.9), k=3),
    dict(mapping="offset", slices=2, signed=True, acc="digital", lim=None, k=3),
]


@pytest.mark.parametrize("case", GATED)
def test_gated_slices_match_nodal_reference(case):
    """Gated rows driven by k-bit slices: a row with a nonzero level is on, its source at the level
    (section 16); per-vector dense nodal solves of tests/test_gated_engine.py, on three partitions."""
    torch.manual_seed(3)
    lin = nn.Linear(22, 4)
    x = torch.randn(3, 22) if case["signed"] else torch.rand(3, 22) * 1.2
    _run_case(dict(case, rows_max=8), lin, x, 1.0, stride=1, padding=0)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("method", ["tree", "scan"])
def test_gated_solver_levels_match_nodal_solve(signed, method):
    """gated_column_currents on integer levels (-top..top) equals a dense nodal solve; level 0 is off."""
    gen = torch.Generator().manual_seed(0)
    g = torch.rand(37, 5, generator=gen, dtype=torch.float64)
    top = 7
    u = torch.randint(-top if signed else 0, top + 1, (20, 37), generator=gen)
    u[0] = 0  # no row on: no current
    got = parasitics.gated_column_currents(g, u, 0.05, signed=signed, top=top, method=method)
    ref = nodal_columns(g.numpy(), u.numpy().astype(np.float64), 0.05)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-12)
    assert not got[0].any()
    with pytest.raises(ValueError, match="integer slice levels"):
        parasitics.gated_column_currents(g, u * 2, 0.05, signed=signed, top=top, method=method)


@pytest.mark.parametrize("par", [{}, {"parasitics": {"rp": 1e-3, "rows": "driven"}}])
@pytest.mark.parametrize("acc", ["digital", "analog"])
def test_one_slice_is_analog_inputs(acc, par):
    """k >= the magnitude bits: one slice, the DAC of Bx bits (Bx - 1 magnitude bits signed) driving the
    levels at once: bit for bit the analog-input chip (calibrated 6-bit ADC, errors, read noise), the
    signed first layer and the unsigned second alike, on plain and voltage-driven resistive wires."""
    torch.manual_seed(0)
    x, cal = torch.randn(4, 3, 4, 4), torch.randn(8, 3, 4, 4)
    common = dict(input_bits=6, adc={"bits": 6}, **NOISY, **par)
    _, ref = _run(Hardware(**common), x, cal, trials=2)
    for k in (6, 16):
        _, out = _run(Hardware(**SERIAL, input_accumulation=acc, input_slice_bits=k, **common), x, cal, trials=2)
        assert torch.equal(out, ref)


@pytest.mark.parametrize("par", [{}, {"parasitics": {"rp": 1e-2}}])
def test_chip_alone_equals_chip_among_others(par):
    """Bit-identical: a chip among others, alone, and over another cut of the images (3-bit slices,
    an ADC per slice; gated rows too)."""
    torch.manual_seed(1)
    x, cal = torch.randn(5, 3, 4, 4), torch.randn(6, 3, 4, 4)
    hw = Hardware(**SERIAL, input_accumulation="digital", input_slice_bits=3, rows_max=20, slices=2, **NOISY, **par)
    many, a = _run(hw, x, cal, trials=[0, 1, 2])
    assert many.analog_layers()[0]._pass().gated == bool(par)
    alone, b = _run(hw, x, cal, trials=[1], calibration=many.calibration())
    assert torch.equal(a[1], b[0])
    cut = torch.cat([alone(x[:2], image_ids=torch.arange(2))[0], alone(x[2:], image_ids=torch.arange(2, 5))[0]])
    assert torch.equal(a[1], cut)


def test_calibrated_range_pools_the_slices():
    """ADC calibration with slices: one range per layer over every slice's column outputs (as over the
    bits, section 7), in full-scale units: the percentile range of y_i = (m_i / (2**k - 1)) @ G^T."""
    torch.manual_seed(2)
    lin = nn.Linear(12, 4)
    cal = torch.rand(40, 12)
    hw = Hardware(**SERIAL, input_accumulation="digital", input_slice_bits=3, input_bits=7, on_off_ratio=None,
                  adc={"bits": 8, "percentile": 90.0})
    analog = convert(nn.Sequential(lin), hw, trials=1)
    analog.calibrate([cal])
    x_range = analog.calibration()["0"]["x_range"]
    w = lin.weight.detach().double()
    q = torch.clamp(torch.round(w / w.abs().max() * 127), -127, 127) / 127  # G+ - G-, Gmin = 0
    n = torch.clamp(torch.round(cal.double() / x_range * 127), 0, 127).long()
    y = torch.cat([(((n >> (3 * i)) & 7).double() / 7) @ q.T for i in range(3)]).flatten().numpy()
    lo, hi = analog.calibration()["0"]["adc_range"]
    assert lo[0] == pytest.approx(np.percentile(y, 5.0), abs=1e-6)
    assert hi[0] == pytest.approx(np.percentile(y, 95.0), abs=1e-6)


@pytest.mark.parametrize("acc", ["digital", "analog"])
def test_energy_counts_slices(acc):
    """Conversions per slice (digital accumulation), a pulse per row and nonzero slice, and
    sum(G v**2) with the slice's voltage v = m / (2**k - 1)."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(10, 3))
    x = torch.rand(4, 10)
    hw = Hardware(**SERIAL, input_accumulation=acc, input_slice_bits=3, on_off_ratio=None)  # 8 bits: 3, 3, 2
    analog = convert(net, hw, trials=1, device="cpu")
    analog.calibrate([x])
    with counting(analog) as counter:
        analog(x)
    c = {k: v[0, 0] for k, v in counter.result().counts.items()}
    nb = 3
    assert c["adc_conversions"] == 3 * (nb if acc == "digital" else 1)
    assert c["row_slots"] == 10 * nb
    n = torch.clamp(torch.round(x.double() / analog.calibration()["0"]["x_range"] * 255), 0, 255).long()
    m = torch.stack([(n >> (3 * i)) & 7 for i in range(nb)])  # (slices, images, rows)
    assert c["dac_pulses"] == pytest.approx((m != 0).sum().item() / 4, abs=1e-9)
    w = net[0].weight.detach().double()
    g = (torch.round(w / w.abs().max() * 127).abs() / 127).sum(0)  # each row's devices, G+ + G-, Gmin = 0
    expected = ((m.double() / 7) ** 2 * g).sum().item() / 4
    assert c["array_g_v2"] == pytest.approx(expected, rel=1e-12)


def test_validation():
    Hardware(**SERIAL, input_slice_bits=3)
    with pytest.raises(ValidationError, match="input_slice_bits: .*input_mode 'bitserial'"):
        Hardware(input_slice_bits=2)
    with pytest.raises(ValidationError, match="input_slice_bits"):
        Hardware(input_slice_bits=2, input_bits=None)
    with pytest.raises(ValidationError, match="integer input_bits"):
        Hardware(**SERIAL, input_slice_bits=2, input_bits=None)
    with pytest.raises(ValidationError, match="input_slice_bits"):
        Hardware(**SERIAL, input_slice_bits=0)
