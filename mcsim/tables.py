"""Measured device tables (docs/physics.md section 13.1): reading and checking the file, nothing else.

A table lists target conductances ``G`` against measured quantities in the table's own physical unit
(``mu``: programming mean shift, ``sigma``: programming spread, ``sigma_read``: read-noise spread) and
dimensionless drift exponents (``nu_mean``, ``nu_std``). CSV: ``#`` comment lines may state
``# gmax: 25 uS`` (the physical Gmax and its unit) and a source; the first other line names the columns.
NPZ: one array per column, optional ``gmax`` (scalar) and ``unit`` (string). Relative paths are read
from the current directory.

The hardware schema checks a table when a scenario loads (:func:`load`), so that a malformed table
fails before anything runs, with the file, line and column; the interpolation lives in
:mod:`mcsim.physics.device_tables`. Pure numpy, below the hardware schema.
"""
from __future__ import annotations

import functools
import hashlib
import io
import os
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from mcsim.errors import InputError

__all__ = ["COLUMNS", "DeviceTable", "TableError", "load", "read"]

#: Every column a table may hold; ``G`` always, the others as the model using the table needs.
COLUMNS = ("G", "mu", "sigma", "sigma_read", "nu_mean", "nu_std")
_SPREADS = ("sigma", "sigma_read", "nu_std")  # must be >= 0
_GMAX_RE = re.compile(r"^#\s*gmax\s*:\s*([^\s]+)\s*([^\s#]*)\s*$", re.I)


class TableError(InputError, ValueError):
    """A malformed table: the message names the file, line and column."""

    in_scenario = True


@dataclass(frozen=True)
class DeviceTable:
    """A checked table in its physical unit; ``columns`` maps column name -> float64 values (rows
    sorted by strictly increasing ``G``)."""

    path: str
    sha256: str
    gmax: Optional[float]  # from the file, None when it states none
    unit: Optional[str]
    columns: dict[str, np.ndarray]

    @property
    def g_range(self) -> tuple[float, float]:
        g = self.columns["G"]
        return float(g[0]), float(g[-1])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parse_csv(path: str, text: str) -> tuple[Optional[float], Optional[str], dict, list[int]]:
    gmax = unit = None
    header: Optional[list[str]] = None
    rows, lines = [], []
    for no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if m := _GMAX_RE.match(line):
                try:
                    gmax = float(m.group(1))
                except ValueError:
                    raise TableError(f"{path}, line {no}: gmax {m.group(1)!r} is not a number "
                                     "(write e.g. '# gmax: 25 uS')") from None
                unit = m.group(2) or None
            continue
        cells = [c.strip() for c in line.split(",")]
        if header is None:
            header = cells
            unknown = [c for c in header if c not in COLUMNS]
            if unknown:
                raise TableError(f"{path}, line {no}: unknown column {unknown[0]!r}; columns are "
                                 f"{', '.join(COLUMNS)}")
            dup = [c for c in header if header.count(c) > 1]
            if dup:
                raise TableError(f"{path}, line {no}: column {dup[0]!r} appears twice")
            continue
        if len(cells) != len(header):
            raise TableError(f"{path}, line {no}: {len(cells)} values for the {len(header)} columns "
                             f"{', '.join(header)}")
        values = []
        for name, cell in zip(header, cells):
            try:
                values.append(float(cell))
            except ValueError:
                raise TableError(f"{path}, line {no}, column {name}: {cell!r} is not a number") from None
        rows.append(values)
        lines.append(no)
    if header is None:
        raise TableError(f"{path}: no header line naming the columns (e.g. 'G,mu,sigma')")
    data = np.array(rows, dtype=np.float64).reshape(len(rows), len(header))
    return gmax, unit, {name: data[:, j] for j, name in enumerate(header)}, lines


