"""Stuck devices: docs/physics.md section 13.3.

After programming (and clipping), each device is stuck at ``Gmin`` with probability ``p_off`` and at
``Gmax`` with probability ``p_on``, decided by one keyed uniform ``u`` per device drawn once per chip:
stuck off when ``u < p_off``, stuck on when ``u >= 1 - p_on`` (disjoint since ``p_off + p_on <= 1``).
A stuck device does not drift. The two devices of a differential pair have their own uniforms.
"""
from __future__ import annotations

import torch


def stuck_masks(u: torch.Tensor, p_off: float, p_on: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks ``(off, on)`` of the devices stuck at Gmin and at Gmax, from uniforms ``u`` in [0, 1)."""
    return u < p_off, u >= 1 - p_on


def apply_stuck(g: torch.Tensor, off: torch.Tensor, on: torch.Tensor, gmin: float) -> torch.Tensor:
    """``g`` with the stuck devices at ``Gmin`` (off) or ``Gmax = 1`` (on)."""
    return g.masked_fill(off, gmin).masked_fill_(on, 1.0)
