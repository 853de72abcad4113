"""Digital subtraction, the reference column and ADC level placement (docs/physics.md section 15),
against independent references written here and closed forms."""
import numpy as np
import pytest
import torch
from pydantic import ValidationError

import mcsim
from mcsim.engine.calibration import power_of_two_steps
from mcsim.engine.layers import AnalogLayer
from mcsim.physics import adc


def _layer(model) -> AnalogLayer:
    return next(m for m in model.modules() if isinstance(m, AnalogLayer))


def _cnn():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 6, 3),
                               torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(6 * 8 * 8, 5)).eval()


_X = torch.randn(4, 3, 10, 10, generator=torch.Generator().manual_seed(2))


def _run(model, x, trials=2, **hw):
    analog = mcsim.convert(model, mcsim.Hardware(**hw), trials=trials, seed=3, device="cpu")
    analog.calibrate([x])
    with torch.no_grad():
        return analog(x, image_ids=torch.arange(len(x))), analog


# ---------------------------------------------------------------- an ideal ADC: digital == analog
@pytest.mark.parametrize("pair", [
    dict(mapping="differential", slices=2),
    dict(mapping="offset", offset_reference="column", slices=2),
])
@pytest.mark.parametrize("rows", [
    dict(),  # the folded pass
    dict(input_mode="bitserial", input_accumulation="digital", parasitics={"rp": 1e-3}),  # gated: split, solved
])
def test_an_ideal_adc_subtracts_digitally_as_in_analog(pair, rows):
    hw = dict(pair, **rows, adc={"bits": None}, error={"model": "proportional", "sigma": 0.05}, rows_max=40)
    x = _X[:2]
    analog, _ = _run(_cnn(), x, **hw)
    digital, _ = _run(_cnn(), x, subtraction="digital", **hw)
    torch.testing.assert_close(digital, analog, rtol=1e-5, atol=1e-5 * float(analog.abs().max()))


# ---------------------------------------------------------------- a real ADC: an independent reference
def _quantize(y, lo, hi, bits, levels):
    """A reference ADC: the nearest of its levels (section 15), written from the definition."""
    if levels == "mid_tread":
        grid = lo + (hi - lo) / (2**bits - 1) * np.arange(2**bits)
    else:
        step = (hi - lo) / 2**bits
        grid = lo + step * (np.arange(2**bits) + 0.5)
    return grid[np.abs(y[..., None] - grid).argmin(-1)]


def _range(samples, percentile):
    tail = (100 - percentile) / 2
    return np.percentile(samples, [tail, 100 - tail])


