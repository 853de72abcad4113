"""A study's cost before it runs: estimated device-hours from measured rates (`mcsim run --dry-run`).

Measured rates (:data:`RATES`): analog image-chips per second of one reference model per device
and config class, from ``bench/engine.py`` / ``bench/gpu.py`` runs (each entry says which). A
sweep point's time per image-chip is

    t = MACs(model) / MACs(reference) / rate(device, class) x slices factor x input-bits factor x parasitics factor

* **MACs**: the multiply-accumulates of the model's Conv and Linear layers for one image of the
  data set (counted on the meta device: no weights, no arithmetic). The analog engine's work per
  image-chip is proportional to them; a rate measured on one network scales to another by them.
* **class** (the point's hardware): (a) parallel inputs (``input_mode: analog``); (c) bit-serial
  inputs (``input_mode: bitserial``, an ADC per bit or analog accumulation alike: the measured
  (c) is the ADC-per-bit case, the dearer one). Mapping (differential or offset) does not change
  the class.
* **slices**: (b) is measured as offset with 4 slices; ``s`` slices cost ``1 + (s - 1) r`` times
  the class, where ``1 + 3 r`` is (b) over (a) (the cost grows linearly with the slices).
* **input bits** of a bit-serial point: linear, ``input_bits / 8`` of (c) (measured at 8).
* **parasitics** (``rp > 0``) are not measured yet: they are counted at their targets' bounds
  (driven rows 4x, gated rows 30x the same point without; bench/engine.py ``BASELINE``) and the
  estimate says so.

Where a device has no measurement of a class, its rate is the device's (a) times the class's
ratio to (a) on the CPU (marked in :data:`RATES`' notes). Calibration and the digital reference
pass are left out (one pass over a few hundred images each).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

__all__ = ["Rate", "RATES", "estimate_lines", "macs", "point_seconds"]


@dataclass(frozen=True)
class Rate:
    """A measured rate: image-chips per second of ``model`` at ``shape`` on ``device``."""

    image_chips_per_s: float
    model: str  # a ModelSpec name (torchvision:<arch> or builtin:<name>)
    shape: tuple[int, ...]  # one image
    source: str


#: CPU, ResNet18 at 112x112, T = 8, one plain process on the 2-core development machine
#: (bench/engine.py --models resnet18-112): (a) measured quiet (issue 20's note: 130.7
#: image-chips/s at a ratio of 1.22 to the digital forward, i.e. 159.5 digital images/s); (b) and
#: (c) from their ratios in the same kind of run (issue 23's note, load 3-5: 3.99 and 5.15).
#: CUDA: torchvision ResNet50 at 224x224, batch 64, T = 16, one H200 (bench/gpu.py, before the
#: per-chip convolution fix): (a) 684 image-chips/s.
_CPU_DIGITAL = 130.7 * 1.22
RATES: dict[tuple[str, str], Rate] = {
    ("cpu", "a"): Rate(130.7, "torchvision:resnet18", (3, 112, 112), "bench/engine.py, 2-core CPU, issue 20"),
    ("cpu", "b"): Rate(round(_CPU_DIGITAL / 3.99, 1), "torchvision:resnet18", (3, 112, 112),
                       "bench/engine.py ratio 3.99, 2-core CPU, issue 23"),
    ("cpu", "c"): Rate(round(_CPU_DIGITAL / 5.15, 1), "torchvision:resnet18", (3, 112, 112),
                       "bench/engine.py ratio 5.15, 2-core CPU, issue 23"),
    ("cuda", "a"): Rate(684.0, "torchvision:resnet50", (3, 224, 224), "bench/gpu.py, one H200, issue 24"),
}
#: Devices the estimate is given for, with the unit of their hours.
DEVICES = {"cpu": "CPU-hours (2-core machine)", "cuda": "GPU-hours (H200)"}
#: Parasitics are unmeasured: their targets' bounds over the same point without them.
PARASITICS_BOUND = {"driven": 4.0, "gated": 30.0}


def macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of ``model``'s Conv and Linear layers for one image of ``shape``,
    counted on a meta-device copy (no arithmetic, no memory)."""
    import copy

    meta = copy.deepcopy(model).to("meta").eval()
    total = [0]

    def count(layer, inputs, output):
        if isinstance(layer, nn.Linear):
            total[0] += output.numel() // output.shape[-1] * layer.in_features * layer.out_features
        else:  # a convolution: every output element sums in_channels / groups x kernel products
            total[0] += output.numel() * layer.in_channels // layer.groups * math.prod(layer.kernel_size)

    hooks = [m.register_forward_hook(count) for m in meta.modules()
             if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    try:
        with torch.no_grad():
            meta(torch.empty((1, *shape), device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def _reference_macs(rate: Rate) -> int:
    import torchvision

    return macs(torchvision.models.get_model(rate.model.split(":", 1)[1], weights=None), rate.shape)


def _rate(device: str, cls: str) -> tuple[float, int, bool]:
    """(image-chips/s of the reference model, its MACs, measured?) for ``device`` and ``cls``."""
    if (device, cls) in RATES:
        r = RATES[device, cls]
        return r.image_chips_per_s, _reference_macs(r), True
    a = RATES[device, "a"]
    return a.image_chips_per_s * RATES["cpu", cls].image_chips_per_s / RATES["cpu", "a"].image_chips_per_s, \
        _reference_macs(a), False


def point_seconds(hw, model_macs: int, device: str) -> tuple[float, list[str]]:
    """Seconds per image-chip of a point with hardware ``hw`` on ``device``, and the assumptions
    that are not measurements (derived rates, parasitics' bounds)."""
    notes = []
    serial = hw.input_mode == "bitserial"
    rate, ref_macs, measured = _rate(device, "c" if serial else "a")
    if not measured:
        notes.append(f"{device} (c) scaled from its (a) by the CPU's (c)/(a)")
    t = model_macs / ref_macs / rate
    b_over_a = RATES["cpu", "a"].image_chips_per_s / RATES["cpu", "b"].image_chips_per_s
    t *= 1 + (hw.slices - 1) * (b_over_a - 1) / 3
    if serial:
        t *= hw.input_bits / 8
    par = hw.parasitics
    if par.rp:
        rows = "gated" if hw.gated_rows else "driven"
        t *= PARASITICS_BOUND[rows]
        notes.append(f"parasitics ({rows} rows) unmeasured: counted at their {PARASITICS_BOUND[rows]:g}x bound")
    return t, notes


def _scenario_macs(scenario) -> tuple[int, tuple[int, ...]]:
    """The MACs of the scenario's model for one of its evaluation images (a torchvision model is
    built without its weights: only its shape matters)."""
    from mcsim.data import evaluation_dataset
    from mcsim.models import load_model

    shape = tuple(evaluation_dataset(scenario.data)[0][0].shape)
    spec = scenario.model
    if spec.name and spec.name.startswith("torchvision:"):
        import torchvision

        model = torchvision.models.get_model(spec.name.split(":", 1)[1], weights=None, **spec.kwargs)
    else:
        model = load_model(spec)
    return macs(model, shape), shape


def estimate_lines(scenario, plan, *, model_macs: Optional[int] = None) -> list[str]:
    """The dry run's cost lines: image-chips, then the estimated hours per device (mcsim.runner.cost)."""
    chips = plan.n_images * plan.trials
    total = chips * plan.n_points
    upto = "up to " if plan.adaptive is not None else ""
    head = f"cost: {upto}{total:,} image-chips ({plan.n_points} points x {plan.trials} chips x {plan.n_images} images)"
    if model_macs is None:
        try:  # a model that cannot run on the meta device costs the estimate, never the dry run
            model_macs, shape = _scenario_macs(scenario)
        except Exception as err:  # noqa: BLE001
            return [f"{head}; no time estimate (the model's MACs could not be counted: {type(err).__name__}: {err})"]
        where = f"{model_macs / 1e9:.3g} GMAC per {'x'.join(map(str, shape))} image"
    else:
        where = f"{model_macs / 1e9:.3g} GMAC per image"
    lines = [f"{head}, {where}"]
    notes: list[str] = []
    hours = []
    for device, unit in DEVICES.items():
        seconds = 0.0
        for point in plan.sweep.points:
            t, why = point_seconds(point.hardware, model_macs, device)
            seconds += t * chips
            notes += [n for n in why if n not in notes]
        hours.append(f"{upto}{seconds / 3600:.3g} {unit}")
    lines.append(f"estimated: {', '.join(hours)}; from rates measured per config class, scaled by MACs "
                 "(mcsim/runner/cost.py)")
    return lines + [f"estimate note: {n}" for n in notes]
