"""The gated-row ladder on the CPU: one compiled pass over the row blocks per (vector, column).

:func:`mcsim.physics.parasitics.gated_column_currents` multiplies the transfer matrices of a
column's rows (docs/physics.md section 8; the algebra is in the comment above ``_mat_product_`` in
parasitics.py). Its device-generic path reduces them by a binary tree of tensor operations, which
writes every level's products to memory. On the CPU this module takes the same products in one
sequential pass per (input vector, column) instead: the running product stays in registers,
each step reads one tabulated block product, and nothing is written until the current. Compiled
with numba, parallel over the vectors.

Exact in the same sense as the tree (a different association of the same products, so results
differ from the tree's in the last bits), and independent of the batch: a vector's result depends
only on its own bits and the table, whatever else is in the call and however many threads run it.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

__all__ = ["ladder_scan"]


@njit(parallel=True, cache=True)
def ladder_scan(table, idx, rp, rescale_every, zero, wire, n_full, out):  # pragma: no cover - compiled
    """Column currents of every (vector, column), in place into ``out``.

    Args:
        table: block products ``(n_cc, nblk * P, K, Cc)``: column chunk (sized so that its table
            stays in cache), block-major pattern row, entry (a, b, c, d) for unsigned bits (K = 4),
            then (e, f, z) for signed ones (K = 7), the chunk's columns (contiguous: the compiler
            vectorizes across them).
        idx: ``(V, nblk)`` int32, each vector's table row for every block (block j's pattern plus
            ``j * P``), block 0 farthest from the ADC.
        rp: segment resistance (the last segment to the virtual ground).
        rescale_every: divide the running product by the power of two nearest its trace after
            every this many blocks (exact; keeps long chains at large rp inside the float range).
        zero: the pattern of a block with every row off (0 unsigned, ``(P - 1) / 2`` signed).
        wire: entry c of such a block's product (its T is ``[[1, 0], [wire, 1]]``: wire only),
            the same for every full block and column.
        n_full: blocks before this index are full (the last one may hold padding rows).
        out: ``(V, n_cc * Cc)``.

    A run of n blocks with every row off is applied as one wire ``[[1, 0], [n * wire, 1]]``:
    the high-order bit planes of activations are mostly off, and a vector with no row on costs
    one pass over its indices and gives exactly 0 (b stays 0).
    """
    n_cc, rows, K, Cc = table.shape
    V, nblk = idx.shape
    P = rows // nblk
    for k in range(n_cc):
        tk = table[k]
        for v in prange(V):
            m = np.zeros((K, Cc), table.dtype)
            m[0, :] = 1.0
            m[3, :] = 1.0
            if K > 4:
                m[6, :] = 1.0
            run = 0
            for j in range(nblk):
                r = idx[v, j]
                if j < n_full and r == zero + j * P:
                    run += 1
                else:
                    if run:
                        _wire(m, run * wire, Cc)
                        run = 0
                    t = tk[r]
                    if K == 4:
                        _step4(m, t, Cc)
                    else:
                        _step7(m, t, Cc)
                if (j + 1) % rescale_every == 0:
                    if run:
                        _wire(m, run * wire, Cc)
                        run = 0
                    for c in range(Cc):
                        _, e = math.frexp(m[0, c] + m[3, c])
                        s = math.ldexp(1.0, -e)
                        for i in range(K):
                            m[i, c] *= s
            if run:
                _wire(m, run * wire, Cc)
            num = 1 if K == 4 else 5  # unsigned: the Norton current equals Y, so s = p (parasitics.py)
            for c in range(Cc):
                out[v, k * Cc + c] = m[num, c] / (m[3, c] + rp * m[1, c])


@njit(inline="always")
def _wire(m, w, Cc):  # pragma: no cover - compiled
    """m <- [[1, 0], [w, 1]] @ m: wire segments with no device on (e, f and z unchanged)."""
    for c in range(Cc):
        m[2, c] = w * m[0, c] + m[2, c]
        m[3, c] = w * m[1, c] + m[3, c]


@njit(inline="always")
def _step4(m, t, Cc):  # pragma: no cover - compiled
    """m <- t @ m for the 2x2 blocks (t holds the later rows, nearer the ADC)."""
    for c in range(Cc):
        a, b, cc, d = m[0, c], m[1, c], m[2, c], m[3, c]
        m[0, c] = t[0, c] * a + t[1, c] * cc
        m[1, c] = t[0, c] * b + t[1, c] * d
        m[2, c] = t[2, c] * a + t[3, c] * cc
        m[3, c] = t[2, c] * b + t[3, c] * d


@njit(inline="always")
def _step7(m, t, Cc):  # pragma: no cover - compiled
    """m <- t @ m with the affine row (e, f) and corner z of signed bits: the row from the old
    2x2 block, then the block itself."""
    for c in range(Cc):
        m[4, c] = t[6, c] * m[4, c] + t[4, c] * m[0, c] + t[5, c] * m[2, c]
        m[5, c] = t[6, c] * m[5, c] + t[4, c] * m[1, c] + t[5, c] * m[3, c]
        m[6, c] = t[6, c] * m[6, c]
    _step4(m, t, Cc)
