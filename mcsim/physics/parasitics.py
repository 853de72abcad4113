"""Parasitic wire resistance as an effective conductance matrix (docs/physics.md section 8).

A crossbar with resistive wires is a linear network driven by the input voltages, so the column
currents of an array are ``I_c = sum_j M[j, c] V_j`` for an effective conductance matrix ``M``
that depends only on the conductances ``G`` and on ``rp``. This module computes ``M``; the engine
uses it in place of ``G``, which makes the IR drops exact for every input (analog, or each bit of
a bit-serial input).

Units: ``Gmax = 1`` and ``rp = Rp * Gmax``, so one wire segment has resistance ``rp``. ``G`` has
shape ``(..., N, C)``: N rows (inputs) by C columns, any leading batch dims; zero entries (padded
rows without a device) are allowed. All solves run in float64 (docs/physics.md section 10: float32 is off
by about 1e-4 relative at small rp) and ``M`` comes back in ``G``'s dtype.

Kirchhoff's equations multiplied by ``rp`` read ``(L + rp*diag(G)) v = rhs``, where ``L`` is the
Laplacian of a wire with unit segments: -1 off the diagonal, 2 on it, and 1 at an open end (the
segment to a driver or to the virtual ground is folded into its node's diagonal). These matrices
are symmetric, so ``M`` follows from one adjoint solve per column.

Gated rows (bit-serial inputs on the study's cell, where each bit switches its row's device in or
out) are not linear in the bits: :func:`gated_column_currents` solves each (input vector, column)
exactly instead, as a product of 2x2 (3x3 for signed bits) transfer matrices, with the products
over blocks of rows tabulated per bit pattern; the product is taken by a binary tree of tensor
operations (any device) or, on the CPU, by a compiled sequential scan (:mod:`.ladder_scan`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mcsim.errors import RunFailure

__all__ = [
    "ParasiticSolveError",
    "solve_tridiagonal",
    "column_transfer",
    "gated_column_currents",
    "grid_transfer",
    "effective_conductance",
]

# Approximate number of (N, C) float64 arrays alive per right-hand side during the grid iteration
# (CG vectors and the tridiagonal solvers' temporaries); sets the chunk size.
_GRID_ARRAYS_PER_RHS = 24


class ParasiticSolveError(RunFailure, RuntimeError):
    """The iterative grid solve did not reach its tolerance."""


# ---------------------------------------------------------------- tridiagonal solves

def _take(s: slice, dim: int) -> tuple:
    """Index tuple selecting ``s`` along the negative dimension ``dim``."""
    return (Ellipsis, s) + (slice(None),) * (-dim - 1)


def _pad(t: Tensor, before: int, after: int, value: float, dim: int) -> Tensor:
    return F.pad(t, (0, 0) * (-dim - 1) + (before, after), value=value)


def _cyclic_reduction(a: Tensor, b: Tensor, c: Tensor, d: Tensor, dim: int) -> Tensor:
    """Solve ``a_k x_{k-1} + b_k x_k + c_k x_{k+1} = d_k`` along the negative dim ``dim``.

    Requires ``a_0 = c_{n-1} = 0``; the four tensors have the full length along ``dim`` and
    broadcast elsewhere (``a`` and ``c`` alike). Each level eliminates the even unknowns from the odd equations (one
    vectorized step), solves the half-size system recursively and back-substitutes the even ones:
    O(n) work in log2(n) levels, no pivoting (stable for the diagonally dominant systems here).
    """
    n = d.shape[dim]
    if n == 1:
        return d / b
    if n % 2 == 0:  # append a decoupled identity equation so that the length is odd
        a, c, d = (_pad(t, 0, 1, 0.0, dim) for t in (a, c, d))
        b = _pad(b, 0, 1, 1.0, dim)
    ev = [t[_take(slice(0, None, 2), dim)] for t in (a, b, c, d)]
    od = [t[_take(slice(1, None, 2), dim)] for t in (a, b, c, d)]
    lft = [t[_take(slice(None, -1), dim)] for t in ev]  # even neighbour k-1 of odd k
    rgt = [t[_take(slice(1, None), dim)] for t in ev]   # even neighbour k+1 of odd k
    alpha = od[0].div(lft[1]).neg_()
    gamma = od[2].div(rgt[1]).neg_()
    b_odd = torch.addcmul(od[1], alpha, lft[2]).addcmul_(gamma, rgt[0])
    d_odd = torch.addcmul(od[3], alpha, lft[3]).addcmul_(gamma, rgt[3])
    x_odd = _cyclic_reduction(alpha * lft[0], b_odd, gamma * rgt[2], d_odd, dim)
    xp = _pad(x_odd, 1, 1, 0.0, dim)
    x_even = (torch.addcmul(ev[3], ev[0], xp[_take(slice(None, -1), dim)], value=-1)
              .addcmul_(ev[2], xp[_take(slice(1, None), dim)], value=-1).div_(ev[1]))
    shape = list(x_even.shape)
    shape[dim] = 2 * shape[dim] - 1
    x = x_even.new_empty(shape)
    x[_take(slice(0, None, 2), dim)] = x_even
    x[_take(slice(1, None, 2), dim)] = x_odd
    return x[_take(slice(0, n), dim)]


def solve_tridiagonal(lower: Tensor, diag: Tensor, upper: Tensor, rhs: Tensor) -> Tensor:
    """Solve batched tridiagonal systems along the last dim by cyclic reduction.

    Row k reads ``lower[k] x[k-1] + diag[k] x[k] + upper[k] x[k+1] = rhs[k]``; ``lower[..., 0]``
    and ``upper[..., -1]`` are ignored. Inputs broadcast against each other. Computed in float64
    without pivoting (meant for diagonally dominant systems); returned in the inputs' dtype.
    """
    dtype = torch.promote_types(torch.promote_types(lower.dtype, diag.dtype),
                                torch.promote_types(upper.dtype, rhs.dtype))
    a, b, c, d = (t.to(torch.float64) for t in torch.broadcast_tensors(lower, diag, upper, rhs))
    a = a.clone()
    c = c.clone()
    a[..., 0] = 0.0
    c[..., -1] = 0.0
    return _cyclic_reduction(a, b, c, d, -1).to(dtype)


def _wire(n: int, open_end: int, dim: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(lower, upper, diagonal) of the Laplacian of a wire of n nodes along ``dim``, shaped to
    broadcast: unit segments between neighbours plus one from the end opposite ``open_end`` to a
    fixed potential (driver or virtual ground), so the diagonal is 2 except 1 at ``open_end``."""
    shape = (n,) + (1,) * (-dim - 1)
    off = torch.full(shape, -1.0, dtype=torch.float64, device=like.device)
    lo, up, lap = off.clone(), off.clone(), torch.full_like(off, 2.0)
    lo[0] = 0.0
    up[-1] = 0.0
    lap[open_end] = 1.0
    return lo, up, lap


