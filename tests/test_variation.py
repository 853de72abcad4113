"""Correlated variation (docs/physics.md 13.4) against the product rule, on a ResNet18 conv and a ViT
projection: each component's weight-error variance, the chip component shared by the arrays of a chip
(and by its layers), not by two chips."""
import math

import numpy as np
import pytest
import torch

from mcsim import Hardware
from draws_support import LAYERS, analog_layer, draw

CELL = 0.05
SPLIT = {"rows_max": 100, "cols_max": 48, "slices": 2}  # several partitions, column blocks and slices


def _weight_error_stats(name, hw, chips):
    """Per chip, the mean over devices of the squared error of the differential weight (G+ - G-) and its
    closed form: var(D) = (1 + s_chip**2)(1 + s_array**2) [dG**2 + (G+**2 + G-**2)((1 + s_cell**2)
    (1 + s_col**2) - 1)] - dG**2 (the pair shares chip and array factors, not column factors)."""
    stats = []
    for block in np.array_split(np.asarray(chips), max(1, len(chips) // 20)):
        layer = analog_layer(name, hw, chips=block.tolist())
        g, _ = draw(layer)
        d = (g["pos"] - g["neg"]).double() - (layer.target_pos - layer.target_neg)
        stats.append(d.pow(2).flatten(1).mean(1))
    v, gp, gn = hw.variation, layer.target_pos, layer.target_neg
    dg = gp - gn
    s_cell = hw.error.sigma if hw.error.model == "proportional" else 0.0
    var = ((1 + v.chip**2) * (1 + v.array**2) * (dg**2 + (gp**2 + gn**2) * ((1 + s_cell**2) * (1 + v.column**2) - 1))
           - dg**2)
    return torch.cat(stats).numpy(), float(var.mean())


COMPONENTS = {
    "cell": {"error": {"model": "proportional", "sigma": CELL, "clip": False}},
    "chip": {"variation": {"chip": 0.04}, "error": {"clip": False}},
    "array": {"variation": {"array": 0.04}, "error": {"clip": False}},
    "column": {"variation": {"column": 0.04}, "error": {"clip": False}},
    "all": {"error": {"model": "proportional", "sigma": CELL, "clip": False},
            "variation": {"chip": 0.03, "array": 0.02, "column": 0.04}},
}


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("component", list(COMPONENTS))
def test_weight_error_variance_follows_the_product_rule(name, component):
    hw = Hardware(**SPLIT, **COMPONENTS[component])
    per_chip, want = _weight_error_stats(name, hw, range(120))
    se = per_chip.std(ddof=1) / math.sqrt(len(per_chip))
    assert abs(per_chip.mean() - want) < 4 * se + 1e-12 * want, (per_chip.mean(), want, se)
    assert abs(per_chip.mean() - want) < 0.2 * want


def _array_means(layer, g, kind="pos"):
    """Mean relative error of each array (slice 0, group 0, partition p, all columns) per chip: (Tc, P)."""
    part = layer.part
    t = getattr(layer, f"target_{kind}")[0]
    rel = part.split(g[kind][:, 0].double() / t - 1)  # (Tc, groups, P, N_g, Cp, kh, kw); padding is 0
    owned = part.split(torch.ones_like(t))
    return (rel.sum((-4, -3, -2, -1)) / owned.sum((-4, -3, -2, -1)))[:, 0]


def test_arrays_of_a_chip_share_the_chip_component_two_chips_do_not():
    s_chip, s_array = 0.04, 0.03
    hw = Hardware(weight_bits=None, rows_max=100, on_off_ratio=10,
                  error={"model": "proportional", "sigma": CELL, "clip": False},
                  variation={"chip": s_chip, "array": s_array})
    name = "resnet18.layer1.0.conv1"
    means = torch.cat([_array_means(layer := analog_layer(name, hw, list(range(c, c + 50))), draw(layer)[0])
                       for c in range(0, 400, 50)]).numpy()  # (T, P)
    assert means.shape[1] >= 2
    n = layer.part.split(torch.ones_like(layer.target_pos[0]))[0, 0].sum().item()  # devices of array 0
    var = (1 + s_chip**2) * (1 + s_array**2) * (1 + CELL**2 / n) - 1
    rho = s_chip**2 / var  # same chip, two arrays: cov = s_chip**2
    same = np.corrcoef(means[:, 0], means[:, 1])[0, 1]
    other = np.corrcoef(means[:-1, 0], means[1:, 1])[0, 1]  # array 0 of chip t, array 1 of chip t + 1
    se = (1 - rho**2) / math.sqrt(len(means))
    assert abs(same - rho) < 4 * se, (same, rho, se)
    assert abs(other) < 4 / math.sqrt(len(means)), other
    np.testing.assert_allclose(means.var(0, ddof=1), var, rtol=4 * math.sqrt(2 / len(means)))


def test_the_chip_component_is_one_draw_for_all_layers():
    hw = Hardware(weight_bits=None, variation={"chip": 0.05}, error={"clip": False})
    ratios = []
    for name in LAYERS:
        layer = analog_layer(name, hw, chips=[2, 9])
        g, _ = draw(layer)
        r = g["pos"].double() / layer.target_pos - 1  # (Tc, S, C_out, K), one value per chip
        assert torch.allclose(r, r.flatten(1)[:, :1].view(-1, 1, 1, 1).expand_as(r), atol=1e-6)
        ratios.append(r.flatten(1)[:, 0])
    torch.testing.assert_close(ratios[0], ratios[1], atol=1e-6, rtol=0)
    assert (ratios[0][0] - ratios[0][1]).abs() > 1e-4  # two chips differ
