"""Random numbers keyed by what they describe: the only source of randomness (docs/physics.md section 9).

Keys are derived from ``seed, chip, layer, stream`` (a layer by its module name, :func:`name_key`;
for read noise also the image index, the token and the input bit) with SplitMix64 in integer tensor ops. Per-chip quantities (programming errors, drift)
are drawn with a CPU generator seeded by the chip's key (:func:`chip_normal`); read noise, which
needs a stream per (chip, image, bit), is counter-based (:func:`normal`). Chip ``t`` is therefore the
same chip whatever the batch size, the other chips evaluated with it, the task split or the device.
"""
from __future__ import annotations

import hashlib
import math
from concurrent.futures import ThreadPoolExecutor

import torch


def _i64(c: int) -> int:
    return c - (1 << 64) if c >= (1 << 63) else c


STEP = 0x9E3779B97F4A7C15  # SplitMix64's state increment (the golden ratio in 64 bits)
_GOLDEN = _i64(STEP)
_M1 = _i64(0xBF58476D1CE4E5B9)
_M2 = _i64(0x94D049BB133111EB)


def _lsr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def splitmix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64 output function of state ``z`` (int64, wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ _lsr(z, 30)) * _M1
    z = (z ^ _lsr(z, 27)) * _M2
    return z ^ _lsr(z, 31)


def derive(base: torch.Tensor | int, *parts: torch.Tensor | int, device=None) -> torch.Tensor:
    """Fold ``parts`` (ints or int64 tensors, broadcast together) into a key tensor."""
    k = torch.as_tensor(base, dtype=torch.int64, device=device)
    for p in parts:
        p = torch.as_tensor(p, dtype=torch.int64, device=k.device)
        k = splitmix(k ^ splitmix(p))
    return k


def name_key(name: str) -> int:
    """A stable int64 key for a name (e.g. a layer's module path), the same in every process."""
    return _i64(int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little"))


def _per_chip(keys: torch.Tensor, draw) -> list:
    """``[draw(i, generator_i)]`` for every key, generator ``i`` a CPU generator seeded by ``keys[i]``,
    side by side on up to ``torch.get_num_threads()`` threads (a generator's draws are sequential; the
    results do not depend on the thread count)."""
    ks = keys.tolist()

    def one(i: int):
        return draw(i, torch.Generator().manual_seed(ks[i] & (2**63 - 1)))

    threads = min(len(ks), torch.get_num_threads())
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, range(len(ks))))
    return [one(i) for i in range(len(ks))]


def _chip_draws(keys: torch.Tensor, n: int, device, fill) -> torch.Tensor:
    """``(len(keys), n)`` float32 draws, row ``i`` from ``fill(n, generator, out)`` (:func:`_per_chip`)."""
    out = torch.empty(len(keys), n)
    _per_chip(keys, lambda i, gen: fill(n, generator=gen, out=out[i]))
    return out.to(device)


def chip_normal(keys: torch.Tensor, n: int, device) -> torch.Tensor:
    """``(len(keys), n)`` standard normals (float32), row ``i`` from a CPU generator seeded by ``keys[i]``:
    one generator per chip, so chips never share a stream."""
    return _chip_draws(keys, n, device, torch.randn)


def chip_events(keys: torch.Tensor, n: int, p: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per key, a Bernoulli(``p``) process over ``n`` trials: the indices of its successes (int64,
    increasing) and a uniform in [0, 1) for each (float64), from a CPU generator seeded by the key.

    The gaps between successes are geometric, ``floor(log(1 - u) / log(1 - p)) + 1`` for uniforms
    ``u`` (float64), so a rare event costs about ``n * p`` draws rather than ``n``."""
    if p <= 0:
        return [(torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.float64))] * len(keys)
    block = int(n * p + 4 * math.sqrt(n * p)) + 16

    def draw(i: int, gen: torch.Generator):
        if p >= 1:
            idx = torch.arange(n)
        else:
            found, last = [], -1
            while last < n - 1:
                u = torch.rand(block, generator=gen, dtype=torch.float64)
                gaps = torch.log1p(-u).div_(math.log1p(-p)).floor_().long() + 1
                found.append(last + gaps.cumsum(0))
                last = int(found[-1][-1])
            idx = torch.cat(found)
            idx = idx[idx < n]
        return idx, torch.rand(len(idx), generator=gen, dtype=torch.float64)

    return _per_chip(keys, draw)


def normal(keys: torch.Tensor, n: int, dtype=torch.float32) -> torch.Tensor:
    """Standard normals of shape ``(*keys.shape, n)``: element ``i`` of stream ``key`` is
    Box-Muller on the two 32-bit halves of ``splitmix(key + i * golden)``."""
    i = torch.arange(n, dtype=torch.int64, device=keys.device)
    h = splitmix(keys.unsqueeze(-1) + i * _GOLDEN)
    u1 = (_lsr(h, 32).double() + 0.5) * 2.0**-32
    u2 = ((h & 0xFFFFFFFF).double() + 0.5) * 2.0**-32
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).to(dtype)