# ---------------------------------------------------------------- column-only topology

def column_transfer(G: Tensor, rp: float) -> Tensor:
    """Effective conductances of the column-only topology (docs/physics.md section 8).

    Column c is a chain: node k (row k) receives ``G_k (V_k - v_k)`` from its device, one segment
    ``rp`` joins node k to node k+1 and one more joins node N-1 to the virtual ground, whose
    current ``I = v_{N-1} / rp`` is the output; row 0 is farthest from the ADC. KCL times rp:
    ``(L + rp D) v = rp D V`` with ``D = diag(G)`` and ``L = tridiag(-1, [1, 2, ..., 2], -1)``,
    so ``I = e_{N-1}^T (L + rp D)^{-1} D V`` and by symmetry ``M[:, c] = G * x`` with
    ``(L + rp D) x = e_{N-1}``. Since ``L 1 = e_{N-1}``, ``x = 1 - y`` where ``(L + rp D) y = rp G``:
    ``y`` is the column's node potentials with every input at 1 V, i.e. the fractional IR drop
    each row sees. Solving for ``y`` keeps small drops relatively accurate.
    """
    _check_rp(rp)
    G64 = G.to(torch.float64)
    rpG = rp * G64
    lo, up, lap = _wire(G.shape[-2], 0, -2, G64)
    y = _cyclic_reduction(lo, lap + rpG, up, rpG, -2)
    return torch.addcmul(G64, G64, y, value=-1).to(G.dtype)


# ---------------------------------------------------------------- gated rows (bit-serial inputs)
#
# A column with gated rows (docs/physics.md section 8) is a ladder: walking from the far end (row 0) to the
# ADC, the part of the column already passed is a Norton source (current J into the node, internal
# conductance Y). Crossing one wire segment rp and adding row k's device (conductance x = G_k [u_k != 0],
# source current y = G_k u_k; x = y = 0 when the bit gates the row off; a k-bit input slice, docs/physics.md
# section 16, drives an active row at the level u_k in -top..top) maps it to
#     Y' = Y / (1 + rp Y) + x,    J' = J / (1 + rp Y) + y,
# and the current into the virtual ground is J / (1 + rp Y) after the last segment. In homogeneous
# coordinates (Y = p / q, J = s / q) this is linear: (p, q, s) <- T_k (p, q, s) with
#     T_k = [[1 + rp x, x, 0], [rp, 1, 0], [rp y, y, 1]],
# starting from (0, 1, 0), and I = s / (q + rp p) for the product P = T_{N-1} ... T_0 applied to
# (0, 1, 0), i.e. I = P[2,1] / (P[1,1] + rp P[0,1]). Exact (it is Gaussian elimination of the
# tridiagonal KCL system from the far end), one ratio at the end, no cancellation: all entries of the
# 2x2 block are positive. The third column of every T_k is (0, 0, 1), so a product is stored as six
# numbers (a, b, c, d, e, f) = the 2x2 block [[a, b], [c, d]] and the row (e, f). With unsigned bits
# (y = x) every T_k keeps s - p fixed, so s = p and I = P[0,1] / (P[1,1] + rp P[0,1]): the 2x2
# block alone (four numbers) suffices (all active sources at 1 V: the Norton current equals Y).
#
# The product is taken as a binary tree over the rows (log2 N vectorized levels, no loop over rows).
# Bits are few-valued, so the products over aligned blocks of ``b`` rows are tabulated once per
# array for every bit pattern (2**b unsigned, 3**b signed; base**b for slices' levels) by the same
# tree, and each input vector gathers its blocks' products from the table: the per-vector work drops
# from N to N / b matrix products. Block sizes are powers of two and N is padded at the ADC end with identity matrices, so
# every (vector, column) goes through the same tree of products whatever the block size, the batch
# or the chunking: the result is bit-identical across them.

