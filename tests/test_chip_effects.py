"""The user's devices and chips through the analog layer (docs/physics.md section 13): stuck cells,
correlated variation, measured tables, PCM drift and read noise in time, ADC mismatch and comparator
noise, checked on the engine's outputs against closed forms, and the determinism contract with every
effect on."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from mcsim import Hardware, convert
from mcsim.engine.counting import counting
from mcsim.engine.draws import adc_mismatch
from mcsim.models import randomized

TABLE = str(Path(__file__).resolve().parents[1] / "scenarios" / "devices" / "pcm_joshi2020.csv")
EVERYTHING = dict(
    error={"model": "table", "file": TABLE}, faults={"stuck_off": 0.01, "stuck_on": 0.002},
    variation={"chip": 0.02, "array": 0.02, "column": 0.02},
    drift={"model": "pcm", "time_s": 3600, "compensate": True},
    read_noise={"model": "pcm", "t_read_s": 250e-9},
    adc={"bits": 8, "offset_lsb": 0.5, "gain_sigma": 0.01, "noise_lsb": 0.3},
)


def _linear(seed=0, n_in=48, n_out=6):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, n_out)).eval(), torch.rand(20, n_in)


def _run(net, hw, x, chips):
    analog = convert(net, Hardware(**hw), trials=chips, seed=3, device="cpu")
    analog.calibrate([x])
    return analog, analog(x, image_ids=torch.arange(len(x))).detach()


def test_a_fully_stuck_off_differential_chip_outputs_exactly_the_bias():
    net, x = _linear()
    _, out = _run(net, dict(adc={"bits": None}, faults={"stuck_off": 1.0}), x, 3)
    assert torch.equal(out, net[0].bias.detach().expand_as(out))  # every pair at Gmin - Gmin = 0


@pytest.mark.parametrize("extra", [{}, dict(input_mode="bitserial", input_accumulation="digital",
                                            parasitics={"rp": 1e-5}, rows_max=24)],
                         ids=["driven", "gated_rows"])
def test_a_chip_alone_is_the_chip_among_others_with_every_effect_on(extra):
    torch.manual_seed(0)
    net = randomized(torchvision.models.resnet18(num_classes=10)) if not extra else _linear()[0]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) if not extra else _linear()[1][:3]
    hw = {**EVERYTHING, **extra}
    analog, full = _run(net, hw, x, [0, 1, 2, 3])
    alone = convert(net, Hardware(**hw), trials=[2], seed=3, device="cpu")
    alone.load_calibration(analog.calibration())
    assert torch.equal(alone(x, image_ids=torch.arange(len(x))).detach(), full[[2]])
    _, again = _run(net, {k: v for k, v in hw.items() if k != "adc"} | {"adc": {"bits": 8}}, x, [0, 1, 2, 3])
    assert not torch.equal(again, full)  # the ADC's errors do change the outputs


def _lsb_units(analog, out, ref):
    """Output differences in ADC codes: the split path's ``z = coef * (lo + step * code) * unit * x_range``
    (docs/physics.md sections 3, 7), one slice and one partition."""
    layer = analog.analog_layers()[0]
    lo, hi = layer._adc_limits()
    step = float((hi - lo)[0]) / (2**layer.hw.adc.bits - 1)
    per_code = float(layer.coef[0]) * step * layer.unit * layer.x_range
    return (out - ref) / per_code, (ref - layer.bias) / per_code * step  # the column output y


ADC16 = dict(adc={"bits": 16, "range": "max"}, input_bits=8)


def _mismatched(**adc):
    """A 16-bit ADC's output differences in codes with ``adc`` errors against the ideal converter, the
    column outputs ``y``, the layer's step and the drawn ``(gain, offset)`` (None for noise alone)."""
    net, x = _linear()
    analog, ref = _run(net, ADC16, x, 4)
    _, out = _run(net, {**ADC16, "adc": {**ADC16["adc"], **adc}}, x, 4)
    codes, y = _lsb_units(analog, out, ref)
    layer = analog.analog_layers()[0]
    lo, hi = layer._adc_limits()
    drawn = adc_mismatch(Hardware(adc={**ADC16["adc"], **adc}), 3, torch.arange(4), layer.key, 6)
    return codes, y, float(hi[0] - lo[0]) / (2**16 - 1), drawn


def test_an_adc_offset_shifts_every_code_of_its_column_by_the_offset():
    codes, _, _, (gain, offset) = _mismatched(offset_lsb=3.0)
    assert torch.equal(gain, torch.ones_like(gain))
    # round(a + o) - round(a) is o to within one code, the same for every image of the column
    assert (codes - offset.view(4, 1, 6)).abs().max() <= 1.0
    assert offset.std() > 1.5


def test_an_adc_gain_error_scales_its_column():
    codes, y, step, (gain, _) = _mismatched(gain_sigma=0.05)
    assert (codes - (gain.view(4, 1, 6) - 1) * y / step).abs().max() <= 1.0  # (g' - 1) y in codes


def test_comparator_noise_has_its_sigma():
    codes, _, _, drawn = _mismatched(noise_lsb=4.0)
    assert drawn is None  # nothing drawn per chip: one normal per conversion
    assert abs(codes.std().item() / (4.0**2 + 1 / 6) ** 0.5 - 1) < 0.1  # noise plus two roundings
    assert abs(codes.mean().item()) < 0.3


def test_energy_counts_see_stuck_devices():
    net, x = _linear()
    counts = {}
    for state in ("stuck_on", "stuck_off"):
        analog, _ = _run(net, dict(faults={state: 1.0}, on_off_ratio=100.0), x, 2)
        with counting(analog) as counter:
            analog(x)
        counts[state] = counter.result().counts["array_g_v2"]
    assert torch.allclose(torch.as_tensor(counts["stuck_on"] / counts["stuck_off"]).double(),
                          torch.tensor(100.0, dtype=torch.float64))  # every device at Gmax vs at Gmin
