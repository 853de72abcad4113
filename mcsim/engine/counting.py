"""Counting what a chip does per inference, for the first-order energy (docs/physics.md section 12).

Opt-in, and off by default: ``with counting(analog_model) as counter: analog_model(x)`` makes every
analog layer report, on each evaluation call, the operations its physical design performs, from
the engine's own geometry (partitions, slices, input bits) and the programmed chips. The counts
are exact; :mod:`mcsim.physics.prices` prices them. Counting never changes an output: it reads the
layer's quantized inputs, re-derives the chips' conductances from their keyed random streams (the
same chips, docs/physics.md section 9) and runs its own convolutions beside the layer's.

Per analog layer, image and chip (``P`` partitions, ``S`` slices, ``nb`` input bits, or k-bit input
slices (docs/physics.md section 16), applied one per MVM; ``pos`` output positions, tokens included;
``C_out`` columns, a differential pair being one):

* ``adc_conversions = pos * C_out * S * P * (nb with digital input-bit accumulation, else 1)``, each
  at ``adc.bits`` (an ideal ADC: ``energy.ideal_adc_bits``); with digital subtraction (docs/physics.md
  section 15) ``C_out`` becomes the columns digitized: ``2 C_out`` for differential pairs, ``C_out + g``
  with a reference column per array. The count is of the physical design,
  whatever path the simulation takes (an ideal ADC folds slices and bits into one matmul).
* ``dac_pulses``: row lines driven, per MVM (analog inputs: every row whose input is nonzero) or per
  input bit (bit-serial: every row whose bit is set, or whose slice is nonzero), summed over output
  positions; times the arrays a row spans when ``cols_max`` cuts a partition's ``C_out * S * devices`` physical columns.
  ``row_slots`` is the same with every row driven (so ``dac_pulses / row_slots`` is the activity).
* ``array_g_v2 = sum(G * v**2)`` over every device read and every read: ``G`` the chip's programmed
  (and drifted) normalized conductances of all slices and device kinds (IR drop not included),
  ``v`` the normalized input (per bit, 0 or +-1, when bit-serial; per slice ``m / (2**k - 1)``). One
  grouped convolution of ``v**2`` (bit-serial: the count of set bits), summed over the call's images,
  with each row's conductance summed over the columns.
* ``digital_adds``: recombining the ``S * P * nb`` digitized terms of each output (``terms - 1``
  shift-and-adds; each side's with digital subtraction: ``2 terms - 1``); offset mapping with the
  nominal offset: summing each plane's inputs over the ``K`` rows (``K - 1``) and the
  planes (``nb - 1``) per position and group, and one subtraction per output.
  ``digital_macs``: offset mapping, scaling that input sum by ``G_zero`` (one per position and group).

Layers kept digital (``analog: false``, ``analog_first_layer: false``, a functional use of the weight) count
``digital_macs``: their output elements times the inputs feeding each. Bias, scaling, activations, pooling and residual
additions are not counted (they are the same for every design).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mcsim.hardware import Energy
from mcsim.physics import dac
from mcsim.physics import prices as price

if TYPE_CHECKING:  # the engine's modules import this one's hook through the Context only
    from mcsim.engine.convert import AnalogModel
    from mcsim.engine.layers import AnalogLayer, Pass

COUNTS = ("adc_conversions", "dac_pulses", "row_slots", "array_g_v2", "digital_adds", "digital_macs")


@dataclass
class EnergyCounts:
    """Counts per image (or summed over ``images``): ``counts[name]`` is ``(T, L)`` for the model's
    chips and ``layers`` (analog and kept-digital convolutions/Linear, in module order); ``adc_bits``
    ``(L,)`` the resolution each layer's conversions are priced at (0 for a digital layer)."""

    chips: list[int]
    layers: list[str]
    counts: dict[str, np.ndarray]
    adc_bits: np.ndarray
    images: int
    prices: list[Energy]  # each layer's hardware.energy (per-layer overrides applied)

    def stacked(self) -> np.ndarray:
        """The counts as one array ``(T, len(COUNTS), L)``."""
        return np.stack([self.counts[k] for k in COUNTS], axis=1)

    def joules(self, energy: Optional[Energy] = None) -> np.ndarray:
        """Energy ``(T, 4)`` by component (``physics.prices.COMPONENTS``), in J: each layer priced
        with its own ``hardware.energy``, or every layer with ``energy`` when given."""
        return self.joules_per_layer(energy).sum(2)

    def joules_per_layer(self, energy: Optional[Energy] = None) -> np.ndarray:
        """Energy ``(T, 4, L)`` by component and layer, in J (prices as in :meth:`joules`)."""
        c = self.counts
        prices = [energy or e for e in self.prices]

        def per_layer(f):
            return np.array([f(e) for e in prices], dtype=np.float64)

        fom = np.array([price.adc_conversion_energy(int(b), e.adc_fom_j) if b else 0.0
                        for b, e in zip(self.adc_bits, prices)])
        parts = [
            c["adc_conversions"] * fom,
            price.dac_energy(c["dac_pulses"], per_layer(lambda e: e.dac_pulse_j)),
            price.array_energy(c["array_g_v2"], per_layer(lambda e: e.v_read), per_layer(lambda e: e.t_read),
                               per_layer(lambda e: e.gmax_siemens)),
            price.digital_energy(c["digital_adds"], c["digital_macs"], per_layer(lambda e: e.add_j),
                                 per_layer(lambda e: e.mac_j)),
        ]
        return np.stack(parts, axis=1)


