"""Programming an analog layer's block of chips (docs/physics.md sections 2-4, 8).

Each chip's devices are drawn from their keyed streams (section 9) at the layer's exact targets,
through IR drop where wires are resistive, and every linear step after the matmul is folded into
the weights the pass convolves with: ADC code scaling (split structure) or slice recombination,
drift compensation, the offset term and the output scale (folded structure). A block is programmed
once per (pass, mode, chips) and kept while it runs (:class:`Programming` for
:class:`mcsim.engine.layers.AnalogLayer`).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from mcsim.engine import draws
from mcsim.engine.arrays import Geometry, Partitioning
from mcsim.engine.conv import ConvWeight, Weight
from mcsim.engine.records import Context, Pass, Programmed
from mcsim.hardware import Hardware
from mcsim.physics import adc, devices, parasitics


class Programming:
    """The programming half of an analog layer.

    The layer provides ``hw``, ``ctx`` (:class:`Context`), ``key`` (its stream key), ``geom``,
    ``part``, ``kinds`` with a ``target_<kind>`` buffer each, ``coef``, ``offset``, ``unit``,
    ``n_slices``, ``reference`` (with ``target_ref`` and ``ref_part``), ``sides`` and ``cols`` (section
    15), its calibration (:class:`mcsim.engine.calibration.Calibrated`) and ``digital_weight`` (dtype
    and device).
    """

    hw: Hardware
    ctx: Context
    key: int
    geom: Geometry
    part: Partitioning
    kinds: list[str]
    reference: bool
    sides: int
    cols: int
    _cache: dict[tuple, Programmed]

    def _program_devices(self, error_free: bool):
        """Per device kind, programmed (and drifted) conductances ``(Tc, S, C_out, K)``, and the drift
        compensation factors (:func:`mcsim.engine.draws.program_devices`). A reference column
        (section 15) adds kind ``ref``, ``(Tc, S, g, K)``: one device per row of every array, drawn
        from streams of its own; the compensation factors come from the weights' devices."""
        targets = {kind: getattr(self, f"target_{kind}") for kind in self.kinds}
        c = self.ctx
        g, alpha = draws.program_devices(self.hw, targets, c.seed, c.chips, self.key, self.part, error_free)
        if self.reference:
            ref, _ = draws.program_devices(self.hw, {"ref": self.target_ref}, c.seed, c.chips, self.key,
                                           self.ref_part, error_free, reference=True)
            g.update(ref)
        return g, alpha

    def _reference_columns(self, g: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The reference column's devices (kind ``ref``) beside every column it serves, ``(Tc, S, C_out,
        K)``, so that it passes through the same steps as the weights' kinds (section 15)."""
        if "ref" not in g:
            return g
        ref = g["ref"]
        tc, s, groups, k = ref.shape
        return {**g, "ref": ref.unsqueeze(3).expand(tc, s, groups, self.geom.ng, k).reshape(tc, s, -1, k)}

    def _paired(self, sides: list[torch.Tensor], dim: int, apart: bool, add: bool = False) -> torch.Tensor:
        """Section 15: what the ADCs of a pair's columns read, from its sides (G+ and G-, or the weights'
        columns and the reference column beside each), columns along ``dim``: with analog subtraction
        ``a - b`` (``a + b`` for read-noise variances, ``add``); digitized ``apart``, the sides' columns
        side by side, the reference column once per array; the one side of an unpaired column as it is."""
        if len(sides) == 1:
            return sides[0]
        a, b = sides
        if not apart:
            return a + b if add else a - b
        return torch.cat([a, b if self.hw.mapping == "differential" else b.narrow(dim, 0, 1)], dim)

    def _effective(self, arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Section 8: the IR-drop-aware effective conductances of every array (columns independent, or a grid)."""
        rp, topo = self.hw.parasitics.rp, self.hw.parasitics.topology
        as_matrix, back = self.part.circuits, self.part.from_circuits

        if topo == "columns":
            return {k: back(parasitics.effective_conductance(as_matrix(a), rp, topo), a) for k, a in arrays.items()}
        # Grid: the columns of an array share row wires. Differential pairs sit side by side.
        mats = torch.stack([as_matrix(a) for a in arrays.values()], dim=-1).flatten(-2)  # (..., rows, cols)
        cols = mats.shape[-1]
        width = self.hw.cols_max or cols
        n_arr = -(-cols // width)
        mats = F.pad(mats, (0, n_arr * width - cols))  # device-less columns at the far end carry no current
        m = mats.unflatten(-1, (n_arr, width)).movedim(-2, -3)
        m = parasitics.effective_conductance(m, rp, topo).movedim(-3, -2).flatten(-2)[..., :cols]
        m = m.unflatten(-1, (-1, len(arrays)))
        return {k: back(m[..., i], a) for i, (k, a) in enumerate(arrays.items())}


    def _program(self, p: Pass) -> Programmed:
        """Program the chips and fold every linear step after the matmul into their weights.

        split, real ADC: the conv outputs ADC codes ``(y - lo) / step`` (weights / step, bias -lo / step).
        split, calibrating: the conv outputs the raw column values y.
        folded: the conv outputs the layer's output before its bias (weights * unit * x_range).
        Weights are chip-major: chip c owns a contiguous block of output channels.
        """
        hw = self.hw
        g, alpha = self._program_devices(p.calibrating)
        g = self._reference_columns(g)
        var = None
        if not p.calibrating and hw.read_noise.model != "none":
            var = [devices.read_variance(x, hw.read_noise, hw.drift.time_s) for x in g.values()]
        circuit = self._circuits(g) if p.gated else None
        if hw.parasitics.rp > 0 and not p.gated:
            g = self._effective({k: self.part.split(x) for k, x in g.items()})
            if not p.split:
                g = {k: self.part.merge(x) for k, x in g.items()}
        apart = self.sides == 2 and p.split  # digital subtraction: each side's columns digitized apart
        w = list(g.values())
        if apart:  # the sides' columns side by side in each array (section 15)
            w = [x if x.dim() == 8 else self.part.split(x) for x in w]
            var = [self.part.split(x) for x in var] if var is not None else None
        # Read noise (section 4): the sides' variances add where they are subtracted in analog; a reference
        # column's is then drawn per column it serves (its variance exact, its correlation left out: section 15).
        w = self._paired(w, -4, apart)
        var = self._paired(var, -4, apart, add=True) if var is not None else None
        if p.split:
            w, var, bias = self._split_weights(w, var, p)
        else:
            w, var, bias = self._folded_weights(w, var, alpha, p)
        dtype = self.digital_weight.dtype
        shape = (-1, self.part.cp if p.split else self.geom.cg, *self.geom.kernel)
        return Programmed(
            self._kept(w.reshape(shape).to(dtype)),
            self._kept(var.reshape(shape).to(dtype)) if var is not None else None,
            alpha,
            bias.reshape(-1).to(w.device, dtype) if bias is not None else None,
            circuit,
            self._codes(p) if p.gated else None,
        )

    def _kept(self, weight: torch.Tensor) -> Weight:
        """A programmed conv weight; a :class:`ConvWeight` where its block is kept with the packed copy."""
        return ConvWeight(weight) if self.ctx.pack and self.ctx.mode == "run" else weight

    def _circuits(self, g: dict[str, torch.Tensor]) -> torch.Tensor:
        """Section 8, gated rows: the conductances of every device kind and slice ``(Tc, S, C_out, K)``
        as the columns of one circuit per (chip, group, partition): ``(Tc, g, P, rows, kinds * S * N_g)``,
        rows in physical order (row 0 farthest from the ADC), in the programmed dtype."""
        mats = [self.part.circuits(self.part.split(x)) for x in g.values()]  # (Tc, S, g, P, rows, N_g)
        m = torch.stack(mats, 1)  # (Tc, kinds, S, g, P, rows, N_g)
        return m.permute(0, 3, 4, 5, 1, 2, 6).flatten(-3).contiguous()

    def _split_weights(self, w, var, p: Pass):
        """Arrays ``(Tc, g, P, S, N_g, Cp, kh, kw)`` scaled to emit ADC codes (or raw y when calibrating),
        and the codes' bias ``(Tc * g * P, S * N_g)`` (None without digitization)."""
        geo, tc = self.geom, len(self.ctx.chips)

        def arrange(t, scale):  # (Tc, S, [g, P, N_g, Cp, kh, kw]) -> (Tc, g, P, S, N_g, Cp, kh, kw)
            t = t.float() if t.dim() == 8 else self.part.split(t.float())  # ADC steps dwarf float32 rounding
            scale = scale.view(-1, 1, 1, 1, 1) if scale.dim() == 1 else scale[..., None, None, None]
            return t.permute(0, 2, 3, 1, 4, 5, 6, 7) * scale.to(t)

        scale, shift = self._codes(p)
        bias = None
        if shift is not None and shift.dim() == 1:  # per slice: the same for every chip
            bias = shift.view(-1, 1).expand(-1, geo.ng).reshape(1, -1).expand(tc * geo.groups * self.part.parts, -1)
        elif shift is not None:  # per ADC of every chip, (Tc, g, P, S, N_g)
            bias = shift
        return arrange(w, scale), (arrange(var, scale**2) if var is not None else None), bias

    def _codes(self, p: Pass) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """:meth:`_slice_codes`, per ADC ``(Tc, g, P, S, N_g)`` where the chips' ADCs are mismatched
        (docs/physics.md section 13: each ADC's gain scales its code, its offset shifts it)."""
        scale, shift = self._slice_codes(p)
        per_adc = (len(self.ctx.chips), self.geom.groups, self.part.parts, self.n_slices, self.cols)
        if self.sides == 2:  # each side's ADCs their own range (section 15): per (slice, column)
            scale, shift = self._by_column(scale), (self._by_column(shift) if shift is not None else None)
        else:
            scale, shift = scale.view(-1, 1), (shift.view(-1, 1) if shift is not None else None)
        mismatch = None
        if p.adc_bits is not None:  # a run pass with a real ADC: calibration sees the ideal converter
            mismatch = draws.adc_mismatch(self.hw, self.ctx.seed, self.ctx.chips, self.key,
                                          draws.adc_count(self.part, self.n_slices, self.cols))
        if mismatch is None:
            if self.sides == 1:
                return scale.view(-1), (shift.view(-1) if shift is not None else None)
            return scale.expand(per_adc), (shift.expand(per_adc) if shift is not None else None)
        gain, offset = (m.view(per_adc).to(scale.device) for m in mismatch)
        return adc.mismatched(scale, shift, gain, offset)

    def _by_column(self, t: torch.Tensor) -> torch.Tensor:
        """Per-range values ``(sides * S,)``, range ``side * S + slice``, as ``(S, N)`` per slice and
        column (section 15: a column reads its side's range)."""
        side = torch.zeros(self.cols, dtype=torch.int64)
        side[self.geom.ng:] = 1
        index = side.view(1, -1) * self.n_slices + torch.arange(self.n_slices).view(-1, 1)
        return t[index.to(t.device)]

    def _slice_codes(self, p: Pass) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Per ADC range (slice, and side: section 15), ``code = scale * y_in + shift`` (float64,
        ``(sides * S,)``), ``y_in`` a column output for the rows' drive (levels or bit planes): ADC codes
        before rounding, or raw column values (shift None) when calibrating or with an ideal ADC."""
        cs = torch.full((self.n_slices * self.sides,), 1 / self._input_scale(p.planes), dtype=torch.float64)
        if p.adc_bits is None:
            return cs, None
        code_scale, code_shift = adc.code_transform(*self._adc_limits(), p.adc_bits, self.hw.adc.levels)
        return cs * code_scale, code_shift

    def _folded_weights(self, w, var, alpha, p: Pass):
        """One effective weight ``(Tc, C_out, K)`` per chip: slices recombined, drift compensated, the
        offset term subtracted, the output scale applied; float64 when exact (section 10)."""
        c = self.coef.to(w.dtype).view(1, -1, 1, 1)
        out_scale = self.unit * (self.x_range or 1.0) / self._input_scale(p.serial)
        w = (w * c).sum(1)
        var = (var * c**2).sum(1) if var is not None else None
        if alpha is not None:  # compensation rescales the analog column outputs, not the digital offset term
            w = w * alpha.view(-1, 1, 1).to(w.dtype)
            var = var * alpha.view(-1, 1, 1).to(var.dtype) ** 2 if var is not None else None
        w = (w - self.offset) * out_scale
        var = var * out_scale**2 if var is not None else None
        return w, var, None  # the layer's bias is added after the matmul (AnalogLayer._analog)

    def _programmed(self, p: Pass) -> Programmed:
        key = (p, self.ctx.mode, tuple(self.ctx.chips.tolist()))
        if key in self._cache:
            return self._cache[key]
        prog = self._program(p)
        if self.ctx.cache and self.ctx.mode == "run":
            self._cache[key] = prog
        return prog

    def clear_cache(self):
        self._cache.clear()
