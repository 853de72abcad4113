"""Parasitic resistance (docs/physics.md section 8) against an independent nodal analysis.

The reference builds the full conductance matrix of the physical circuit (physical units: segment
conductance 1/rp, device conductances G, inputs as fixed potentials) with scipy.sparse stamps and
solves it directly for several input vectors; the module's M must reproduce the currents into the
virtual grounds as M^T V.
"""
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.linalg import solve_banded
from scipy.sparse.linalg import spsolve

from mcsim.physics.parasitics import (
    ParasiticSolveError,
    column_transfer,
    effective_conductance,
    grid_transfer,
    solve_tridiagonal,
)

RPS = [1e-6, 1e-4, 1e-2, 1e-1]


class Netlist:
    """Nodal analysis: unknown nodes 0..n-1; fixed potentials are the inputs or ground."""

    def __init__(self, n_nodes: int, n_inputs: int):
        self.n = n_nodes
        self.rows, self.cols, self.vals = [], [], []
        self.inj = []  # (node, input index or None for ground, conductance)

    def resistor(self, a: int, b: int, g: float) -> None:
        self.rows += [a, b, a, b]
        self.cols += [a, b, b, a]
        self.vals += [g, g, -g, -g]

    def to_fixed(self, a: int, source, g: float) -> None:
        """Conductance g from node a to input `source` (an index) or to ground (None)."""
        self.rows.append(a)
        self.cols.append(a)
        self.vals.append(g)
        if source is not None:
            self.inj.append((a, source, g))

    def solve(self, V: np.ndarray) -> np.ndarray:
        """Node potentials, (n_nodes, n_vectors), for inputs V of shape (n_inputs, n_vectors)."""
        A = sp.csc_matrix((self.vals, (self.rows, self.cols)), shape=(self.n, self.n))
        b = np.zeros((self.n, V.shape[1]))
        for node, src, g in self.inj:
            b[node] += g * V[src]
        return spsolve(A, b).reshape(self.n, -1)


def nodal_columns(G: np.ndarray, rp: float, V: np.ndarray) -> np.ndarray:
    """Ground currents (C, n_vectors) of the column-only crossbar."""
    N, C = G.shape
    net = Netlist(N * C, N)
    node = lambda i, c: c * N + i  # noqa: E731
    for c in range(C):
        for i in range(N):
            net.to_fixed(node(i, c), i, G[i, c])
            if i + 1 < N:
                net.resistor(node(i, c), node(i + 1, c), 1 / rp)
        net.to_fixed(node(N - 1, c), None, 1 / rp)
    v = net.solve(V)
    return np.stack([v[node(N - 1, c)] / rp for c in range(C)])


def nodal_grid(G: np.ndarray, rp: float, V: np.ndarray) -> np.ndarray:
    """Ground currents (C, n_vectors) of the crossbar with resistive rows and columns."""
    N, C = G.shape
    net = Netlist(2 * N * C, N)
    row = lambda i, c: i * C + c  # noqa: E731
    col = lambda i, c: N * C + c * N + i  # noqa: E731
    for i in range(N):
        net.to_fixed(row(i, 0), i, 1 / rp)  # driver -> first cell
        for c in range(C):
            if c + 1 < C:
                net.resistor(row(i, c), row(i, c + 1), 1 / rp)
            net.resistor(row(i, c), col(i, c), G[i, c])
            if i + 1 < N:
                net.resistor(col(i, c), col(i + 1, c), 1 / rp)
    for c in range(C):
        net.to_fixed(col(N - 1, c), None, 1 / rp)
    v = net.solve(V)
    return np.stack([v[col(N - 1, c)] / rp for c in range(C)])


