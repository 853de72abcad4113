"""Parasitic wire resistance as an effective conductance matrix (MODEL.md section 8).

A crossbar with resistive wires is a linear network driven by the input voltages, so the column
currents of an array are ``I_c = sum_j M[j, c] V_j`` for an effective conductance matrix ``M``
that depends only on the conductances ``G`` and on ``rp``. This module computes ``M``; the engine
uses it in place of ``G``, which makes the IR drops exact for every input (analog, or each bit of
a bit-serial input).

Units: ``Gmax = 1`` and ``rp = Rp * Gmax``, so one wire segment has resistance ``rp``. ``G`` has
shape ``(..., N, C)``: N rows (inputs) by C columns, any leading batch dims; zero entries (padded
rows without a device) are allowed. All solves run in float64 (MODEL.md section 10: float32 is off
by about 1e-4 relative at small rp) and ``M`` comes back in ``G``'s dtype.

Kirchhoff's equations multiplied by ``rp`` read ``(L + rp*diag(G)) v = rhs``, where ``L`` is the
Laplacian of a wire with unit segments: -1 off the diagonal, 2 on it, and 1 at an open end (the
segment to a driver or to the virtual ground is folded into its node's diagonal). These matrices
are symmetric, so ``M`` follows from one adjoint solve per column.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ParasiticSolveError",
    "solve_tridiagonal",
    "column_transfer",
    "grid_transfer",
    "effective_conductance",
]

# Approximate number of (N, C) float64 arrays alive per right-hand side during the grid iteration
# (CG vectors and the tridiagonal solvers' temporaries); sets the chunk size.
_GRID_ARRAYS_PER_RHS = 24


class ParasiticSolveError(RuntimeError):
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
    """Effective conductances of the column-only topology (MODEL.md section 8).

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


# ---------------------------------------------------------------- row-and-column grid

def grid_transfer(G: Tensor, rp: float, *, tol: float = 1e-10, max_iter: int = 10000,
                  max_elements: int = 2 ** 26) -> Tensor:
    """Effective conductances when row (input) lines are resistive too (MODEL.md section 8).

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
    """M to use in place of G for wire resistance ``rp`` (MODEL.md section 8).

    ``topology`` is ``"columns"`` (column lines resistive; the study's main case) or ``"grid"``
    (row lines too). ``rp == 0`` returns ``G`` itself.
    """
    if topology not in ("columns", "grid"):
        raise ValueError(f"unknown parasitic topology {topology!r}; expected 'columns' or 'grid'")
    _check_rp(rp)
    if rp == 0:
        return G
    return column_transfer(G, rp) if topology == "columns" else grid_transfer(G, rp)
