"""The analog layer: one convolution or Linear evaluated for a block of chips at once.

Activations carry the chips in the batch dim, ``(B * Tc, ...)`` image-major: the layout in which one
grouped convolution takes every chip's channels side by side, so a layer's input and output need no
reordering (a Linear on tokens, ``(B * Tc, tokens, F)``, has its rows reordered). A layer programs each
chip's devices (docs/physics.md sections 2-4, 8), then runs each chip's array partitions and weight slices
as one grouped convolution (a Linear is a 1x1 conv), all chips of the block in one call:

* **split** structure (a real ADC, or ADC calibration): output channels per (chip, group,
  partition) are ``(slice, column)``; each column output is digitized on its own (section 7), per
  input bit when inputs are bit-serial with digital accumulation (section 5), then recombined. A pair
  subtracted digitally (section 15) has its second side's columns (G-, or one reference column per
  array) beside the first's, each with its own ADC range, subtracted in the recombination.
* **folded** structure (an ideal ADC): partitions, slices, input bits and the offset mapping's
  ``G_zero * sum(x)`` are linear, so they are folded into one effective weight per chip before the
  matmul: one convolution, no cancellation of large terms in float32 (docs/physics.md section 10).
* **gated** rows (bit-serial inputs on resistive wires, section 8): the split structure whatever the
  ADC, each column output of each bit plane from its own exact solve (:mod:`mcsim.engine.gated`)
  rather than a convolution; digitization, recombination and the offset term as above.

Read noise is drawn in output space: a column's noise variance is ``sum_j v_j**2 var(dG_j)``
(section 4), one extra convolution of ``v**2`` with the per-device variances.

Determinism (section 9): a chip's outputs must not depend on the other chips of its block, the batch
or the thread count, although quantizers turn the last float bit into a level flip. The float
kernels pick each output's summation order from the call's shape; above small floors of groups and
images that order no longer depends on them, and every call is padded up to those floors
(:func:`mcsim.engine.conv.canonical_conv`). Sums that must be exact are made of integers (input levels,
ADC codes).
"""
from __future__ import annotations
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mcsim.engine import draws, rng
from mcsim.engine.arrays import Geometry, Partitioning
from mcsim.engine.calibration import Calibrated, power_of_two_ranges, subsample
from mcsim.engine.conv import Weight, canonical_conv, grouped_conv
from mcsim.engine.convnd import conv_view
from mcsim.engine.gated import GatedColumns
from mcsim.engine.programming import Programming
from mcsim.engine.records import Context, Mode, Pass, Programmed
from mcsim.hardware import Hardware
from mcsim.physics import adc, dac, mapping

__all__ = ["AnalogLayer", "Context", "DigitalLayer", "Mode", "Pass", "Programmed", "power_of_two_ranges"]


_LINEAR_ARGS = dict(stride=1, padding=0, dilation=1)  # a Linear is a 1x1 conv


class DigitalLayer(nn.Module):
    """A convolution or Linear kept digital (``analog: false``), run in the canonical shapes of
    :func:`canonical_conv` (any convolution through its 2-D view, :mod:`mcsim.engine.convnd`) so that
    it too gives each chip's images the same numbers in any block. Its ``weight`` and ``bias`` stay
    readable for code that uses them directly."""

    def __init__(self, module: nn.Module, name: str):
        super().__init__()
        self.linear = isinstance(module, nn.Linear)
        self.view = conv_view(module, name)
        self.transposed = bool(getattr(module, "transposed", False))
        self.groups = 1 if self.linear else module.groups
        self.weight, self.bias = module.weight, module.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.linear:
            v = self.view
            x2, tokens = v.to2d(x)
            y = canonical_conv(x2, v.weight(self.weight), self.bias, self.groups, v.conv_args, grouped=self.groups > 1)
            return v.from2d(y, tokens)
        y = canonical_conv(x.reshape(-1, x.shape[-1], 1, 1), self.weight[:, :, None, None], self.bias, 1,
                           _LINEAR_ARGS, grouped=False)
        return y.view(*x.shape[:-1], -1)


