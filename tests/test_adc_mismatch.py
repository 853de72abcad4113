"""ADC mismatch and comparator noise (docs/physics.md 13.6): the draws' moments and independence, the
code transform against the definition code = round((g' y + o step - lo) / step), and zero settings."""
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mcsim import Hardware
from mcsim.engine import draws
from mcsim.engine.arrays import Geometry, Partitioning
from mcsim.physics import adc


def test_gain_and_offset_are_normal_per_adc_and_chip():
    hw = Hardware(adc={"bits": 8, "offset_lsb": 0.7, "gain_sigma": 0.02})
    gain, off = draws.adc_mismatch(hw, 3, torch.arange(200), 12345, 500)
    assert gain.shape == off.shape == (200, 500) and gain.dtype == torch.float64
    n = gain.numel()
    for x, mean, sd in ((gain, 1.0, 0.02), (off, 0.0, 0.7)):
        assert abs(x.mean().item() - mean) < 4 * sd / math.sqrt(n)
        assert abs(x.std().item() / sd - 1) < 4 / math.sqrt(2 * n)
    assert abs(np.corrcoef(gain.flatten(), off.flatten())[0, 1]) < 4 / math.sqrt(n)
    other, _ = draws.adc_mismatch(hw, 3, torch.arange(200), 999, 500)  # another layer: other ADCs
    assert abs(np.corrcoef(gain.flatten(), other.flatten())[0, 1]) < 4 / math.sqrt(n)


def test_only_the_components_set_are_drawn():
    g, o = draws.adc_mismatch(Hardware(adc={"bits": 8, "offset_lsb": 0.5}), 1, torch.arange(3), 5, 7)
    assert torch.equal(g, torch.ones(3, 7, dtype=torch.float64)) and o.abs().sum() > 0
    g, o = draws.adc_mismatch(Hardware(adc={"bits": 8, "gain_sigma": 0.5}), 1, torch.arange(3), 5, 7)
    assert torch.equal(o, torch.zeros(3, 7, dtype=torch.float64)) and (g != 1).all()


def test_the_mismatched_code_transform_is_the_definition():
    lo, hi, bits = torch.tensor([-2.0]), torch.tensor([3.0]), 6
    step = (hi - lo) / (2**bits - 1)
    y = torch.linspace(-3, 4, 1001, dtype=torch.float64)
    gain, off = torch.tensor(1.03, dtype=torch.float64), torch.tensor(-0.4, dtype=torch.float64)
    scale, shift = adc.mismatched(*adc.code_transform(lo, hi, bits), gain, off)
    got = adc.codes_(y * scale + shift, bits)
    want = torch.round(((gain * y + off * step - lo) / step).clamp(0, 2**bits - 1))
    assert (got != want).sum() <= 2  # ties at a rounding boundary may go either way in float64
    same = adc.code_transform(lo, hi, bits)
    s1, h1 = adc.mismatched(*same, torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64))
    assert torch.equal(s1, same[0]) and torch.equal(h1, same[1])  # no mismatch: the same transform


def test_one_normal_per_conversion():
    """The normals that carry the read and comparator noise of every conversion (draws.read_noise)."""
    ids = torch.arange(100, 150)
    z = draws.read_noise(2, torch.arange(4), 77, ids, nb=3, r=100, n=64)  # 2 tokens per image
    assert z.shape == (3, 100, 4, 64)
    assert abs(z.std().item() - 1) < 4 / math.sqrt(2 * z.numel())
    flat = z.reshape(-1, 64)
    assert abs(np.corrcoef(flat[:-1].flatten(), flat[1:].flatten())[0, 1]) < 4 / math.sqrt(flat.numel())
    # an image's noise does not depend on the other images read with it
    part = draws.read_noise(2, torch.arange(4), 77, ids[10:12], nb=3, r=4, n=64)
    assert torch.equal(part, z[:, 20:24])


def test_adc_count_one_per_group_partition_slice_column():
    part = Partitioning(Geometry(64, 32, 2, (3, 3)), rows_max=100)
    assert draws.adc_count(part, 2) == 2 * part.parts * 2 * 16


@pytest.mark.parametrize("key", ["offset_lsb", "gain_sigma", "noise_lsb"])
def test_settings_are_checked(key):
    with pytest.raises(ValidationError, match=f"adc.{key}: an ideal ADC"):
        Hardware(adc={"bits": None, key: 0.1})
    with pytest.raises(ValidationError, match=key):
        Hardware(adc={key: -1})
    assert not Hardware(weight_bits=None, input_bits=None, adc={"bits": None}).adc.mismatched


@pytest.mark.parametrize("setting", [{"faults": {"stuck_on": 0.01}}, {"variation": {"column": 0.01}}])
def test_new_effects_are_not_ideal(setting):
    ideal = dict(weight_bits=None, input_bits=None, adc={"bits": None})
    assert Hardware(**ideal).is_ideal() and not Hardware(**ideal, **setting).is_ideal()
