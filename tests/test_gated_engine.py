"""Gated rows in the engine (docs/physics.md section 8) and power-of-two slice ADC ranges (section 7).

The reference is written here from docs/physics.md alone, sharing no code with the engine: im2col by
loops, channel-aligned partitions, and for every (image, position, partition, input bit, slice,
device kind) a dense nodal analysis of each column holding only the rows whose bit is nonzero:
node k joins node k+1 through 1/rp, the last node joins the virtual ground through 1/rp, and an
active row k ties node k to its source u_k through G_k. Partitions own the ADC end of their
column (rows without a device at the far end carry no current, so they are left out here).
"""
import math

import numpy as np
import pytest
import torch
from torch import nn

from mcsim import Hardware, convert
from mcsim.engine.layers import power_of_two_ranges


def nodal_columns(g: np.ndarray, u: np.ndarray, rp: float) -> np.ndarray:
    """Currents into the virtual ground ``(nb, C)`` of columns ``g (n, C)`` for bit vectors ``u (nb, n)``
    (or slice levels: a row is on where u is nonzero, its source at u, section 16)."""
    n, cols = g.shape
    a = np.zeros((len(u), cols, n, n))
    i = np.arange(n)
    a[..., i, i] = 2 / rp
    a[..., 0, 0] = 1 / rp  # row 0: the open far end (one segment, or only the one to ground when n = 1)
    if n > 1:
        a[..., i[:-1], i[1:]] = a[..., i[1:], i[:-1]] = -1 / rp
    a[..., i, i] += ((u != 0)[:, None, :] * g.T[None])  # active devices load their nodes
    rhs = u[:, None, :] * g.T[None]  # and inject G_k u_k
    return np.linalg.solve(a, rhs[..., None])[..., -1, 0] / rp