def random_case(N: int, C: int, seed: int, zero_rows: bool = False):
    rng = np.random.default_rng(seed)
    G = rng.uniform(0.01, 1.0, (N, C))
    if zero_rows:
        G[rng.choice(N, max(1, N // 4), replace=False)] = 0.0
    V = np.concatenate([rng.uniform(0, 1, (N, 2)), rng.uniform(-1, 1, (N, 2)), np.ones((N, 1))], 1)
    return G, V


def check_against_nodal(M, G, V, I_ref, drop_atol: float = 1e-12) -> None:
    """Currents M^T V to 1e-6 relative, and the IR drop G^T V - M^T V (a small difference at
    small rp) to 1e-5 relative, up to drop_atol (relative to the current scale)."""
    I = M.numpy().T @ V
    scale = G.T @ np.abs(V)  # current magnitude without sign cancellation, per column and vector
    np.testing.assert_array_less(np.abs(I - I_ref), 1e-6 * scale + 1e-300)
    drop, drop_ref = G.T @ V - I, G.T @ V - I_ref
    np.testing.assert_array_less(np.abs(drop - drop_ref), 1e-5 * np.abs(drop_ref) + drop_atol * scale)


# ---------------------------------------------------------------- tridiagonal solver

@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 31, 100, 1152])
def test_solve_tridiagonal_matches_solve_banded(n):
    rng = np.random.default_rng(n)
    lo, up, rhs = rng.uniform(-1, 1, (3, 3, 2, n))
    diag = rng.uniform(2.5, 4, (3, 2, n)) * rng.choice([-1, 1], (3, 2, n))
    x = solve_tridiagonal(*(torch.from_numpy(t) for t in (lo, diag, up, rhs))).numpy()
    for idx in np.ndindex(3, 2):
        ab = np.stack([np.r_[0, up[idx][:-1]], diag[idx], np.r_[lo[idx][1:], 0]])
        np.testing.assert_allclose(x[idx], solve_banded((1, 1), ab, rhs[idx]), rtol=1e-12, atol=1e-13)


def test_solve_tridiagonal_broadcasts_and_keeps_dtype():
    diag = torch.full((6,), 3.0, dtype=torch.float32)
    rhs = torch.rand(4, 6, dtype=torch.float32)
    x = solve_tridiagonal(torch.ones(6), diag, torch.ones(6), rhs)
    assert x.dtype == torch.float32 and x.shape == (4, 6)
    A = torch.diag(torch.full((6,), 3.0)) + torch.diag(torch.ones(5), 1) + torch.diag(torch.ones(5), -1)
    torch.testing.assert_close(x, torch.linalg.solve(A, rhs.T).T)


# ---------------------------------------------------------------- column-only topology

@pytest.mark.parametrize("rp", RPS)
@pytest.mark.parametrize("N,C", [(1, 1), (2, 3), (3, 2), (5, 4), (8, 3), (13, 5), (100, 4), (1152, 3)])
def test_columns_match_nodal_analysis(N, C, rp):
    G, V = random_case(N, C, seed=N * 7 + C)
    M = column_transfer(torch.from_numpy(G), rp)
    assert M.dtype == torch.float64 and M.shape == (N, C)
    check_against_nodal(M, G, V, nodal_columns(G, rp, V))


@pytest.mark.parametrize("rp", [1e-4, 1e-1])
def test_columns_with_empty_rows(rp):
    G, V = random_case(64, 4, seed=3, zero_rows=True)
    G[-1] = 0.0  # the row next to the ADC too
    M = column_transfer(torch.from_numpy(G), rp)
    assert torch.all(M[torch.from_numpy(G) == 0] == 0)
    check_against_nodal(M, G, V, nodal_columns(G, rp, V))


def test_columns_batched_equals_one_at_a_time_and_float32():
    G = torch.rand(2, 3, 37, 6, dtype=torch.float64)
    M = column_transfer(G, 1e-3)
    for idx in np.ndindex(2, 3):
        torch.testing.assert_close(M[idx], column_transfer(G[idx], 1e-3), rtol=1e-14, atol=0)
    M32 = column_transfer(G.float(), 1e-3)
    assert M32.dtype == torch.float32
    torch.testing.assert_close(M32, M.float(), rtol=1e-6, atol=0)


def test_columns_physical_sanity():
    G = torch.rand(200, 8, dtype=torch.float64) + 0.01
    M = column_transfer(G, 1e-3)
    ratio = M / G
    assert torch.all(ratio > 0) and torch.all(ratio < 1)
    assert torch.all(ratio.diff(dim=0) > 0)  # rows farther from the ADC lose more
    assert torch.all(M.sum(0) < G.sum(0))
    # One row, one column: the device in series with one segment.
    g = torch.tensor([[0.7]], dtype=torch.float64)
    torch.testing.assert_close(column_transfer(g, 0.1), g / (1 + 0.1 * g))


# ---------------------------------------------------------------- row-and-column grid

@pytest.mark.parametrize("rp", RPS)
@pytest.mark.parametrize("N,C", [(1, 1), (1, 4), (4, 1), (3, 2), (8, 5), (32, 16), (64, 32)])
def test_grid_matches_nodal_analysis(N, C, rp):
    G, V = random_case(N, C, seed=N * 11 + C)
    M = grid_transfer(torch.from_numpy(G), rp)
    assert M.dtype == torch.float64 and M.shape == (N, C)
    # The default tol=1e-10 bounds M's relative error near 1e-10, hence the drop's floor.
    check_against_nodal(M, G, V, nodal_grid(G, rp, V), drop_atol=1e-9)


@pytest.mark.parametrize("N,C", [(3, 2), (8, 5), (32, 16)])
def test_grid_tiny_drops_with_tight_tolerance(N, C):
    G, V = random_case(N, C, seed=N * 11 + C)
    M = grid_transfer(torch.from_numpy(G), 1e-6, tol=1e-13)
    check_against_nodal(M, G, V, nodal_grid(G, 1e-6, V))


@pytest.mark.parametrize("rp", [1e-4, 1e-1])
def test_grid_with_empty_rows(rp):
    G, V = random_case(16, 8, seed=5, zero_rows=True)
    M = grid_transfer(torch.from_numpy(G), rp)
    check_against_nodal(M, G, V, nodal_grid(G, rp, V), drop_atol=1e-9)


def test_grid_batched_and_chunked_equal_one_at_a_time():
    G = torch.rand(3, 2, 12, 7, dtype=torch.float64)
    M = grid_transfer(G, 1e-2, tol=1e-13)
    M_chunked = grid_transfer(G, 1e-2, tol=1e-13, max_elements=1)  # one right-hand side at a time
    torch.testing.assert_close(M_chunked, M, rtol=1e-11, atol=0)
    for idx in np.ndindex(3, 2):
        torch.testing.assert_close(M[idx], grid_transfer(G[idx], 1e-2, tol=1e-13), rtol=1e-11, atol=0)
    assert grid_transfer(G.float(), 1e-2).dtype == torch.float32


def test_grid_physical_sanity():
    G = torch.rand(24, 10, dtype=torch.float64) + 0.01
    M = grid_transfer(G, 1e-2)
    assert torch.all(M > 0)
    assert torch.all(M.sum(0) < G.sum(0))
    # More wire resistance than the column-only case: less total current.
    assert torch.all(M.sum(0) < column_transfer(G, 1e-2).sum(0))
    # Uniform devices: the far row (0) and the far column (C-1) lose the most.
    U = torch.full((24, 10), 0.5, dtype=torch.float64)
    Mu = grid_transfer(U, 1e-2)
    assert torch.all(Mu[0] < Mu[-1]) and torch.all(Mu[:, -1] < Mu[:, 0])


def test_grid_nonconvergence_raises():
    G = torch.rand(32, 16, dtype=torch.float64) + 0.01
    with pytest.raises(ParasiticSolveError, match=r"rp=0\.1.*32x16.*1 iterations"):
        grid_transfer(G, 0.1, tol=1e-14, max_iter=1)


# ---------------------------------------------------------------- dispatch

def test_effective_conductance_dispatch():
    G = torch.rand(10, 4, dtype=torch.float32)
    for topology in ("columns", "grid"):
        assert effective_conductance(G, 0.0, topology) is G
    torch.testing.assert_close(effective_conductance(G, 1e-3, "columns"), column_transfer(G, 1e-3))
    torch.testing.assert_close(effective_conductance(G, 1e-3, "grid"), grid_transfer(G, 1e-3))
    with pytest.raises(ValueError, match="topology"):
        effective_conductance(G, 1e-3, "rows")
    with pytest.raises(ValueError, match="rp"):
        effective_conductance(G, -1e-3, "columns")
