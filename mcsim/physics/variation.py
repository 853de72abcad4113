"""Correlated conductance variation: docs/physics.md section 13.4.

Beside the i.i.d. cell error (section 4), multiplicative components shared by every device of a chip
(all its layers), of one array, and of one array column:
``G' = G'_cell * (1 + s_chip * e_c) * (1 + s_array * e_a) * (1 + s_col * e_k)``, the ``e`` standard
normals drawn once per chip. With independent zero-mean factors the product rule gives the variance
of a device's conductance about its target ``G``:
``var(G') = E[G'_cell**2] * prod(1 + s**2) - G**2`` for an unbiased cell error.
"""
from __future__ import annotations

from typing import Optional

import torch

from mcsim.hardware import Variation


def factor(v: Variation, e_chip: Optional[torch.Tensor], e_array: Optional[torch.Tensor],
           e_column: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``(1 + chip e_c) (1 + array e_a) (1 + column e_k)`` (float64), the ``e`` broadcast together; a
    component with sigma 0 is left out (its factor is exactly 1), None when all are. The programmed
    conductances are ``G'_cell`` times it, broadcast to the devices (each device reads its chip's,
    array's and column's factor)."""
    out = None
    for s, e in ((v.chip, e_chip), (v.array, e_array), (v.column, e_column)):
        if s > 0:
            f = 1 + s * e.double()
            out = f if out is None else out * f
    return out


def scale_(g: torch.Tensor, f: torch.Tensor, rows: Optional[list[slice]]) -> torch.Tensor:
    """In place: conductances ``g (..., C_out, K)`` times each device's factor, ``f (..., C_out, P)`` per
    array column, the rows of partition ``p`` being ``rows[p]`` (None: one factor for every row)."""
    if rows is None:
        return g.mul_(f)
    for p, r in enumerate(rows):
        g[..., r].mul_(f[..., p : p + 1])
    return g
