"""Gated rows (docs/physics.md section 8): bit-serial inputs whose bits switch each row's device in or out.

The reference is a nodal analysis of each (input vector, column) written here from scratch: the
column's nodes, one segment 1/rp between neighbours and one from the last node to ground, and one
conductance G_k from node k to a source at u_k for every row whose bit is nonzero. scipy.sparse
stamps the matrix and spsolve solves it; the current into ground is v_{N-1} / rp, and the IR drop
(the current lost to the wires, sum_k G_k |u_k| v_k) comes straight from the node potentials.

Every test runs both ways of taking the row products: the CPU's compiled scan and the tree of
tensor operations that other devices use.
"""
import functools
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import spsolve

import mcsim.physics.parasitics as parasitics
from mcsim.physics.parasitics import column_transfer, gated_column_currents

RPS = [1e-6, 1e-4, 1e-2, 1e-1]


@pytest.fixture(params=["scan", "tree"], autouse=True)
def method(request, monkeypatch):
    """This module's ``gated_column_currents`` with the method fixed."""
    monkeypatch.setattr(sys.modules[__name__], "gated_column_currents",
                        functools.partial(parasitics.gated_column_currents, method=request.param))
    return request.param


def nodal_gated(g: np.ndarray, u: np.ndarray, rp: float) -> tuple[float, float]:
    """(current into the virtual ground, IR drop) of one column ``g`` (N,) for one bit vector ``u``."""
    n = len(g)
    active = g * np.abs(u)
    rows, cols, vals = [], [], []
    for k in range(n):
        rows.append(k); cols.append(k); vals.append(active[k])  # device to its source
        if k + 1 < n:
            rows += [k, k + 1, k, k + 1]
            cols += [k, k + 1, k + 1, k]
            vals += [1 / rp, 1 / rp, -1 / rp, -1 / rp]
    rows.append(n - 1); cols.append(n - 1); vals.append(1 / rp)  # last segment to ground
    A = sp.csc_matrix((vals, (rows, cols)), shape=(n, n))
    v = spsolve(A, g * u)
    return v[-1] / rp, float(np.sum(active * v))


def nodal_batch(G: np.ndarray, U: np.ndarray, rp: float) -> tuple[np.ndarray, np.ndarray]:
    """Currents and drops (V, C) for G (N, C) and bit vectors U (V, N)."""
    out = np.array([[nodal_gated(G[:, c], u, rp) for c in range(G.shape[1])] for u in U])
    return out[..., 0], out[..., 1]


def random_bits(V: int, N: int, rng, signed: bool, p_active: float = 0.6) -> np.ndarray:
    bits = (rng.uniform(size=(V, N)) < p_active).astype(float)
    return bits * rng.choice([-1.0, 1.0], size=(V, N)) if signed else bits


def check_currents(I: np.ndarray, G: np.ndarray, U: np.ndarray, I_ref: np.ndarray, drop_ref: np.ndarray,
                   drop_rtol: float = 1e-5) -> None:
    """Currents to 1e-9 of the no-cancellation scale G^T|u|; the drop sum(G u) - I to drop_rtol
    relative, up to 1e-12 of that scale (the drop is a small difference at small rp)."""
    scale = np.abs(U) @ G
    np.testing.assert_array_less(np.abs(I - I_ref), 1e-9 * scale + 1e-300)
    drop = U @ G - I
    np.testing.assert_array_less(np.abs(drop - drop_ref), drop_rtol * np.abs(drop_ref) + 1e-12 * scale + 1e-300)


@pytest.mark.parametrize("rp", RPS)
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("N", [1, 2, 3, 5, 64, 577, 1152])
def test_gated_matches_nodal_analysis(N, signed, rp):
    rng = np.random.default_rng(N + 7 * signed)
    G = rng.uniform(0.01, 1.0, (N, 3))
    G[rng.uniform(size=N) < 0.2] = 0.0  # device-less rows
    U = random_bits(3, N, rng, signed)
    I_ref, drop_ref = nodal_batch(G, U, rp)
    I = gated_column_currents(torch.from_numpy(G), torch.from_numpy(U), rp)
    assert I.dtype == torch.float64 and I.shape == (3, 3)
    check_currents(I.numpy(), G, U, I_ref, drop_ref)


