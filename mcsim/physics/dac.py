"""Inputs (the DAC): docs/physics.md sections 5 and 16.

An activation ``x`` becomes a normalized voltage ``v = n / n_max`` in [-1, 1] (n an integer level
over the layer's calibrated range), or, bit-serially, one binary (signed: +1/-1/0) vector per bit
with ``v = sum_k 2**k v_k / n_max``, or, in slices of ``k`` bits (section 16), one integer vector
``m_i`` per slice through a ``k``-bit DAC with ``v = sum_i 2**(k i) m_i / n_max``.
"""
from __future__ import annotations

import torch


def max_level(bits: int, signed: bool) -> int:
    """Largest integer input level: ``2**Bx - 1`` unsigned, ``2**(Bx-1) - 1`` signed (sign-magnitude)."""
    return 2 ** (bits - 1) - 1 if signed else 2**bits - 1


def n_serial_bits(bits: int, signed: bool) -> int:
    """Input bits applied one per MVM: ``Bx`` unsigned, ``Bx - 1`` magnitude bits signed."""
    return bits - 1 if signed else bits


def slice_width(bits: int, signed: bool, slice_bits: int) -> int:
    """Bits per input slice (section 16): ``slice_bits``, at most the magnitude bits (one slice)."""
    return min(slice_bits, n_serial_bits(bits, signed))


def n_slices(bits: int, signed: bool, slice_bits: int = 1) -> int:
    """Input slices applied one per MVM: ``ceil(magnitude bits / k)`` (section 16; k = 1: the bits)."""
    return -(-n_serial_bits(bits, signed) // slice_width(bits, signed, slice_bits))


def slice_full_scale(bits: int, signed: bool, slice_bits: int = 1) -> int:
    """The slice DAC's largest level ``2**k - 1`` (1 for bits): a slice ``m`` drives ``m / (2**k - 1)``
    of the read voltage (section 16)."""
    return 2 ** slice_width(bits, signed, slice_bits) - 1


def slice_weights(bits: int, signed: bool, slice_bits: int = 1) -> list[float]:
    """Each slice's weight when its column output (in full-scale units, a slice at ``2**k - 1``
    driving the full read voltage) is recombined into ``v = n / n_max``: ``(2**k - 1) 2**(k i) / n_max``
    (bits: ``2**i / n_max``)."""
    k, full = slice_width(bits, signed, slice_bits), slice_full_scale(bits, signed, slice_bits)
    n_max = max_level(bits, signed)
    return [full * 2.0 ** (k * i) / n_max for i in range(n_slices(bits, signed, slice_bits))]


def levels(x: torch.Tensor, x_range: float, bits: int | None, signed: bool, *, out: torch.Tensor) -> torch.Tensor:
    """Integer levels ``n`` written to ``out`` (continuous inputs: ``x / x_range`` unclipped, an ideal
    DAC). ``out`` may have another memory layout than ``x``: the scaling pass also lays it out."""
    if bits is None:
        return torch.div(x, x_range, out=out)
    n_max = max_level(bits, signed)
    return torch.mul(x, n_max / x_range, out=out).round_().clamp_(-n_max if signed else 0, n_max)


def bit_planes(n: torch.Tensor, bits: int, signed: bool, dim: int = 0, slice_bits: int = 1) -> torch.Tensor:
    """Bit-serial inputs ``v_k`` (k = 0 least significant) stacked on a new dim ``dim``; with
    ``slice_bits = k > 1`` the slices' integer levels ``m_i`` (section 16): bits ``k i .. k i + k - 1``
    of ``|n|`` times ``sign(n)``, the most significant slice the short one when ``k`` does not divide
    the magnitude bits."""
    k = slice_width(bits, signed, slice_bits)
    itype = torch.uint8 if bits <= 8 else torch.int32  # narrow integers: a quarter of the memory traffic
    mag = n.abs().to(itype).unsqueeze(dim)
    shifts = torch.arange(n_slices(bits, signed, k), dtype=itype, device=n.device) * k
    shifts = shifts.view(-1, *[1] * (n.dim() - dim))
    planes = ((mag >> shifts) & (2**k - 1)).to(n.dtype)
    return planes.mul_(torch.sign(n).unsqueeze(dim)) if signed else planes
