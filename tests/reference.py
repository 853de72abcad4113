"""An independent, loop-based NumPy model of one analog Linear layer (docs/physics.md sections 2-7).

Written from docs/physics.md alone, sharing no code with mcsim's engine: plain float64 loops over
partitions, slices and input bits, no folding. Used by the tests as the reference.
"""
import math

import numpy as np


def analog_linear(W, b, x, *, mapping, weight_bits, slices, input_bits, x_range, signed, rows_max,
                  gmin, adc_bits=None, adc_lo=None, adc_hi=None, bitserial=False, digital_accumulation=True,
                  input_slice_bits=1):
    W, x = np.asarray(W, np.float64), np.asarray(x, np.float64)
    n_out, k = W.shape
    w_max = np.abs(W).max()
    Q = 2 ** (weight_bits - 1) - 1
    q = np.clip(np.round(W / w_max * Q), -Q, Q)
    # Inputs: integer levels n, voltages v = n / n_max (section 5).
    n_max = 2 ** (input_bits - 1) - 1 if signed else 2**input_bits - 1
    n = np.clip(np.round(x / x_range * n_max), -n_max if signed else 0, n_max)
    if bitserial:
        # Bits, or slices of k bits from the least significant (section 16): a slice m drives m / (2**k - 1)
        # of the read voltage and is worth 2**(k i) (2**k - 1) / n_max; the last slice may be short.
        nbits = input_bits - 1 if signed else input_bits
        kb = min(input_slice_bits, nbits)
        mag = np.abs(n).astype(np.int64)
        planes = [((mag >> (kb * i)) & (2**kb - 1)) * (np.sign(n) if signed else 1) / (2**kb - 1)
                  for i in range(math.ceil(nbits / kb))]
        plane_w = [2 ** (kb * i) * (2**kb - 1) / n_max for i in range(len(planes))]
    else:
        planes = [n / n_max]

    def per_bit(fn):
        """Apply fn (an analog column read + ADC) to each input plane, recombine digitally (or in analog)."""
        if not bitserial:
            return fn(planes[0])
        if digital_accumulation:
            return sum(w * fn(p) for w, p in zip(plane_w, planes))
        return fn(sum(w * p for w, p in zip(plane_w, planes)))

    # Devices (section 3).
    bm = weight_bits - 1 if mapping == "differential" else weight_bits
    bs = math.ceil(bm / slices)
    L = 2**bs - 1

    def digits(v):
        v = v.astype(np.int64)
        return [(v // (2 ** (bs * s))) % (2**bs) for s in range(slices)]

    if mapping == "differential":
        gp = [gmin + (1 - gmin) * d / L for d in digits(np.maximum(q, 0))]
        gn = [gmin + (1 - gmin) * d / L for d in digits(np.maximum(-q, 0))]
        g_eff = [p - m for p, m in zip(gp, gn)]
    else:
        u0 = 2 ** (weight_bits - 1)
        g_eff = [gmin + (1 - gmin) * d / L for d in digits(q + u0)]

    # Arrays: near-equal contiguous row partitions (section 6).
    parts = math.ceil(k / rows_max)
    sizes = [k // parts + (1 if i < k % parts else 0) for i in range(parts)]
    bounds = np.cumsum([0] + sizes)

    def adc(y):
        if adc_bits is None:
            return y
        step = (adc_hi - adc_lo) / (2**adc_bits - 1)
        return adc_lo + step * np.round((np.clip(y, adc_lo, adc_hi) - adc_lo) / step)

    z = np.zeros((x.shape[0], n_out))
    for p in range(parts):
        rows = slice(bounds[p], bounds[p + 1])
        for s in range(slices):
            col = per_bit(lambda v: adc(v[:, rows] @ g_eff[s][:, rows].T))
            z += 2 ** (bs * s) * L / (1 - gmin) * col
            if mapping == "offset":
                z -= 2 ** (bs * s) * L / (1 - gmin) * gmin * per_bit(lambda v: v[:, rows].sum(1, keepdims=True))
    if mapping == "offset":
        z -= u0 * per_bit(lambda v: v.sum(1, keepdims=True))
    return z * (w_max / Q) * x_range + b
