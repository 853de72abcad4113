"""An analog layer's calibration: its input range (DAC) and its ADC ranges (docs/physics.md sections 5, 7).

Two passes over calibration images set them: the first records each analog layer's inputs (their
sign and a percentile of their magnitude), the second, on error-free hardware with an ideal ADC, the
raw column outputs of every weight slice (a percentile of them, optionally snapped onto the output
grid, ``adc.grid``, and made powers of two apart across slices). :class:`Calibrated` holds that state
for :class:`mcsim.engine.layers.AnalogLayer`; the state round-trips through plain dicts, so a
calibration is stored with a result and loaded by another process.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from mcsim.engine.arrays import Partitioning
from mcsim.engine.records import Pass
from mcsim.hardware import Hardware
from mcsim.physics import adc, dac, mapping

_SAMPLES_PER_BATCH = 2**18  # calibration values kept per layer and batch (strided subsample)


def power_of_two_ranges(lo: list[float], hi: list[float]) -> tuple[list[float], list[float]]:
    """Section 7: slice ranges that differ only by powers of two, so that the digital recombination
    stays a shift. The widest calibrated range is the reference; every slice gets it divided by the
    largest power of two ``2**m`` (m >= 0) whose range still contains the slice's own calibrated
    range (the reference itself when none does, e.g. a slice reaching below a positive ``lo``)."""
    ref = max(range(len(lo)), key=lambda s: hi[s] - lo[s])
    out_lo, out_hi = [], []
    for l, h in zip(lo, hi):
        m = 0
        while m < 60 and lo[ref] / 2 ** (m + 1) <= l and hi[ref] / 2 ** (m + 1) >= h:
            m += 1
        out_lo.append(lo[ref] / 2**m)
        out_hi.append(hi[ref] / 2**m)
    return out_lo, out_hi


def power_of_two_steps(lo: list[float], hi: list[float]) -> tuple[list[float], list[float]]:
    """Section 15: slice ranges whose widths (so steps) differ only by powers of two, each placed over
    its own slice's outputs, for slices whose outputs no one range scaled by powers of two covers (a
    reference column's). Every slice gets the widest calibrated width divided by the largest power of
    two ``2**m`` (m >= 0) that still covers its own calibrated width, from its own ``lo``. The
    recombination stays a shift: the ranges' lower ends are constants added digitally."""
    width = max(h - l for l, h in zip(lo, hi))
    out_hi = []
    for l, h in zip(lo, hi):
        m = 0  # the tolerance keeps a grid range (section 7) that is exactly width / 2**m at its own width
        while m < 60 and width / 2 ** (m + 1) >= (h - l) * (1 - 1e-9):
            m += 1
        out_hi.append(l + width / 2**m)
    return list(lo), out_hi


