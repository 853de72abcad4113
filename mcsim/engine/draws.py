"""Every per-chip random draw of an analog layer, keyed as docs/physics.md section 9 asks.

:func:`program_devices` programs a block of chips in the order a fab would: the cell's programming
error (section 4, or a measured table or the user's function, section 13.1-13.2), the correlated chip,
array and column components (13.4), clipping, stuck devices (13.3), then drift to the read time
(sections 4 and 13.5). :func:`adc_mismatch` draws each ADC's offset and gain (13.6),
:func:`read_noise` the normals of every read (read and comparator noise).

Keys: ``rng.derive(seed, chip, layer_key, stream)`` with one stream per quantity and device kind;
the chip component leaves out the layer key (one draw per chip for all its layers). Every draw
depends on its chip's key alone, so a chip is the same chip in any block of chips.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from mcsim.engine import rng
from mcsim.engine.arrays import Partitioning
from mcsim.hardware import Hardware
from mcsim.physics import devices, faults, variation

# Streams (kind i adds i where a stream is per device kind). Values are fixed: they key existing chips.
_STREAM_PROGRAM, _STREAM_DRIFT, _STREAM_READ = 1, 11, 101
_STREAM_FAULTS = 21
_STREAM_CHIP, _STREAM_ARRAY, _STREAM_COLUMN = 31, 32, 41
_STREAM_ADC_GAIN, _STREAM_ADC_OFFSET = 51, 52
_STREAM_READ_STEP = 61  # read noise of a recurrent layer's per-step matmuls (section 17)
# A reference column's devices (section 15): programming, stuck devices, drift.
_STREAM_REF_PROGRAM, _STREAM_REF_FAULTS, _STREAM_REF_DRIFT = 71, 72, 73


def partition_rows(part: Partitioning) -> list[slice]:
    """The rows of a group's ``K`` each partition (array) holds: near-equal contiguous ranges, in
    order (section 6)."""
    geom, taps = part.geom, part.geom.taps
    chans, mask = part.chans.cpu(), part.mask.cpu()
    owner = torch.empty(geom.rows, dtype=torch.int64)
    for p in range(part.parts):
        owned = (chans[p] < geom.cg).view(-1, 1) & mask[p].flatten(1).bool()  # (Cp, taps)
        rows = chans[p].view(-1, 1) * taps + torch.arange(taps)
        owner[rows[owned]] = p
    counts = torch.bincount(owner, minlength=part.parts)
    assert torch.equal(owner, torch.repeat_interleave(torch.arange(part.parts), counts)), "partitions not contiguous"
    ends = counts.cumsum(0).tolist()
    return [slice(end - n, end) for end, n in zip(ends, counts.tolist())]


def _array_columns(hw: Hardware, part: Partitioning, kinds: int) -> tuple[torch.Tensor, int]:
    """Per (output column, kind), ``(C_out, kinds)``, the array (column block) holding the column within
    its (slice, group, partition) when ``cols_max`` splits a group's columns, and the block count. A
    group's columns sit as in the grid circuit of section 8: output-major, the devices of a
    differential pair side by side."""
    ng, groups = part.geom.ng, part.geom.groups
    width = hw.cols_max or ng * kinds
    col = torch.arange(ng).view(-1, 1) * kinds + torch.arange(kinds)  # (N_g, kinds)
    return (col // width).repeat(groups, 1), math.ceil(ng * kinds / width)


def variation_factors(hw: Hardware, seed: int, chips: torch.Tensor, layer_key: int, part: Partitioning,
                      slices: int, kinds: int, device) -> list[Optional[torch.Tensor]]:
    """Per device kind, the factor of section 13.4 of every array column, float64 ``(Tc, S, C_out, P)``
    (``(Tc, 1, 1, 1)`` with the chip component alone; a group's rows read their partition's column,
    :func:`partition_rows`), or None per kind when no component is set. Normals: the chip's one per
    chip (keyed without the layer); the array's one per (slice, group, partition, column block),
    shared by both devices of a differential pair; the column's one per physical column (kind,
    slice, output column, partition)."""
    v, tc, geom = hw.variation, len(chips), part.geom
    if not v.active:
        return [None] * kinds
    e_chip = e_array = None
    if v.chip > 0:
        e_chip = rng.normal(rng.derive(seed, chips, _STREAM_CHIP), 1, torch.float64).view(tc, 1, 1, 1)
    if v.array > 0:
        blocks, nb = _array_columns(hw, part, kinds)
        e = rng.normal(rng.derive(seed, chips, layer_key, _STREAM_ARRAY), slices * geom.groups * part.parts * nb,
                       torch.float64).view(tc, slices, geom.groups, part.parts, nb)
        group = torch.arange(geom.c_out) // geom.ng
        e_array = [e[:, :, group.view(-1, 1), torch.arange(part.parts).view(1, -1), blocks[:, i].view(-1, 1)]
                   for i in range(kinds)]  # (Tc, S, C_out, P)
    out = []
    for i in range(kinds):
        e_col = (rng.normal(rng.derive(seed, chips, layer_key, _STREAM_COLUMN + i), slices * geom.c_out * part.parts,
                            torch.float64).view(tc, slices, geom.c_out, part.parts) if v.column > 0 else None)
        out.append(variation.factor(v, e_chip, e_array[i] if e_array else None, e_col).to(device))
    return out


def program_devices(hw: Hardware, targets: dict[str, torch.Tensor], seed: int, chips: torch.Tensor,
                    layer_key: int, part: Partitioning, error_free: bool, reference: bool = False
                    ) -> tuple[dict[str, torch.Tensor], Optional[torch.Tensor]]:
    """Per device kind ('pos'/'neg' or 'one', in the layer's order), programmed (and drifted)
    conductances ``(Tc, S, C_out, K)``; and the global drift compensation factors alpha ``(Tc,)`` or None.

    ``targets[kind]`` is the exact float64 ``(S, C_out, K)`` target of that kind, ``chips`` the
    ``(Tc,)`` global chip indices, ``layer_key = rng.name_key(module name)``, ``part`` the layer's
    partitioning. ``error_free`` (the ADC calibration pass) returns the targets. Sections 4, 13.1-13.5.
    ``reference``: the one kind of ``targets`` is a reference column (section 15), ``part`` its arrays'
    (one column each), drawn from the reference's own streams; of the correlated variation only the
    chip component applies (the hardware's validation refuses the others).
    """
    tc = len(chips)
    dev = next(iter(targets.values())).device
    err, d, flt, var = hw.error, hw.drift, hw.faults, hw.variation
    programmed = not error_free and (err.model != "none" or var.active)
    stuck = not error_free and flt.active
    drifting = not error_free and d.time_s is not None

    def keys(stream: int) -> torch.Tensor:
        return rng.derive(seed, chips, layer_key, stream)

    def stream(base: int, i: int) -> int:  # kind i's stream of a quantity (the reference column's own)
        if not reference:
            return base + i
        return {_STREAM_PROGRAM: _STREAM_REF_PROGRAM, _STREAM_FAULTS: _STREAM_REF_FAULTS,
                _STREAM_DRIFT: _STREAM_REF_DRIFT}[base]

    factors = (variation_factors(hw, seed, chips, layer_key, part, next(iter(targets.values())).shape[0],
                                 len(targets), dev) if programmed else [None] * len(targets))
    rows = partition_rows(part) if factors[0] is not None and factors[0].shape[-1] > 1 else None
    out, g0_sum, gt_sum = {}, None, None
    for i, (kind, target) in enumerate(targets.items()):
        g = target.expand(tc, -1, -1, -1)
        n = g[0].numel()
        if programmed or stuck or drifting:
            g = g.float()  # random errors dwarf float32 rounding; exact targets stay float64
        if programmed:
            eps = (rng.chip_normal(keys(stream(_STREAM_PROGRAM, i)), n, dev).view_as(g) if err.model != "none"
                   else None)
            if factors[i] is not None:
                g = devices.perturb(g, err, eps, hw.gmin) if eps is not None else g  # g is this call's own
                g = devices.clip(variation.scale_(g, factors[i].to(g.dtype), rows), err, hw.gmin)
            else:
                g = devices.program(g, err, eps, hw.gmin)
        if stuck:
            events = rng.chip_events(keys(stream(_STREAM_FAULTS, i)), n, flt.stuck_off + flt.stuck_on)
            off, on = faults.stuck_indices(events, n, flt.stuck_off, flt.stuck_on)
            g = faults.apply_stuck_(g, off, on, hw.gmin)
        if drifting:
            mean, std = ((d.nu_mean, d.nu_std) if d.model == "constant"
                         else devices.nu_moments(target.to(g.dtype), d))
            nu = mean + std * rng.chip_normal(keys(stream(_STREAM_DRIFT, i)), n, dev).view_as(g)
            g0 = g.sum((1, 2, 3), dtype=torch.float64)
            g = devices.drift(g, nu, d)
            if stuck:  # a stuck device holds its state
                g = faults.apply_stuck_(g, off, on, hw.gmin)
            gt = g.sum((1, 2, 3), dtype=torch.float64)
            g0_sum, gt_sum = (g0, gt) if g0_sum is None else (g0_sum + g0, gt_sum + gt)
        out[kind] = g
    # Global drift compensation: rescale by the total conductance lost (a one-shot reference read).
    alpha = (g0_sum / gt_sum).float() if d.compensate and gt_sum is not None else None
    return out, alpha


def adc_count(part: Partitioning, slices: int, columns: Optional[int] = None) -> int:
    """ADCs of one chip's layer: one per (group, partition, slice, column), in that order (the split
    convolution's output channels per chip); ``columns`` per array and slice, ``N_g`` by default, where
    a differential pair shares one ADC (section 13.6; digital subtraction gives each side its own and
    a digitized reference column one, section 15)."""
    return part.geom.groups * part.parts * slices * (part.geom.ng if columns is None else columns)


def adc_mismatch(hw: Hardware, seed: int, chips: torch.Tensor, layer_key: int, n_adcs: int
                 ) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """Each ADC's gain ``1 + g`` and input-referred offset ``o`` in LSB, float64 ``(Tc, n_adcs)`` each,
    drawn once per chip (section 13.6), ADCs ordered as :func:`adc_count`; None without mismatch.
    Apply with :func:`mcsim.physics.adc.mismatched` to the code transform of a run pass (not the
    calibration pass: the range is calibrated on the error-free chip)."""
    a = hw.adc
    if not a.mismatched:
        return None

    def draw(sigma: float, stream: int) -> torch.Tensor:  # sigma 0: exact zeros
        return sigma * rng.normal(rng.derive(seed, chips, layer_key, stream), n_adcs, torch.float64)

    return 1 + draw(a.gain_sigma, _STREAM_ADC_GAIN), draw(a.offset_lsb, _STREAM_ADC_OFFSET)


def read_noise(seed: int, chips: torch.Tensor, layer_key: int, image_ids: torch.Tensor, nb: int, r: int, n: int,
               dtype=torch.float32, step: Optional[int] = None) -> torch.Tensor:
    """Normals ``(nb, r, Tc, n)`` drawn afresh at every read (section 4): one stream per (chip, image,
    token, input bit), ``r`` rows being ``len(image_ids)`` images times their tokens (a Linear fed
    ``(batch, tokens, features)`` reads each token on its own), ``n`` values per chip and row. They
    carry the read noise of every column output, and the comparator noise of its conversion with it
    (section 13.6: independent Gaussians at one ADC input add). ``step``: the time step of a recurrent
    layer's matmul, read once per step (section 17), keyed on a stream of its own."""
    tokens = r // len(image_ids)
    dev = chips.device
    keys = rng.derive(
        seed,
        chips.view(1, 1, -1),
        layer_key,
        *((_STREAM_READ,) if step is None else (_STREAM_READ_STEP, step)),
        image_ids.to(dev).repeat_interleave(tokens).view(1, -1, 1),
        torch.arange(tokens, device=dev).repeat(len(image_ids)).view(1, -1, 1),
        torch.arange(nb, device=dev).view(-1, 1, 1),
    )
    return rng.normal(keys, n, dtype)
