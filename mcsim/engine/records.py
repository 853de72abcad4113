"""The records an analog layer's parts share: what a pass is and what a programmed block holds.

The lowest module of the analog layer (:mod:`mcsim.engine.layers`): the converted model's pass
:class:`Context`, the per-call :class:`Pass` (decided once from the hardware and the mode, the ADC
question included), and a programmed block of chips (:class:`Programmed`). The programming
(:mod:`mcsim.engine.programming`), calibration (:mod:`mcsim.engine.calibration`) and gated-row
(:mod:`mcsim.engine.gated`) parts of the layer import them from here.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Optional

import torch

from mcsim.engine.conv import Weight
from mcsim.hardware import Hardware

Mode = Literal["run", "probe", "calibrate_inputs", "calibrate_adc"]


@dataclass
class Context:
    """What the converted model tells its layers about the current pass."""

    seed: int = 0
    chips: Optional[torch.Tensor] = None  # (Tc,) global chip indices
    image_ids: Optional[torch.Tensor] = None  # (B,) global image indices (read-noise streams)
    mode: Mode = "run"  # probe: digital pass measuring sizes; calibrate_*: the two calibration passes
    cache: bool = True  # keep programmed chips between forward calls
    pack: bool = False  # kept chips also keep the CPU kernel's layout of their weights (conv.ConvWeight)
    energy: Optional[Any] = None  # an engine.counting.EnergyCounter while counting (opt-in), else None

    @contextmanager
    def switched(self, mode: Mode, chips: Optional[torch.Tensor] = None) -> Iterator["Context"]:
        """Run a pass in ``mode`` (and on ``chips``), restoring the previous state on exit."""
        saved = self.mode, self.chips
        self.mode, self.chips = mode, (chips if chips is not None else self.chips)
        try:
            yield self
        finally:
            self.mode, self.chips = saved


@dataclass(frozen=True)
class Pass:
    """How one forward call evaluates a layer, decided once from the hardware and the mode."""

    split: bool  # per-column outputs digitized (real ADC) or recorded (ADC calibration): section 7
    serial: bool  # one MVM and one digitization per input bit (bit-serial, digital accumulation): section 5
    bitserial: bool  # bit-serial inputs (analog or digital accumulation)
    calibrating: bool  # the error-free ADC calibration pass
    signed: bool  # the DAC's signed levels
    gated: bool = False  # gated rows with rp > 0: one exact solve per bit plane (section 8); implies split
    adc_bits: Optional[int] = None  # the resolution outputs are digitized at; None: ideal ADC or calibrating

    @classmethod
    def of(cls, hw: Hardware, calibrating: bool, signed: bool) -> "Pass":
        """The pass of a layer on ``hw``: ``calibrating`` is the ADC calibration pass, ``signed`` the
        DAC's calibrated sign. The one place that reads the ADC's resolution for a pass."""
        gated = hw.gated_rows and hw.parasitics.rp > 0  # at rp = 0 the plain path is exact
        split = hw.adc.bits is not None or calibrating or gated  # gated bits never fold
        bitserial = hw.input_mode == "bitserial"
        serial = split and bitserial and hw.input_accumulation == "digital"
        return cls(split, serial, bitserial, calibrating, signed, gated, None if calibrating else hw.adc.bits)

    @property
    def planes(self) -> bool:
        """Whether the rows are driven by bit planes (0/+-1) rather than integer levels."""
        return self.serial or self.gated


@dataclass
class Programmed:
    """One block of chips of one layer, ready to run."""

    weight: Weight  # conv weight, chips folded into the output channels
    var: Optional[Weight]  # read-noise variances, same layout (None: no read noise)
    alpha: Optional[torch.Tensor]  # (Tc,) drift compensation factors
    bias: Optional[torch.Tensor] = None  # conv bias (ADC code shift, or the layer's bias when folded)
    # Gated rows (section 8): every chip's arrays as circuits ``(Tc, g, P, rows, kinds * S * N_g)`` in
    # physical row order (columns kind-major, then slice, then output), and the code transform
    # ``(scale, shift)``, float64, per slice (S,) or per mismatched ADC (Tc, g, P, S, N_g); shift None
    # without digitization.
    circuit: Optional[torch.Tensor] = None
    codes: Optional[tuple[torch.Tensor, Optional[torch.Tensor]]] = None
