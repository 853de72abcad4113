"""The study's design presets (mcsim.designs) and the device fits' measured ranges."""
import math

import pytest
import torch
from pydantic import ValidationError

from mcsim.designs import CHIPS, DESIGNS, full_precision_adc
from mcsim.hardware import ADC, Hardware
from mcsim.physics import adc, devices


@pytest.mark.parametrize("name", sorted(DESIGNS))
def test_each_preset_constructs_and_round_trips(name):
    hw = Hardware(design=name)
    assert hw.design == name and hw.input_mode == "bitserial"
    if name not in CHIPS or name == "SONOS-TCAS":
        assert hw.error.model == "sonos_tcas"
    assert Hardware(**hw.model_dump()) == hw
    assert Hardware.model_validate_json(hw.model_dump_json()) == hw


def test_overrides_apply_on_top_and_nested_settings_merge():
    hw = Hardware(design="A", adc={"bits": 10}, rows_max=576)
    assert hw.adc.bits == 10 and hw.adc.percentile == 99.98  # the preset's other ADC settings stay
    assert hw.rows_max == 576 and hw.mapping == "differential" and hw.input_accumulation == "analog"
    # A settings object counts as the fields it sets.
    assert Hardware(design="A", adc=ADC(bits=6)).adc == Hardware(design="A", adc={"bits": 6}).adc
    # Design E's explicit ADC can be replaced by a calibrated one.
    e = Hardware(design="E", adc={"range": "calibrated", "limits": None})
    assert e.adc.range == "calibrated" and e.adc.bits == 8
    assert Hardware().design is None and Hardware() == Hardware(design=None)


def test_unknown_design_names_the_valid_ones():
    with pytest.raises(ValidationError, match="unknown design 'F'; valid designs are A, B, C, D, E, ISAAC, PRIME, SONOS-TCAS"):
        Hardware(design="F")


def test_offset_presets_follow_the_study_page_44():
    """Offset cores: 72 or 144 rows, 1 or 2 bits per cell, digital input-bit accumulation."""
    for name, cfg in DESIGNS.items():
        if cfg["mapping"] != "offset" or name in CHIPS:
            continue
        hw = Hardware(design=name)
        bits_per_cell = math.ceil(hw.magnitude_bits / hw.slices)
        assert hw.rows_max in (72, 144) and bits_per_cell in (1, 2)
        assert hw.input_accumulation == "digital"


@pytest.mark.parametrize("rows,bits_per_cell", [(72, 1), (144, 2), (1152, 1), (5, 3)])
def test_full_precision_adc_gives_every_output_its_own_level(rows, bits_per_cell):
    cfg = full_precision_adc(rows, bits_per_cell)
    lo, hi = cfg["limits"]
    digit = 1 / (2**bits_per_cell - 1)
    outputs = torch.arange(-rows * (2**bits_per_cell - 1), rows * (2**bits_per_cell - 1) + 1,
                           dtype=torch.float64) * digit
    scale, shift = adc.code_transform(lo, hi, cfg["bits"])
    codes = adc.codes_(outputs * scale + shift, cfg["bits"])
    back = lo + codes * (hi - lo) / (2 ** cfg["bits"] - 1)
    torch.testing.assert_close(back, outputs, rtol=0, atol=1e-9)
    assert 2 ** (cfg["bits"] - 1) < len(outputs) <= 2 ** cfg["bits"]  # no bit to spare


# ---------------------------------------------------------------- published chips (issue 25)

def _bits_per_cell(hw: Hardware) -> int:
    return math.ceil(hw.magnitude_bits / hw.slices)


def test_isaac_preset_is_the_papers_chip():
    """Shafiee et al. ISCA 2016 as CrossSim 3.2's ISAAC.json: 16-bit weights at 2 bits per cell,
    16-bit bit-serial inputs with a conversion per bit, 128 x 128 arrays, the offset mapping with a
    unit column subtracted in analog, RRAM 2 kOhm - 2 MOhm, a 9-bit ADC on the output grid."""
    hw = Hardware(design="ISAAC")
    assert (hw.mapping, hw.offset_reference, hw.subtraction) == ("offset", "column", "analog")
    assert (hw.weight_bits, _bits_per_cell(hw)) == (16, 2)
    assert (hw.input_bits, hw.input_slice_bits, hw.input_accumulation) == (16, 1, "digital")
    assert (hw.rows_max, hw.cols_max) == (128, 128)
    assert hw.on_off_ratio == pytest.approx(2e6 / 2e3)
    assert (hw.adc.bits, hw.adc.range, hw.adc.grid, hw.adc.levels) == (9, "calibrated", True, "mid_tread")
    assert hw.error.model == "none" and hw.read_noise.model == "none"


def test_prime_preset_is_the_papers_chip():
    """Chi et al. ISCA 2016 as CrossSim 3.2's PRIME.json: 8-bit weights at 4 bits per cell, 6-bit
    inputs in 3-bit slices with a conversion per slice, 256 x 256 arrays, each side of the pair
    digitized, RRAM 1 - 20 kOhm, a 6-bit calibrated ramp ADC."""
    hw = Hardware(design="PRIME")
    assert (hw.mapping, hw.subtraction) == ("differential", "digital")
    assert (hw.weight_bits, _bits_per_cell(hw)) == (8, 4)
    assert (hw.input_bits, hw.input_slice_bits, hw.input_accumulation) == (6, 3, "digital")
    assert (hw.rows_max, hw.cols_max) == (256, 256)
    assert hw.on_off_ratio == pytest.approx(20e3 / 1e3)
    assert (hw.adc.bits, hw.adc.range, hw.adc.levels) == (6, "calibrated", "mid_rise")
    assert hw.error.model == "none"


