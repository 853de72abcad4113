"""The study's design points A-E and three published chips as partial hardware settings (pure data;
docs/physics.md section 11).

``Hardware(design="A", adc={"bits": 10})`` applies a preset first and the explicit settings on top
(nested settings merge key by key). Each preset states where its numbers come from.

UNVERIFIED. The study's Tables 3-4 (Xiao et al., IEEE Circuits and Systems Magazine 22(4), 2022,
Section 9; arXiv 2109.01262) define designs A-E, but their text could not be retrieved when these
presets were written. What is sourced:

* the magazine's page 44 (Section 9.2): offset-subtraction cores are evaluated at only four design
  points, all with digital input-bit accumulation: 72 and 144 rows with 1 and 2 bits per cell
  (close to ISAAC); proportional (differential) cores cover the rest; all cores are SONOS arrays
  with an 8-bit ramp ADC whose range is calibrated (a tunable gain stage), and a switched-capacitor
  circuit for analog input-bit accumulation;
* page 42 (Fig. 20): the SONOS cell current spans 0 to Imax = 1.6 uA, an infinite on/off ratio;
* the study's simulator (CrossSim v2) models SONOS programming error with the Xiao et al. TCAS-I
  2022 fit (``error.model: sonos_tcas``), and ResNet50 runs with 8-bit weights and activations;
* design E has a full-precision ADC, one level for every possible column output (docs/physics.md 11).

Which of the proportional variants (rows per array, bits per cell, analog or digital accumulation)
A and B are, and which offset points C-E take, is this module's reading, not the paper's: check
each against Tables 3-4 before quoting results as the paper's designs. Parameters the presets do
not set (parasitics, read noise, drift, first/last layer) keep the schema's defaults: the sourced
text leaves them unsaid for the design points.
"""
from __future__ import annotations

import math

__all__ = ["CHIPS", "DESIGNS", "full_precision_adc"]


def full_precision_adc(rows: int, bits_per_cell: int) -> dict:
    """ADC settings resolving every output of a column of ``rows`` cells with ``bits_per_cell``-bit
    digits and 1-bit (or +-1) inputs, Gmin = 0: outputs are multiples of one digit,
    ``1 / (2**bits_per_cell - 1)`` in units of a Gmax device, in ``[-rows, rows]`` (signed inputs or
    differential columns). The explicit limits put a level on every multiple, so the ADC loses
    nothing: ``bits = ceil(log2(2 * rows * (2**b - 1) + 1))``, range ``[-2**(bits-1), 2**(bits-1) - 1]``
    digits. The signed range costs one bit on unsigned layers (the explicit limits are shared by all
    layers); ``range: max`` would adapt to each layer's sign but its levels, ``rows / (2**bits - 1)``
    apart, do not sit on the digit grid, so it maps outputs one-to-one without reproducing them.

    Exact with a float64 model. In float32 the engine's recombination of codes offset by ``lo``
    (``lo + step * code`` summed over bits and slices) rounds: about 1e-3 of the output range on a
    toy network, to be fixed in the engine (recombine the codes before adding the offsets)."""
    digit_max = 2**bits_per_cell - 1
    bits = math.ceil(math.log2(2 * rows * digit_max + 1))
    half = 2 ** (bits - 1)
    return {"bits": bits, "range": "explicit", "limits": (-half / digit_max, (half - 1) / digit_max)}


_STUDY = {
    # Section 9: SONOS arrays (0 to 1.6 uA: infinite on/off ratio, page 42), 8-bit weights and
    # inputs (ResNet50-v1.5, ImageNet), bit-serial inputs, 8-bit ADC calibrated to 99.98 % (page 44).
    "on_off_ratio": None,
    "weight_bits": 8,
    "input_bits": 8,
    "input_mode": "bitserial",
    "adc": {"bits": 8, "range": "calibrated", "percentile": 99.98},
    "error": {"model": "sonos_tcas"},
}


def _design(**settings) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in _STUDY.items()}
    for k, v in settings.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


