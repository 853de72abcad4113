"""engine/draws.py reproduces AnalogLayer's programming bit for bit when no new effect is on, and a chip
is the same chip in any block with every effect on (docs/physics.md sections 9 and 13)."""
import pytest
import torch

from mcsim import Hardware
from mcsim.engine import draws

from draws_support import LAYERS, analog_layer, draw

CONFIGS = {
    "none": {},
    "proportional": {"error": {"model": "proportional", "sigma": 0.05}},
    "sonos_sliced_parts": {"error": {"model": "sonos_tcas"}, "slices": 2, "rows_max": 100, "on_off_ratio": None},
    "offset_drift": {"mapping": "offset", "error": {"model": "independent", "sigma": 0.02},
                     "drift": {"time_s": 3600, "nu_std": 0.01, "compensate": True}},
    "drift_only": {"drift": {"time_s": 100, "nu_mean": 0.03, "nu_std": 0.005}, "weight_bits": None},
}


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("error_free", [False, True])
def test_program_devices_equals_the_layer_bit_for_bit(name, config, error_free):
    layer = analog_layer(name, Hardware(**CONFIGS[config]), chips=[0, 3, 5])
    want, want_alpha = layer._program_devices(error_free)
    got, alpha = draw(layer, error_free)
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype
        assert torch.equal(got[k], want[k])
    assert (alpha is None) == (want_alpha is None)
    if alpha is not None:
        assert torch.equal(alpha, want_alpha)


def test_stream_values_are_kept():
    """The streams key chips already simulated: their values must never change."""
    assert (draws._STREAM_PROGRAM, draws._STREAM_DRIFT, draws._STREAM_READ) == (1, 11, 101)


ALL_ON = dict(
    error={"model": "proportional", "sigma": 0.04}, faults={"stuck_off": 0.02, "stuck_on": 0.01},
    variation={"chip": 0.03, "array": 0.02, "column": 0.01}, cols_max=48, rows_max=200, slices=2,
    drift={"model": "pcm", "time_s": 1e4, "compensate": True},
    adc={"offset_lsb": 0.5, "gain_sigma": 0.01, "noise_lsb": 0.3},
)


@pytest.mark.parametrize("name", list(LAYERS))
def test_a_chip_alone_equals_the_chip_among_others(name):
    layer = analog_layer(name, Hardware(**ALL_ON), chips=list(range(8)))
    block, alpha = draw(layer)
    alone, alpha1 = draw(layer, chips=[3])
    for k in block:
        assert torch.equal(alone[k][0], block[k][3])
    assert torch.equal(alpha1[0], alpha[3])
    hw, key, n = layer.hw, layer.key, draws.adc_count(layer.part, layer.n_slices)
    g8, o8 = draws.adc_mismatch(hw, 7, torch.arange(8), key, n)
    g1, o1 = draws.adc_mismatch(hw, 7, torch.tensor([3]), key, n)
    assert torch.equal(g1[0], g8[3]) and torch.equal(o1[0], o8[3])
    ids = torch.tensor([4, 9])
    c8 = draws.read_noise(7, torch.arange(8), key, ids, 2, 2, n)
    c1 = draws.read_noise(7, torch.tensor([3]), key, ids, 2, 2, n)
    assert torch.equal(c1[:, :, 0], c8[:, :, 3])


def test_zero_settings_draw_nothing():
    hw = Hardware(adc={"bits": 8})
    assert draws.adc_mismatch(hw, 1, torch.arange(2), 5, 10) is None
