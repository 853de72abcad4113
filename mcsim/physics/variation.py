"""Correlated conductance variation: docs/physics.md section 13.4.

Beside the i.i.d. cell error (section 4), multiplicative components shared by every device of a chip
(all its layers), of one array, and of one array column:
``G' = G'_cell * (1 + s_chip * e_c) * (1 + s_array * e_a) * (1 + s_col * e_k)``, the ``e`` standard
normals drawn once per chip. With independent zero-mean factors the product rule gives the variance
of a device's conductance about its target ``G``:
``var(G') = E[G'_cell**2] * prod(1 + s**2) - G**2`` for an unbiased cell error.
"""
from __future__ import annotations

import torch

from mcsim.hardware import Variation


def correlated(g: torch.Tensor, v: Variation, e_chip: torch.Tensor, e_array: torch.Tensor,
               e_column: torch.Tensor) -> torch.Tensor:
    """``g * (1 + chip e_c) (1 + array e_a) (1 + column e_k)``, each ``e`` broadcast to ``g``'s shape;
    a component with sigma 0 is skipped (its factor is exactly 1)."""
    for s, e in ((v.chip, e_chip), (v.array, e_array), (v.column, e_column)):
        if s > 0:
            g = g * (1 + s * e.to(g.dtype))
    return g