def _sides(net, x, layer, mapping, slices, gmin=0.01, wb=8):
    """A Linear layer without device errors, by plain NumPy from the definitions (sections 2, 3, 5 and
    15): per slice, each side's column outputs ``(images, columns)`` (G+ and G-, or the columns and
    their reference column), each slice's factor in the recombination (in weight steps), and the
    scale and bias that make the layer's output of the recombined steps."""
    W, b = net[0].weight.detach().double().numpy(), net[0].bias.detach().double().numpy()
    Q = 2 ** (wb - 1) - 1
    w_max = np.abs(W).max()
    q = np.clip(np.round(W / w_max * Q), -Q, Q)
    n_max = 2**8 - 1  # unsigned inputs, 8 bits
    v = np.clip(np.round(x.double().numpy() / layer.x_range * n_max), 0, n_max) / n_max
    bm = wb - 1 if mapping == "differential" else wb
    bs = -(-bm // slices)
    L = 2**bs - 1

    def digits(value):  # per slice
        return [(value.astype(np.int64) // 2 ** (bs * s)) % 2**bs for s in range(slices)]

    if mapping == "differential":
        sides = [digits(np.maximum(q, 0)), digits(np.maximum(-q, 0))]
    else:  # one reference column per array, each slice's at the digit of u0 in that slice
        u0 = 2 ** (wb - 1)
        sides = [digits(q + u0), digits(np.full((1, W.shape[1]), u0))]
        # the references' digits recombine to the whole offset: none of it is left to remove digitally
        assert sum(2 ** (bs * s) * d[0, 0] for s, d in enumerate(sides[1])) == u0
    outputs = [[v @ (gmin + (1 - gmin) * side[s] / L).T for side in sides] for s in range(slices)]
    factors = [2 ** (bs * s) * L / (1 - gmin) for s in range(slices)]
    return outputs, factors, w_max / Q * layer.x_range, b


@pytest.mark.parametrize("levels,subtraction", [("mid_tread", "digital"), ("mid_rise", "digital"),
                                                ("mid_rise", "analog")])
@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_each_side_is_quantized_in_its_own_range_then_subtracted(levels, subtraction, mapping):
    """One Linear layer, no device errors: per side (G+ and G-, or the columns and their reference
    column) quantized in a range calibrated on that side's outputs, then subtracted, then the slices
    recombined, by plain NumPy from the definitions (sections 2, 3, 5, 7 and 15); with analog
    subtraction the difference quantized in its own calibrated range."""
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Linear(24, 7)).eval()
    x = torch.rand(48, 24, generator=torch.Generator().manual_seed(6))
    extra = dict(offset_reference="column") if mapping == "offset" else {}
    bits, slices, pct = 5, 2, 99.0
    out, model = _run(net, x, trials=1, mapping=mapping, subtraction=subtraction, slices=slices, **extra,
                      adc={"bits": bits, "levels": levels, "percentile": pct, "slice_ranges": "independent"})
    outputs, factors, scale, b = _sides(net, x, _layer(model), mapping, slices)
    z = 0.0
    for y, c in zip(outputs, factors):
        if subtraction == "digital":
            codes = [_quantize(yy, *_range(yy, pct), bits, levels) for yy in y]
            diff = codes[0] - codes[1]
        else:
            diff = _quantize(y[0] - y[1], *_range(y[0] - y[1], pct), bits, levels)
        z = z + c * diff
    expect = z * scale + b
    np.testing.assert_allclose(out[0].double().numpy(), expect, rtol=1e-5, atol=1e-5 * np.abs(expect).max())


@pytest.mark.parametrize("slices,levels,subtraction", [(2, "mid_tread", "analog"), (4, "mid_rise", "analog"),
                                                      (2, "mid_tread", "digital")])
def test_a_reference_column_quantizes_each_slice_in_its_own_power_of_two_range(slices, levels, subtraction):
    """The offset mapping's reference column with 2 and 4 weight slices, a real ADC with the default
    power-of-two slice ranges, no device errors: per slice the ADC inputs (the column minus its
    reference column, or each apart) quantized in a range of the widest calibrated width (per side)
    over a power of two, from the slice's own calibrated lower end (section 15), subtracted,
    recombined, by NumPy from the definitions. In analog the top slice's inputs lie around zero and
    the others' above it; digitized, the reference reads Gmin * sum(v) below the top slice and
    G_zero * sum(v) in it: no one range scaled by powers of two serves both (section 7's rule clipped
    one kind: the ISAAC preset fell to 39 %)."""
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Linear(24, 7)).eval()
    x = torch.rand(48, 24, generator=torch.Generator().manual_seed(6))
    bits, pct = 6, 100.0  # the whole range: no output clipped
    out, model = _run(net, x, trials=1, mapping="offset", offset_reference="column", subtraction=subtraction,
                      slices=slices, adc={"bits": bits, "levels": levels, "percentile": pct})
    layer = _layer(model)
    outputs, factors, scale, b = _sides(net, x, layer, "offset", slices)
    # What each ADC reads, per side: the difference (analog), or the columns and the reference (digital).
    inputs = [[y[0] - y[1] for y in outputs]] if subtraction == "analog" else [[y[i] for y in outputs] for i in (0, 1)]
    lo, hi = (np.array(r).reshape(len(inputs), slices) for r in layer.adc_range)  # range side * S + slice
    codes = []
    for side, ys in enumerate(inputs):
        own = np.array([_range(y, pct) for y in ys])  # (slices, 2): each slice calibrated on its own
        if subtraction == "analog":  # the top slice alone spans zero
            assert own[-1, 0] < 0 < own[-1, 1] and (own[:-1, 0] >= 0).all()
        width = (own[:, 1] - own[:, 0]).max()
        m = np.floor(np.log2(width / (own[:, 1] - own[:, 0])))  # the largest 2**m still covering its width
        np.testing.assert_allclose(np.stack([lo[side], hi[side]], 1), np.stack([own[:, 0], own[:, 0] + width / 2**m], 1),
                                   rtol=1e-6, atol=1e-9 * width)
        codes.append([_quantize(y, l, h, bits, levels) for y, l, h in zip(ys, lo[side], hi[side])])
    diffs = codes[0] if subtraction == "analog" else [a - r for a, r in zip(*codes)]
    expect = sum(c * d for d, c in zip(diffs, factors)) * scale + b
    np.testing.assert_allclose(out[0].double().numpy(), expect, rtol=1e-5, atol=1e-5 * np.abs(expect).max())
    # Nothing clipped: each conversion within half its step of its input.
    steps = (hi - lo) / (2**bits - 1 if levels == "mid_tread" else 2**bits)
    ideal = sum(c * (y[0] - y[1]) for y, c in zip(outputs, factors)) * scale + b
    bound = scale * (steps.sum(0) / 2 * factors).sum()
    assert np.abs(out[0].double().numpy() - ideal).max() <= 1.001 * bound


def test_power_of_two_steps_place_each_slice_over_its_own_outputs():
    lo, hi = power_of_two_steps([0.0, -3.0, 0.5, 0.25], [8.0, 1.0, 1.2, 0.75])
    assert (lo, hi) == ([0.0, -3.0, 0.5, 0.25], [8.0, 1.0, 1.5, 0.75])  # widths 8, 8 / 2, 8 / 8, 8 / 16
    lo, hi = power_of_two_steps([0.5, -1.0], [4.0, 1.0])  # 3.5 / 2 < 2: the slice keeps the whole width
    assert (lo, hi) == ([0.5, -1.0], [4.0, 2.5])


def test_mid_rise_codes_are_the_nearest_of_two_to_the_bits_levels():
    """The ADC physics alone: :func:`adc.code_transform` then :func:`adc.codes_`, read back through
    :func:`adc.level_grid`, against the reference quantizer (clipping included)."""
    y = torch.linspace(-3.3, 5.1, 10_001, dtype=torch.float64)
    lo, hi = torch.tensor(-2.0, dtype=torch.float64), torch.tensor(4.0, dtype=torch.float64)
    for levels in ("mid_tread", "mid_rise"):
        scale, shift = adc.code_transform(lo, hi, 4, levels)
        step, first = adc.level_grid(lo, hi, 4, levels)
        got = first + step * adc.codes_(y * scale + shift, 4)
        np.testing.assert_allclose(got.numpy(), _quantize(y.numpy(), -2.0, 4.0, 4, levels), atol=1e-12)
    step, first = adc.level_grid(lo, hi, 4, "mid_rise")
    assert float(step) == 6 / 16 and float(first) == -2 + 6 / 32  # 16 levels, none at zero


# ---------------------------------------------------------------- the reference column: closed forms
@pytest.mark.parametrize("reference", ["nominal", "column"])
def test_reference_column_errors_are_common_to_its_array(reference):
    """Zero weights on offset devices, programming error ``G' = G + sigma * eps`` on every device,
    continuous inputs, ideal ADC. Output ``i`` of a chip is ``K sum_j x_j (e_ij - r_j)`` with ``K =
    L / (1 - Gmin) * w_max / Q * sigma`` and ``r_j`` the reference device of row ``j`` (0 for the
    nominal offset): ``var = K**2 sum x**2 (1 + [column])`` and, between two outputs,
    ``cov = K**2 sum x**2 [column]``; the mean is zero."""
    net = torch.nn.Linear(16, 4, bias=False)
    torch.nn.init.zeros_(net.weight)
    x = torch.rand(1, 16, generator=torch.Generator().manual_seed(7)) + 0.5
    sigma, chips = 0.02, 3000
    out, _ = _run(torch.nn.Sequential(net).eval(), x, trials=chips, mapping="offset", offset_reference=reference,
                  input_bits=None,
                  adc={"bits": None}, error={"model": "independent", "sigma": sigma, "clip": False})
    z = out[:, 0, :].double().numpy()  # (chips, outputs)
    K = 255 / (1 - 0.01) * (1.0 / 127) * sigma  # w_max = 1 for all-zero weights
    s2 = float((x.double() ** 2).sum())
    col = reference == "column"
    c = np.cov(z, rowvar=False)
    var, cov = np.diag(c), c[~np.eye(4, dtype=bool)]
    se_var = K**2 * s2 * (1 + col) * np.sqrt(2 / chips)
    assert np.all(np.abs(var - K**2 * s2 * (1 + col)) < 4 * se_var)
    assert np.all(np.abs(cov - K**2 * s2 * col) < 4 * K**2 * s2 * np.sqrt((1 + col) ** 2 / chips))
    assert np.all(np.abs(z.mean(0)) < 4 * K * np.sqrt(s2 * (1 + col) / chips))


# ---------------------------------------------------------------- determinism, energy, validation
@pytest.mark.parametrize("hw", [
    dict(mapping="offset", offset_reference="column", subtraction="digital", slices=2, input_mode="bitserial",
         input_accumulation="digital", rows_max=30, error={"model": "proportional", "sigma": 0.05},
         read_noise={"model": "proportional", "sigma": 0.02}, adc={"bits": 6, "offset_lsb": 0.3, "gain_sigma": 0.02},
         drift={"time_s": 1e4}, faults={"stuck_off": 0.01}),
    dict(mapping="differential", subtraction="digital", input_mode="bitserial", parasitics={"rp": 1e-3},
         error={"model": "proportional", "sigma": 0.05}, adc={"bits": 7, "levels": "mid_rise", "noise_lsb": 0.2}),
])
def test_a_chip_alone_equals_the_chip_among_others(hw):
    model = _cnn()
    hardware = mcsim.Hardware(**hw)
    many = mcsim.convert(model, hardware, trials=5, seed=3, device="cpu")
    many.calibrate([_X])
    alone = mcsim.convert(model, hardware, trials=range(3, 4), seed=3, device="cpu")
    alone.load_calibration(many.calibration())
    with torch.no_grad():
        assert torch.equal(many(_X, image_ids=torch.arange(4))[3], alone(_X, image_ids=torch.arange(4))[0])


def test_digital_subtraction_counts_a_conversion_per_side():
    counts = {}
    for name, hw in {"analog": {}, "digital": dict(subtraction="digital"),
                     "offset": dict(mapping="offset"),
                     "reference": dict(mapping="offset", offset_reference="column", subtraction="digital")}.items():
        analog = mcsim.convert(_cnn(), mcsim.Hardware(**hw), trials=1, seed=0, device="cpu")
        analog.calibrate([_X])
        with mcsim.count_energy(analog) as counter:
            analog(_X)
        counts[name] = counter.result().counts["adc_conversions"][0]
    np.testing.assert_array_equal(counts["digital"], 2 * counts["analog"])
    # one more conversion per array (group, partition) and output position: the reference column's
    np.testing.assert_array_equal(counts["reference"], counts["offset"] * np.array([9, 7, 6]) / np.array([8, 6, 5]))


def test_nonsense_combinations_are_refused():
    with pytest.raises(ValidationError, match="offset_reference: a reference column"):
        mcsim.Hardware(mapping="differential", offset_reference="column")
    with pytest.raises(ValidationError, match="adc.grid"):
        mcsim.Hardware(adc={"levels": "mid_rise", "grid": True})
    with pytest.raises(ValidationError, match="offset_reference"):
        mcsim.Hardware(mapping="offset", offset_reference="column", variation={"column": 0.01})
    with pytest.raises(ValidationError, match="subtraction"):
        mcsim.Hardware(subtraction="both")


def test_each_side_of_a_digital_pair_has_its_own_adc_mismatch():
    mismatch = {"bits": 6, "gain_sigma": 0.05, "offset_lsb": 0.5}
    _, model = _run(_cnn(), _X[:2], trials=2, subtraction="digital", adc=mismatch)
    layer = _layer(model)
    scale, shift = layer._codes(layer._pass())  # per ADC (Tc, g, P, S, columns): G+ columns, then G-
    ng = layer.geom.ng
    assert scale.shape[-1] == 2 * ng == layer.cols
    ratio = scale[..., ng:] / scale[..., :ng]  # one range per side: the ratio of two gains, drawn apart
    assert ratio.std() > 0.02 and (shift[..., ng:] - shift[..., :ng]).std() > 0.1


@pytest.mark.parametrize("design", ["ISAAC", "PRIME"])
def test_a_chip_alone_is_the_chip_among_others_on_resnet18(design):
    """The published chips' circuits (a reference column subtracted in analog over 8 weight slices;
    pairs digitized apart with 3-bit input slices) with programming error, read noise, stuck cells and
    ADC mismatch on a torchvision ResNet18: a chip alone gives the same bits as among others."""
    import torchvision

    from mcsim.models import randomized

    net = randomized(torchvision.models.resnet18(num_classes=10))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    hw = mcsim.Hardware(design=design, error={"model": "proportional", "sigma": 0.05},
                        read_noise={"model": "proportional", "sigma": 0.02}, faults={"stuck_off": 0.01},
                        adc={"offset_lsb": 0.5, "noise_lsb": 0.3})
    block = mcsim.convert(net, hw, trials=[0, 1, 2], seed=5, device="cpu")
    block.calibrate([x])
    alone = mcsim.convert(net, hw, trials=[1], seed=5, device="cpu")
    alone.load_calibration(block.calibration())
    ids = torch.arange(len(x))
    full = block(x, image_ids=ids).detach()
    assert torch.equal(alone(x, image_ids=ids).detach(), full[[1]])
    assert not torch.equal(full[0], full[1])  # the chips differ