def reference(w4, b, x4, *, stride, padding, mapping, slices, input_bits, x_range, signed, rows_max, gmin,
              rp, adc_lim=None, adc_bits=6, digital_accumulation=True, input_slice_bits=1):
    """Layer outputs ``(B, C_out, H', W')`` of a conv (a Linear: 1x1 kernel on a 1x1 input), gated rows."""
    w4, x4 = np.asarray(w4, np.float64), np.asarray(x4, np.float64)
    c_out, c_in, kh, kw = w4.shape
    taps, k_rows = kh * kw, c_in * kh * kw
    w_max = np.abs(w4).max()
    Q = 2 ** 7 - 1  # 8-bit weights
    q = np.clip(np.round(w4.reshape(c_out, -1) / w_max * Q), -Q, Q)
    bm = 7 if mapping == "differential" else 8
    bs = math.ceil(bm / slices)
    L = 2**bs - 1

    def digits(v):
        return [(v.astype(np.int64) // 2 ** (bs * s)) % 2**bs for s in range(slices)]

    def cond(d):
        return gmin + (1 - gmin) * d / L

    if mapping == "differential":
        kinds = [[cond(d) for d in digits(np.maximum(q, 0))], [cond(d) for d in digits(np.maximum(-q, 0))]]
    else:
        u0 = 2**7
        kinds = [[cond(d) for d in digits(q + u0)]]
    # Inputs: levels and bit planes (section 5).
    n_max = 2 ** (input_bits - 1) - 1 if signed else 2**input_bits - 1
    n = np.clip(np.round(x4 / x_range * n_max), -n_max if signed else 0, n_max)
    nbits = input_bits - 1 if signed else input_bits
    n = np.pad(n, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    hp = (n.shape[2] - kh) // stride + 1
    wp = (n.shape[3] - kw) // stride + 1
    # Partitions on channel boundaries (section 6).
    parts = math.ceil(k_rows / rows_max)
    while math.ceil(c_in / parts) * taps > rows_max:
        parts += 1
    sizes = [c_in // parts + (1 if i < c_in % parts else 0) for i in range(parts)]
    starts = np.cumsum([0] + sizes)
    part_rows = [np.arange(starts[p] * taps, starts[p + 1] * taps) for p in range(parts)]

    def adc(y, s):
        if adc_lim is None:
            return y
        lo, hi = adc_lim
        step = (hi - lo) / (2**adc_bits - 1)
        return lo + step * np.round((np.clip(y, lo, hi) - lo) / step)

    # k-bit slices from the least significant bit (section 16): a row at level m is driven at m / (2**k - 1)
    ks = min(input_slice_bits, nbits)
    top, n_planes = 2**ks - 1, math.ceil(nbits / ks)
    bit_w = np.array([2.0 ** (ks * k) * top / n_max for k in range(n_planes)])
    out = np.zeros((x4.shape[0], c_out, hp, wp))
    for img in range(x4.shape[0]):
        for oh in range(hp):
            for ow in range(wp):
                patch = n[img, :, oh * stride : oh * stride + kh, ow * stride : ow * stride + kw].reshape(-1)
                mag = np.abs(patch).astype(np.int64)
                planes = np.stack([((mag >> (ks * k)) & top) * np.sign(patch) for k in range(n_planes)])  # (nb, K)
                v = patch / n_max
                z = np.zeros(c_out)
                for rows in part_rows:
                    for s in range(slices):
                        cur = [nodal_columns(kind[s][:, rows].T, planes[:, rows], rp) / top for kind in kinds]
                        y = cur[0] - cur[1] if mapping == "differential" else cur[0]
                        if digital_accumulation:
                            col = sum(bit_w[k] * adc(y[k], s) for k in range(n_planes))
                        else:
                            col = adc(bit_w @ y, s)
                        z += 2 ** (bs * s) * L / (1 - gmin) * col
                        if mapping == "offset":
                            z -= 2 ** (bs * s) * L / (1 - gmin) * gmin * v[rows].sum()
                if mapping == "offset":
                    z -= u0 * v.sum()
                out[img, :, oh, ow] = z * (w_max / Q) * x_range + b
    return out


def _hw(case, rp, rows="gated"):
    lim = case.get("lim")
    adc = {"bits": 6, "range": "explicit", "limits": lim} if lim else {"bits": None}
    return Hardware(
        mapping=case["mapping"], slices=case["slices"], weight_bits=8, input_bits=5, rows_max=case["rows_max"],
        on_off_ratio=1 / 0.02, input_mode="bitserial", input_accumulation=case["acc"], adc=adc,
        parasitics={"rp": rp, "rows": rows}, input_slice_bits=case.get("k", 1),
    )


# asymmetric limits: with an even level count, symmetric limits put y = 0 exactly on a rounding tie
CASES = [
    dict(mapping="differential", slices=1, signed=False, acc="digital", lim=(-2.1, 1.9)),
    dict(mapping="differential", slices=2, signed=True, acc="analog", lim=(-1.1, 0.9)),
    dict(mapping="differential", slices=2, signed=False, acc="analog", lim=None),
    dict(mapping="offset", slices=1, signed=True, acc="digital", lim=(-5.0, 6.0)),
    dict(mapping="offset", slices=2, signed=False, acc="analog", lim=(0.1, 7.1)),
    dict(mapping="offset", slices=2, signed=True, acc="digital", lim=None),
]
RP = 0.02


def _run_case(case, module, x, x_range, **conv):
    hw = _hw(case, RP)
    analog = convert(nn.Sequential(module), hw, trials=1)
    analog.load_calibration({"0": {"x_range": x_range, "signed": case["signed"], "adc_range": None}})
    out = analog(x)[0].double().numpy()
    w = module.weight.detach().numpy()
    w4 = w[:, :, None, None] if w.ndim == 2 else w
    x4 = x.numpy()[:, :, None, None] if x.dim() == 2 else x.numpy()
    ref = reference(w4, module.bias.detach().numpy(), x4, mapping=case["mapping"], slices=case["slices"],
                    input_bits=5, x_range=x_range, signed=case["signed"], rows_max=case["rows_max"], gmin=0.02,
                    rp=RP, adc_lim=case["lim"], digital_accumulation=case["acc"] == "digital",
                    input_slice_bits=case.get("k", 1), **conv)
    ref = ref.reshape(out.shape)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    driven = convert(nn.Sequential(module), _hw(case, RP, rows="driven"), trials=1)
    driven.load_calibration({"0": {"x_range": x_range, "signed": case["signed"], "adc_range": None}})
    assert np.abs(driven(x)[0].double().numpy() - ref).max() > 1e-3 * np.abs(ref).max()  # the circuits differ


@pytest.mark.parametrize("case", CASES)
def test_gated_linear_matches_nodal_reference(case):
    """A Linear on three partitions (near-equal channel groups), gated rows vs per-vector nodal solves."""
    torch.manual_seed(3)
    lin = nn.Linear(22, 4)
    x = torch.randn(3, 22) if case["signed"] else torch.rand(3, 22) * 1.2
    _run_case(dict(case, rows_max=8), lin, x, 1.0, stride=1, padding=0)


@pytest.mark.parametrize("case", CASES)
def test_gated_strided_padded_conv_matches_nodal_reference(case):
    """A 3x3 conv, stride 2, padding 1, five channels on three arrays of at most two channels."""
    torch.manual_seed(4)
    conv = nn.Conv2d(5, 3, 3, stride=2, padding=1)
    x = torch.randn(2, 5, 5, 5) if case["signed"] else torch.rand(2, 5, 5, 5) * 1.2
    _run_case(dict(case, rows_max=18), conv, x, 1.0, stride=2, padding=1)


def _noisy_model(trials, **over):
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 5))
    hw = Hardware(input_mode="bitserial", rows_max=20, slices=2, error={"model": "proportional", "sigma": 0.05},
                  read_noise={"model": "independent", "sigma": 0.01}, parasitics={"rp": 1e-2}, **over)
    analog = convert(net, hw, trials=trials, seed=7)
    analog.calibrate([torch.randn(6, 3, 4, 4)])
    return analog


@pytest.mark.parametrize("acc", ["digital", "analog"])
def test_gated_chip_alone_equals_chip_among_others(acc):
    """Bit-identical: a chip among others, alone, and over another cut of the images."""
    x = torch.randn(5, 3, 4, 4)
    many = _noisy_model([0, 1, 2], input_accumulation=acc)
    assert many.analog_layers()[0]._pass().gated
    calib = many.calibration()
    alone = _noisy_model([1], input_accumulation=acc)
    alone.load_calibration(calib)
    a = many(x, image_ids=torch.arange(5))[1]
    b = alone(x, image_ids=torch.arange(5))[0]
    assert torch.equal(a, b)
    cut = torch.cat([alone(x[:2], image_ids=torch.arange(2))[0], alone(x[2:], image_ids=torch.arange(2, 5))[0]])
    assert torch.equal(a, cut)


def test_rp_zero_is_the_plain_path_bit_for_bit():
    x = torch.randn(4, 3, 4, 4)
    outs = []
    for rows in ("gated", "driven"):
        torch.manual_seed(5)
        net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 5))
        hw = Hardware(input_mode="bitserial", input_accumulation="digital", rows_max=20,
                      error={"model": "proportional", "sigma": 0.05}, parasitics={"rp": 0.0, "rows": rows})
        m = convert(net, hw, trials=2, seed=7)
        m.calibrate([torch.randn(6, 3, 4, 4)])
        assert not m.analog_layers()[0]._pass().gated
        outs.append(m(x))
    assert torch.equal(*outs)


