"""Stuck devices: docs/physics.md section 13.3.

After programming (and clipping), each device is stuck with probability ``p_off + p_on``, at ``Gmin``
(a share ``p_off / (p_off + p_on)`` of the stuck ones) or at ``Gmax``: per chip, the stuck devices
are the events of a keyed Bernoulli process over the devices (:func:`mcsim.engine.rng.chip_events`),
each with a uniform ``u`` that makes it stuck off when ``u < p_off / (p_off + p_on)``. A stuck device
does not drift. The two devices of a differential pair are drawn from their own streams.
"""
from __future__ import annotations

import torch


def stuck_indices(events: list[tuple[torch.Tensor, torch.Tensor]], n: int, p_off: float, p_on: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices into ``(chips, n)`` devices of those stuck at Gmin and at Gmax, from each chip's
    events (the indices of its stuck devices and one uniform each)."""
    off, on = [], []
    share_off = p_off / (p_off + p_on) if p_off + p_on > 0 else 0.0
    for chip, (idx, u) in enumerate(events):
        is_off = u < share_off
        off.append(idx[is_off] + chip * n)
        on.append(idx[~is_off] + chip * n)
    return torch.cat(off), torch.cat(on)


def apply_stuck_(g: torch.Tensor, off: torch.Tensor, on: torch.Tensor, gmin: float) -> torch.Tensor:
    """In place on contiguous ``g`` (chips first): the stuck devices (flat indices) at ``Gmin`` (off)
    or ``Gmax = 1`` (on)."""
    flat = g.view(-1)
    flat.index_fill_(0, off.to(g.device), gmin).index_fill_(0, on.to(g.device), 1.0)
    return g
