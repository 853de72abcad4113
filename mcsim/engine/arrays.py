"""How one layer's matrix is laid out on crossbar arrays (docs/physics.md sections 1 and 6).

A conv with ``g`` groups is ``g`` matrices of shape ``(N_g, K)``, ``K = C_g * kh * kw`` (rows in
torch's ``(channel, kh, kw)`` order); a Linear is a 1x1 conv. A matrix with more than ``rows_max``
rows is split into partitions, each on its own array and digitized on its own.

Partitions are cut on input-channel boundaries, ``P`` near-equal channel groups with
``P >= ceil(K / rows_max)`` the smallest count whose largest group fits in ``rows_max`` rows: a
kernel's taps of one channel stay in one array, and every partition is a sub-convolution over a
channel subset, so the engine evaluates all partitions of all chips as one grouped convolution.
Only when one channel's kernel alone exceeds ``rows_max`` (``kh * kw > rows_max``) are the rows cut
into ``ceil(K / rows_max)`` near-equal contiguous ranges, each masked out of the channels it spans.

Layout tensors: ``chans`` (P, Cp) indexes input channels per partition, with ``C_g`` (an all-zero
channel the engine appends) as padding, placed first so that padding rows sit at the far end of the
column (row 0), where a device-less row carries no current and so changes nothing, IR drop included.
``mask`` (P, Cp, kh, kw) marks the rows a partition owns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Geometry:
    c_in: int
    c_out: int
    groups: int
    kernel: tuple[int, int]

    @property
    def cg(self) -> int:
        return self.c_in // self.groups

    @property
    def ng(self) -> int:
        return self.c_out // self.groups

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]

    @property
    def rows(self) -> int:
        """K: rows of each group's matrix."""
        return self.cg * self.taps


def _near_equal(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class Partitioning:
    def __init__(self, geom: Geometry, rows_max: int):
        self.geom = geom
        kh, kw = geom.kernel
        if geom.taps <= rows_max:
            parts = math.ceil(geom.rows / rows_max)
            while math.ceil(geom.cg / parts) * geom.taps > rows_max:
                parts += 1
            owned = []  # per partition: list of (channel, row mask over taps)
            start = 0
            for size in _near_equal(geom.cg, parts):
                owned.append([(c, torch.ones(kh, kw)) for c in range(start, start + size)])
                start += size
        else:
            parts = math.ceil(geom.rows / rows_max)
            owned, start = [], 0
            for size in _near_equal(geom.rows, parts):
                rows = torch.zeros(geom.rows)
                rows[start : start + size] = 1
                per_chan = rows.view(geom.cg, kh, kw)
                chans = range(start // geom.taps, (start + size - 1) // geom.taps + 1)
                owned.append([(c, per_chan[c]) for c in chans])
                start += size
        self.parts = parts
        self.cp = max(len(o) for o in owned)
        chans = torch.full((parts, self.cp), geom.cg, dtype=torch.int64)
        mask = torch.zeros(parts, self.cp, kh, kw)
        for p, o in enumerate(owned):
            pad = self.cp - len(o)
            for i, (c, m) in enumerate(o):
                chans[p, pad + i] = c
                mask[p, pad + i] = m
        self.chans, self.mask = chans, mask
        self.rows_per_array = int(mask.flatten(1).sum(1).max().item())
        # Physical row order of each array (P, Cp*kh*kw): rows a partition does not own go first, to
        # the far end of the column, where without a device they carry no current (section 8).
        self.row_order = torch.argsort(mask.flatten(1), dim=1, stable=True)
        # Partitions that take the channels in order, each whole and without padding, gather their
        # inputs as a view; one of them alone is the layer itself (no split at all).
        self.in_order = pad_free(chans.flatten(), geom.cg)
        self.trivial = parts == 1 and self.in_order

    def to(self, device) -> "Partitioning":
        self.chans, self.mask, self.row_order = self.chans.to(device), self.mask.to(device), self.row_order.to(device)
        return self

    def circuits(self, a: torch.Tensor) -> torch.Tensor:
        """Arrays ``(..., P, N_g, Cp, kh, kw)`` as circuits ``(..., P, rows, N_g)`` in physical row order."""
        m = a.flatten(-3).transpose(-1, -2)
        return torch.gather(m, -2, self._row_index(m))

    def from_circuits(self, m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`circuits`."""
        out = torch.empty_like(m).scatter_(-2, self._row_index(m), m)
        return out.transpose(-1, -2).reshape(like.shape)

    def _row_index(self, m: torch.Tensor) -> torch.Tensor:
        return self.row_order.view(*[1] * (m.dim() - 3), *self.row_order.shape, 1).expand_as(m)

    def split(self, w: torch.Tensor) -> torch.Tensor:
        """Matrices ``(..., C_out, K)`` to arrays ``(..., g, P, N_g, Cp, kh, kw)`` (padding = 0)."""
        g = self.geom
        lead = w.shape[:-2]
        w = w.reshape(*lead, g.groups, g.ng, g.cg, *g.kernel)
        if self.trivial:
            return w.unsqueeze(-5)
        w = torch.cat([w, w.new_zeros(*lead, g.groups, g.ng, 1, *g.kernel)], dim=-3)
        w = w.index_select(-3, self.chans.flatten()).unflatten(-3, (self.parts, self.cp))
        w = w * self.mask.to(w.dtype)  # (..., g, N_g, P, Cp, kh, kw)
        return w.movedim(-4, -5)

    def merge(self, a: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`split`: sum the arrays back into ``(..., C_out, K)``."""
        g = self.geom
        if self.trivial:
            return a.squeeze(-5).reshape(*a.shape[:-6], g.c_out, g.rows)
        a = (a * self.mask.unsqueeze(1).to(a.dtype)).movedim(-5, -4).flatten(-4, -3)  # (..., g, N_g, P*Cp, kh, kw)
        out = a.new_zeros(*a.shape[:-3], g.cg + 1, *g.kernel)
        out = out.index_add(-3, self.chans.flatten(), a)[..., : g.cg, :, :]
        return out.reshape(*a.shape[:-5], g.c_out, g.rows)

    def gather_inputs(self, u: torch.Tensor) -> torch.Tensor:
        """Inputs ``(..., C_in, H, W)`` to ``(..., g, P, Cp, H, W)`` (zero channel as padding)."""
        g = self.geom
        if self.in_order:
            return u.unflatten(-3, (g.groups, self.parts, self.cp))
        u = u.unflatten(-3, (g.groups, g.cg))
        u = torch.cat([u, u.new_zeros(*u.shape[:-3], 1, *u.shape[-2:])], dim=-3)
        return u.index_select(-3, self.chans.flatten()).unflatten(-3, (self.parts, self.cp))


def pad_free(chans: torch.Tensor, cg: int) -> bool:
    return bool((chans == torch.arange(cg)).all()) if chans.shape[-1] == cg else False