DESIGNS: dict[str, dict] = {
    # A: proportional core, whole weights in one cell pair (7 magnitude bits per cell), 1152-row
    # arrays, analog input-bit accumulation (one ADC conversion per MVM). Rows and bits per cell:
    # unverified (Table 3).
    "A": _design(mapping="differential", slices=1, rows_max=1152, input_accumulation="analog"),
    # B: as A with digital input-bit accumulation (an ADC conversion per input bit). Unverified.
    "B": _design(mapping="differential", slices=1, rows_max=1152, input_accumulation="digital"),
    # C: offset-subtraction core, 144 rows, 2 bits per cell (8-bit levels in 4 slices), digital
    # input-bit accumulation: one of the four offset points of page 44. Which letter: unverified.
    # ADC levels on the output grid (adc.grid: docs/physics.md section 7), as the study's simulator
    # aligns a bit-sliced core's level separation with the cell current; C and D below.
    "C": _design(mapping="offset", slices=4, rows_max=144, input_accumulation="digital", adc={"grid": True}),
    # D: offset-subtraction core, 72 rows, 1 bit per cell (8 slices), digital accumulation
    # (ISAAC-like; page 44). Which letter: unverified.
    "D": _design(mapping="offset", slices=8, rows_max=72, input_accumulation="digital", adc={"grid": True}),
    # E: D with a full-precision ADC: every column output of a 72-row, 1-bit-cell array gets its
    # own level (8 bits, explicit limits, see full_precision_adc; signed first-layer inputs
    # included). Rows and cell bits: unverified. Overriding rows_max or slices needs a matching
    # adc=full_precision_adc(rows, bits_per_cell).
    "E": _design(mapping="offset", slices=8, rows_max=72, input_accumulation="digital",
                 adc=full_precision_adc(72, 1)),
}


# Published accelerators, each as its paper gives it and as CrossSim 3.2 configures it
# (simulator/configs: ISAAC.json, PRIME.json, SONOS-TCAS.json and their readme). Devices are ideal
# unless said: add `error`, `read_noise`, ... on top. docs/physics.md section 11.
CHIPS: dict[str, dict] = {
    # ISAAC: Shafiee et al., "ISAAC: A convolutional neural network accelerator with in-situ analog
    # arithmetic in crossbars", ISCA 2016, pp. 14-26. 16-bit weights at 2 bits per cell (8 slices of
    # the offset mapping), 16-bit inputs one bit at a time with an ADC conversion per bit, 128 x 128
    # arrays, the offset subtracted in analog through a unit column (CrossSim's readme: "analog
    # subtraction of the offset using a unit column"), RRAM of 2 kOhm to 2 MOhm (on/off 1000), a 9-bit
    # ADC with its levels on the output grid (CrossSim's GRANULAR range). ISAAC's own "flipped" weight
    # encoding, which saves the ninth ADC bit, is not modelled (CrossSim does not model it either).
    "ISAAC": {
        "mapping": "offset", "offset_reference": "column", "subtraction": "analog",
        "weight_bits": 16, "slices": 8, "on_off_ratio": 1000.0,
        "input_bits": 16, "input_mode": "bitserial", "input_accumulation": "digital",
        "rows_max": 128, "cols_max": 128,
        "adc": {"bits": 9, "range": "calibrated", "grid": True},
    },
    # PRIME: Chi et al., "PRIME: A novel processing-in-memory architecture for neural network
    # computation in ReRAM-based main memory", ISCA 2016, pp. 27-39. 8-bit weights at 4 bits per
    # cell (2 slices of the 7 magnitude bits of a differential pair), 6-bit inputs in two 3-bit
    # slices (a 3-bit DAC) with a conversion per slice, 256 x 256 arrays, the positive and negative
    # arrays digitized separately and subtracted digitally, RRAM of 1 to 20 kOhm (on/off 20), a 6-bit
    # calibrated ramp ADC (mid-rise levels, as CrossSim's RampADC).
    "PRIME": {
        "mapping": "differential", "subtraction": "digital",
        "weight_bits": 8, "slices": 2, "on_off_ratio": 20.0,
        "input_bits": 6, "input_mode": "bitserial", "input_slice_bits": 3, "input_accumulation": "digital",
        "rows_max": 256, "cols_max": 256,
        "adc": {"bits": 6, "range": "calibrated", "levels": "mid_rise"},
    },
    # SONOS-TCAS: Xiao et al., "An accurate, error-tolerant, and energy-efficient neural network
    # inference engine based on SONOS analog memory", IEEE TCAS-I 69(4), 2022, pp. 1480-1493: design
    # A's settings (1152-row arrays, 8-bit weights in one cell pair, bit-serial inputs accumulated in
    # analog, an 8-bit calibrated ramp ADC, the SONOS fit) with its 256 columns per array and the
    # ramp ADC's mid-rise levels. Its 35 kOhm to 6 TOhm cell is an infinite on/off ratio here, as in A.
    "SONOS-TCAS": _design(mapping="differential", slices=1, rows_max=1152, cols_max=256,
                          input_accumulation="analog", adc={"levels": "mid_rise"}),
}
DESIGNS.update(CHIPS)