@pytest.mark.parametrize("rp", [1.0, 10.0])
def test_gated_large_rp_stays_finite_and_exact(rp):
    """Long chains at large rp grow like exp(N sqrt(rp G)): the products are rescaled on the way."""
    rng = np.random.default_rng(11)
    G = rng.uniform(0.5, 1.0, (1152, 2))
    U = random_bits(2, 1152, rng, signed=True, p_active=0.9)
    I_ref, drop_ref = nodal_batch(G, U, rp)
    I = gated_column_currents(torch.from_numpy(G), torch.from_numpy(U), rp).numpy()
    assert np.all(np.isfinite(I))
    check_currents(I, G, U, I_ref, drop_ref)


def test_rp_zero_is_the_plain_matmul():
    G = torch.rand(2, 1, 300, 7)
    U = torch.randint(-1, 2, (2, 5, 300)).float()
    out = gated_column_currents(G, U, 0.0)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.matmul(U.unsqueeze(-2), G).squeeze(-2))
    G64, U64 = G.double(), U.double()
    exact = (U64.unsqueeze(-1) * G64).sum(-2)  # bits are exact, so float64 products are too
    torch.testing.assert_close(gated_column_currents(G64, U64, 0.0), exact, rtol=1e-15, atol=1e-13)


@pytest.mark.parametrize("rp", RPS)
def test_all_rows_on_equals_voltage_driven(rp):
    """Every bit +1: the gated and the voltage-driven circuits are the same circuit."""
    G = torch.rand(3, 200, 5, dtype=torch.float64)
    G[:, ::7] = 0.0
    I = gated_column_currents(G, torch.ones(3, 200, dtype=torch.float64), rp)
    torch.testing.assert_close(I, column_transfer(G, rp).sum(-2), rtol=1e-12, atol=0)


def test_more_active_rows_more_drop():
    """Switching more rows on raises every node potential, so the drop never shrinks; low-order
    bits of typical (small-skewed) activations activate the most rows and lose the most."""
    torch.manual_seed(0)
    G = torch.rand(256, 8, dtype=torch.float64) + 0.05
    m1 = (torch.rand(50, 256) < 0.3).double()
    m2 = torch.maximum(m1, (torch.rand(50, 256) < 0.5).double())  # a superset of m1
    drop = lambda m: m @ G - gated_column_currents(G, m, 1e-3)  # noqa: E731
    assert torch.all(drop(m2) >= drop(m1))
    x = torch.distributions.Exponential(1 / 20).sample((100, 256)).round().clamp(max=255).to(torch.int64)
    planes = torch.stack([((x >> k) & 1).double() for k in range(8)])  # (bits, vectors, rows)
    I = gated_column_currents(G, planes, 1e-3)
    ideal = planes @ G
    rel = ((ideal - I).sum((1, 2)) / ideal.sum((1, 2)))
    active = planes.mean((1, 2))
    assert torch.all(active[:-1] >= active[1:]) and torch.all(rel[:-1] > rel[1:])


def test_broadcasting_chunking_and_block_size_are_bit_identical(monkeypatch):
    torch.manual_seed(1)
    G = torch.rand(2, 1, 1, 45, 6, dtype=torch.float64)  # chips
    U = torch.randint(0, 2, (1, 3, 4, 45)).double()    # images x bits, shared by the chips
    out = gated_column_currents(G, U, 1e-2)
    assert out.shape == (2, 3, 4, 6)
    for c, i, b in np.ndindex(2, 3, 4):
        assert torch.equal(out[c, i, b], gated_column_currents(G[c, 0, 0], U[0, i, b:b + 1], 1e-2)[0])
    # Tiny budgets: one-row blocks (tree), one column per table, one vector per chunk (tree).
    monkeypatch.setattr(parasitics, "_GATED_CACHE_BYTES", 1)
    monkeypatch.setattr(parasitics, "_SCAN_TABLE_BYTES", 1)
    assert torch.equal(gated_column_currents(G, U, 1e-2, max_bytes=1), out)
    signed = U * (torch.randint(0, 2, U.shape) * 2 - 1)
    assert torch.equal(gated_column_currents(G, signed, 1e-2, max_bytes=1),
                       gated_column_currents(G, signed, 1e-2))