def _parse_npz(path: str, raw: bytes) -> tuple[Optional[float], Optional[str], dict, list[int]]:
    try:
        npz = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - any unreadable archive is the user's file
        raise TableError(f"{path}: not a readable .npz archive ({err})") from None
    cols, gmax, unit = {}, None, None
    for name in npz.files:
        arr = npz[name]
        if name == "gmax":
            gmax = float(arr)
        elif name == "unit":
            unit = str(arr)
        elif name in COLUMNS:
            if arr.ndim != 1:
                raise TableError(f"{path}, column {name}: a 1-D array, not shape {arr.shape}")
            cols[name] = arr.astype(np.float64)
        else:
            raise TableError(f"{path}: unknown array {name!r}; columns are {', '.join(COLUMNS)}, "
                             "plus gmax and unit")
    lengths = {len(v) for v in cols.values()}
    if len(lengths) > 1:
        raise TableError(f"{path}: the columns have different lengths {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    return gmax, unit, cols, list(range(n))


def _check(path: str, cols: dict, lines: list[int], need: tuple[str, ...], npz: bool) -> None:
    def where(i: int, name: str) -> str:
        return f"{path}, {'row' if npz else 'line'} {lines[i]}, column {name}"

    for name in ("G", *need):
        if name not in cols:
            raise TableError(f"{path}: missing column {name!r} (the table has {', '.join(cols) or 'none'}; "
                             f"this model needs G, {', '.join(need)})")
    if len(cols["G"]) < 2:
        raise TableError(f"{path}: at least two rows are needed to interpolate, not {len(cols['G'])}")
    for name, v in cols.items():
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise TableError(f"{where(bad[0], name)}: {v[bad[0]]} is not a finite number")
        if name in _SPREADS or name == "G":
            bad = np.flatnonzero(v < 0)
            if bad.size:
                raise TableError(f"{where(bad[0], name)}: negative value {v[bad[0]]:g} "
                                 f"({'a conductance' if name == 'G' else 'a spread'} is >= 0)")
    down = np.flatnonzero(np.diff(cols["G"]) <= 0)
    if down.size:
        i = down[0] + 1
        raise TableError(f"{where(i, 'G')}: G {cols['G'][i]:g} does not increase (previous row "
                         f"{cols['G'][i - 1]:g}); sort the rows by strictly increasing G")


@functools.lru_cache(maxsize=64)
def _read(path: str, mtime_ns: int, size: int, need: tuple[str, ...]) -> DeviceTable:
    with open(path, "rb") as f:
        raw = f.read()
    npz = path.lower().endswith(".npz")
    if npz:
        gmax, unit, cols, lines = _parse_npz(path, raw)
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise TableError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        gmax, unit, cols, lines = _parse_csv(path, text)
    _check(path, cols, lines, need, npz)
    for v in cols.values():
        v.flags.writeable = False
    return DeviceTable(path, _sha256(raw), gmax, unit, cols)


def read(path: str, need: tuple[str, ...] = ()) -> DeviceTable:
    """The checked table at ``path`` (relative to the current directory); raises :class:`TableError`
    naming the file, line and column of the first problem, or FileNotFoundError. Cached per file
    version (modification time and size)."""
    st = os.stat(path)
    return _read(path, st.st_mtime_ns, st.st_size, tuple(sorted(need)))


def load(path: str, need: tuple[str, ...], gmax: Optional[float], unit: Optional[str],
         field: str) -> tuple[DeviceTable, float]:
    """The table for the setting ``field`` (e.g. ``error``) and its physical Gmax: the scenario's
    ``gmax``/``unit`` when given, else the file's; both given must agree. Raises ValueError naming
    ``field`` (and the file, line and column of a malformed table)."""
    try:
        table = read(path, need)
    except FileNotFoundError:
        raise ValueError(f"{field}.file: table {path!r} not found (relative paths are read from the "
                         f"current directory {os.getcwd()!r})") from None
    except IsADirectoryError:
        raise ValueError(f"{field}.file: {path!r} is a directory, not a table") from None
    except TableError as err:
        raise ValueError(f"{field}.file: {err}") from None
    if gmax is None and table.gmax is None:
        raise ValueError(f"{field}.gmax: the table {path!r} states no physical Gmax; add a header line "
                         f"'# gmax: 25 uS' to it or set {field}.gmax (in the table's unit)")
    if gmax is not None and table.gmax is not None and not np.isclose(gmax, table.gmax, rtol=1e-12, atol=0):
        raise ValueError(f"{field}.gmax: {gmax:g} disagrees with the table {path!r}, which states "
                         f"{table.gmax:g}; leave {field}.gmax unset or fix the table")
    if unit is not None and table.unit is not None and unit != table.unit:
        raise ValueError(f"{field}.unit: {unit!r} disagrees with the table {path!r}, which states "
                         f"{table.unit!r}")
    return table, float(gmax if gmax is not None else table.gmax)
