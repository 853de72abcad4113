"""Stuck cells (docs/physics.md 13.3): counts per chip against the binomial law, independence of the two
devices of a differential pair, stuck values exact, and a fully stuck-off differential chip holds zero weights."""
import math

import pytest
import torch

from mcsim import Hardware
from draws_support import LAYERS, analog_layer, draw

P_OFF, P_ON = 0.02, 0.005


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("mapping", ["differential", "offset"])
def test_stuck_counts_per_chip_are_binomial(name, mapping):
    # Proportional programming error without clipping: no programmed device lands exactly on Gmin or
    # Gmax, so the devices there are the stuck ones.
    hw = Hardware(mapping=mapping, error={"model": "proportional", "sigma": 0.05, "clip": False},
                  faults={"stuck_off": P_OFF, "stuck_on": P_ON})
    layer = analog_layer(name, hw, chips=list(range(6)))
    g, _ = draw(layer)
    for kind, x in g.items():
        n = x[0].numel()
        for p, value in ((P_OFF, hw.gmin), (P_ON, 1.0)):
            counts = (x == value).flatten(1).sum(1).double()
            se = math.sqrt(n * p * (1 - p))
            assert ((counts - n * p).abs() < 3 * se).all(), (kind, counts, n * p, se)
    if mapping == "differential":  # each device of a pair independently: both stuck off at rate p**2
        both = ((g["pos"] == hw.gmin) & (g["neg"] == hw.gmin)).flatten(1).sum(1).double()
        n = g["pos"][0].numel()
        assert ((both - n * P_OFF**2).abs() < 3 * math.sqrt(n * P_OFF**2)).all()


def test_stuck_devices_hold_through_drift_and_calibration_is_error_free():
    hw = Hardware(faults={"stuck_off": 0.1, "stuck_on": 0.1}, drift={"time_s": 1e5, "nu_mean": 0.05})
    layer = analog_layer("vit.encoder.layers.encoder_layer_0.mlp.0", hw, chips=[0, 1])
    g, _ = draw(layer)
    stuck_on = g["pos"] == 1.0
    assert 0.08 < stuck_on.double().mean() < 0.12  # the drifted devices all moved below 1
    clean, _ = draw(layer, error_free=True)
    assert torch.equal(clean["pos"][0], layer.target_pos)


def test_a_fully_stuck_off_differential_chip_has_zero_weights():
    hw = Hardware(error={"model": "proportional", "sigma": 0.1}, faults={"stuck_off": 1.0})
    layer = analog_layer("resnet18.layer1.0.conv1", hw, chips=[0, 1])
    g, _ = draw(layer)
    assert torch.equal(g["pos"] - g["neg"], torch.zeros_like(g["pos"]))


def test_chip_events_are_a_bernoulli_process():
    """Every device stuck with probability p, independently of its neighbours, whatever its position
    (the geometric gaps of rng.chip_events), and one chip's events do not depend on the block."""
    from mcsim.engine import rng

    p, n, chips = 0.3, 40, 4000
    keys = rng.derive(11, torch.arange(chips), 5)
    hits = torch.zeros(chips, n)
    for c, (idx, _) in enumerate(rng.chip_events(keys, n, p)):
        hits[c, idx] = 1
    se = math.sqrt(p * (1 - p) / chips)
    assert ((hits.mean(0) - p).abs() < 4 * se).all()  # each position, first to last
    both = (hits[:, 1:] * hits[:, :-1]).mean()
    assert abs(both - p * p) < 4 * math.sqrt(p * p / (chips * (n - 1)))  # neighbours independent
    alone = rng.chip_events(keys[7:8], n, p)[0]
    assert torch.equal(alone[0], rng.chip_events(keys, n, p)[7][0])
