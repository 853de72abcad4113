"""Engine statistics and circuits against closed forms and an independent nodal analysis."""
import contextlib

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from mcsim import Hardware, convert
from mcsim.physics.devices import PROGRAMMING_FITS

GMIN = 0.01


def _layer(k=64, n=4, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(k, n)


def _conductances(w):
    """Differential targets of continuous weights (docs/physics.md section 3), float64."""
    r = w / np.abs(w).max()
    return GMIN + (1 - GMIN) * np.maximum(r, 0), GMIN + (1 - GMIN) * np.maximum(-r, 0)


SIGMA = {
    "independent": lambda g: np.full_like(g, 0.03),
    "proportional": lambda g: 0.05 * g,
    # the published fits, evaluated in physical units and normalized by the physical Gmax
    "sonos": lambda g: 19.88665 * (1 - np.exp(-g * 1600 / 176.3115)) / 1600,
    "pcm": lambda g: np.maximum(-0.00178767 * (25 * g) ** 2 + 0.07585724 * 25 * g + 0.28638599, 0) / 25,
    "rram": lambda g: np.maximum(-0.009107 * 225 * g + 4.782321, 0) / 225,
}


@pytest.mark.parametrize("model", list(SIGMA))
def test_programming_error_variance_matches_closed_form(model):
    """var(W'x - Wx) = (w_max / (1 - Gmin))**2 * sum_j x_j**2 (sigma(G+_j)**2 + sigma(G-_j)**2)."""
    lin = _layer()
    err = {"model": model, "clip": False}
    err.update({"sigma": {"independent": 0.03, "proportional": 0.05}[model]} if model in ("independent", "proportional") else {})
    hw = Hardware(weight_bits=None, input_bits=None, adc={"bits": None}, error=err)
    trials = 3000
    # rram's fit was measured above Gmin at the default on/off ratio: the closed form extrapolates it too.
    with pytest.warns(UserWarning, match="extrapolated") if model == "rram" else contextlib.nullcontext():
        analog = convert(nn.Sequential(lin), hw, trials=trials, seed=5)
    x = torch.rand(2, 64)
    e = (analog(x) - lin(x).detach()).double().numpy()  # (T, B, n)
    w = lin.weight.detach().double().numpy()
    gp, gn = _conductances(w)
    var = (np.abs(w).max() / (1 - GMIN)) ** 2 * (x.double().numpy() ** 2) @ (SIGMA[model](gp) ** 2 + SIGMA[model](gn) ** 2).T
    assert np.abs(e.mean(0)).max() < 5 * np.sqrt(var.max() / trials)
    np.testing.assert_allclose(e.var(0), var, rtol=0.12)


@pytest.mark.parametrize("model,sigma", [("independent", 0.02), ("proportional", 0.05)])
def test_read_noise_variance_matches_closed_form(model, sigma):
    """Read noise is drawn per image and per chip with the same closed-form variance."""
    lin = _layer()
    hw = Hardware(weight_bits=None, input_bits=None, adc={"bits": None}, read_noise={"model": model, "sigma": sigma})
    analog = convert(nn.Sequential(lin), hw, trials=4, seed=1)
    x = torch.rand(1, 64).expand(4000, -1)
    e = (analog(x, image_ids=torch.arange(4000)) - lin(x).detach()).double().numpy()  # (T, images, n)
    w = lin.weight.detach().double().numpy()
    gp, gn = _conductances(w)
    sig = SIGMA[model] if model == "proportional" else (lambda g: np.full_like(g, sigma))
    var = (np.abs(w).max() / (1 - GMIN)) ** 2 * (x[0].double().numpy() ** 2) @ (sig(gp) ** 2 + sig(gn) ** 2).T
    np.testing.assert_allclose(e.reshape(-1, 4).var(0), var, rtol=0.06)  # 16,000 draws per output


def test_proportional_sigma_function_matches_published_fits():
    g = torch.linspace(0.01, 1, 50, dtype=torch.float64)
    for name in ("sonos", "pcm", "rram"):
        np.testing.assert_allclose(PROGRAMMING_FITS[name].normalized_sigma(g).numpy(), SIGMA[name](g.numpy()), rtol=1e-12)


def _column_current(g, v, rp):
    """Nodal analysis of one column (docs/physics.md section 8), stamped as a dense matrix.

    Node k (row k) gets its device G_k from the input V_k; segments rp join k to k+1 and the last
    node to the virtual ground. Returns the current into the virtual ground."""
    n = len(g)
    a = np.zeros((n, n))
    b = g * v
    for k in range(n):
        a[k, k] += g[k]
        if k + 1 < n:
            a[k, k] += 1 / rp
            a[k + 1, k + 1] += 1 / rp
            a[k, k + 1] -= 1 / rp
            a[k + 1, k] -= 1 / rp
    a[n - 1, n - 1] += 1 / rp
    return np.linalg.solve(a, b)[n - 1] / rp


@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_parasitic_layer_matches_nodal_analysis(mapping):
    """A partitioned Linear with IR drop equals per-array, per-column nodal solves, currents
    subtracted (differential) or offset removed (offset) after the drops."""
    lin = _layer(k=30, n=3, seed=3)
    rp, rows_max = 0.02, 16
    hw = Hardware(mapping=mapping, weight_bits=None, input_bits=None, adc={"bits": None}, rows_max=rows_max,
                  parasitics={"rp": rp})
    x = torch.rand(2, 30)
    out = convert(nn.Sequential(lin), hw, trials=1)(x)[0].double().numpy()
    w = lin.weight.detach().double().numpy()
    w_max = np.abs(w).max()
    if mapping == "differential":
        cols = _conductances(w)
    else:
        cols = (GMIN + (1 - GMIN) * (1 + w / w_max) / 2,)
    bounds = [0, 15, 30]  # 30 rows in two arrays of 15
    ref = np.zeros((2, 3))
    for i in range(2):
        for o in range(3):
            for p in range(2):
                rows = slice(bounds[p], bounds[p + 1])
                cur = [_column_current(g[o, rows], x[i, rows].double().numpy(), rp) for g in cols]
                ref[i, o] += cur[0] - cur[1] if mapping == "differential" else cur[0]
    if mapping == "differential":
        ref = ref / (1 - GMIN) * w_max
    else:
        g_zero = GMIN + (1 - GMIN) / 2
        ref = (ref - g_zero * x.double().numpy().sum(1, keepdims=True)) / (1 - GMIN) * 2 * w_max
    ref += lin.bias.detach().double().numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    ideal = convert(nn.Sequential(lin), hw.model_copy(update={"parasitics": hw.parasitics.model_copy(update={"rp": 0.0})}), trials=1)(x)[0]
    assert np.abs(ideal.double().numpy() - out).max() > 1e-3  # the drops are visible


@pytest.mark.parametrize(
    "settings,field",
    [
        ({"error": {"model": "proportional", "sigma": -0.1}}, "sigma"),
        ({"slices": 9}, "slices"),
        ({"adc": {"bits": 0}}, "bits"),
        ({"error": {"model": "memristor"}}, "model"),
        ({"mapping": "twos-complement"}, "mapping"),
        ({"weight_bits": None, "slices": 2}, "slices"),
        ({"input_mode": "bitserial", "input_bits": None}, "input_mode"),
        ({"adc": {"range": "explicit"}}, "limits"),
    ],
)
def test_invalid_hardware_fails_naming_the_field(settings, field):
    with pytest.raises(ValidationError) as e:
        Hardware(**settings)
    assert field in str(e.value)


def test_parasitic_conv_with_kernel_larger_than_array_matches_nodal_analysis():
    """A 3x3 kernel on 5-row arrays: rows are cut into contiguous ranges of the im2col matrix, and
    each array's circuit holds only its own rows (no wire segments for rows it does not own)."""
    torch.manual_seed(4)
    conv = nn.Conv2d(2, 3, 3, bias=False)
    rp = 0.05
    hw = Hardware(weight_bits=None, input_bits=None, adc={"bits": None}, rows_max=5, parasitics={"rp": rp})
    x = torch.rand(1, 2, 3, 3)  # one output pixel: its patch is the whole input
    out = convert(nn.Sequential(conv), hw, trials=1)(x)[0].reshape(3).double().numpy()
    w = conv.weight.detach().reshape(3, 18).double().numpy()
    gp, gn = _conductances(w)
    v = x.reshape(18).double().numpy()
    bounds = [0, 5, 10, 14, 18]  # 18 rows in near-equal contiguous arrays of at most 5
    ref = np.zeros(3)
    for o in range(3):
        for a, b in zip(bounds[:-1], bounds[1:]):
            ref[o] += _column_current(gp[o, a:b], v[a:b], rp) - _column_current(gn[o, a:b], v[a:b], rp)
    ref = ref / (1 - GMIN) * np.abs(w).max()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


DRIFT_PATHS = {  # the folded path (ideal ADC) and the split path (a fine ADC over a wide range)
    "folded": {"bits": None},
    "split": {"bits": 16, "range": "explicit", "limits": (-80.0, 80.0)},
}


@pytest.mark.parametrize("path", DRIFT_PATHS)
@pytest.mark.parametrize("mapping", ["differential", "offset"])
@pytest.mark.parametrize("compensate", [False, True])
def test_drift_scales_outputs_by_the_closed_form_factor(compensate, mapping, path):
    """nu_std = 0: every device drifts by f = (t / t0)**-nu, so the analog column outputs scale by f.
    Differential: W'x = f W x. Offset: the digital subtraction of the nominal ``G_zero sum(x)`` is
    not scaled, so W'x = f (W x + G_zero sum x) - G_zero sum x. Global compensation (total
    conductance read back) rescales the analog outputs by 1/f before the subtraction: W x exactly."""
    lin = _layer()
    drift = {"time_s": 3600.0, "t0_s": 20.0, "nu_mean": 0.06, "nu_std": 0.0, "compensate": compensate}
    hw = Hardware(mapping=mapping, weight_bits=None, input_bits=None, adc=DRIFT_PATHS[path], drift=drift)
    x = torch.rand(3, 64)
    out = convert(nn.Sequential(lin), hw, trials=2)(x) - lin.bias.detach()
    f = 1.0 if compensate else (3600.0 / 20.0) ** -0.06
    w = lin.weight.detach().double()
    wx = x.double() @ w.T
    # Offset, continuous weights: G = Gmin + (1 - Gmin)(1 + w / w_max) / 2 per device, in weight units
    # (2 w_max / (1 - Gmin) per unit of column output) G_zero sum(x) is w_max (1 + 2 Gmin / (1 - Gmin)) sum(x).
    g_zero = w.abs().max() * (1 + 2 * hw.gmin / (1 - hw.gmin)) * x.double().sum(1, keepdim=True)
    ref = f * wx if mapping == "differential" else f * (wx + g_zero) - g_zero
    tol = 1e-5 if path == "folded" else 2e-3
    assert torch.allclose(out.double(), ref.expand(2, -1, -1), atol=tol * ref.abs().max().item())


@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_compensated_drift_is_unbiased_with_spread_exponents(mapping):
    """nu_std > 0: devices drift apart, and compensation by the total conductance leaves the outputs
    unbiased to first order. The mean error over 400 chips is within 4 standard errors of zero
    (compensating the offset term too would bias it by (alpha - 1) G_zero sum(x), about 40 SE)."""
    lin = _layer(k=32, n=2)
    drift = {"time_s": 3600.0, "t0_s": 20.0, "nu_mean": 0.06, "nu_std": 0.01, "compensate": True}
    hw = Hardware(mapping=mapping, weight_bits=None, input_bits=None, adc={"bits": None}, drift=drift)
    x = torch.rand(2, 32)
    err = (convert(nn.Sequential(lin), hw, trials=400)(x) - lin(x).detach()).double()  # (chips, 2, 2)
    mean, se = err.mean(0), err.std(0) / 400**0.5
    assert (mean.abs() < 4 * se + 1e-6).all(), (mean, se)