_GATED_CACHE_BYTES = 2**22  # gathered block products per vector chunk: sized to stay in cache
_GATED_MAX_PATTERNS = 256  # block rows: 2**8 unsigned, 3**4 signed patterns at most


@dataclass(frozen=True)
class _Levels:
    """The drive levels of a gated row: bits (``top = 1``) in {0, 1} or {-1, 0, +1}, a slice's levels
    (section 16) in 0..top or -top..top. Level 0 gates the row off."""

    signed: bool
    top: int = 1

    @property
    def base(self) -> int:
        """Levels per row: the patterns of a block of b rows are ``base**b``."""
        return 2 * self.top + 1 if self.signed else self.top + 1

    @property
    def zero(self) -> int:
        """The digit of level 0 (the pattern digit is the level plus this)."""
        return self.top if self.signed else 0

    @property
    def affine(self) -> bool:
        """Whether products need the row (e, f): every source but unsigned bits (where J = Y)."""
        return self.signed or self.top > 1

    def max_block(self, patterns: int) -> int:
        """Largest power-of-two block whose patterns stay within ``patterns`` (at least one row)."""
        block = 1
        while self.base ** (2 * block) <= patterns:
            block *= 2
        return block

# A stack of products is one tensor (k, ...): entries (a, b, c, d) of the 2x2 block row-major, then
# (e, f) when the bits are signed, then the corner z when the products may need rescaling. Each entry
# of a product costs one multiply and one multiply-add per term, whatever the layout, so results do
# not depend on it; the stacked layout only saves dispatches (two ops for the whole 2x2 block).


def _mat_product_(H: Tensor, L: Tensor, out: Tensor) -> Tensor:
    """``out = H @ L`` for stacks of products (see above); H holds the later rows (nearer the ADC).
    Operands broadcast over the trailing dims; ``out`` must not overlap them."""
    H2, L2, O2 = H[:4].unflatten(0, (2, 2)), L[:4].unflatten(0, (2, 2)), out[:4].unflatten(0, (2, 2))
    torch.mul(H2[:, :1], L2[:1], out=O2).addcmul_(H2[:, 1:], L2[1:])  # block: rows of H times L
    if H.shape[0] > 4:  # row (e, f): (e_H, f_H) @ L_block + z_H (e_L, f_L); z_H (e_L, f_L) is exact
        if H.shape[0] == 7:
            torch.mul(H[6:], L[4:6], out=out[4:6]).addcmul_(H[4:5], L2[0])
            torch.mul(H[6], L[6], out=out[6])
        else:
            torch.addcmul(L[4:6], H[4:5], L2[0], out=out[4:6])
        out[4:6].addcmul_(H[5:6], L2[1])
    return out


def _rescale_(m: Tensor) -> None:
    """In place: divide each product of the stack (every entry, the corner included) by the power
    of two nearest its trace. Exact, hence bit-neutral (the current is a ratio of entries), and it
    keeps long chains at large rp inside the float range. Stacks with a row (e, f) need the corner."""
    _, exponent = torch.frexp(m[0] + m[3])
    m.mul_(torch.ldexp(torch.ones_like(m[0]), exponent.neg_()))


def _log_growth(rows: int, rp: float, gmax: float) -> float:
    """Upper bound on log|entry| of a product of ``rows`` matrices T_k with 0 <= x, |y| <= gmax.

    Entrywise the 2x2 block is at most M**rows, M = [[1 + rp g, g], [rp, 1]], and
    diag(sqrt(g), sqrt(rp))^-1 M diag(sqrt(g), sqrt(rp)) is symmetric with largest eigenvalue
    ``lam``; the row (e, f) sums ``rows`` such terms times g (1 + rp)."""
    g = max(gmax, 1e-300)
    lam = 1 + rp * g / 2 + math.sqrt(rp * g + (rp * g / 2) ** 2)
    kappa = max(1.0, math.sqrt(g / rp), math.sqrt(rp / g))
    return rows * math.log(lam) + math.log(kappa * (1 + rows * g * (1 + rp)))