class AnalogLayer(Programming, Calibrated, GatedColumns, nn.Module):
    """One convolution or Linear on crossbars, for the block of chips named in ``ctx.chips``
    (a convolution other than Conv2d through its 2-D view, :mod:`mcsim.engine.convnd`).

    The pass lives here; programming a block of chips (:mod:`mcsim.engine.programming`), the
    calibration state (:mod:`mcsim.engine.calibration`) and the gated-row columns
    (:mod:`mcsim.engine.gated`) are the parts it is built from, each in its own module.

    Args:
        module: the digital layer (BatchNorm already folded in).
        hw: the layer's hardware.
        name: the module's path in the model; it keys the layer's random streams, so that
            keeping another layer digital changes nothing here.
        ctx: the converted model's shared pass context.
    """

    def __init__(self, module: nn.Module, hw: Hardware, name: str, ctx: Context):
        super().__init__()
        self.hw, self.name, self.ctx = hw, name, ctx
        self.key = rng.name_key(name)
        w = module.weight.detach()
        self.linear = isinstance(module, nn.Linear)
        self.view = conv_view(module, name)
        self.conv_args = _LINEAR_ARGS if self.linear else self.view.conv_args
        groups = 1 if self.linear else module.groups
        w = w[:, :, None, None] if self.linear else self.view.weight(w)
        self.geom = Geometry(w.shape[1] * groups, w.shape[0], groups, tuple(w.shape[2:]))
        self.part = Partitioning(self.geom, hw.rows_max)
        self.register_buffer("digital_weight", w.clone())
        self.register_buffer("bias", module.bias.detach().clone() if module.bias is not None else torch.zeros(w.shape[0]))

        # Section 2-3: quantize, map to per-slice device targets, shape (S, C_out, K), float64.
        self.w_max = mapping.weight_scale(w, hw.weight_percentile)
        q = mapping.quantize(w.double().reshape(w.shape[0], -1), self.w_max, hw.weight_bits)
        targets = mapping.target_digits(q, hw)
        for kind, d in targets.items():
            self.register_buffer(f"target_{kind}", mapping.digits_to_conductance(d, hw))  # float64: exact targets
        self.kinds = list(targets)
        layout = mapping.SliceLayout.of(hw)
        gain = mapping.digit_gain(hw)
        # Recombination: z = sum_s c_s y_s - offset * sum(v), in recombined digits (section 3).
        self.register_buffer("coef", torch.tensor([gain * f for f in layout.weights()], dtype=torch.float64))
        self.reference = hw.mapping == "offset" and hw.offset_reference == "column"
        self.offset = (  # the nominal offset term, subtracted digitally; a reference column subtracts its own
            gain * hw.gmin * sum(layout.weights()) + mapping.zero_level(hw)
            if hw.mapping == "offset" and not self.reference else 0.0
        )
        self.unit = mapping.weight_unit(hw, self.w_max)
        self.n_slices = layout.slices
        if self.reference:  # section 15: one column per array at G_zero, per slice the zero weight's digit
            zero = mapping.target_digits(torch.zeros(1, 1, dtype=torch.float64), hw)["one"]  # (S, 1, 1)
            g0 = mapping.digits_to_conductance(zero, hw).expand(-1, groups, self.geom.rows)
            self.register_buffer("target_ref", g0.clone())  # (S, g, K): one device per (slice, group, row)
            self.ref_part = Partitioning(Geometry(self.geom.c_in, groups, groups, self.geom.kernel), hw.rows_max)
        # Section 15: the ADCs of one array's slice. Digital subtraction gives each side of a pair (G+ and
        # G-, or the columns and their reference column) its own ADCs and calibrated range.
        self.paired = hw.mapping == "differential" or self.reference
        self.sides = 2 if self.paired and hw.subtraction == "digital" else 1
        ng = self.geom.ng
        self.cols = ng if self.sides == 1 else (2 * ng if hw.mapping == "differential" else ng + 1)

        self._init_calibration()  # sections 5 and 7 (mcsim.engine.calibration)
        self._cache: dict[tuple, Programmed] = {}
        self.probe_elements = 0  # peak elements per (image, chip) seen in the probe pass
        self._step: Optional[int] = None  # the time step of the call being evaluated (recurrent layers)

    @property
    def weight(self) -> torch.Tensor:
        """No tensor: a caller that reads it would multiply digitally and bypass the arrays."""
        raise RuntimeError(
            f"layer {self.name!r} runs on crossbars and has no weight tensor: something reads its .weight "
            "instead of calling it as a module (a functional call such as F.linear(x, layer.weight)). "
            "mcsim keeps layers it finds used this way digital; please report this model")

    # ------------------------------------------------------------------ forward
    def _digital(self, x):
        if self.linear:
            return F.linear(x, self.digital_weight[:, :, 0, 0], self.bias)
        return F.conv2d(x, self.digital_weight, self.bias, groups=self.geom.groups, **self.conv_args)

    def forward(self, x: torch.Tensor, step: Optional[int] = None) -> torch.Tensor:
        """The layer's outputs on every chip of the block; ``step``: the time step of a recurrent
        layer's matmul (:mod:`mcsim.engine.recurrent`), which keys its read noise (section 17)."""
        mode = self.ctx.mode
        self._step = step
        if mode == "calibrate_inputs":  # the module's own inputs (no padding or repeated taps of a view)
            self._record("x_min", np.array([x.min().item()]))
            self._record("x_abs", subsample(x.abs()))
        if not self.linear:
            x2, tokens = self.view.to2d(x)
            y = self._probe(x2, tokens) if mode in ("probe", "calibrate_inputs") else self._analog(x2, tokens)
            return self.view.from2d(y, tokens)
        if mode in ("probe", "calibrate_inputs"):
            return self._probe(x, 1)
        lead = x.shape[:-1]
        tokens = math.prod(lead[1:])  # tokens of a (batch, tokens, features) input are rows of their own
        y = self._analog(x.reshape(-1, self.geom.c_in, 1, 1), tokens)
        return y.reshape(*lead, self.geom.c_out)

    def _probe(self, x: torch.Tensor, tokens: int) -> torch.Tensor:
        """The digital output, noting the peak elements per (image, chip) an analog pass would hold
        (``tokens`` rows of ``x`` per image)."""
        y = self._digital(x)
        split = self._pass().split
        nb = self._n_planes(True) + 1 if self.hw.input_mode == "bitserial" else 1
        expand = (self.part.parts * self.part.cp / self.geom.cg if split else 1) * nb
        out_expand = (self.part.parts * (self.n_slices + 1) * self.cols / self.geom.ng if split else 1) * nb
        elements = int(tokens * (x[0].numel() * expand + y[0].numel() * out_expand))
        self.probe_elements = max(self.probe_elements, elements)
        return y

    def _pass(self) -> Pass:
        return Pass.of(self.hw, self.ctx.mode == "calibrate_adc", self.signed_inputs)

    def _analog(self, x: torch.Tensor, tokens: int) -> torch.Tensor:
        """``(B * Tc * tokens, C, H, W)`` activations, rows ordered (image, chip, token), to the layer's
        outputs on every chip of the block, in the same order; ``r = B * tokens`` rows per chip."""
        if self.hw.input_bits is not None and self.x_range is None:
            raise RuntimeError("this converted model quantizes inputs: call .calibrate() (or load a calibration) first")
        p = self._pass()
        prog = self._programmed(p)
        n = self._levels(x, p, tokens)
        if self.ctx.energy is not None and self.ctx.mode == "run":  # opt-in counting reads n, changes nothing
            self.ctx.energy.analog(self, n, p)
        u, bit_weights = self._input_planes(n, p)
        u2 = self._noise_planes(n, u, p) if prog.var is not None else None
        if not p.split:
            z = self._folded(u, u2, prog)
        else:
            if p.gated:
                k, plane_weights = self._gated_columns(u, u2, bit_weights, prog, p)
            else:
                k, plane_weights = self._columns(u, u2, prog, p), bit_weights
            z = self._recombine(self._digitize(k, p), plane_weights, p)
            if prog.alpha is not None:  # drift compensation rescales the analog outputs (section 4)
                z.mul_(prog.alpha.to(z.dtype).view(1, -1, 1, 1, 1, 1))
            if self.offset:  # the offset mapping's nominal term (a reference column was subtracted already)
                z.sub_(self._offset_term(u, bit_weights, p))
            z.mul_(self.unit * (self.x_range or 1.0))
        # z (r, Tc, g, N_g, H', W') is already the network's image-major layout; tokens go back behind the chip.
        bias = self.bias.view(self.geom.groups, self.geom.ng, 1, 1)
        if tokens == 1 and z.is_contiguous():
            return z.add_(bias).view(-1, self.geom.c_out, *z.shape[-2:])
        zt = z.view(-1, tokens, *z.shape[1:]).transpose(1, 2)  # (B, Tc, tokens, g, N_g, H', W')
        out = z.new_empty(zt.shape).copy_(zt)  # a copy, then the bias: 2.5x faster than add(out=) here
        return out.add_(bias).view(-1, self.geom.c_out, *z.shape[-2:])


    # ------------------------------------------------------------------ the steps of a pass
    # Activations inside a layer are image-major in memory, ``(r, Tc, ...)`` seen as ``(Tc, r, ...)``, so
    # that every chip's channels sit side by side for one grouped convolution.
    def _levels(self, x: torch.Tensor, p: Pass, tokens: int) -> torch.Tensor:
        """Section 5: integer DAC levels ``(Tc, r, C, H, W)`` in our own buffer (x may feed a residual),
        image-major in memory, tokens moved ahead of the chip in the same pass that copies them."""
        tc = len(self.ctx.chips)
        r = x.shape[0] // tc
        n = x.new_empty(r, tc, *x.shape[1:])
        src = x.detach().view(-1, tc, tokens, *x.shape[1:]).transpose(1, 2)  # (B, tokens, Tc, C, H, W)
        dac.levels(src, self.x_range or 1.0, self.hw.input_bits, p.signed, out=n.view(src.shape))
        return n.transpose(0, 1)

    def _n_planes(self, signed: bool) -> int:
        """Input bits or slices applied one per MVM (sections 5, 16)."""
        return dac.n_slices(self.hw.input_bits, signed, self.hw.input_slice_bits)

    def _input_planes(self, n: torch.Tensor, p: Pass) -> tuple[torch.Tensor, list[float]]:
        """What drives the rows, ``(nb, Tc, r, C, H, W)``, and each plane's weight in the recombination:
        one bit plane (or k-bit slice, section 16) per MVM when they are digitized apart
        (``sum_k 2**k y_k / n_max``), else the levels."""
        if not p.planes:
            return n.unsqueeze(0), [1.0]
        hw = self.hw
        u = dac.bit_planes(n, hw.input_bits, p.signed, slice_bits=hw.input_slice_bits)
        return u, dac.slice_weights(hw.input_bits, p.signed, hw.input_slice_bits)

    def _noise_planes(self, n: torch.Tensor, u: torch.Tensor, p: Pass) -> torch.Tensor:
        """``v**2`` per plane for the read-noise variance; with analog accumulation of bit-serial inputs
        each bit (slice) is its own read, so their variances add with weights ``4**(k i)`` (gated rows,
        whose planes are bits or slices: the squared plane weights)."""
        hw = self.hw
        if p.gated and not p.serial:
            weights = dac.slice_weights(hw.input_bits, p.signed, hw.input_slice_bits)
            w2 = torch.tensor([w**2 for w in weights], dtype=u.dtype, device=u.device)
            return (u**2 * w2.view(-1, *[1] * (u.dim() - 1))).sum(0, keepdim=True)
        if not (p.bitserial and not p.serial):
            return u**2
        planes = dac.bit_planes(n, hw.input_bits, p.signed, slice_bits=hw.input_slice_bits)
        k = dac.slice_width(hw.input_bits, p.signed, hw.input_slice_bits)
        w4 = torch.tensor([4.0 ** (k * i) for i in range(planes.shape[0])], dtype=n.dtype, device=n.device)
        return ((planes**2) * w4.view(-1, *[1] * (planes.dim() - 1))).sum(0, keepdim=True)

    def _grouped_conv(self, inp: torch.Tensor, weight: Weight, bias: Optional[torch.Tensor],
                      chips: int, groups_per_chip: int) -> torch.Tensor:
        """:func:`mcsim.engine.conv.grouped_conv` with this layer's stride, padding and dilation (a
        Linear's as matrix products)."""
        return grouped_conv(inp, weight, bias, chips, groups_per_chip, self.conv_args, matmul=self.linear)

    def _folded(self, u: torch.Tensor, u2: Optional[torch.Tensor], prog: Programmed) -> torch.Tensor:
        """The folded pass: one grouped matmul gives the layer's output ``(r, Tc, g, N_g, H', W')``."""
        geo, tc = self.geom, u.shape[1]

        def run(planes, weight):  # (Tc, r, C, H, W) image-major -> (r, Tc * C, H, W)
            return self._grouped_conv(planes.transpose(0, 1).flatten(1, 2), weight, None, tc, geo.groups)

        out = run(u[0], prog.weight)  # the layer's bias follows in the pass that lays out the output
        out = out.view(out.shape[0], tc, geo.groups, geo.ng, *out.shape[-2:])
        if u2 is not None:
            var = run(u2[0], prog.var).view_as(out)
            out += var.sqrt_().mul_(self._read_noise(1, out.shape[0], var[0, 0].numel()).view_as(var))
        return out

    def _columns(self, u: torch.Tensor, u2: Optional[torch.Tensor], prog: Programmed, p: Pass) -> torch.Tensor:
        """Every column of every array, per input plane: ``(nb, r, Tc, g, P, S, N_g, H', W')`` ADC codes
        before rounding (raw outputs when calibrating), with read and comparator noise (:meth:`_add_noise`)."""
        geo, part = self.geom, self.part
        nb, tc, r = u.shape[:3]

        def run(planes, weight, bias=None):  # (nb, Tc, r, C, H, W) -> (nb * r, Tc * g * P * Cp, H, W)
            inp = part.gather_inputs(planes).permute(0, 2, 1, 3, 4, 5, 6, 7).flatten(0, 1).flatten(1, 4)
            return self._grouped_conv(inp, weight, bias, tc, geo.groups * part.parts)

        k = run(u, prog.weight, prog.bias)
        k = k.view(nb, r, tc, geo.groups, part.parts, self.n_slices, self.cols, *k.shape[-2:])
        return self._add_noise(k, run(u2, prog.var).view_as(k) if u2 is not None else None, p)

    def _add_noise(self, k: torch.Tensor, var: Optional[torch.Tensor], p: Pass) -> torch.Tensor:
        """In place on the column outputs ``k (nb, r, Tc, ...)``: read noise of variance ``var`` (section
        4; None: none) and, ahead of a real ADC, the comparator noise of every conversion (section 13):
        independent Gaussians at one ADC input, so one normal per conversion carries both,
        ``k += sqrt(var + noise_lsb**2) * z``."""
        comparator = self.hw.adc.noise_lsb if p.adc_bits is not None else 0.0
        if var is None and not comparator:
            return k
        z = self._read_noise(k.shape[0], k.shape[1], k[0, 0, 0].numel()).view_as(k)
        if var is None:
            return k.add_(z.mul_(comparator))
        if comparator:
            var.add_(comparator**2)
        return k.add_(var.sqrt_().mul_(z))

    def _digitize(self, k: torch.Tensor, p: Pass) -> tuple[torch.Tensor, list[float], list[float]]:
        """Section 7, in place: ADC codes, with each range's ``(step, first level)`` to read them back (a
        range per slice, and per side of a pair digitized apart: section 15). When calibrating, records
        the raw outputs instead and reads them back as they are."""
        ranges = self.n_slices * self.sides  # range i = side * S + slice (section 15)
        if p.adc_bits is None:  # ideal ADC (only gated rows split without one) or calibrating
            if p.calibrating:
                for i in range(ranges):
                    cols = self._side_columns(i // self.n_slices)
                    self._record(f"adc_{i}", subsample(k[:, :, :, :, :, i % self.n_slices, cols]))
            return k, [1.0] * ranges, [0.0] * ranges
        adc.codes_(k, p.adc_bits)
        step, first = adc.level_grid(*self._adc_limits(), p.adc_bits, self.hw.adc.levels)
        return k, step.tolist(), first.tolist()

    def _side_columns(self, side: int) -> slice:
        """Section 15: the columns (of :meth:`_columns`' ``N`` per slice) one side's ADCs read."""
        ng = self.geom.ng
        return slice(0, self.cols) if self.sides == 1 else slice(side * ng, self.cols if side else ng)

    def _recombine(self, digitized, bit_weights: list[float], p: Pass) -> torch.Tensor:
        """``z = sum over planes b, partitions p, slices s of w_b c_s (lo_s + step_s code)``, in recombined
        digits (sections 3, 5, 6), summed in a fixed order: ``(r, Tc, g, N_g, H', W')``. A pair digitized
        apart adds its second side's terms with ``-c_s`` (section 15)."""
        k, step, lo = digitized
        coef = self.coef.tolist()
        if self.sides == 2:  # section 15: each slice's second side (G-, or the reference column) subtracted
            coef = coef + [-c for c in coef]
        offset = sum(bit_weights) * self.part.parts * sum(c * l for c, l in zip(coef, lo))
        nb = k.shape[0]
        shift = self.hw.input_slice_bits  # with nb > 1 planes, the bits per plane (section 16)
        if nb > 1 and p.adc_bits is not None and p.adc_bits + shift * (nb - 1) + 1 <= 24:
            # Integer codes: sum_b 2**(k b) code_b is exact in float32 whatever the summation order, so one
            # matrix-vector product over the planes replaces nb passes (plane weights are 2**(k b) w_0).
            powers = torch.tensor([2.0 ** (shift * b) for b in range(nb)], dtype=k.dtype, device=k.device)
            k = torch.matmul(powers, k.reshape(nb, -1)).view(1, *k.shape[1:])  # k may be a strided view
            bit_weights = bit_weights[:1]
        terms = [(b, q, s) for b in range(len(bit_weights)) for q in range(self.part.parts) for s in range(len(coef))]
        z = None
        for b, q, s in terms:
            f = bit_weights[b] * coef[s] * step[s]
            # range s: slice s % S of side s // S (section 15); one side reads every column
            term = k[b, :, :, :, q, s % self.n_slices, self._side_columns(s // self.n_slices)]
            if z is None:  # k is this layer's own buffer: scale the only term in place
                z = term.mul_(f) if len(terms) == 1 else term * f
            else:  # a reference column's one code per array broadcasts over the array's columns
                z.add_(term, alpha=f)
        return z.add_(offset)

    def _offset_term(self, u: torch.Tensor, bit_weights: list[float], p: Pass) -> torch.Tensor:
        """Offset mapping's digital ``G_zero * sum(v)`` (section 3) in recombined digits, ``(r, Tc, g, 1,
        H', W')``: the integer input levels summed over each array's rows (exact), per plane."""
        geo, part = self.geom, self.part
        nb, tc, r = u.shape[:3]
        ones = part.mask.to(u.dtype).unsqueeze(0).expand(tc * geo.groups, -1, -1, -1, -1).flatten(0, 1)
        inp = part.gather_inputs(u).permute(0, 2, 1, 3, 4, 5, 6, 7).flatten(0, 1).flatten(1, 4)
        sv = self._grouped_conv(inp, ones, None, tc, geo.groups * part.parts)
        sv = sv.view(nb, r, tc, geo.groups, part.parts, *sv.shape[-2:]).sum(4)
        # Plane weights are w_0 times powers of two: the integer sums times those powers add up exactly
        # in any order (section 9), and w_0 scales the total once.
        w = torch.tensor([b / bit_weights[0] for b in bit_weights], dtype=u.dtype, device=u.device)
        total = (sv * w.view(-1, 1, 1, 1, 1, 1)).sum(0)
        return (total * (bit_weights[0] * self.offset / self._input_scale(p.planes))).unsqueeze(3)

    def _read_noise(self, nb: int, r: int, n: int) -> torch.Tensor:
        """Read-noise normals ``(nb, r, Tc, n)`` (:func:`mcsim.engine.draws.read_noise`)."""
        c = self.ctx
        return draws.read_noise(c.seed, c.chips, self.key, c.image_ids, nb, r, n, self.digital_weight.dtype,
                                self._step)
