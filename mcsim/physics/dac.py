"""Inputs (the DAC): docs/physics.md section 5.

An activation ``x`` becomes a normalized voltage ``v = n / n_max`` in [-1, 1] (n an integer level
over the layer's calibrated range), or, bit-serially, one binary (signed: +1/-1/0) vector per bit
with ``v = sum_k 2**k v_k / n_max``.
"""
from __future__ import annotations

import torch


def max_level(bits: int, signed: bool) -> int:
    """Largest integer input level: ``2**Bx - 1`` unsigned, ``2**(Bx-1) - 1`` signed (sign-magnitude)."""
    return 2 ** (bits - 1) - 1 if signed else 2**bits - 1


def n_serial_bits(bits: int, signed: bool) -> int:
    """Input bits applied one per MVM: ``Bx`` unsigned, ``Bx - 1`` magnitude bits signed."""
    return bits - 1 if signed else bits


def levels(x: torch.Tensor, x_range: float, bits: int | None, signed: bool, *, out: torch.Tensor) -> torch.Tensor:
    """Integer levels ``n`` written to ``out`` (continuous inputs: ``x / x_range`` unclipped, an ideal
    DAC). ``out`` may have another memory layout than ``x``: the scaling pass also lays it out."""
    if bits is None:
        return torch.div(x, x_range, out=out)
    n_max = max_level(bits, signed)
    return torch.mul(x, n_max / x_range, out=out).round_().clamp_(-n_max if signed else 0, n_max)


def bit_planes(n: torch.Tensor, bits: int, signed: bool, dim: int = 0) -> torch.Tensor:
    """Bit-serial inputs ``v_k`` (k = 0 least significant) stacked on a new dim ``dim``."""
    itype = torch.uint8 if bits <= 8 else torch.int32  # narrow integers: a quarter of the memory traffic
    mag = n.abs().to(itype).unsqueeze(dim)
    shifts = torch.arange(n_serial_bits(bits, signed), dtype=itype, device=n.device)
    shifts = shifts.view(-1, *[1] * (n.dim() - dim))
    planes = ((mag >> shifts) & 1).to(n.dtype)
    return planes.mul_(torch.sign(n).unsqueeze(dim)) if signed else planes
