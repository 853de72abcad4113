"""Weights to conductances: docs/physics.md sections 2 (quantization) and 3 (mapping, bit slicing).

Conductances are normalized (Gmax = 1, Gmin = 1/on_off). A slice's device holds a digit
``d`` in ``0..L`` (``L = 2**b - 1``; ``L = 1`` for continuous weights) as
``G = Gmin + (1 - Gmin) * d / L``. The engine reads digits back with :func:`digit_gain`
and recombines slices with :func:`slice_weights`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mcsim.hardware import Hardware


@dataclass(frozen=True)
class SliceLayout:
    """How the stored magnitude is cut into slices (docs/physics.md section 3)."""

    slices: int
    bits_per_slice: int | None  # None: continuous weights
    levels: float  # L: the digit stored at Gmax

    @classmethod
    def of(cls, hw: Hardware) -> "SliceLayout":
        if hw.weight_bits is None:
            return cls(1, None, 1.0)
        b = math.ceil(hw.magnitude_bits / hw.slices)
        return cls(hw.slices, b, float(2**b - 1))

    def weights(self) -> list[float]:
        """Digital recombination factors ``2**(b*k)`` of slice k."""
        if self.bits_per_slice is None:
            return [1.0]
        return [float(2 ** (self.bits_per_slice * k)) for k in range(self.slices)]


def weight_scale(w: torch.Tensor, percentile: float) -> float:
    """Per-layer ``w_max``: max |W|, or a percentile of |W| for outlier clipping (section 2)."""
    a = w.detach().abs().flatten().double()
    if percentile >= 100:
        m = a.max().item()
    else:
        m = torch.quantile(a[:: max(1, a.numel() // 2**24)], percentile / 100).item()
    return m if m > 0 else 1.0


def quantize(w: torch.Tensor, w_max: float, bits: int | None) -> torch.Tensor:
    """Section 2: ``q = round(W / w_max * Q)`` in ``-Q..Q`` (clipped); continuous: ``W / w_max`` in [-1, 1]."""
    r = (w / w_max).clamp(-1, 1)
    if bits is None:
        return r
    Q = 2 ** (bits - 1) - 1
    return torch.round(r * Q).clamp(-Q, Q)


def _digits(value: torch.Tensor, layout: SliceLayout) -> torch.Tensor:
    """Split non-negative integers into ``S`` digits of ``b`` bits: (S, *value.shape), slice 0 least significant."""
    if layout.bits_per_slice is None:
        return value.unsqueeze(0)
    v = value.to(torch.int64)
    base = 2**layout.bits_per_slice
    return torch.stack([(v // base**k) % base for k in range(layout.slices)]).to(value.dtype)


def zero_level(hw: Hardware) -> float:
    """Offset mapping's level of a zero weight, ``u0`` (quantized) or ``1/2`` (continuous)."""
    return 0.5 if hw.weight_bits is None else float(2 ** (hw.weight_bits - 1))


def target_digits(q: torch.Tensor, hw: Hardware) -> dict[str, torch.Tensor]:
    """Digits each device is programmed to, per device kind, shape (S, *q.shape).

    Differential: ``|q|`` on G+ for q > 0 and on G- for q < 0.
    Offset: the level ``u = q + 2**(Bw-1)``, or ``(1 + w) / 2`` for continuous weights.
    """
    layout = SliceLayout.of(hw)
    if hw.mapping == "differential":
        return {"pos": _digits(q.clamp(min=0), layout), "neg": _digits((-q).clamp(min=0), layout)}
    if hw.weight_bits is None:
        return {"one": ((1 + q) / 2).unsqueeze(0)}
    return {"one": _digits(q + zero_level(hw), layout)}


def digits_to_conductance(d: torch.Tensor, hw: Hardware) -> torch.Tensor:
    """``G = Gmin + (1 - Gmin) * d / L`` (section 3)."""
    L = SliceLayout.of(hw).levels
    return hw.gmin + (1 - hw.gmin) * d / L


def digit_gain(hw: Hardware) -> float:
    """Digits per unit of column output: ``d . v = (y - Gmin * sum v) * L / (1 - Gmin)``."""
    return SliceLayout.of(hw).levels / (1 - hw.gmin)


def weight_unit(hw: Hardware, w_max: float) -> float:
    """Weight value of one recombined digit step: ``w_max / Q`` (continuous: ``w_max``; offset continuous: ``2 w_max``)."""
    if hw.weight_bits is None:
        return 2 * w_max if hw.mapping == "offset" else w_max
    return w_max / (2 ** (hw.weight_bits - 1) - 1)