def test_row_circuit_settings_are_validated():
    with pytest.raises(ValueError, match="parasitics.rows.*input_mode"):
        Hardware(parasitics={"rp": 1e-3, "rows": "gated"})
    with pytest.raises(ValueError, match="parasitics.rows.*parasitics.topology"):
        Hardware(input_mode="bitserial", parasitics={"rp": 1e-3, "rows": "gated", "topology": "grid"})
    assert Hardware(input_mode="bitserial").gated_rows
    assert not Hardware(input_mode="bitserial", parasitics={"topology": "grid"}).gated_rows
    assert not Hardware(input_mode="bitserial", parasitics={"rows": "driven"}).gated_rows
    assert not Hardware().gated_rows


# ---------------------------------------------------------------- section 7: slice ranges


def test_power_of_two_ranges_are_exact_power_of_two_multiples():
    lo, hi = power_of_two_ranges([-0.3, -2.0, -0.01], [0.5, 3.0, 0.2])
    assert (lo[1], hi[1]) == (-2.0, 3.0)  # the widest is the reference
    assert (lo[0], hi[0]) == (-0.5, 0.75)  # /4 covers [-0.3, 0.5], /8 would not
    assert (lo[2], hi[2]) == (-2.0 / 8, 3.0 / 8)  # /8 covers 0.2 on top, /16 would not
    lo, hi = power_of_two_ranges([0.5, -1.0], [4.0, 1.0])  # no power of two covers -1 from [0.5, 4]
    assert (lo[1], hi[1]) == (0.5, 4.0)