def test_dtypes():
    G = torch.rand(100, 4)
    U = torch.randint(-1, 2, (6, 100)).float()
    ref = gated_column_currents(G.double(), U.double(), 1e-3)
    out = gated_column_currents(G, U, 1e-3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref.float(), rtol=1e-6, atol=1e-6)
    fast = gated_column_currents(G, U, 1e-3, compute_dtype=torch.float32)
    torch.testing.assert_close(fast.double(), ref, rtol=0, atol=1e-5 * float((U.abs() @ G).max()))


def test_vectors_without_active_rows_are_exact_zeros():
    G = torch.rand(2, 1, 30, 4, dtype=torch.float64)
    U = torch.randint(0, 2, (2, 6, 30)).double()
    U[:, ::2] = 0.0
    out = gated_column_currents(G, U, 1e-2)
    assert torch.all(out[:, ::2] == 0)
    for i in range(1, 6, 2):  # the others as if alone
        assert torch.equal(out[:, i], gated_column_currents(G, U[:, i:i + 1], 1e-2)[:, 0])


def test_integer_and_bool_bits():
    G = torch.rand(40, 3, dtype=torch.float64)
    U = torch.randint(0, 2, (5, 40))
    ref = gated_column_currents(G, U.double(), 1e-3)
    assert torch.equal(gated_column_currents(G, U.to(torch.int8), 1e-3), ref)
    assert torch.equal(gated_column_currents(G, U.bool(), 1e-3), ref)


def test_empty_batches():
    G = torch.rand(2, 1, 10, 3)
    assert gated_column_currents(G, torch.ones(2, 0, 10), 1e-3).shape == (2, 0, 3)
    assert gated_column_currents(torch.rand(0, 1, 10, 3), torch.ones(0, 4, 10), 1e-3).shape == (0, 4, 3)


def test_bad_inputs():
    G = torch.rand(10, 3)
    with pytest.raises(ValueError, match="-1, 0 or \\+1"):
        gated_column_currents(G, torch.full((10,), 0.5), 1e-3)
    with pytest.raises(ValueError, match="rows"):
        gated_column_currents(G, torch.ones(9), 1e-3)
    with pytest.raises(ValueError, match="rp"):
        gated_column_currents(G, torch.ones(10), -1.0)
    with pytest.raises(ValueError, match="signed=False"):
        gated_column_currents(G, -torch.ones(10), 1e-3, signed=False)
    with pytest.raises(ValueError, match="method"):
        parasitics.gated_column_currents(G, torch.ones(10), 1e-3, method="loop")


@pytest.mark.parametrize("rp", [1e-6, 1e-2])
def test_unsigned_bits_through_the_signed_path(rp):
    """Unsigned bits use the 2x2 block alone (the source row equals the conductance row then);
    forcing the signed path on them agrees to rounding."""
    G = torch.rand(300, 4, dtype=torch.float64)
    U = torch.randint(0, 2, (20, 300)).double()
    fast = gated_column_currents(G, U, rp)
    torch.testing.assert_close(gated_column_currents(G, U, rp, signed=True), fast, rtol=1e-14, atol=0)


@pytest.mark.parametrize("N", [1, 5, 20, 100])
@pytest.mark.parametrize("threshold", [2, 16, 32])
def test_rescaling_is_bit_neutral(monkeypatch, N, threshold):
    """Products are rescaled by powers of two once the growth bound says so; forcing it from any
    level on must not change a bit (signed bits carry the corner entry for it)."""
    torch.manual_seed(N)
    G = torch.rand(N, 3, dtype=torch.float64)
    U = torch.randint(-1, 2, (4, N)).double()
    ref = [gated_column_currents(G, u, 1e-2) for u in (U, U.abs())]
    monkeypatch.setattr(parasitics, "_needs_rescale", lambda rows, *args: rows >= threshold)
    assert torch.equal(gated_column_currents(G, U, 1e-2), ref[0])
    assert torch.equal(gated_column_currents(G, U.abs(), 1e-2), ref[1])


def test_scan_does_not_depend_on_the_thread_count(method):
    """The scan runs the vectors in parallel (numba, as many threads as torch uses); each vector's
    result is computed by one thread alone, whatever the count."""
    torch.manual_seed(3)
    G = torch.rand(2, 1, 300, 9)
    U = torch.randint(-1, 2, (2, 40, 300)).to(torch.int8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gated_column_currents(G, U, 1e-3, signed=True)
        torch.set_num_threads(2)
        assert torch.equal(gated_column_currents(G, U, 1e-3, signed=True), one)
    finally:
        torch.set_num_threads(threads)
