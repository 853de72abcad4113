"""The analog layer: one Conv2d or Linear evaluated for a block of chips at once.

Activations carry the chips in the batch dim, ``(Tc * B, ...)`` chip-major. A layer programs each
chip's devices (MODEL.md sections 2-4, 8), then runs every chip, array partition and weight slice
as one grouped convolution (a Linear is a 1x1 conv):

* **split** structure (a real ADC, or ADC calibration): output channels per (chip, group,
  partition) are ``(slice, column)``; each column output is digitized on its own (section 7), per
  input bit when inputs are bit-serial with digital accumulation (section 5), then recombined.
* **folded** structure (an ideal ADC): partitions, slices, input bits and the offset mapping's
  ``G_zero * sum(x)`` are linear, so they are folded into one effective weight per chip before the
  matmul: one convolution, no cancellation of large terms in float32 (MODEL.md section 10).

Read noise is drawn in output space: a column's noise variance is ``sum_j v_j**2 var(dG_j)``
(section 4), one extra convolution of ``v**2`` with the per-device variances.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mcsim.engine import rng
from mcsim.engine.arrays import Geometry, Partitioning
from mcsim.hardware import Hardware
from mcsim.physics import adc, dac, devices, mapping, parasitics

_SAMPLES_PER_BATCH = 2**18  # calibration values kept per layer and batch (strided subsample)
_STREAM_PROGRAM, _STREAM_DRIFT, _STREAM_READ = 1, 11, 101


@dataclass
class Context:
    """What the converted model tells its layers about the current pass."""

    seed: int = 0
    chips: Optional[torch.Tensor] = None  # (Tc,) global chip indices
    image_ids: Optional[torch.Tensor] = None  # (B,) global image indices (read-noise streams)
    mode: str = "run"  # run | probe | calibrate_inputs | calibrate_adc
    cache: bool = True  # keep programmed chips between forward calls


@dataclass
class Programmed:
    """One block of chips of one layer, ready to run."""

    weight: torch.Tensor  # conv weight, chips folded into the output channels
    var: Optional[torch.Tensor]  # read-noise variances, same layout (None: no read noise)
    alpha: Optional[torch.Tensor]  # (Tc,) drift compensation factors
    bias: Optional[torch.Tensor] = None  # conv bias (ADC code shift, or the layer's bias when folded)


def _subsample(t: torch.Tensor) -> np.ndarray:
    flat = t.detach().flatten()
    return flat[:: max(1, flat.numel() // _SAMPLES_PER_BATCH)].double().cpu().numpy()


class AnalogLayer(nn.Module):
    def __init__(self, module: nn.Conv2d | nn.Linear, hw: Hardware, layer_id: int, ctx: Context):
        super().__init__()
        self.hw, self.layer_id, self.ctx = hw, layer_id, ctx
        w = module.weight.detach()
        self.linear = isinstance(module, nn.Linear)
        if self.linear:
            w = w[:, :, None, None]
            self.conv_args = dict(stride=1, padding=0, dilation=1)
            groups = 1
        else:
            if module.padding_mode != "zeros":
                raise ValueError(f"layer {layer_id}: padding_mode {module.padding_mode!r} is not supported")
            self.conv_args = dict(stride=module.stride, padding=module.padding, dilation=module.dilation)
            groups = module.groups
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

    # ------------------------------------------------------------------ programming a block of chips
    def _keys(self, stream: int) -> torch.Tensor:
        return rng.derive(self.ctx.seed, self.ctx.chips, self.layer_id, stream)

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

    def _input_scale(self, serial: bool) -> float:
        """Inputs are fed to the crossbar as integer levels n (or 0/+-1 bit planes); v = n / n_max."""
        hw = self.hw
        if hw.input_bits is None or serial:
            return 1.0
        return float(dac.max_level(hw.input_bits, True if self.signed is None else self.signed))

    def _program(self, split: bool, serial: bool) -> Programmed:
        """Program the chips and fold every linear step after the matmul into its weights.

        split, real ADC: the conv outputs ADC codes ``(y - lo) / step`` (weights / step, bias -lo / step).
        split, calibrating: the conv outputs the raw column values y.
        folded: the conv outputs the layer's final output (weights * unit * x_range, the layer's bias).
        """
        hw, geo = self.hw, self.geom
        error_free = self.ctx.mode == "calibrate_adc"
        g, alpha = self._program_devices(error_free)
        var = None
        if not error_free and hw.read_noise.model != "none":
            var = sum(devices.read_variance(x, hw.read_noise) for x in g.values())
        if hw.parasitics.rp > 0:
            g = self._effective({k: self.part.split(x) for k, x in g.items()})
            if not split:
                g = {k: self.part.merge(x) for k, x in g.items()}
        w = g["pos"] - g["neg"] if hw.mapping == "differential" else g["one"]
        tc, dtype, scale_in = len(self.ctx.chips), self.digital_weight.dtype, self._input_scale(serial)
        bias = None
        if split:  # (Tc, S, [g, P, N_g, Cp, kh, kw]) -> (Tc, g, P, S, N_g, Cp, kh, kw)
            def arrange(t, per_slice):
                t = t.float() if t.dim() == 8 else self.part.split(t.float())  # ADC steps dwarf float32 rounding
                t = t.permute(0, 2, 3, 1, 4, 5, 6, 7)
                return t * per_slice.view(-1, 1, 1, 1, 1).to(t)

            cs = torch.full((self.n_slices,), 1 / scale_in, dtype=torch.float64)
            if not error_free and hw.adc.bits is not None:
                code_scale, code_shift = adc.code_transform(*self._adc_limits(), hw.adc.bits)
                cs = cs * code_scale
                bias = code_shift.view(-1, 1).expand(-1, geo.ng).reshape(1, -1).expand(tc * geo.groups * self.part.parts, -1)
            w = arrange(w, cs)
            var = arrange(var, cs**2) if var is not None else None
        else:  # fold slices, the offset term and the output scale: (Tc, C_out, K), float64 when exact (section 10)
            c = self.coef.to(w.dtype).view(1, -1, 1, 1)
            out_scale = self.unit * (self.x_range or 1.0) / scale_in
            w = ((w * c).sum(1) - self.offset) * out_scale
            var = (var * c**2).sum(1) * out_scale**2 if var is not None else None
            if alpha is not None:  # drift compensation scales each chip's output
                w = w * alpha.view(-1, 1, 1).to(w.dtype)
                var = var * alpha.view(-1, 1, 1).to(var.dtype) ** 2 if var is not None else None
            bias = self.bias.expand(tc, -1)
        shape = (-1, self.part.cp if split else geo.cg, *geo.kernel)
        return Programmed(
            w.reshape(shape).to(dtype),
            var.reshape(shape).to(dtype) if var is not None else None,
            alpha,
            bias.reshape(-1).to(dtype) if bias is not None else None,
        )

    def _programmed(self, split: bool, serial: bool) -> Programmed:
        key = (split, serial, self.ctx.mode, tuple(self.ctx.chips.tolist()))
        if key in self._cache:
            return self._cache[key]
        p = self._program(split, serial)
        if self.ctx.cache and self.ctx.mode == "run":
            self._cache[key] = p
        return p

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
            y = self._digital(x)
            split = self.hw.adc.bits is not None
            nb = dac.n_serial_bits(self.hw.input_bits, True) + 1 if self.hw.input_mode == "bitserial" else 1
            expand = (self.part.parts * self.part.cp / self.geom.cg if split else 1) * nb
            out_expand = (self.part.parts * (self.n_slices + 1) if split else 1) * nb
            self.probe_elements = max(self.probe_elements, int(x[0].numel() * expand + y[0].numel() * out_expand))
            return y
        lead = x.shape[:-1]
        if self.linear:
            x = x.reshape(-1, self.geom.c_in, 1, 1)
        y = self._analog(x)
        return y.reshape(*lead, self.geom.c_out) if self.linear else y

    def _analog(self, x: torch.Tensor) -> torch.Tensor:
        hw, geo, part, ctx = self.hw, self.geom, self.part, self.ctx
        calibrating = ctx.mode == "calibrate_adc"
        if hw.input_bits is not None and self.x_range is None:
            raise RuntimeError("this converted model quantizes inputs: call .calibrate() (or load a calibration) first")
        tc = len(ctx.chips)
        r = x.shape[0] // tc
        signed = True if self.signed is None else self.signed
        # Our own copy of the inputs (always a copy: x may feed a residual branch), already in the grouped
        # conv's (image, chip) memory order, so that quantizing in place and laying out cost one pass.
        x5 = x.new_empty(r, tc, *x.shape[1:]).transpose(0, 1)
        x5.copy_(x.view(tc, r, *x.shape[1:]))
        n = dac.levels_(x5, self.x_range or 1.0, hw.input_bits, signed)
        split = hw.adc.bits is not None or calibrating
        bitserial = hw.input_mode == "bitserial"
        serial = split and bitserial and hw.input_accumulation == "digital"
        prog = self._programmed(split, serial)
        n_max = dac.max_level(hw.input_bits, signed) if hw.input_bits is not None else 1
        if serial:  # one MVM per input bit, recombined digitally as sum_k 2**k y_k / n_max
            u = dac.bit_planes(n, hw.input_bits, signed)
            bit_weights = [2.0**k / n_max for k in range(u.shape[0])]
        else:
            u, bit_weights = n.unsqueeze(0), [1.0]
        u2 = None
        if prog.var is not None:
            if bitserial and not serial:  # analog accumulation: the bits' noises add with weights 4**k
                planes = dac.bit_planes(n, hw.input_bits, signed)
                w4 = torch.tensor([4.0**k for k in range(planes.shape[0])], dtype=x.dtype, device=x.device)
                u2 = ((planes**2) * w4.view(-1, *[1] * (planes.dim() - 1))).sum(0, keepdim=True)
            else:
                u2 = u**2
        nb = u.shape[0]

        if not split:  # folded: the conv gives the layer's output
            def layout(t):
                return t[0].transpose(0, 1).flatten(1, 2)

            out = F.conv2d(layout(u), prog.weight, prog.bias, groups=tc * geo.groups, **self.conv_args)
            h_out = out.shape[-2:]
            out = out.view(r, tc, geo.groups, geo.ng, *h_out)
            if u2 is not None:
                var = F.conv2d(layout(u2), prog.var, None, groups=tc * geo.groups, **self.conv_args).view_as(out)
                out = out + var.sqrt() * self._read_noise(1, r, var[0, 0].numel()).view_as(var)
            return out.transpose(0, 1).reshape(tc * r, geo.c_out, *h_out)

        groups = tc * geo.groups * part.parts

        def run(inp, weight, bias=None):
            inp = part.gather_inputs(inp).permute(0, 2, 1, 3, 4, 5, 6, 7).flatten(0, 1).flatten(1, 4)
            return F.conv2d(inp, weight, bias, groups=groups, **self.conv_args)

        k = run(u, prog.weight, prog.bias)  # ADC codes before rounding (raw y when calibrating)
        h_out = k.shape[-2:]
        k = k.view(nb, r, tc, geo.groups, part.parts, self.n_slices, geo.ng, *h_out)
        if u2 is not None:
            var = run(u2, prog.var).view_as(k)
            k = k + var.sqrt() * self._read_noise(nb, r, var[0, 0, 0].numel()).view_as(var)
        coef = self.coef.tolist()
        if calibrating:
            for s in range(self.n_slices):
                self._record(f"adc_{s}", _subsample(k[:, :, :, :, :, s]))
            step, lo = [1.0] * self.n_slices, [0.0] * self.n_slices
        else:
            adc.codes_(k, hw.adc.bits)
            lo_t, hi_t = self._adc_limits()
            lo = lo_t.tolist()
            step = ((hi_t - lo_t) / (2**hw.adc.bits - 1)).tolist()
        # z = sum over bits, partitions and slices of w_bit * c_s * (lo_s + step_s * code), in recombined digits
        z = None
        for b in range(nb):
            for p in range(part.parts):
                for s in range(self.n_slices):
                    f = bit_weights[b] * coef[s] * step[s]
                    if z is None:  # k is this layer's own buffer: scale the first term in place
                        z = k[b, :, :, :, p, s].mul_(f) if nb * part.parts * self.n_slices == 1 else k[b, :, :, :, p, s] * f
                    else:
                        z.add_(k[b, :, :, :, p, s], alpha=f)
        z.add_(sum(bit_weights) * part.parts * sum(c * l for c, l in zip(coef, lo)))
        if hw.mapping == "offset":  # digital subtraction of G_zero * sum(v), per bit like the outputs
            ones = (part.mask.to(x.dtype) / self._input_scale(serial)).unsqueeze(0).expand(tc * geo.groups, -1, -1, -1, -1)
            sv = run(u, ones.flatten(0, 1)).view(nb, r, tc, geo.groups, part.parts, *h_out).sum(4)
            sv = (sv * torch.tensor(bit_weights, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1, 1, 1)).sum(0)
            z.sub_(self.offset * sv.unsqueeze(3))
        if prog.alpha is not None:
            z.mul_(prog.alpha.to(z.dtype).view(1, -1, 1, 1, 1, 1))
        z.mul_(self.unit * (self.x_range or 1.0)).add_(self.bias.view(geo.groups, geo.ng, 1, 1))
        return z.transpose(0, 1).reshape(tc * r, geo.c_out, *h_out)

    def _read_noise(self, nb: int, r: int, n: int) -> torch.Tensor:
        """Read-noise normals (nb, r, Tc, n), streams keyed by chip, image and input bit."""
        ids = self.ctx.image_ids
        img = ids.repeat_interleave(r // len(ids)) if ids is not None else torch.arange(r)
        dev = self.ctx.chips.device
        keys = rng.derive(
            self.ctx.seed,
            self.ctx.chips.view(1, 1, -1),
            self.layer_id,
            _STREAM_READ,
            img.to(dev).view(1, -1, 1),
            torch.arange(nb, device=dev).view(-1, 1, 1),
        )
        return rng.normal(keys, n, self.digital_weight.dtype)

    def _adc_limits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-slice ADC range ``(lo, hi)`` (float64, shape (S,)) in units of one Gmax device at full input."""
        hw = self.hw
        if hw.adc.range == "max":
            lo, hi = adc.full_range(self.part.rows_per_array, bool(self.signed), hw.mapping, hw.gmin)
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
            lo.append(l)
            hi.append(h)
        self.adc_range = (lo, hi)

    def calibration_state(self) -> dict:
        return {"x_range": self.x_range, "signed": self.signed, "adc_range": self.adc_range}

    def load_calibration_state(self, state: dict):
        self.x_range, self.signed = state["x_range"], state["signed"]
        self.adc_range = tuple(state["adc_range"]) if state["adc_range"] is not None else None
        self.clear_cache()