@dataclass
class EnergyCounter:
    """Running sums over the images evaluated, per chip (the model's chip order) and layer."""

    chips: list[int]
    layers: list[str]
    prices: list[Energy]
    images: int = 0
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    adc_bits: dict[str, int] = field(default_factory=dict)
    _rows_g: dict[tuple, torch.Tensor] = field(default_factory=dict)  # (layer, chips) -> row conductance sums

    def __post_init__(self):
        self._pos = {c: i for i, c in enumerate(self.chips)}
        self._col = {n: i for i, n in enumerate(self.layers)}
        self.sums = {k: np.zeros((len(self.chips), len(self.layers)), dtype=np.float64) for k in COUNTS}
        self.adc_bits = {n: 0 for n in self.layers}

    def _add(self, name: str, layer: str, chips: torch.Tensor, values) -> None:
        """Add ``values`` (one per chip of the block, or one for all) to ``name`` of ``layer``."""
        rows = [self._pos[int(c)] for c in chips.tolist()]
        v = values.detach().double().cpu().numpy() if torch.is_tensor(values) else float(values)
        self.sums[name][rows, self._col[layer]] += v

    def result(self, *, per_image: bool = True) -> EnergyCounts:
        """The counts so far, per image (or summed over the images seen: ``per_image=False``)."""
        n = max(self.images, 1) if per_image else 1
        return EnergyCounts(
            list(self.chips), list(self.layers), {k: v / n for k, v in self.sums.items()},
            np.array([self.adc_bits[n_] for n_ in self.layers]), self.images, list(self.prices),
        )

    # ------------------------------------------------------------------ analog layers
    def analog(self, layer: "AnalogLayer", n: torch.Tensor, p: "Pass") -> None:
        """Count one evaluation call of ``layer`` on integer input levels ``n`` ``(Tc, r, C, H, W)``."""
        hw, geo, part = layer.hw, layer.geom, layer.part
        chips = layer.ctx.chips
        bitserial = hw.input_mode == "bitserial"
        nb_in = dac.n_slices(hw.input_bits, p.signed, hw.input_slice_bits) if bitserial else 1
        nb_adc = nb_in if bitserial and hw.input_accumulation == "digital" else 1
        self.adc_bits[layer.name] = hw.adc.bits if hw.adc.bits is not None else hw.energy.ideal_adc_bits

        # Both sums are linear in the inputs: sum the call's images first, then one float64 (exact)
        # convolution per chip on that one summed input.
        active, v2 = _drive(n, layer, p, bitserial)
        ones = torch.ones(geo.groups, geo.cg, *geo.kernel, dtype=torch.float64, device=n.device)
        pulses = F.conv2d(active, ones, None, groups=geo.groups, **layer.conv_args)  # (Tc, g, H', W')
        g_v2 = _per_chip_conv(layer, v2, self._row_conductance(layer))
        pos = n.shape[1] * pulses[0, 0].numel()  # output positions of the call, per chip

        spans = _row_spans(layer)
        self._add("dac_pulses", layer.name, chips, pulses.sum((1, 2, 3)) * spans)
        self._add("row_slots", layer.name, chips, pos * geo.groups * geo.rows * nb_in * spans)
        self._add("array_g_v2", layer.name, chips, g_v2.sum((1, 2, 3)))
        terms = layer.n_slices * part.parts * nb_adc
        conversions = pos * geo.groups * layer.cols * terms  # cols: C_out / g, or each side's (section 15)
        self._add("adc_conversions", layer.name, chips, conversions)
        adds, macs = pos * geo.c_out * (layer.sides * terms - 1), 0  # each output: its terms, both sides'
        if layer.offset:  # the nominal offset term (a reference column needs none)
            adds += pos * (geo.groups * (nb_adc * geo.rows - 1) + geo.c_out)
            macs += pos * geo.groups
        self._add("digital_adds", layer.name, chips, adds)
        self._add("digital_macs", layer.name, chips, macs)

    def _row_conductance(self, layer: "AnalogLayer") -> torch.Tensor:
        """Per chip, each row's normalized conductance summed over its group's columns, every slice
        and device kind: a conv weight ``(Tc * g, C_g, kh, kw)``, chip-major. Cached per chip block."""
        key = (layer.name, tuple(layer.ctx.chips.tolist()))
        if key not in self._rows_g:
            g, _ = layer._program_devices(error_free=False)
            geo, tc = layer.geom, len(layer.ctx.chips)
            ref = g.pop("ref", None)  # a reference column: one device per row of each array (section 15)
            total = sum(x.double().sum(1) for x in g.values())  # (Tc, C_out, K)
            rows = total.view(tc, geo.groups, geo.ng, geo.rows).sum(2)
            if ref is not None:
                rows = rows + ref.double().sum(1)
            self._rows_g[key] = rows.reshape(tc * geo.groups, geo.cg, *geo.kernel)
        return self._rows_g[key]

    # ------------------------------------------------------------------ layers kept digital
    def digital(self, name: str, module: nn.Module, inp: torch.Tensor, out: torch.Tensor, chips: torch.Tensor) -> None:
        """Multiply-accumulates of a Conv/Linear kept digital, for the chip block ``chips``."""
        per_chip_rows = out.shape[0] // len(chips)
        if getattr(module, "transposed", False):  # each input element feeds weight[0].numel() = out/groups * taps
            per_row = inp[0].numel() * module.weight[0].numel()
        else:  # Linear, Conv, DigitalLayer: each output element sums weight[0].numel() products
            per_row = out[0].numel() * module.weight[0].numel()
        self._add("digital_macs", name, chips, per_chip_rows * per_row)


