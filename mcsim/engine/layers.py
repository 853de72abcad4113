"""The analog layer: one Conv2d or Linear evaluated for a block of chips at once.

Activations carry the chips in the batch dim, ``(B * Tc, ...)`` image-major: the layout in which one
grouped convolution takes every chip's channels side by side, so a layer's input and output need no
reordering (a Linear on tokens, ``(B * Tc, tokens, F)``, has its rows reordered). A layer programs each
chip's devices (docs/physics.md sections 2-4, 8), then runs each chip's array partitions and weight slices
as one grouped convolution (a Linear is a 1x1 conv), all chips of the block in one call:

* **split** structure (a real ADC, or ADC calibration): output channels per (chip, group,
  partition) are ``(slice, column)``; each column output is digitized on its own (section 7), per
  input bit when inputs are bit-serial with digital accumulation (section 5), then recombined.
* **folded** structure (an ideal ADC): partitions, slices, input bits and the offset mapping's
  ``G_zero * sum(x)`` are linear, so they are folded into one effective weight per chip before the
  matmul: one convolution, no cancellation of large terms in float32 (docs/physics.md section 10).
* **gated** rows (bit-serial inputs on resistive wires, section 8): the split structure whatever the
  ADC, each column output of each bit plane from its own exact solve (:meth:`AnalogLayer._gated_columns`)
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

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mcsim.engine import rng
from mcsim.engine.arrays import Geometry, Partitioning
from mcsim.engine.conv import ConvWeight, Weight, canonical_conv, grouped_conv
from mcsim.hardware import Hardware
from mcsim.physics import adc, dac, devices, mapping, parasitics

_SAMPLES_PER_BATCH = 2**18  # calibration values kept per layer and batch (strided subsample)
_STREAM_PROGRAM, _STREAM_DRIFT, _STREAM_READ = 1, 11, 101
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


Mode = Literal["run", "probe", "calibrate_inputs", "calibrate_adc"]


@dataclass
class Context:
    """What the converted model tells its layers about the current pass."""

    seed: int = 0
    chips: Optional[torch.Tensor] = None  # (Tc,) global chip indices
    image_ids: Optional[torch.Tensor] = None  # (B,) global image indices (read-noise streams)
    mode: Mode = "run"  # probe: digital pass measuring sizes; calibrate_*: the two calibration passes
    cache: bool = True  # keep programmed chips between forward calls
    pack: bool = False  # kept chips also keep the CPU kernel's layout of their weights (conv.ConvWeight)
    energy: Optional[Any] = None  # an engine.energy.EnergyCounter while counting (opt-in), else None

    @contextmanager
    def switched(self, mode: Mode, chips: Optional[torch.Tensor] = None) -> Iterator["Context"]:
        """Run a pass in ``mode`` (and on ``chips``), restoring the previous state on exit."""
        saved = self.mode, self.chips
        self.mode, self.chips = mode, (chips if chips is not None else self.chips)
        try:
            yield self
        finally:
            self.mode, self.chips = saved


@dataclass(frozen=True)
class Pass:
    """How one forward call evaluates a layer, decided once from the hardware and the mode."""

    split: bool  # per-column outputs digitized (real ADC) or recorded (ADC calibration): section 7
    serial: bool  # one MVM and one digitization per input bit (bit-serial, digital accumulation): section 5
    bitserial: bool  # bit-serial inputs (analog or digital accumulation)
    calibrating: bool  # the error-free ADC calibration pass
    signed: bool  # the DAC's signed levels
    gated: bool = False  # gated rows with rp > 0: one exact solve per bit plane (section 8); implies split

    @property
    def planes(self) -> bool:
        """Whether the rows are driven by bit planes (0/+-1) rather than integer levels."""
        return self.serial or self.gated


@dataclass
class Programmed:
    """One block of chips of one layer, ready to run."""

    weight: Weight  # conv weight, chips folded into the output channels
    var: Optional[Weight]  # read-noise variances, same layout (None: no read noise)
    alpha: Optional[torch.Tensor]  # (Tc,) drift compensation factors
    bias: Optional[torch.Tensor] = None  # conv bias (ADC code shift, or the layer's bias when folded)
    # Gated rows (section 8): every chip's arrays as circuits ``(Tc, g, P, rows, kinds * S * N_g)`` in
    # physical row order (columns kind-major, then slice, then output), and per slice the code
    # transform ``(scale, shift)`` (float64, (S,); shift None without digitization).
    circuit: Optional[torch.Tensor] = None
    codes: Optional[tuple[torch.Tensor, Optional[torch.Tensor]]] = None


def power_of_two_ranges(lo: list[float], hi: list[float]) -> tuple[list[float], list[float]]:
    """Section 7: slice ranges that differ only by powers of two, so that the digital recombination
    stays a shift. The widest calibrated range is the reference; every slice gets it divided by the
    largest power of two ``2**m`` (m >= 0) whose range still contains the slice's own calibrated
    range (the reference itself when none does, e.g. a slice reaching below a positive ``lo``)."""
    ref = max(range(len(lo)), key=lambda s: hi[s] - lo[s])
    out_lo, out_hi = [], []
    for l, h in zip(lo, hi):
        m = 0
        while m < 60 and lo[ref] / 2 ** (m + 1) <= l and hi[ref] / 2 ** (m + 1) >= h:
            m += 1
        out_lo.append(lo[ref] / 2**m)
        out_hi.append(hi[ref] / 2**m)
    return out_lo, out_hi


def _conv_args(module: nn.Conv2d | nn.Linear, name: str) -> dict:
    if isinstance(module, nn.Linear):
        return dict(stride=1, padding=0, dilation=1)
    if module.padding_mode != "zeros":
        raise ValueError(f"layer {name!r}: padding_mode {module.padding_mode!r} is not supported")
    return dict(stride=module.stride, padding=module.padding, dilation=module.dilation)


class DigitalLayer(nn.Module):
    """A Conv2d or Linear kept digital (``analog: false``), run in the canonical shapes of
    :func:`canonical_conv` so that it too gives each chip's images the same numbers in any block.
    Its ``weight`` and ``bias`` stay readable for code that uses them directly."""

    def __init__(self, module: nn.Conv2d | nn.Linear, name: str):
        super().__init__()
        self.linear = isinstance(module, nn.Linear)
        self.conv_args = _conv_args(module, name)
        self.groups = 1 if self.linear else module.groups
        self.weight, self.bias = module.weight, module.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.linear:
            return canonical_conv(x, self.weight, self.bias, self.groups, self.conv_args, grouped=self.groups > 1)
        y = canonical_conv(x.reshape(-1, x.shape[-1], 1, 1), self.weight[:, :, None, None], self.bias, 1,
                           self.conv_args, grouped=False)
        return y.view(*x.shape[:-1], -1)


def _subsample(t: torch.Tensor) -> np.ndarray:
    flat = t.detach().flatten()
    return flat[:: max(1, flat.numel() // _SAMPLES_PER_BATCH)].double().cpu().numpy()


class AnalogLayer(nn.Module):
    """One Conv2d or Linear on crossbars, for the block of chips named in ``ctx.chips``.

    Args:
        module: the digital layer (BatchNorm already folded in).
        hw: the layer's hardware.
        name: the module's path in the model; it keys the layer's random streams, so that
            keeping another layer digital changes nothing here.
        ctx: the converted model's shared pass context.
    """

    def __init__(self, module: nn.Conv2d | nn.Linear, hw: Hardware, name: str, ctx: Context):
        super().__init__()
        self.hw, self.name, self.ctx = hw, name, ctx
        self.key = rng.name_key(name)
        w = module.weight.detach()
        self.linear = isinstance(module, nn.Linear)
        self.conv_args = _conv_args(module, name)
        groups = 1 if self.linear else module.groups
        if self.linear:
            w = w[:, :, None, None]
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
        self.offset = (
            gain * hw.gmin * sum(layout.weights()) + mapping.zero_level(hw) if hw.mapping == "offset" else 0.0
        )
        self.unit = mapping.weight_unit(hw, self.w_max)
        self.n_slices = layout.slices

        # Calibration state (section 5 and 7); explicit ADC limits need none.
        self.x_range: Optional[float] = None
        self.signed: Optional[bool] = None
        self.adc_range: Optional[tuple[list[float], list[float]]] = None  # calibrated, per slice
        self._samples: dict[str, list] = {}
        self._cache: dict[tuple, Programmed] = {}
        self.probe_elements = 0  # peak elements per (image, chip) seen in the probe pass

    @property
    def weight(self) -> torch.Tensor:
        """No tensor: a caller that reads it would multiply digitally and bypass the arrays."""
        raise RuntimeError(
            f"layer {self.name!r} runs on crossbars and has no weight tensor: something reads its .weight "
            "instead of calling it as a module (a functional call such as F.linear(x, layer.weight)). "
            "mcsim keeps layers it finds used this way digital; please report this model")

    # ------------------------------------------------------------------ programming a block of chips
    def _keys(self, stream: int) -> torch.Tensor:
        return rng.derive(self.ctx.seed, self.ctx.chips, self.key, stream)

    def _program_devices(self, error_free: bool):
        """Per device kind, programmed (and drifted) conductances ``(Tc, S, C_out, K)``."""
        hw, tc, dev = self.hw, len(self.ctx.chips), self.digital_weight.device
        out, g0_sum, gt_sum = {}, None, None
        for i, kind in enumerate(self.kinds):
            g = getattr(self, f"target_{kind}").expand(tc, -1, -1, -1)
            n = g[0].numel()
            if not error_free and (hw.error.model != "none" or hw.drift.time_s is not None):
                g = g.float()  # random errors dwarf float32 rounding; exact targets stay float64
            if not error_free and hw.error.model != "none":
                eps = rng.chip_normal(self._keys(_STREAM_PROGRAM + i), n, dev).view_as(g)
                g = devices.program(g, hw.error, eps, hw.gmin)
            if not error_free and hw.drift.time_s is not None:
                nu = hw.drift.nu_mean + hw.drift.nu_std * rng.chip_normal(self._keys(_STREAM_DRIFT + i), n, dev).view_as(g)
                g0 = g.sum((1, 2, 3), dtype=torch.float64)
                g = devices.drift(g, nu, hw.drift)
                gt = g.sum((1, 2, 3), dtype=torch.float64)
                g0_sum, gt_sum = (g0, gt) if g0_sum is None else (g0_sum + g0, gt_sum + gt)
            out[kind] = g
        # Global drift compensation: rescale by the total conductance lost (a one-shot reference read).
        alpha = (g0_sum / gt_sum).float() if hw.drift.compensate and gt_sum is not None else None
        return out, alpha

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

    @property
    def signed_inputs(self) -> bool:
        """Whether the DAC uses signed levels: calibrated, else signed (the one default, section 5)."""
        return True if self.signed is None else self.signed

    def _input_scale(self, serial: bool) -> float:
        """Inputs are fed to the crossbar as integer levels n (or 0/+-1 bit planes); v = n / n_max."""
        hw = self.hw
        if hw.input_bits is None or serial:
            return 1.0
        return float(dac.max_level(hw.input_bits, self.signed_inputs))

    def _program(self, p: Pass) -> Programmed:
        """Program the chips and fold every linear step after the matmul into their weights.

        split, real ADC: the conv outputs ADC codes ``(y - lo) / step`` (weights / step, bias -lo / step).
        split, calibrating: the conv outputs the raw column values y.
        folded: the conv outputs the layer's output before its bias (weights * unit * x_range).
        Weights are chip-major: chip c owns a contiguous block of output channels.
        """
        hw = self.hw
        g, alpha = self._program_devices(p.calibrating)
        var = None
        if not p.calibrating and hw.read_noise.model != "none":
            var = sum(devices.read_variance(x, hw.read_noise) for x in g.values())
        circuit = self._circuits(g) if p.gated else None
        if hw.parasitics.rp > 0 and not p.gated:
            g = self._effective({k: self.part.split(x) for k, x in g.items()})
            if not p.split:
                g = {k: self.part.merge(x) for k, x in g.items()}
        w = g["pos"] - g["neg"] if hw.mapping == "differential" else g["one"]
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
            self._slice_codes(p) if p.gated else None,
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
        """Arrays ``(Tc, g, P, S, N_g, Cp, kh, kw)`` scaled to emit ADC codes (or raw y when calibrating)."""
        geo, tc = self.geom, len(self.ctx.chips)

        def arrange(t, per_slice):  # (Tc, S, [g, P, N_g, Cp, kh, kw]) -> (Tc, g, P, S, N_g, Cp, kh, kw)
            t = t.float() if t.dim() == 8 else self.part.split(t.float())  # ADC steps dwarf float32 rounding
            return t.permute(0, 2, 3, 1, 4, 5, 6, 7) * per_slice.view(-1, 1, 1, 1, 1).to(t)

        cs, code_shift = self._slice_codes(p)
        bias = None
        if code_shift is not None:
            bias = code_shift.view(-1, 1).expand(-1, geo.ng).reshape(1, -1).expand(tc * geo.groups * self.part.parts, -1)
        return arrange(w, cs), (arrange(var, cs**2) if var is not None else None), bias

    def _slice_codes(self, p: Pass) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Per slice, ``code = scale * y_in + shift`` (float64, (S,)), ``y_in`` a column output for the
        rows' drive (levels or bit planes): ADC codes before rounding, or raw column values (shift
        None) when calibrating or with an ideal ADC."""
        cs = torch.full((self.n_slices,), 1 / self._input_scale(p.planes), dtype=torch.float64)
        if p.calibrating or self.hw.adc.bits is None:
            return cs, None
        code_scale, code_shift = adc.code_transform(*self._adc_limits(), self.hw.adc.bits)
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

    # ------------------------------------------------------------------ forward
    def _digital(self, x):
        if self.linear:
            return F.linear(x, self.digital_weight[:, :, 0, 0], self.bias)
        return F.conv2d(x, self.digital_weight, self.bias, groups=self.geom.groups, **self.conv_args)

    def _record(self, name: str, values: np.ndarray):
        self._samples.setdefault(name, []).append(values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.ctx.mode
        if mode in ("probe", "calibrate_inputs"):
            if mode == "calibrate_inputs":
                self._record("x_min", np.array([x.min().item()]))
                self._record("x_abs", _subsample(x.abs()))
            return self._probe(x)
        lead = x.shape[:-1]
        tokens = 1
        if self.linear:  # tokens of a (batch, tokens, features) input are rows of their own
            tokens = math.prod(lead[1:])
            x = x.reshape(-1, self.geom.c_in, 1, 1)
        y = self._analog(x, tokens)
        return y.reshape(*lead, self.geom.c_out) if self.linear else y

    def _probe(self, x: torch.Tensor) -> torch.Tensor:
        """The digital output, noting the peak elements per (image, chip) an analog pass would hold."""
        y = self._digital(x)
        split = self.hw.adc.bits is not None or self._gated()
        nb = dac.n_serial_bits(self.hw.input_bits, True) + 1 if self.hw.input_mode == "bitserial" else 1
        expand = (self.part.parts * self.part.cp / self.geom.cg if split else 1) * nb
        out_expand = (self.part.parts * (self.n_slices + 1) if split else 1) * nb
        self.probe_elements = max(self.probe_elements, int(x[0].numel() * expand + y[0].numel() * out_expand))
        return y

    def _gated(self) -> bool:
        """Gated rows with resistive wires (section 8); at rp = 0 the plain path is exact."""
        return self.hw.gated_rows and self.hw.parasitics.rp > 0

    def _pass(self) -> Pass:
        hw = self.hw
        calibrating = self.ctx.mode == "calibrate_adc"
        gated = self._gated()
        split = hw.adc.bits is not None or calibrating or gated  # gated bits never fold
        bitserial = hw.input_mode == "bitserial"
        serial = split and bitserial and hw.input_accumulation == "digital"
        return Pass(split, serial, bitserial, calibrating, self.signed_inputs, gated)

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
                k, plane_weights = self._columns(u, u2, prog), bit_weights
            z = self._recombine(self._digitize(k, p), plane_weights)
            if prog.alpha is not None:  # drift compensation rescales the analog outputs (section 4)
                z.mul_(prog.alpha.to(z.dtype).view(1, -1, 1, 1, 1, 1))
            if self.hw.mapping == "offset":
                z.sub_(self._offset_term(u, bit_weights, p))
            z.mul_(self.unit * (self.x_range or 1.0))
        # z (r, Tc, g, N_g, H', W') is already the network's image-major layout; tokens go back behind the chip.
        bias = self.bias.view(self.geom.groups, self.geom.ng, 1, 1)
        if tokens == 1 and z.is_contiguous():
            return z.add_(bias).view(-1, self.geom.c_out, *z.shape[-2:])
        zt = z.view(-1, tokens, *z.shape[1:]).transpose(1, 2)  # (B, Tc, tokens, g, N_g, H', W')
        return torch.add(zt, bias, out=z.new_empty(zt.shape)).view(-1, self.geom.c_out, *z.shape[-2:])

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

    def _input_planes(self, n: torch.Tensor, p: Pass) -> tuple[torch.Tensor, list[float]]:
        """What drives the rows, ``(nb, Tc, r, C, H, W)``, and each plane's weight in the recombination:
        one bit plane per MVM when bits are digitized apart (``sum_k 2**k y_k / n_max``), else the levels."""
        if not p.planes:
            return n.unsqueeze(0), [1.0]
        u = dac.bit_planes(n, self.hw.input_bits, p.signed)
        n_max = dac.max_level(self.hw.input_bits, p.signed)
        return u, [2.0**k / n_max for k in range(u.shape[0])]

    def _noise_planes(self, n: torch.Tensor, u: torch.Tensor, p: Pass) -> torch.Tensor:
        """``v**2`` per plane for the read-noise variance; with analog accumulation of bit-serial inputs
        each bit is its own read, so the bits' variances add with weights ``4**k`` (gated rows, whose
        planes are bits: ``(2**k / n_max)**2``)."""
        if p.gated and not p.serial:
            n_max = dac.max_level(self.hw.input_bits, p.signed)
            w2 = torch.tensor([(2.0**k / n_max) ** 2 for k in range(u.shape[0])], dtype=u.dtype, device=u.device)
            return (u**2 * w2.view(-1, *[1] * (u.dim() - 1))).sum(0, keepdim=True)
        if not (p.bitserial and not p.serial):
            return u**2
        planes = dac.bit_planes(n, self.hw.input_bits, p.signed)
        w4 = torch.tensor([4.0**k for k in range(planes.shape[0])], dtype=n.dtype, device=n.device)
        return ((planes**2) * w4.view(-1, *[1] * (planes.dim() - 1))).sum(0, keepdim=True)

    def _grouped_conv(self, inp: torch.Tensor, weight: Weight, bias: Optional[torch.Tensor],
                      chips: int, groups_per_chip: int) -> torch.Tensor:
        """:func:`mcsim.engine.conv.grouped_conv` with this layer's stride, padding and dilation."""
        return grouped_conv(inp, weight, bias, chips, groups_per_chip, self.conv_args)

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

    def _columns(self, u: torch.Tensor, u2: Optional[torch.Tensor], prog: Programmed) -> torch.Tensor:
        """Every column of every array, per input plane: ``(nb, r, Tc, g, P, S, N_g, H', W')`` ADC codes
        before rounding (raw outputs when calibrating), with read noise (section 4)."""
        geo, part = self.geom, self.part
        nb, tc, r = u.shape[:3]

        def run(planes, weight, bias=None):  # (nb, Tc, r, C, H, W) -> (nb * r, Tc * g * P * Cp, H, W)
            inp = part.gather_inputs(planes).permute(0, 2, 1, 3, 4, 5, 6, 7).flatten(0, 1).flatten(1, 4)
            return self._grouped_conv(inp, weight, bias, tc, geo.groups * part.parts)

        k = run(u, prog.weight, prog.bias)
        k = k.view(nb, r, tc, geo.groups, part.parts, self.n_slices, geo.ng, *k.shape[-2:])
        if u2 is not None:
            var = run(u2, prog.var).view_as(k)
            k += var.sqrt_().mul_(self._read_noise(nb, r, var[0, 0, 0].numel()).view_as(var))
        return k

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
        k = u.new_empty(planes, r, tc, geo.groups, part.parts, self.n_slices, geo.ng, hp, wp)
        per_image = nb * hp * wp * geo.groups * part.parts * (12 * part.cp * geo.taps + 24 * prog.circuit.shape[-1])
        chunk = max(1, _GATED_CHUNK_BYTES // per_image)
        for c in range(tc):
            g = prog.circuit[c].to(self._gated_dtype(p))  # (g, P, rows, kinds * S * N_g)
            for r0 in range(0, r, chunk):
                y = self._gated_codes(u[:, c, r0 : r0 + chunk], g, bit_weights, prog, p)
                k[:, r0 : r0 + chunk, c] = y.view(*y.shape[:-1], hp, wp)
        if u2 is not None:
            inp = part.gather_inputs(u2).permute(0, 2, 1, 3, 4, 5, 6, 7).flatten(0, 1).flatten(1, 4)
            var = self._grouped_conv(inp, prog.var, None, tc, geo.groups * part.parts).view_as(k)
            k += var.sqrt_().mul_(self._read_noise(planes, r, var[0, 0, 0].numel()).view_as(var))
        return k, (bit_weights if p.serial else [1.0])

    def _gated_codes(self, bits: torch.Tensor, g: torch.Tensor, bit_weights: list[float], prog: Programmed,
                     p: Pass) -> torch.Tensor:
        """One chip's bit planes ``(nb, rc, C, H, W)`` through its circuits ``g (g, P, rows, cols)``:
        codes (or raw outputs) ``(nb', rc, g, P, S, N_g, H' * W')`` in the layer's dtype. Elementwise
        steps are single roundings (no fused multiply-add), so a value never depends on the chunk."""
        geo, part = self.geom, self.part
        nb, rc = bits.shape[:2]
        inp = part.gather_inputs(bits.flatten(0, 1))  # (nb * rc, g, P, Cp, H, W)
        patches = F.unfold(inp.flatten(0, 2), geo.kernel, **self.conv_args).to(torch.int8)  # (nb rc g P, Cp kh kw, L)
        patches = patches.view(nb * rc, geo.groups, part.parts, *patches.shape[-2:])
        order = part.row_order.view(1, 1, part.parts, -1, 1).expand_as(patches)
        vec = torch.gather(patches, 3, order).permute(1, 2, 0, 4, 3)  # (g, P, nb rc, L, rows), physical order
        length = vec.shape[3]
        cur = parasitics.gated_column_currents(g.unsqueeze(2), vec.flatten(2, 3), self.hw.parasitics.rp,
                                               signed=p.signed, compute_dtype=g.dtype)
        cur = cur.view(geo.groups, part.parts, nb, rc, length, len(self.kinds), self.n_slices, geo.ng).double()
        y = cur[..., 0, :, :] - cur[..., 1, :, :] if self.hw.mapping == "differential" else cur[..., 0, :, :]
        if not p.serial:  # analog accumulation: sum_k 2**k / n_max * I_k, bit by bit in a fixed order
            acc = y[:, :, 0] * bit_weights[0]
            for b in range(1, nb):
                acc += y[:, :, b] * bit_weights[b]
            y = acc.unsqueeze(2)
        scale, shift = prog.codes
        y = y * scale.to(y.device).view(-1, 1)
        if shift is not None:
            y += shift.to(y.device).view(-1, 1)
        return y.permute(2, 3, 0, 1, 5, 6, 4).to(self.digital_weight.dtype)  # (nb', rc, g, P, S, N_g, L)

    def _gated_dtype(self, p: Pass) -> torch.dtype:
        digitized = self.hw.adc.bits is not None and not p.calibrating
        return _GATED_DTYPE_DIGITIZED if digitized else _GATED_DTYPE

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        """Output spatial size of the conv on an ``h x w`` input."""
        a = self.conv_args
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
        (sh, sw), (ph, pw), (dh, dw) = pair(a["stride"]), pair(a["padding"]), pair(a["dilation"])
        kh, kw = self.geom.kernel
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def _digitize(self, k: torch.Tensor, p: Pass) -> tuple[torch.Tensor, list[float], list[float]]:
        """Section 7, in place: ADC codes, with each slice's ``(step, lo)`` to read them back. When
        calibrating, records the raw outputs instead and reads them back as they are."""
        if p.calibrating or self.hw.adc.bits is None:  # ideal ADC: only gated rows split without one
            if p.calibrating:
                for s in range(self.n_slices):
                    self._record(f"adc_{s}", _subsample(k[:, :, :, :, :, s]))
            return k, [1.0] * self.n_slices, [0.0] * self.n_slices
        adc.codes_(k, self.hw.adc.bits)
        lo, hi = self._adc_limits()
        return k, ((hi - lo) / (2**self.hw.adc.bits - 1)).tolist(), lo.tolist()

    def _recombine(self, digitized, bit_weights: list[float]) -> torch.Tensor:
        """``z = sum over planes b, partitions p, slices s of w_b c_s (lo_s + step_s code)``, in recombined
        digits (sections 3, 5, 6), summed in a fixed order: ``(r, Tc, g, N_g, H', W')``."""
        k, step, lo = digitized
        coef = self.coef.tolist()
        offset = sum(bit_weights) * self.part.parts * sum(c * l for c, l in zip(coef, lo))
        nb = k.shape[0]
        if nb > 1 and self.hw.adc.bits is not None and self.hw.adc.bits + nb <= 24 and self.ctx.mode == "run":
            # Integer codes: sum_b 2**b code_b is exact in float32 whatever the summation order, so one
            # matrix-vector product over the bits replaces nb passes (bit weights are 2**b / n_max).
            powers = torch.tensor([2.0**b for b in range(nb)], dtype=k.dtype, device=k.device)
            k = torch.matmul(powers, k.reshape(nb, -1)).view(1, *k.shape[1:])  # k may be a strided view
            bit_weights = bit_weights[:1]
        terms = [(b, q, s) for b in range(len(bit_weights)) for q in range(self.part.parts) for s in range(self.n_slices)]
        z = None
        for b, q, s in terms:
            f = bit_weights[b] * coef[s] * step[s]
            if z is None:  # k is this layer's own buffer: scale the only term in place
                z = k[b, :, :, :, q, s].mul_(f) if len(terms) == 1 else k[b, :, :, :, q, s] * f
            else:
                z.add_(k[b, :, :, :, q, s], alpha=f)
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
        w = torch.tensor(bit_weights, dtype=u.dtype, device=u.device).view(-1, 1, 1, 1, 1, 1)
        return ((sv * w).sum(0) * (self.offset / self._input_scale(p.planes))).unsqueeze(3)

    def _read_noise(self, nb: int, r: int, n: int) -> torch.Tensor:
        """Read-noise normals ``(nb, r, Tc, n)``, streams keyed by chip, image, token and input bit."""
        ids = self.ctx.image_ids
        tokens = r // len(ids)  # a Linear fed (batch, tokens, features): each token is its own read
        dev = self.ctx.chips.device
        keys = rng.derive(
            self.ctx.seed,
            self.ctx.chips.view(1, 1, -1),
            self.key,
            _STREAM_READ,
            ids.to(dev).repeat_interleave(tokens).view(1, -1, 1),
            torch.arange(tokens, device=dev).repeat(len(ids)).view(1, -1, 1),
            torch.arange(nb, device=dev).view(-1, 1, 1),
        )
        return rng.normal(keys, n, self.digital_weight.dtype)

    def _adc_limits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-slice ADC range ``(lo, hi)`` (float64, shape (S,)) in units of one Gmax device at full input."""
        hw = self.hw
        if hw.adc.range == "max":
            lo, hi = adc.full_range(self.part.rows_per_array, self.signed_inputs, hw.mapping, hw.gmin)
            lo, hi = [lo] * self.n_slices, [hi] * self.n_slices
        elif hw.adc.range == "explicit":
            lo, hi = [hw.adc.limits[0]] * self.n_slices, [hw.adc.limits[1]] * self.n_slices
        elif self.adc_range is None:
            raise RuntimeError("the ADC range is calibrated: call .calibrate() (or load a calibration) first")
        else:
            lo, hi = self.adc_range
        return torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)

    # ------------------------------------------------------------------ calibration state
    def finish_input_calibration(self):
        s = self._samples
        self.signed = bool(min(v[0] for v in s.pop("x_min")) < 0)
        a = np.concatenate(s.pop("x_abs"))
        self.x_range = float(np.percentile(a, self.hw.input_percentile)) or float(a.max()) or 1.0

    def finish_adc_calibration(self):
        lo, hi = [], []
        for k in range(self.n_slices):
            l, h = adc.percentile_range(np.concatenate(self._samples.pop(f"adc_{k}")), self.hw.adc.percentile)
            if self.hw.adc.grid:
                l, h = adc.grid_range(l, h, self.grid_unit(), self.hw.adc.bits)
            lo.append(l)
            hi.append(h)
        if self.hw.adc.slice_ranges == "power_of_two":  # aligned ranges stay aligned divided by 2**m
            lo, hi = power_of_two_ranges(lo, hi)
        self.adc_range = (lo, hi)

    def grid_unit(self) -> float:
        """Spacing of the column outputs an ADC sees (section 7, ``adc.grid``): one weight digit,
        ``(1 - Gmin) / L``, times one input step (a bit plane drives 0/+-1, levels n / n_max).
        With Gmin > 0 the outputs also hold Gmin times an integer, off this grid."""
        hw = self.hw
        if hw.weight_bits is None or hw.input_bits is None:
            raise ValueError("adc.grid: needs quantized weights and inputs (weight_bits and input_bits set)")
        digit = (1 - hw.gmin) / mapping.SliceLayout.of(hw).levels
        return digit / self._input_scale(self._pass().planes)

    def clear_calibration_samples(self):
        """Drop the samples a calibration pass recorded (a layer whose ADC needs no calibrated range)."""
        self._samples.clear()

    def calibration_state(self) -> dict:
        return {"x_range": self.x_range, "signed": self.signed, "adc_range": self.adc_range}

    def load_calibration_state(self, state: dict):
        self.x_range, self.signed = state["x_range"], state["signed"]
        self.adc_range = tuple(state["adc_range"]) if state["adc_range"] is not None else None
        self.clear_cache()