@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_calibrated_slice_ranges_differ_by_powers_of_two(mapping):
    torch.manual_seed(6)
    lin = nn.Linear(40, 8)
    x = torch.rand(64, 40)
    ranges = {}
    for mode in ("power_of_two", "independent"):
        analog = convert(nn.Sequential(lin), Hardware(mapping=mapping, slices=3, adc={"slice_ranges": mode}), trials=1)
        analog.calibrate([x])
        ranges[mode] = analog.analog_layers()[0].adc_range
    lo, hi = ranges["power_of_two"]
    ilo, ihi = ranges["independent"]
    assert len(set(zip(ilo, ihi))) == 3  # today's behaviour: one range per slice
    assert (lo, hi) == power_of_two_ranges(ilo, ihi)
    ref = max(range(3), key=lambda s: ihi[s] - ilo[s])
    for s in range(3):
        m = math.log2(hi[ref] / hi[s])
        assert m == int(m) and lo[s] * 2**m == lo[ref] and hi[s] * 2**m == hi[ref]
        assert lo[s] <= ilo[s] or s == ref or lo[s] == lo[ref]


# ---------------------------------------------------------------- device fits


def test_convert_warns_for_a_device_fit_outside_its_range():
    with pytest.warns(UserWarning, match="'pcm'"):
        convert(nn.Sequential(nn.Linear(4, 2)), Hardware(on_off_ratio=None, error={"model": "pcm"}), trials=1)


# ---------------------------------------------------------------- network level (trained mnist-cnn)


@pytest.fixture(scope="module")
def workload():
    from workloads import mnist_cnn

    return mnist_cnn(images=200, calibration=100)


def _logits(workload, **hw):
    model, xs, _, cal = workload
    analog = convert(model, Hardware(**hw), trials=1, seed=0)
    analog.calibrate([cal])
    return analog(xs)[0]


@pytest.mark.slow
def test_gated_bits_differ_from_analog_inputs_where_driven_rows_do_not(workload):
    """At rp = 1e-2, bit-serial inputs on gated rows (the default circuit) change accuracy beyond the
    images' sampling error (paired, McNemar: the images right under one circuit only); on driven rows
    with analog accumulation they equal analog inputs, logit for logit."""
    ys = workload[2]
    par = {"rp": 1e-2}
    analog_in = _logits(workload, parasitics=par)
    driven = _logits(workload, input_mode="bitserial", parasitics=dict(par, rows="driven"))
    assert torch.equal(driven, analog_in)
    gated = _logits(workload, input_mode="bitserial", parasitics=par)
    right_a, right_g = analog_in.argmax(-1) == ys, gated.argmax(-1) == ys
    only_g, only_a = int((right_g & ~right_a).sum()), int((right_a & ~right_g).sum())
    assert abs(only_g - only_a) > 3 * math.sqrt(only_g + only_a), (only_g, only_a, right_a.sum(), right_g.sum())


def test_grid_range_puts_every_level_on_the_output_grid():
    from mcsim.physics.adc import grid_range
    lo, hi = grid_range(0.0, 34.0, 1.0, 8)  # 34 units in 255 steps: a quarter unit, lo kept at 0
    assert (lo, hi) == (0.0, 63.75)
    lo, hi = grid_range(-8.0, 8.0, 1.0, 8)  # spanning zero: spare levels shared, lo on the step
    assert (lo, hi) == (-15.875, 16.0)
    lo, hi = grid_range(3.0, 600.0, 1 / 3, 8)  # wider than 255 units: the step a power of two of them
    step = (hi - lo) / 255
    assert step == 8 / 3 and lo <= 3.0 and hi >= 600.0 and (lo / step).is_integer()


@pytest.mark.parametrize("slices", [8, 4])
def test_grid_aligned_adc_converts_offset_bit_planes_exactly(slices):
    """Offset mapping, bit-serial inputs with digital accumulation, Gmin = 0: every column output is an
    integer number of digits; a grid-aligned calibrated 8-bit ADC covering them loses nothing, while
    the raw percentile range (levels off the grid) does (docs/physics.md section 7, adc.grid)."""
    torch.manual_seed(3)
    lin = nn.Linear(24, 6)
    x = torch.rand(32, 24)
    hw = dict(mapping="offset", slices=slices, on_off_ratio=None, input_mode="bitserial",
              input_accumulation="digital", rows_max=16)
    ideal = convert(nn.Sequential(lin), Hardware(**hw, adc={"bits": None}), trials=1, device="cpu")
    ideal.calibrate([x])
    want = ideal(x)
    errs = {}
    for grid in (False, True):
        a = convert(nn.Sequential(lin), Hardware(**hw, adc={"percentile": 100, "grid": grid}), trials=1, device="cpu")
        a.calibrate([x])
        errs[grid] = (a(x) - want).abs().max().item()
    assert errs[True] < 1e-4 * want.abs().max().item()
    assert errs[False] > 100 * errs[True]