def _per_chip_conv(layer: "AnalogLayer", inp: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``inp (Tc, C, H, W)`` through each chip's own weights ``(Tc * g, C_g, kh, kw)`` (chip-major):
    the layer's own chip-grouped convolution (``AnalogLayer._grouped_conv``: canonical shapes on the
    CPU, so a chip's count never depends on the block) -> ``(Tc, g, H', W')``."""
    tc, groups = inp.shape[0], layer.geom.groups
    out = layer._grouped_conv(inp.reshape(1, -1, *inp.shape[2:]), weight, None, tc, groups)
    return out.view(tc, groups, *out.shape[2:])


def _drive(n: torch.Tensor, layer: "AnalogLayer", p: "Pass", bitserial: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per input element, summed over the call's images ``(Tc, C, H, W)`` float64: the pulses its
    row gets (set bits or nonzero slices, or 1 if nonzero) and ``sum v**2`` over its reads (bit-serial:
    the set bits again, ``v`` in {0, +-1}; k-bit slices ``m``: ``(m / (2**k - 1))**2``, section 16;
    analog: ``(n / n_max)**2``). Sums of small integers: exact."""
    if bitserial:
        hw = layer.hw
        planes = dac.bit_planes(n, hw.input_bits, p.signed, dim=1, slice_bits=hw.input_slice_bits)
        v2 = planes.square().sum((1, 2)).double() / layer._input_scale(True) ** 2
        return (planes != 0).sum((1, 2)).double(), v2
    active = (n != 0).sum(1).double()
    return active, n.square().sum(1).double() / layer._input_scale(False) ** 2


def _row_spans(layer: "AnalogLayer") -> int:
    """Arrays a row line of one partition runs through: its ``C_out/g * S * devices`` physical
    columns cut into arrays of ``cols_max`` (one array when unlimited)."""
    hw = layer.hw
    if hw.cols_max is None:
        return 1
    devices = 2 if hw.mapping == "differential" else 1
    columns = layer.geom.ng * devices + (1 if layer.reference else 0)  # per slice (section 15)
    return math.ceil(columns * layer.n_slices / hw.cols_max)


def _counted_layers(model: "AnalogModel") -> list[tuple[str, nn.Module]]:
    from mcsim.engine.layers import AnalogLayer, DigitalLayer

    kinds = (AnalogLayer, DigitalLayer, nn.Linear, nn.modules.conv._ConvNd)
    return [(n, m) for n, m in model.net.named_modules() if isinstance(m, kinds)]


def layer_names(model: nn.Module) -> list[str]:
    """The layers a converted ``model`` counts, from the digital model: the crossbar layers
    (:func:`~mcsim.engine.convert.crossbar_layers`: convolutions, Linear, attention's projections) in
    module order."""
    from mcsim.engine.convert import crossbar_layers

    return crossbar_layers(model)


@contextmanager
def counting(model: "AnalogModel") -> Iterator[EnergyCounter]:
    """Count the operations of every evaluation call (``model(x)``) made inside the block
    (``mcsim.count_energy``; docs/physics.md section 12).

    The counts are exact and of the physical design (this module's documentation lists them);
    counting changes no output. Calibration passes inside the block are not counted.

    Args:
        model: a converted model (:func:`mcsim.convert`), calibrated as it needs to evaluate.

    Returns:
        A context manager that yields an :class:`EnergyCounter`: its :meth:`~EnergyCounter.result`
        gives the :class:`EnergyCounts` per image so far (``counts[name]`` ``(T, L)`` per chip and
        layer; ``joules()`` ``(T, 4)`` J per image by component: ADC, DAC, array, digital, priced
        with each layer's ``hardware.energy``).

    Raises:
        RuntimeError: from the evaluation inside the block, as without counting (an uncalibrated
            model that needs calibrating).

    Examples:
        >>> import torch, mcsim
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> analog = mcsim.convert(net, trials=2, device="cpu")
        >>> _ = analog.calibrate([torch.rand(32, 1, 8, 8)])
        >>> with mcsim.count_energy(analog) as counter:
        ...     _ = analog(torch.rand(5, 1, 8, 8))
        >>> counts = counter.result()
        >>> counts.images, counts.layers, counts.joules().shape  # (chips, components)
        (5, ['1'], (2, 4))
        >>> float(counts.counts["adc_conversions"][0, 0])  # 10 columns x 1 partition x 1 slice per image
        10.0
    """
    from mcsim.engine.layers import AnalogLayer

    layers = _counted_layers(model)
    hw = getattr(model, "layer_hardware", {})
    prices = [(m.hw if isinstance(m, AnalogLayer) else hw.get(n, model.hardware)).energy for n, m in layers]
    counter = EnergyCounter([int(c) for c in model.chips.tolist()], [n for n, _ in layers], prices)
    ctx = model.ctx

    def images(_m, args):
        counter.images += args[0].shape[0]

    def digital_hook(name):
        def hook(module, inp, out):
            if ctx.mode == "run":
                counter.digital(name, module, inp[0], out, ctx.chips)
        return hook

    handles = [model.register_forward_pre_hook(images)]
    handles += [m.register_forward_hook(digital_hook(n)) for n, m in layers if not isinstance(m, AnalogLayer)]
    saved, ctx.energy = ctx.energy, counter
    try:
        yield counter
    finally:
        ctx.energy = saved
        for h in handles:
            h.remove()


count_energy = counting  # the public name (``mcsim.count_energy``)