def subsample(t: torch.Tensor) -> np.ndarray:
    flat = t.detach().flatten()
    return flat[:: max(1, flat.numel() // _SAMPLES_PER_BATCH)].double().cpu().numpy()


class Calibrated:
    """The calibration state of an analog layer, and the ranges read from it.

    The layer provides ``hw`` (its :class:`Hardware`), ``part`` (its :class:`Partitioning`) and
    ``n_slices``, ``reference``, ``paired`` and ``sides`` (section 15); :meth:`_init_calibration` starts the state
    empty (explicit ADC limits need none).
    """

    hw: Hardware
    part: Partitioning
    n_slices: int
    reference: bool
    paired: bool
    sides: int

    def _init_calibration(self):
        self.x_range: Optional[float] = None
        self.signed: Optional[bool] = None
        self.adc_range: Optional[tuple[list[float], list[float]]] = None  # calibrated, per slice
        self._samples: dict[str, list] = {}

    @property
    def calibrated(self) -> bool:
        """Whether every range this layer's hardware calibrates is set: inputs (DAC) and ADC."""
        hw = self.hw
        inputs = hw.input_bits is None or self.x_range is not None
        return inputs and (hw.adc.bits is None or hw.adc.range != "calibrated" or self.adc_range is not None)

    def _record(self, name: str, values: np.ndarray):
        self._samples.setdefault(name, []).append(values)

    @property
    def signed_inputs(self) -> bool:
        """Whether the DAC uses signed levels: calibrated, else signed (the one default, section 5)."""
        return True if self.signed is None else self.signed

    def _input_scale(self, serial: bool) -> float:
        """Inputs are fed to the crossbar as integer levels n (or 0/+-1 bit planes, or k-bit slices'
        levels m, section 16); v = n / n_max, a plane's drive m / (2**k - 1)."""
        hw = self.hw
        if hw.input_bits is None:
            return 1.0
        if serial:
            return float(dac.slice_full_scale(hw.input_bits, self.signed_inputs, hw.input_slice_bits))
        return float(dac.max_level(hw.input_bits, self.signed_inputs))

    def _adc_limits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-slice ADC range ``(lo, hi)`` (float64, shape ``(sides * S,)``, range ``side * S + slice``:
        section 15) in units of one Gmax device at full input."""
        hw = self.hw
        ranges = self.n_slices * self.sides
        if hw.adc.range == "max":  # a pair subtracted in analog spans a difference; one side, its own devices
            lo, hi = adc.full_range(self.part.rows_per_array, self.signed_inputs,
                                    "differential" if self.paired and self.sides == 1 else "offset", hw.gmin)
            lo, hi = [lo] * ranges, [hi] * ranges
        elif hw.adc.range == "explicit":
            lo, hi = [hw.adc.limits[0]] * ranges, [hw.adc.limits[1]] * ranges
        elif self.adc_range is None:
            raise RuntimeError("the ADC range is calibrated: call .calibrate() (or load a calibration) first")
        else:
            lo, hi = self.adc_range
        return torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)

    def finish_input_calibration(self):
        s = self._samples
        self.signed = bool(min(v[0] for v in s.pop("x_min")) < 0)
        a = np.concatenate(s.pop("x_abs"))
        self.x_range = float(np.percentile(a, self.hw.input_percentile)) or float(a.max()) or 1.0

    def finish_adc_calibration(self):
        lo, hi = [], []
        for k in range(self.n_slices * self.sides):
            l, h = adc.percentile_range(np.concatenate(self._samples.pop(f"adc_{k}")), self.hw.adc.percentile)
            if self.hw.adc.grid:
                l, h = adc.grid_range(l, h, self.grid_unit(), self.hw.adc.bits)
            lo.append(l)
            hi.append(h)
        if self.hw.adc.slice_ranges == "power_of_two":  # aligned ranges stay aligned divided by 2**m
            s = self.n_slices  # per side (section 15): each side's slices are recombined by shifts
            # A reference column's slices (section 15): subtracted in analog, the lower slices' outputs lie
            # above zero and the top slice's around it; digitized, its own readings are Gmin * sum(v) below
            # the top slice and G_zero * sum(v) in it. No one range scales onto both: each is placed apart.
            relate = power_of_two_steps if self.reference else power_of_two_ranges
            aligned = [relate(lo[i : i + s], hi[i : i + s]) for i in range(0, len(lo), s)]
            lo, hi = [x for a in aligned for x in a[0]], [x for a in aligned for x in a[1]]
        self.adc_range = (lo, hi)

    def grid_unit(self) -> float:
        """Spacing of the column outputs an ADC sees (section 7, ``adc.grid``): one weight digit,
        ``(1 - Gmin) / L``, times one input step (a bit plane drives 0/+-1, levels n / n_max).
        With Gmin > 0 the outputs also hold Gmin times an integer, off this grid."""
        hw = self.hw
        if hw.weight_bits is None or hw.input_bits is None:
            raise ValueError("adc.grid: needs quantized weights and inputs (weight_bits and input_bits set)")
        digit = (1 - hw.gmin) / mapping.SliceLayout.of(hw).levels
        return digit / self._input_scale(Pass.of(hw, False, self.signed_inputs).planes)

    def clear_calibration_samples(self):
        """Drop the samples a calibration pass recorded (a layer whose ADC needs no calibrated range)."""
        self._samples.clear()

    def calibration_state(self) -> dict:
        return {"x_range": self.x_range, "signed": self.signed, "adc_range": self.adc_range}

    def load_calibration_state(self, state: dict):
        self.x_range, self.signed = state["x_range"], state["signed"]
        self.adc_range = tuple(state["adc_range"]) if state["adc_range"] is not None else None
        self.clear_cache()
