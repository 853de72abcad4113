"""Measured device tables as functions of normalized conductance: docs/physics.md section 13.1.

A table column (``mu``, ``sigma``, ``sigma_read``, ``nu_mean``, ``nu_std``) is interpolated linearly in
``G`` on normalized conductances (``G / Gmax``, the table's own physical Gmax), extrapolated linearly
beyond its measured range (with a warning, :func:`range_warning`); spreads are clipped at 0.

Each segment is evaluated as ``slope * G + intercept``, and an intercept within float64 round-off of
zero is exactly zero: a table holding ``sigma = k * G`` is then ``float32(k) * G`` bit for bit, the
proportional model's own product (section 4), so both give the same chips from the same normals.
The file is read and checked by :mod:`mcsim.tables` when the scenario loads.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from mcsim import tables

_SPREADS = ("sigma", "sigma_read", "nu_std")
_PHYSICAL = ("mu", "sigma", "sigma_read")  # in the table's unit; nu_mean, nu_std are dimensionless


@dataclass(frozen=True)
class Curve:
    """A piecewise-linear function of normalized conductance."""

    knots: np.ndarray  # (n - 2,) interior knots (normalized G), segment boundaries
    slope: np.ndarray  # (n - 1,) per segment
    intercept: np.ndarray  # (n - 1,) per segment
    floor: Optional[float]  # lower clip (0 for spreads)

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        knots = torch.as_tensor(self.knots, dtype=g.dtype, device=g.device)
        seg = torch.searchsorted(knots, g.contiguous(), right=True)
        a = torch.as_tensor(self.slope, dtype=g.dtype, device=g.device)[seg]
        b = torch.as_tensor(self.intercept, dtype=g.dtype, device=g.device)[seg]
        out = g.abs() * a + b
        return out.clamp(min=self.floor) if self.floor is not None else out


def make_curve(g: np.ndarray, v: np.ndarray, floor: Optional[float] = None) -> Curve:
    """The linear interpolant of ``v`` at knots ``g`` (strictly increasing, normalized)."""
    slope = np.diff(v) / np.diff(g)
    intercept = v[:-1] - slope * g[:-1]
    tiny = 4 * np.finfo(np.float64).eps * np.maximum(np.abs(v[:-1]), np.abs(v[1:]))
    intercept[np.abs(intercept) <= tiny] = 0.0  # round-off of a segment through the origin
    return Curve(g[1:-1].copy(), slope, intercept, floor)


@functools.lru_cache(maxsize=64)
def _curve(path: str, sha256: str, gmax: float, column: str) -> Optional[Curve]:
    table = tables.read(path)
    if table.sha256 != sha256:
        raise ValueError(f"table {path!r} changed after the scenario was loaded (sha256 {table.sha256[:12]}, "
                         f"loaded {sha256[:12]}); reload the scenario")
    if column not in table.columns:
        return None
    v = table.columns[column]
    if column in _PHYSICAL:
        v = v / gmax
    return make_curve(table.columns["G"] / gmax, v, 0.0 if column in _SPREADS else None)


def gmax_of(setting) -> float:
    """The physical Gmax of a table setting (``error``, ``read_noise`` or ``drift``): the scenario's, else the file's."""
    return setting.gmax if setting.gmax is not None else tables.read(setting.file).gmax


def curve(setting, column: str) -> Optional[Curve]:
    """The normalized curve of ``column`` of the table a validated setting names (None: no such column)."""
    return _curve(setting.file, setting.sha256, gmax_of(setting), column)


def range_warning(field: str, setting, gmin: float) -> Optional[str]:
    """A message naming the table when conductances ``[Gmin, 1]`` leave its measured range, else None."""
    lo, hi = tables.read(setting.file).g_range
    gmax = gmax_of(setting)
    if gmin * gmax >= lo * (1 - 1e-9) and gmax <= hi * (1 + 1e-9):
        return None
    return (f"{field} table {setting.file!r} was measured over G = {lo:g}-{hi:g} (Gmax {gmax:g}), but the "
            f"conductances span {gmin * gmax:g}-{gmax:g}: outside its range it is extrapolated linearly")
