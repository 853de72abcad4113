"""Gated rows on resistive column wires (docs/physics.md section 8): each (chip, bit plane, image,
position, column) from its own exact solve rather than a convolution.

A bit-serial input switches its row's device in or out (the study's cell; a k-bit input slice also
sets the row's voltage, section 16), so the IR drop depends on the input bits and no effective
conductance matrix exists: the column currents come from
:func:`mcsim.physics.parasitics.gated_column_currents`, one batched solve per bit plane and column.
:class:`GatedColumns` is that path of :class:`mcsim.engine.layers.AnalogLayer`; digitization,
recombination and the offset term follow as for the other paths.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from mcsim.engine.arrays import Geometry, Partitioning
from mcsim.engine.records import Pass, Programmed
from mcsim.hardware import Hardware
from mcsim.physics import dac, parasitics

# Gated rows (section 8): bytes of unfolded bit patches and solved currents per chunk of images.
_GATED_CHUNK_BYTES = 2**28  # larger chunks amortize the solver's per-call pattern tables
# The solves' arithmetic. docs/physics.md section 10 asks for float64 where drops are small differences of
# large currents; the gated solver has no such cancellation (its transfer products are positive) and
# float32 carries about 1e-6 relative error. Where outputs are digitized that is far below one ADC
# step: measured on mnist-cnn's first layer (8-bit calibrated ADC, rp 1e-5 to 1e-3), float32 codes
# differ from float64 codes by at most 8e-5 of a step (mean 1e-5) while the drops move them by 0.02
# to 30 steps; about 1e-5 of the codes, those within that distance of a rounding boundary, flip by
# one step. It halves the cost (the solves are 25-100 times a matmul), so digitized run passes use
# float32; ADC calibration and ideal ADCs (undigitized outputs) solve in float64.
_GATED_DTYPE, _GATED_DTYPE_DIGITIZED = torch.float64, torch.float32


class GatedColumns:
    """The gated-row path of an analog layer, which provides ``hw``, ``geom``, ``part``,
    ``n_slices``, ``cols``, ``sides``, ``conv_args``, ``digital_weight`` and the pass steps it shares
    (``_grouped_conv``, ``_add_noise``, ``_paired``). A reference column (section 15) is a circuit column
    beside every column it serves, solved with it."""

    hw: Hardware
    geom: Geometry
    part: Partitioning
    n_slices: int
    cols: int
    sides: int
    conv_args: dict

    def _gated_columns(self, u: torch.Tensor, u2: Optional[torch.Tensor], bit_weights: list[float],
                       prog: Programmed, p: Pass) -> tuple[torch.Tensor, list[float]]:
        """Section 8, gated rows: the columns of :meth:`_columns`, ``(nb', r, Tc, g, P, S, N_g, H', W')``,
        each (chip, bit plane, image, position, column) from its own exact solve, and the planes'
        weights in the recombination. With analog accumulation the bits' currents are weighted
        ``2**k / n_max`` and summed before the one conversion (``nb' = 1``); with digital accumulation
        each bit is a plane. Chips run one at a time (determinism), images in chunks (memory); the
        solver's result for one vector depends on nothing else in its call.

        Read noise is drawn from the devices' variances as in :meth:`_columns`, without the drops:
        a first-order approximation (a device's noise current sees the same attenuation as its
        signal, so it is slightly overestimated, docs/physics.md section 4)."""
        geo, part = self.geom, self.part
        nb, tc, r = u.shape[:3]
        planes = nb if p.serial else 1
        hp, wp = self._out_size(*u.shape[-2:])
        k = u.new_empty(planes, r, tc, geo.groups, part.parts, self.n_slices, self.cols, hp, wp)
        per_image = nb * hp * wp * geo.groups * part.parts * (12 * part.cp * geo.taps + 24 * prog.circuit.shape[-1])
        chunk = max(1, _GATED_CHUNK_BYTES // per_image)
        for c in range(tc):
            g = prog.circuit[c].to(self._gated_dtype(p))  # (g, P, rows, kinds * S * N_g)
            for r0 in range(0, r, chunk):
                y = self._gated_codes(u[:, c, r0 : r0 + chunk], g, bit_weights, prog, p, c)
                k[:, r0 : r0 + chunk, c] = y.view(*y.shape[:-1], hp, wp)
        var = None
        if u2 is not None:
            inp = part.gather_inputs(u2).permute(0, 2, 1, 3, 4, 5, 6, 7).flatten(0, 1).flatten(1, 4)
            var = self._grouped_conv(inp, prog.var, None, tc, geo.groups * part.parts).view_as(k)
        return self._add_noise(k, var, p), (bit_weights if p.serial else [1.0])

    def _gated_codes(self, bits: torch.Tensor, g: torch.Tensor, bit_weights: list[float], prog: Programmed,
                     p: Pass, chip: int) -> torch.Tensor:
        """One chip's bit planes ``(nb, rc, C, H, W)`` through its circuits ``g (g, P, rows, cols)``:
        codes (or raw outputs) ``(nb', rc, g, P, S, N_g, H' * W')`` in the layer's dtype. Elementwise
        steps are single roundings (no fused multiply-add), so a value never depends on the chunk."""
        geo, part = self.geom, self.part
        nb, rc = bits.shape[:2]
        inp = part.gather_inputs(bits.flatten(0, 1))  # (nb * rc, g, P, Cp, H, W)
        top = dac.slice_full_scale(self.hw.input_bits, p.signed, self.hw.input_slice_bits)  # 1: bits (section 16)
        itype = torch.int8 if top <= 127 else torch.int16  # the rows' levels, narrow
        patches = F.unfold(inp.flatten(0, 2), geo.kernel, **self.conv_args).to(itype)  # (nb rc g P, Cp kh kw, L)
        patches = patches.view(nb * rc, geo.groups, part.parts, *patches.shape[-2:])
        order = part.row_order.view(1, 1, part.parts, -1, 1).expand_as(patches)
        vec = torch.gather(patches, 3, order).permute(1, 2, 0, 4, 3)  # (g, P, nb rc, L, rows), physical order
        length = vec.shape[3]
        cur = parasitics.gated_column_currents(g.unsqueeze(2), vec.flatten(2, 3), self.hw.parasitics.rp,
                                               signed=p.signed, top=top, compute_dtype=g.dtype)
        kinds = prog.circuit.shape[-1] // (self.n_slices * geo.ng)  # a reference column's copies included
        cur = cur.view(geo.groups, part.parts, nb, rc, length, kinds, self.n_slices, geo.ng).double()
        y = self._paired([cur[..., i, :, :] for i in range(kinds)], -1, self.sides == 2)
        if not p.serial:  # analog accumulation: sum_k 2**k / n_max * I_k, bit by bit in a fixed order
            acc = y[:, :, 0] * bit_weights[0]
            for b in range(1, nb):
                acc += y[:, :, b] * bit_weights[b]
            y = acc.unsqueeze(2)
        y = y * _per_column(prog.codes[0], chip).to(y.device)
        if prog.codes[1] is not None:
            y += _per_column(prog.codes[1], chip).to(y.device)
        return y.permute(2, 3, 0, 1, 5, 6, 4).to(self.digital_weight.dtype)  # (nb', rc, g, P, S, N_g, L)

    def _gated_dtype(self, p: Pass) -> torch.dtype:
        return _GATED_DTYPE_DIGITIZED if p.adc_bits is not None else _GATED_DTYPE

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        """Output spatial size of the conv on an ``h x w`` input."""
        a = self.conv_args
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
        (sh, sw), (ph, pw), (dh, dw) = pair(a["stride"]), pair(a["padding"]), pair(a["dilation"])
        kh, kw = self.geom.kernel
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def _per_column(t: torch.Tensor, chip: int) -> torch.Tensor:
    """A code transform's scale or shift, per slice ``(S,)`` or per ADC ``(Tc, g, P, S, N_g)``, for the
    chip's solved outputs ``(g, P, nb', rc, L, S, N_g)``."""
    return t.view(-1, 1) if t.dim() == 1 else t[chip][:, :, None, None, None]