def test_sonos_tcas_preset_is_design_a_with_its_ramp_adc():
    """Xiao et al. TCAS-I 2022 as CrossSim 3.2's SONOS-TCAS.json: design A (1152 rows, 8-bit weights
    in one pair, bit-serial inputs accumulated in analog, 8-bit calibrated ADC, the SONOS fit) with
    256 columns per array and the ramp ADC's mid-rise levels."""
    hw, a = Hardware(design="SONOS-TCAS"), Hardware(design="A")
    assert (hw.rows_max, hw.cols_max, _bits_per_cell(hw)) == (1152, 256, 7)
    assert (hw.input_mode, hw.input_accumulation, hw.error.model) == ("bitserial", "analog", "sonos_tcas")
    assert (hw.adc.bits, hw.adc.range, hw.adc.levels) == (8, "calibrated", "mid_rise")
    differ = {k for k in a.model_dump() if a.model_dump()[k] != hw.model_dump()[k]}
    assert differ == {"design", "cols_max", "adc"}
    assert hw.adc.model_copy(update={"levels": "mid_tread"}) == a.adc


@pytest.mark.parametrize("name", sorted(CHIPS))
def test_each_chip_runs_the_quickstart_model(name):
    """Each chip's preset converts, calibrates and runs the quickstart's network (built-in MNIST CNN)
    within a few points of the digital model, on two chips."""
    from mcsim.data import DataSpec, load_split
    from mcsim.engine.convert import convert
    from mcsim.models import ModelSpec, load_model

    net = load_model(ModelSpec(name="builtin:mnist-cnn")).eval()
    test = load_split(DataSpec(name="mnist5k"), "test")
    x, y = test.images[:64], torch.as_tensor(test.targets[:64])
    model = convert(net, Hardware(design=name), trials=2, seed=1, device="cpu")
    model.calibrate([load_split(DataSpec(name="mnist5k"), "train").images[:64]])
    with torch.no_grad():
        digital = (net(x).argmax(-1) == y).float().mean().item()
        analog = (model(x).argmax(-1) == y).float().mean(1)
    assert analog.shape == (2,) and (analog >= digital - 0.1).all(), (name, digital, analog)


# ---------------------------------------------------------------- device fits' measured ranges

def test_every_fit_states_its_range():
    for fit in (*devices.PROGRAMMING_FITS.values(), *devices.READ_FITS.values()):
        lo, hi = fit.g_range
        assert 0 <= lo < hi and fit.gmax <= hi


def test_range_warnings_name_the_fit():
    assert devices.hardware_warnings(Hardware(error={"model": "pcm"})) == []  # 25 uS / 100 = 0.25 uS
    (msg,) = devices.hardware_warnings(Hardware(error={"model": "pcm"}, on_off_ratio=1000))
    assert "'pcm'" in msg and "Joshi" in msg and "0.025 uS" in msg and "at most 100" in msg
    (msg,) = devices.hardware_warnings(Hardware(error={"model": "rram"}, on_off_ratio=None))
    assert "'rram'" in msg and "Milo" in msg and "at most 4.5" in msg
    assert devices.hardware_warnings(Hardware(error={"model": "rram"}, on_off_ratio=4)) == []
    # SONOS was measured from about 0 nA: any on/off ratio is inside.
    sonos = Hardware(error={"model": "sonos_tcas"}, read_noise={"model": "sonos"}, on_off_ratio=None)
    assert devices.hardware_warnings(sonos) == []
    assert devices.hardware_warnings(Hardware(error={"model": "proportional", "sigma": 0.1})) == []


def test_study_sonos_fit():
    """CrossSim v2's SONOS model: sigma_I = 39.5656 nA (1 - exp(-0.00188704 I / nA)), Imax 1.6 uA."""
    fit = devices.PROGRAMMING_FITS["sonos_tcas"]
    g = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    expected = 39.5656 * (1 - torch.exp(-0.00188704 * 1600 * g)) / 1600
    torch.testing.assert_close(fit.normalized_sigma(g), expected, rtol=1e-12, atol=0)
    assert Hardware(error={"model": "sonos_tcas", "scale": 2}).error.scale == 2
    with pytest.raises(ValidationError, match="fitted sigma curve"):
        Hardware(error={"model": "sonos_tcas", "sigma": 0.1})


def test_sweeping_the_design_sets_every_preset_setting_and_keeps_the_others():
    from mcsim.sweep import apply_overrides

    bases = (Hardware(read_noise={"model": "sonos"}), Hardware(design="A", adc={"bits": 6}, read_noise={"model": "sonos"}),
             Hardware(design="E", read_noise={"model": "sonos"}))
    for base in bases:
        for name in DESIGNS:
            hw = apply_overrides(base, {"hardware.design": name})
            # what the scenario's canonical text reloads to: every default written out
            again = apply_overrides(Hardware.model_validate(base.model_dump()), {"hardware.design": name})
            assert hw == again == Hardware(design=name, read_noise={"model": "sonos"}), (base.design, name)
        with pytest.raises(ValidationError, match="design"):
            apply_overrides(base, {"hardware.design": "F"})
    # Keys zipped beside the design go on top of its preset.
    hw = apply_overrides(Hardware(), {"hardware.design": "D", "hardware.adc.bits": 6})
    assert (hw.mapping, hw.slices, hw.rows_max, hw.adc.bits, hw.adc.percentile) == ("offset", 8, 72, 6, 99.98)
    # Without a design override a point keeps the scenario's whole hardware.
    hw = apply_overrides(Hardware(design="D"), {"hardware.adc.bits": 6})
    assert (hw.mapping, hw.slices, hw.rows_max, hw.adc.bits) == ("offset", 8, 72, 6)
