"""The ADC: docs/physics.md sections 7 and 15.

Mid-tread levels (the default): ``y_q = lo + step * round((clip(y, lo, hi) - lo) / step)``,
``step = (hi - lo) / (2**bits - 1)``: both ends of the range are levels, and zero is one when the
range spans it. Mid-rise levels (section 15, a ramp ADC as CrossSim models it): ``2**bits`` levels
``lo + step * (i + 1/2)``, ``step = (hi - lo) / 2**bits``, each output read as the nearest level
(no zero code). Both are ``first + step * code`` with an integer code in ``0..2**bits - 1``
(:func:`level_grid`). Column outputs are in units of the current of one Gmax device under the full
input voltage.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def level_grid(lo: torch.Tensor, hi: torch.Tensor, bits: int, levels: str = "mid_tread"
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(step, first)``: the ADC's levels are ``first + step * code``, ``code`` in ``0..2**bits - 1``.
    Mid-tread: ``step = (hi - lo) / (2**bits - 1)``, ``first = lo``; mid-rise: ``step = (hi - lo) /
    2**bits``, ``first = lo + step / 2`` (section 15)."""
    if levels == "mid_rise":
        step = (hi - lo) / 2**bits
        return step, lo + step / 2
    return (hi - lo) / (2**bits - 1), lo


def code_transform(lo: torch.Tensor, hi: torch.Tensor, bits: int, levels: str = "mid_tread"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``(y - first) / step = y * scale + shift`` (:func:`level_grid`): linear,
    so the engine folds it into the convolution producing ``y`` and only :func:`codes_` remains per
    element (rounding to the nearest level, clipped to the end levels)."""
    step, first = level_grid(lo, hi, bits, levels)
    return 1 / step, -first / step


def codes_(k: torch.Tensor, bits: int) -> torch.Tensor:
    """In place: ``round(clip(k, 0, 2**bits - 1))``, the ADC's output code; ``y_q = lo + step * code``."""
    return k.clamp_(0, 2**bits - 1).round_()


def percentile_range(samples: np.ndarray, percentile: float) -> tuple[float, float]:
    """Central interval holding ``percentile`` % of the calibration outputs (section 7)."""
    tail = (100 - percentile) / 2
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    if hi <= lo:  # a constant output: give the ADC a non-empty range around it
        pad = max(abs(hi), 1e-12) * 1e-3
        lo, hi = lo - pad, hi + pad
    return float(lo), float(hi)


def grid_range(lo: float, hi: float, unit: float, bits: int) -> tuple[float, float]:
    """Section 7, ``adc.grid``: the range ``[lo, hi]`` snapped so that every ADC level sits on the
    grid of column outputs (multiples of ``unit``): ``step = unit * 2**j`` with the smallest integer
    ``j`` (negative: finer than the grid) for which the ``2**bits - 1`` steps cover ``[lo, hi]``, and
    ``lo`` a multiple of the step. A range above zero keeps its lower end; one spanning zero shares
    the spare levels evenly between both ends. Outputs on the grid inside the range then convert
    exactly whenever the step is at most one unit."""
    n = 2**bits - 1
    j = math.floor(math.log2((hi - lo) / (n - 1) / unit))  # n - 1 steps cover the range: room to snap lo
    while True:
        step = unit * 2.0**j
        new_lo = step * math.floor(lo / step)
        if new_lo + n * step >= hi:
            break
        j += 1
    if lo < 0 < hi:  # spanning zero: centre the spare levels, keeping lo on the step
        new_lo -= step * math.floor((new_lo + n * step - hi - (lo - new_lo)) / (2 * step))
    return new_lo, new_lo + n * step


def full_range(rows: int, signed_inputs: bool, mapping: str, gmin: float, v_max: float = 1.0) -> tuple[float, float]:
    """Theoretical output range of one column with ``rows`` devices (range ``max``).

    Differential: the analog difference spans ``+-rows * (1 - Gmin) * v_max``.
    Offset: ``rows * Gmax * v_max`` from 0 (or symmetric for signed inputs).
    """
    if mapping == "differential":
        span = rows * (1 - gmin) * v_max
        return -span, span
    span = rows * v_max
    return (-span if signed_inputs else 0.0), span


def mismatched(scale: torch.Tensor, shift: torch.Tensor, gain: torch.Tensor,
               offset_lsb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Section 13.6: the code transform of ADCs with gain ``g' = 1 + g`` and input-referred offset ``o``
    (in LSB): ``code = round((g' y - lo) / step + o) = round(y * scale * g' + shift + o)``, so each
    ADC's conv weights scale by ``g'`` and its code bias shifts by ``o`` (all broadcast together)."""
    return scale * gain, shift + offset_lsb