def _needs_rescale(rows: int, rp: float, gmax: float, dtype: torch.dtype) -> bool:
    return _log_growth(rows, rp, gmax) > 0.9 * math.log(torch.finfo(dtype).max)


def _tree(m: Tensor, rows: int, rp: float, gmax: float, buffers: tuple[Tensor, Tensor]) -> Tensor:
    """Reduce a stack of products along dim 1 (element 0 farthest from the ADC) to one, by the
    aligned binary tree; ``rows`` is the number of circuit rows each element spans. Levels write
    alternately into the two ``buffers`` (each at least half of dim 1 long)."""
    level = 0
    while m.shape[1] > 1:
        n, h = m.shape[1], m.shape[1] // 2
        if _needs_rescale(2 * rows, rp, gmax, m.dtype):  # then at every level up: rescaled ones stay O(1)
            _rescale_(m)
        out = buffers[level % 2][:, :h + n % 2, :m.shape[2]]
        _mat_product_(m[:, 1:2 * h:2], m[:, 0:2 * h:2], out[:, :h])
        if n % 2:  # the last element (nearest the ADC) has no partner at this level
            out[:, h].copy_(m[:, -1])
        m, rows, level = out, 2 * rows, level + 1
    return m[:, 0]


def _block_tables(g: Tensor, rp: float, block: int, lv: _Levels, corner: bool) -> Tensor:
    """Products over each aligned block of ``block`` rows for every bit pattern.

    ``g`` is (N_pad, C) with N_pad a multiple of ``block`` (padding rows are NaN: they become
    identity matrices). Returns a stack (k, N_pad / block, P, C), pattern index
    ``sum_r digit_r * base**r`` over the block's rows r, digit = level (+ top when signed)."""
    pad = torch.isnan(g)
    g = g.masked_fill(pad, 0.0)
    levels = torch.arange(-lv.zero, lv.top + 1, dtype=g.dtype, device=g.device)
    x = g.unsqueeze(1) * (levels != 0).to(g.dtype).view(1, -1, 1)  # (N_pad, P1, C): on or gated off
    c = torch.full_like(g, rp).masked_fill_(pad, 0.0).unsqueeze(1).expand_as(x)
    m = [torch.addcmul(torch.ones_like(x), c, x), x, c, torch.ones_like(x)]
    if lv.affine:
        y = g.unsqueeze(1) * levels.view(1, -1, 1)
        m += [c * y, y] + ([torch.ones_like(x)] if corner else [])
    m = torch.stack(m)
    gmax, rows = float(g.abs().max()) * lv.top if g.numel() else 0.0, 1
    while rows < block:  # pair rows (2i, 2i+1) and every pattern of the one with every pattern of the other
        if _needs_rescale(2 * rows, rp, gmax, g.dtype):
            _rescale_(m)
        k, nb, P, C = m.shape
        out = m.new_empty(k, nb // 2, P, P, C)
        _mat_product_(m[:, 1::2].unsqueeze(3), m[:, 0::2].unsqueeze(2), out)  # (upper digits, lower digits)
        m, rows = out.view(k, nb // 2, P * P, C), 2 * rows
    return m


def _pattern_index(u: Tensor, block: int, lv: _Levels, n_pad: int) -> Tensor:
    """(V, N) bits -> (V, N_pad / block) int32 table rows: block j's pattern plus j * P, the pattern
    ``sum_r digit_r * base**r`` over the block's rows (Horner's rule, one pass per row of a block)."""
    base = lv.base
    digits = u.to(torch.int32)
    if lv.zero:
        digits += lv.zero
    digits = F.pad(digits, (0, n_pad - u.shape[-1]), value=lv.zero).view(u.shape[0], -1, block)
    idx = digits[..., block - 1].clone()
    for r in range(block - 2, -1, -1):
        idx.mul_(base).add_(digits[..., r])
    return idx.add_(torch.arange(idx.shape[1], device=u.device, dtype=torch.int32) * base**block)


def _choose_block(n_vec: int, n_rows: int, cols: int, lv: _Levels, itemsize: int, max_bytes: int) -> int:
    """Block size minimizing table construction plus per-vector work, within the memory budget."""
    base, best, best_cost = lv.base, 1, math.inf
    block = 1
    while block <= lv.max_block(_GATED_MAX_PATTERNS):
        P = base**block
        # per (row, column): building ~ P / block products, gathering and the tree ~ 1.5 / block per vector
        cost = (P + 1.5 * n_vec) / block
        fits = 7 * P * -(-n_rows // block) * min(cols, 8) * itemsize <= max_bytes // 2
        if fits and cost < best_cost:
            best, best_cost = block, cost
        block *= 2
    return best


def _gated_array(G: Tensor, u: Tensor, rp: float, lv: _Levels, max_bytes: int, dtype: torch.dtype,
                 method: str) -> Tensor:
    """Column currents (V, C) of one array ``G`` (N, C) for bit vectors ``u`` (V, N). Vectors with
    no active row carry no current (exactly: every product's b and f stay 0): the tree skips them
    (the high-order bits of typical activations are often all zero over a whole patch), the scan
    passes over off rows by itself."""
    if method == "scan":
        return _gated_scan(G, u, rp, lv, max_bytes, dtype)
    active = u.any(1)
    n_active = int(active.sum())
    if n_active < u.shape[0]:
        out = torch.zeros(u.shape[0], G.shape[1], dtype=dtype, device=G.device)
        if n_active:
            out[active] = _gated_array(G, u[active], rp, lv, max_bytes, dtype, method)
        return out
    return _gated_tree(G, u, rp, lv, max_bytes, dtype)


def _gated_tree(G: Tensor, u: Tensor, rp: float, lv: _Levels, max_bytes: int, dtype: torch.dtype) -> Tensor:
    """:func:`_gated_array` by the binary tree of tensor operations (any device)."""
    (N, C), V = G.shape, u.shape[0]
    itemsize = torch.finfo(dtype).bits // 8
    block = _choose_block(V, N, C, lv, itemsize, max_bytes)
    nblk = -(-N // block)
    P = lv.base**block
    g = F.pad(G.to(dtype), (0, 0, 0, nblk * block - N), value=math.nan)
    gmax = float(G.abs().max()) * lv.top if G.numel() else 0.0  # bounds the sources y too
    top = block * 2 ** math.ceil(math.log2(nblk))  # rows spanned at the tree's last level
    corner = lv.affine and _needs_rescale(top, rp, gmax, dtype)
    k = 4 if not lv.affine else 7 if corner else 6
    out = torch.empty(V, C, dtype=dtype, device=G.device)
    col_chunk = max(1, min(C, (max_bytes // 2) // ((k + 1) * P * nblk * itemsize)))
    # On the CPU a chunk's gathered products stay in cache. On a GPU, chunks that small cost a few
    # dozen kernel launches per handful of vectors (the H200 check's gated CNN pass did not finish):
    # there the chunk fills half the memory budget. Results do not depend on the chunking.
    chunk_bytes = _GATED_CACHE_BYTES if G.device.type == "cpu" else max_bytes // 2
    vec_chunk = max(1, chunk_bytes // (k * nblk * min(C, col_chunk) * itemsize))
    buffers = tuple(torch.empty(k, -(-nblk // 2), min(V, vec_chunk) * min(C, col_chunk), dtype=dtype,
                                device=G.device) for _ in range(2))
    for c0 in range(0, C, col_chunk):
        cs = slice(c0, min(C, c0 + col_chunk))
        table = _block_tables(g[:, cs], rp, block, lv, corner).flatten(1, 2)  # (k, nblk P, C')
        width = table.shape[-1]
        for v0 in range(0, V, vec_chunk):
            vs = slice(v0, min(V, v0 + vec_chunk))
            idx = _pattern_index(u[vs], block, lv, nblk * block).T.flatten()  # block-major
            X = table.index_select(1, idx).view(k, nblk, -1)  # (k, nblk, vectors x columns)
            m = _tree(X, block, rp, gmax, buffers).view(k, -1, width)
            out[vs, cs] = (m[5] if lv.affine else m[1]) / torch.add(m[3], m[1], alpha=rp)
    return out


_SCAN_MAX_PATTERNS = 16  # the scan's block rows: 16 patterns (unsigned bits) or 9 (signed), tables in cache
_SCAN_TABLE_BYTES = 2**24  # one column chunk's table (all blocks, all patterns): half an L3 cache
_SCAN_MAX_COLS = 128  # columns per chunk: enough for the compiler to vectorize across them


def _gated_scan(G: Tensor, u: Tensor, rp: float, lv: _Levels, max_bytes: int, dtype: torch.dtype) -> Tensor:
    """:func:`_gated_array` on the CPU by one compiled pass over the blocks per (vector, column)
    (:mod:`mcsim.physics.ladder_scan`): the block tables as in the tree, the product sequential."""
    import numba

    from mcsim.physics.ladder_scan import ladder_scan

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    (N, C), V = G.shape, u.shape[0]
    itemsize = torch.finfo(dtype).bits // 8
    block = lv.max_block(_SCAN_MAX_PATTERNS)
    nblk, P, k = -(-N // block), lv.base**block, 7 if lv.affine else 4
    per_col = nblk * P * k * itemsize
    cc = 2 ** max(0, min(int(math.log2(max(1, _SCAN_TABLE_BYTES // per_col))), int(math.log2(_SCAN_MAX_COLS)),
                          math.ceil(math.log2(C))))
    col_chunk = cc * max(1, (max_bytes // 2) // (2 * per_col * cc))  # the table and its build's temporaries
    n_pad = -(-C // cc) * cc
    g = F.pad(F.pad(G.to(dtype), (0, n_pad - C)), (0, 0, 0, nblk * block - N), value=math.nan)  # NaN rows: identity
    gmax = float(G.abs().max()) * lv.top if G.numel() else 0.0  # bounds the sources y too
    every = 1
    while every <= nblk and not _needs_rescale(2 * (every + 1) * block, rp, gmax, dtype):
        every += 1
    idx = _pattern_index(u, block, lv, nblk * block).numpy()
    zero, n_full = (P - 1) // 2 if lv.signed else 0, N // block  # the all-off pattern; blocks without padding rows
    rp_t = np.dtype(str(dtype).removeprefix("torch.")).type(rp)
    out = torch.empty(V, n_pad, dtype=dtype)
    for c0 in range(0, n_pad, col_chunk):
        cs = slice(c0, min(n_pad, c0 + col_chunk))
        table = _block_tables(g[:, cs], rp, block, lv, corner=lv.affine)  # (k, nblk, P, C')
        table = table.flatten(1, 2).unflatten(2, (-1, cc)).permute(2, 1, 0, 3).contiguous()
        part = np.empty((V, table.shape[0] * cc), dtype=table.numpy().dtype)
        a, b, wire, d = table[0, zero, :4, 0].tolist()  # block 0, every row off
        if (a, b, d) != (1.0, 0.0, 1.0):  # rescaled while tabulated (huge rp): no shortcut for runs of them
            n_full = 0
        ladder_scan(table.numpy(), idx, rp_t, every, zero, rp_t.dtype.type(wire), n_full, part)
        out[:, cs] = torch.from_numpy(part)
    return out[:, :C]


def gated_column_currents(G: Tensor, u: Tensor, rp: float, *, signed: Optional[bool] = None, top: int = 1,
                          max_bytes: int = 2**28, compute_dtype: torch.dtype = torch.float64,
                          method: Literal["auto", "scan", "tree"] = "auto") -> Tensor:
    """Exact column currents of the column-only topology with gated rows (docs/physics.md section 8).

    Each input bit gates its row's select transistor: ``u_k = 0`` disconnects row k (its device
    neither injects nor loads the column), ``u_k = +1 / -1`` drives it at ``+V_read / -V_read``
    (``V_read = 1``), so the column holds only the active devices and its IR drops depend on the
    bits. A k-bit input slice (docs/physics.md section 16) drives an active row at its level
    ``u_k`` in ``-top..top`` (``top = 2**k - 1``; the slice DAC's read line, the select transistor on
    while the level is not 0), so ``u`` holds integer levels. Geometry as in :func:`column_transfer`
    (row 0 farthest from the ADC, one segment ``rp`` between nodes and one from node N-1 to the
    virtual ground).

    Args:
        G: conductances ``(..., N, C)``, rows in physical order; zero entries (no device) allowed.
        u: one bit plane per input vector, ``(..., N)``, values in {-1, 0, +1} (any dtype, bool
            included), or integer slice levels in ``-top..top``. Leading dims broadcast against G's
            (chips, images, positions, bits).
        rp: segment resistance times Gmax (>= 0).
        signed: whether u may hold -1 (``None``: whether it does). Unsigned bits take a cheaper
            path with different last-bit rounding, so a caller that needs results independent of
            the batch (the engine) passes the layer's signedness rather than letting the data
            decide.
        top: the largest level of ``u`` (1: bits; ``2**k - 1`` for k-bit slices). The currents are
            those of sources at ``u_k`` volts (a slice at ``m`` drives ``m / top`` of the read voltage:
            divide by ``top`` for them).
        max_bytes: memory budget of the per-array pattern tables (the vectors are processed in
            cache-sized chunks).
        compute_dtype: float64 (default, docs/physics.md section 10). float32 halves the work's memory
            traffic; its currents carry about 1e-6 relative error, so the drop itself is only
            resolved when it is well above that.
        method: how the row products are taken: ``"tree"`` by a binary tree of tensor operations
            (any device), ``"scan"`` by one compiled sequential pass per (vector, column)
            (:mod:`mcsim.physics.ladder_scan`, CPU only, several times faster there);
            ``"auto"``: the scan on the CPU, the tree elsewhere. Both are exact and independent
            of the batch; they associate the products differently, so their last bits differ.

    Returns:
        Currents into the virtual grounds, ``(*broadcast(G.shape[:-2], u.shape[:-1]), C)``, in
        G's dtype. ``rp = 0`` returns the plain matmul ``u @ G`` in G's dtype.

    Raises:
        ValueError: negative rp, mismatched row counts, levels outside ``-top..top`` or not integers, -1 with
            ``signed=False``, or the scan asked for off the CPU.

    >>> G = torch.tensor([[1.0], [1.0]], dtype=torch.float64)
    >>> gated_column_currents(G, torch.tensor([1.0, 0.0]), 0.5)  # the far device, 2 segments
    tensor([0.5000], dtype=torch.float64)
    """
    _check_rp(rp)
    if method not in ("auto", "scan", "tree"):
        raise ValueError(f"method must be 'auto', 'scan' or 'tree', not {method!r}")
    if method == "auto":
        method = "scan" if G.device.type == "cpu" else "tree"
    elif method == "scan" and G.device.type != "cpu":
        raise ValueError(f"the scan runs on the CPU; G is on {G.device} (use method='tree' or 'auto')")
    if u.dtype == torch.bool:
        u = u.to(torch.int8)
    if u.shape[-1] != G.shape[-2]:
        raise ValueError(f"u has {u.shape[-1]} rows per vector but G has {G.shape[-2]} rows")
    lo, hi = u.aminmax() if u.numel() else (u.new_zeros(()), u.new_zeros(()))
    if top == 1 and (lo < -1 or hi > 1 or (u.is_floating_point() and bool(((u != 0) & (u.abs() != 1)).any()))):
        raise ValueError("gated rows take bit planes: every entry of u must be -1, 0 or +1")
    if top != 1 and (top < 1 or lo < -top or hi > top or (u.is_floating_point() and bool((u != u.round()).any()))):
        raise ValueError(f"gated rows take integer slice levels: every entry of u must be in -{top}..{top} (top >= 1)")
    has_negative = bool(lo < 0)
    if signed is None:
        signed = has_negative
    elif has_negative and not signed:
        raise ValueError("u holds -1 bits but signed=False; pass signed=True (or None)")
    if rp == 0:
        return torch.matmul(u.to(G.dtype).unsqueeze(-2), G).squeeze(-2)
    Gb, ub, restore = _pair_arrays(G, u)
    if Gb.shape[0] == 0 or ub.shape[1] == 0:
        return restore(G.new_zeros(Gb.shape[0], ub.shape[1], G.shape[-1]))
    lv = _Levels(signed, top)
    out = torch.stack([_gated_array(Gb[i].detach(), ub[i], rp, lv, max_bytes, compute_dtype, method)
                       for i in range(Gb.shape[0])])
    return restore(out).to(G.dtype)


def _pair_arrays(G: Tensor, u: Tensor):
    """Flatten broadcast batch dims into (arrays, N, C) and (arrays, vectors, N), arrays being the
    batch dims along which G varies; ``restore`` maps (arrays, vectors, C) back."""
    N, C = G.shape[-2:]
    bo = torch.broadcast_shapes(G.shape[:-2], u.shape[:-1])
    nd = len(bo)
    bg = (1,) * (nd - G.dim() + 2) + tuple(G.shape[:-2])
    gdims = [i for i in range(nd) if bg[i] != 1]
    perm = gdims + [i for i in range(nd) if bg[i] == 1]
    shape = [bo[i] for i in perm]
    n_arr = math.prod(bo[i] for i in gdims)
    Gb = G.reshape(bg + (N, C)).permute(*perm, nd, nd + 1).reshape(n_arr, N, C)
    ub = u.reshape((1,) * (nd - u.dim() + 1) + tuple(u.shape)).expand(*bo, N)
    ub = ub.permute(*perm, nd).reshape(n_arr, math.prod(shape[len(gdims):]), N)
    inv = [perm.index(i) for i in range(nd)]

    def restore(out: Tensor) -> Tensor:
        return out.reshape(*shape, C).permute(*inv, nd)

    return Gb, ub, restore


# ---------------------------------------------------------------- row-and-column grid

def grid_transfer(G: Tensor, rp: float, *, tol: float = 1e-10, max_iter: int = 10000,
                  max_elements: int = 2 ** 26) -> Tensor:
    """Effective conductances when row (input) lines are resistive too (docs/physics.md section 8).

    Row i is driven by ``V_i`` at column 0's end through one segment ``rp`` to row node (i, 0),
    then one segment between row nodes (i, c) and (i, c+1); its far end (c = C-1) is open. Device
    (i, c) joins row node (i, c) to column node (i, c); column lines are as in
    :func:`column_transfer`. With row potentials ``r`` and column potentials ``u`` (both N x C),
    KCL times rp reads ``(Lr + rp D) r - rp D u = V e_(.,0)`` and ``-rp D r + (Lc + rp D) u = 0``,
    ``Lr`` (along each row; open at c = C-1) and ``Lc`` (along each column; open at row 0) being
    wire Laplacians. The output is ``I_c = u(N-1, c) / rp``, so by symmetry
    ``M[j, c] = w_r(j, 0) / rp`` for the adjoint solution ``w`` with unit right-hand side at
    ``u(N-1, c)``. Eliminating ``w_r = (Lr + rp D)^{-1} rp D w_u`` (exact row-line solves) leaves
    ``S w_u = e_(N-1, c)``, ``S = Lc + rp D - rp^2 D (Lr + rp D)^{-1} D`` (symmetric positive
    definite), and ``M[:, c] = [(Lr + rp D)^{-1} (G * w_u)](:, 0)``.

    ``S`` is solved by conjugate gradients preconditioned with ``P = Lc + rp D`` (the column-only
    problem, solved exactly), starting from ``P^{-1} e``, i.e. from the column-only answer. The
    iteration stops when the preconditioned residual ``||P^{-1} r||`` of every system is at most
    ``tol * ||P^{-1} e||``; otherwise :class:`ParasiticSolveError` is raised after ``max_iter``
    iterations. The arrays are processed one at a time and their C right-hand sides in chunks,
    batched, holding about ``max_elements`` float64 numbers at once.
    """
    _check_rp(rp)
    N, C = G.shape[-2:]
    Gb = G.to(torch.float64).reshape(-1, N, C)
    chunk = max(1, max_elements // (_GRID_ARRAYS_PER_RHS * N * C))
    M = torch.empty_like(Gb)
    for b in range(Gb.shape[0]):
        for start in range(0, C, chunk):
            stop = min(start + chunk, C)
            cols = torch.arange(start, stop, device=G.device)
            M[b, :, start:stop] = _grid_adjoint(Gb[b], cols, rp, tol, max_iter).T
    return M.reshape(G.shape).to(G.dtype)


def _grid_adjoint(G: Tensor, cols: Tensor, rp: float, tol: float, max_iter: int) -> Tensor:
    """Columns ``cols`` of M for one array ``G`` (N, C), as a (len(cols), N) tensor; the adjoint
    systems are batched along a leading dim (see :func:`grid_transfer`)."""
    N, C = G.shape
    k = len(cols)
    rpG = rp * G
    c_lo, c_up, c_lap = _wire(N, 0, -2, G)
    r_lo, r_up, r_lap = _wire(C, -1, -1, G)
    c_diag = c_lap + rpG
    r_diag = r_lap + rpG

    def precond(v: Tensor) -> Tensor:  # P^{-1} v: column-line solves
        return _cyclic_reduction(c_lo, c_diag, c_up, v, -2)

    def row_solve(v: Tensor) -> Tensor:  # (Lr + rp D)^{-1} v: row-line solves
        return _cyclic_reduction(r_lo, r_diag, r_up, v, -1)

    def schur(v: Tensor) -> Tensor:  # S v
        sv = c_diag * v
        sv[:, 1:] -= v[:, :-1]
        sv[:, :-1] -= v[:, 1:]
        return sv - rpG * row_solve(rpG * v)

    def dot(u: Tensor, v: Tensor) -> Tensor:
        return (u * v).sum((1, 2), keepdim=True)

    e = G.new_zeros(k, N, C)
    e[torch.arange(k, device=G.device), N - 1, cols] = 1.0
    x = precond(e)
    scale = torch.linalg.vector_norm(x, dim=(1, 2))
    r = e - schur(x)
    z = precond(r)
    p = z
    rz = dot(r, z)
    it = 0
    while not (res := (torch.linalg.vector_norm(z, dim=(1, 2)) / scale).max().item()) <= tol:
        if it >= max_iter:
            raise ParasiticSolveError(
                f"grid parasitic solve did not converge: rp={rp:g}, array {N}x{C}, "
                f"{it} iterations, relative residual {res:.3g} > tol {tol:g}")
        it += 1
        q = schur(p)
        pq = dot(p, q)
        alpha = torch.where(pq > 0, rz / pq, torch.zeros_like(pq))
        x = x + alpha * p
        r = r - alpha * q
        z = precond(r)
        rz_new = dot(r, z)
        beta = torch.where(rz > 0, rz_new / rz, torch.zeros_like(rz))
        p = z + beta * p
        rz = rz_new
    return row_solve(G * x)[:, :, 0]


# ---------------------------------------------------------------- dispatch

def _check_rp(rp: float) -> None:
    if not rp >= 0:
        raise ValueError(f"parasitic resistance rp must be >= 0, got {rp}")


def effective_conductance(G: Tensor, rp: float, topology: str) -> Tensor:
    """M to use in place of G for wire resistance ``rp`` (docs/physics.md section 8).

    ``topology`` is ``"columns"`` (column lines resistive; the study's main case) or ``"grid"``
    (row lines too). ``rp == 0`` returns ``G`` itself.
    """
    if topology not in ("columns", "grid"):
        raise ValueError(f"unknown parasitic topology {topology!r}; expected 'columns' or 'grid'")
    _check_rp(rp)
    if rp == 0:
        return G
    return column_transfer(G, rp) if topology == "columns" else grid_transfer(G, rp)
