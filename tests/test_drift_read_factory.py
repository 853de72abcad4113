"""Conductance-dependent drift, read noise growing with time (docs/physics.md 13.5) and a user's device
function (13.2), against their closed forms."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from mcsim import Hardware
from mcsim.physics import devices
from draws_support import analog_layer, draw

TABLE = "scenarios/devices/pcm_joshi2020.csv"
VIT = "vit.encoder.layers.encoder_layer_0.mlp.0"


def test_the_pcm_drift_fit_is_nandakumar_2019():
    g = torch.tensor([1e-9, 0.01, 0.1, 0.5, 1.0], dtype=torch.float64)
    mean, std = devices.nu_moments(g, Hardware(drift={"model": "pcm", "time_s": 100}).drift)
    ln = np.log(np.maximum(g.numpy(), 1e-7))
    np.testing.assert_allclose(mean.numpy(), np.clip(-0.0155 * ln + 0.0244, 0.049, 0.1), rtol=1e-12)
    np.testing.assert_allclose(std.numpy(), np.clip(-0.0125 * ln - 0.0059, 0.008, 0.045), rtol=1e-12)


def test_drift_exponents_follow_the_table():
    """nu per device ~ N(nu_mean(G), nu_std(G)) at its target G: recovered from G(t) = G0 (t / t0)**-nu."""
    hw = Hardware(drift={"model": "table", "file": TABLE, "time_s": 1e6}, on_off_ratio=100)
    layer = analog_layer(VIT, hw, chips=list(range(40)))
    g, _ = draw(layer)
    cols = pd.read_csv(TABLE, comment="#")
    gn = cols["G"] / 25
    for kind in g:
        t = getattr(layer, f"target_{kind}").expand_as(g[kind]).numpy()
        nu = -np.log(g[kind].double().numpy() / t) / math.log(1e6 / 20)
        resid = nu - np.interp(t, gn, cols["nu_mean"])
        var = np.interp(t, gn, cols["nu_std"]) ** 2
        n = resid.size
        # devices of one chip are independent: the residual's mean and second moment are sample means
        assert abs(resid.mean()) < 4 * math.sqrt(var.mean() / n)
        assert abs((resid**2).mean() / var.mean() - 1) < 4 * math.sqrt(2 / n) + 1e-3


def test_compensation_restores_the_total_conductance():
    hw = Hardware(drift={"model": "pcm", "time_s": 1e7, "compensate": True},
                  error={"model": "table", "file": TABLE})
    layer = analog_layer(VIT, hw, chips=[0, 1])
    g, alpha = draw(layer)
    g0, _ = draw(layer, hw=Hardware(error={"model": "table", "file": TABLE}))
    total = sum(x.double().sum((1, 2, 3)) for x in g.values())
    total0 = sum(x.double().sum((1, 2, 3)) for x in g0.values())
    torch.testing.assert_close(alpha.double() * total, total0, rtol=1e-6, atol=0)


@pytest.mark.parametrize("t", [20.0, 3600.0, 3.15e7])
def test_read_noise_grows_with_time_since_programming(t, tmp_path):
    table = tmp_path / "r.csv"
    table.write_text("# gmax: 10 uS\nG,sigma_read\n0,0.1\n10,0.3\n")
    hw = Hardware(read_noise={"model": "table", "file": str(table), "t_read_s": 1e-6}, drift={"time_s": t})
    g = torch.linspace(0, 1, 11, dtype=torch.float64)
    growth = math.log((t + 1e-6) / 2e-6)
    want = ((0.1 + 0.2 * g) / 10) ** 2 * growth
    torch.testing.assert_close(devices.read_variance(g, hw.read_noise, hw.drift.time_s), want, rtol=1e-12, atol=0)
    pcm = Hardware(read_noise={"model": "pcm", "t_read_s": 2.5e-7}, drift={"time_s": t}).read_noise
    q = np.minimum(0.0088 / np.maximum(g.numpy() ** 0.65, 1e-3), 0.2)
    np.testing.assert_allclose(devices.read_variance(g, pcm, t).numpy(),
                               (g.numpy() * q) ** 2 * math.log((t + 2.5e-7) / 5e-7), rtol=1e-12)
    with pytest.raises(ValueError, match="read_noise.t_read_s"):
        devices.read_variance(g, hw.read_noise)  # the engine must pass the time


def test_time_settings_are_checked():
    with pytest.raises(ValidationError, match="read_noise.t_read_s: read noise growing with time needs drift.time_s"):
        Hardware(read_noise={"model": "independent", "sigma": 0.01, "t_read_s": 1e-6})
    with pytest.raises(ValidationError, match="read_noise.t_read_s: the 'pcm' model"):
        Hardware(read_noise={"model": "pcm"}, drift={"time_s": 100})
    with pytest.raises(ValidationError, match="drift.nu_mean: only used with drift.model 'constant'"):
        Hardware(drift={"model": "pcm", "nu_mean": 0.1, "time_s": 100})
    # constant read noise keeps today's variance exactly
    g = torch.rand(10, dtype=torch.float64)
    noise = Hardware(read_noise={"model": "proportional", "sigma": 0.03}).read_noise
    assert torch.equal(devices.read_variance(g, noise), (0.03 * g.abs()) ** 2)


def test_a_user_function_gets_the_keyed_normals():
    ref = {"model": "factory", "factory": "device_functions:proportional_7pct"}
    layer = analog_layer(VIT, Hardware(error={"model": "proportional", "sigma": 0.07}), chips=[1, 4])
    want, _ = draw(layer)
    got, _ = draw(layer, hw=Hardware(error=ref))
    for kind in want:
        torch.testing.assert_close(got[kind], want[kind], rtol=0, atol=1e-7)
    alone, _ = draw(layer, chips=[4], hw=Hardware(error=ref))
    assert torch.equal(alone["pos"][0], got["pos"][1])


def test_a_user_function_of_its_own_form():
    hw = Hardware(error={"model": "factory", "factory": "device_functions:skewed", "clip": False})
    layer = analog_layer(VIT, hw, chips=list(range(30)))
    g, _ = draw(layer)
    t = layer.target_pos.float()
    err = (g["pos"] - t).double()
    low = (t < 0.5).expand_as(err)
    n = int(low.sum())
    assert abs(err[low].mean().item() - 0.01) < 4 * 0.02 / math.sqrt(n)
    for part in (err[low], err[~low]):
        assert abs(part.std().item() / 0.02 - 1) < 4 / math.sqrt(2 * part.numel())


def test_user_function_settings_are_checked():
    with pytest.raises(ValidationError, match="error.factory: required"):
        Hardware(error={"model": "factory"})
    with pytest.raises(ValidationError, match="error.factory: 'nope' is not of the form"):
        Hardware(error={"model": "factory", "factory": "nope"})
    with pytest.raises(ValidationError, match="error.factory: cannot import 'device_functions:missing'"):
        Hardware(error={"model": "factory", "factory": "device_functions:missing"})
    layer = analog_layer(VIT, Hardware(error={"model": "factory", "factory": "device_functions:wrong_shape"}), [0])
    with pytest.raises(ValueError, match="error.factory: 'device_functions:wrong_shape' must return a tensor"):
        draw(layer)
