"""From a trained torch model to its analog counterpart, evaluated for many chips at once.

``convert(model, hardware, trials, seed)`` folds BatchNorm into the preceding convolutions
(MODEL.md section 1), replaces every Conv2d and Linear by an :class:`AnalogLayer`, and returns an
:class:`AnalogModel` whose forward maps a batch ``(B, ...)`` to logits ``(T, B, classes)``. All other
layers stay digital and see the chips as a larger batch ``(Tc * B, ...)``. Chips are processed in
blocks sized to a memory budget, so peak memory stays bounded however many chips are asked for.
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
import torch.fx
from torch import nn

from mcsim.engine.layers import AnalogLayer, Context, DigitalLayer
from mcsim.hardware import Hardware, check_patterns
from mcsim.physics import devices


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA GPU")
    return device


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every BatchNorm that follows a conv folded into it.

    Uses torch.fx's conv-BN fusion; a model fx cannot trace keeps its BatchNorms digital (warned).
    """
    model = copy.deepcopy(model).eval()
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(model)
    except Exception as e:  # fx cannot trace data-dependent control flow
        warnings.warn(f"BatchNorm not folded (torch.fx could not trace the model: {e}); BN stays digital")
        return model


def execution_order(net: nn.Module, layers: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """``layers`` in the order the forward pass runs them (torch.fx), which need not be the order in
    which they were registered; registration order (warned) when fx cannot trace the model."""
    try:
        graph = torch.fx.symbolic_trace(net).graph
    except Exception as e:  # data-dependent control flow
        warnings.warn(f"analog_first_layer/analog_last_layer: torch.fx could not trace the model ({e}); "
                      "taking the first and last layers in registration order")
        return layers
    called = [n.target for n in graph.nodes if n.op == "call_module"]
    rank = {name: i for i, name in enumerate(called)}
    return sorted(layers, key=lambda item: rank.get(item[0], len(rank)))  # never called as modules: last


def crossbar_layers(model: nn.Module) -> list[str]:
    """The module paths of ``model``'s Conv2d and Linear layers, in registration order: the names
    that ``hardware.layers`` patterns match."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def layer_hardware(net: nn.Module, targets: list[tuple[str, nn.Module]], hardware: Hardware) -> dict[str, Hardware]:
    """Each target layer's effective hardware (:meth:`Hardware.for_layer`), in the order of ``targets``.

    ``analog_first_layer``/``analog_last_layer`` false are ``analog: false`` overrides of the first
    and last layer the forward pass runs, under any override the user gives that exact name.
    Raises :class:`~mcsim.hardware.LayerNameError` for a pattern that matches no target.
    """
    names = [n for n, _ in targets]
    check_patterns(hardware.layers, names, "hardware.layers")
    if not (hardware.analog_first_layer and hardware.analog_last_layer):
        order = [n for n, _ in execution_order(net, targets)]
        edges = ([] if hardware.analog_first_layer else order[:1]) + ([] if hardware.analog_last_layer else order[-1:])
        layers = dict(hardware.layers)
        for name in edges:
            layers[name] = {"analog": False, **layers.get(name, {})}
        hardware = hardware.model_copy(update={"layers": layers})
    return {name: hardware.for_layer(name) for name in names}


def _memory_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    import os

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(min(4 * 2**30, total // 4))


class AnalogModel(nn.Module):
    def __init__(
        self,
        model: nn.Module,
        hardware: Hardware,
        trials: int | Sequence[int] = 1,
        seed: int = 0,
        device: str | torch.device | None = "auto",
        memory_budget: Optional[int] = None,
    ):
        super().__init__()
        self.hardware = hardware
        for message in devices.hardware_warnings(hardware):
            warnings.warn(message)
        self.device = pick_device(device)
        self.ctx = Context(seed=int(seed))
        chips = list(range(trials)) if isinstance(trials, int) else [int(t) for t in trials]
        if not chips or min(chips) < 0:
            raise ValueError("trials: need at least one chip, with non-negative indices")
        self.chips = torch.tensor(chips, dtype=torch.int64)
        self.net = fold_batchnorm(model)
        targets = [(n, m) for n, m in self.net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if not targets:
            raise ValueError("the model has no Conv2d or Linear layer to put on crossbars")
        skipped = [n for n, m in self.net.named_modules() if isinstance(m, nn.modules.conv._ConvNd) and not isinstance(m, nn.Conv2d)]
        if skipped:
            warnings.warn(f"only Conv2d and Linear run on crossbars; these stay digital: {skipped}")
        #: every Conv2d/Linear's effective hardware (its ``analog`` says whether it is on crossbars)
        self.layer_hardware = layer_hardware(self.net, targets, hardware)
        self.layer_names: list[str] = []  # the analog layers, in registration order
        for name, module in targets:
            hw = self.layer_hardware[name]
            parent, _, child = name.rpartition(".")
            layer = AnalogLayer(module, hw, name, self.ctx) if hw.analog else DigitalLayer(module, name)
            setattr(self.net.get_submodule(parent), child, layer)
            if hw.analog:
                self.layer_names.append(name)
        self.net.to(self.device)
        for layer in self.analog_layers():
            layer.part.to(self.device)
        self.memory_budget = memory_budget or _memory_budget(self.device)
        self.images_seen = 0  # default image ids number the images in the order the model sees them
        self._act_bytes: dict[tuple, int] = {}
        # Keep programmed chips between forward calls when they fit in half the budget: a task evaluates
        # many batches on the same chips. Per chip: weights per slice (and read-noise variances).
        chip_bytes = sum(4 * layer.hw.slices * (2 if layer.hw.read_noise.model != "none" else 1)
                         * layer.digital_weight.numel() for layer in self.analog_layers())
        self.ctx.cache = chip_bytes * len(chips) <= self.memory_budget // 2

    def analog_layers(self) -> list[AnalogLayer]:
        return [self.net.get_submodule(n) for n in self.layer_names]

    # ------------------------------------------------------------------ evaluation
    def _per_image_chip_bytes(self, x: torch.Tensor) -> int:
        """Peak activation bytes of one image on one chip, from a digital probe pass."""
        key = tuple(x.shape[1:])
        if key not in self._act_bytes:
            peak = [0]

            def hook(_m, inp, out):
                if torch.is_tensor(out):
                    peak[0] = max(peak[0], out[0].numel() + (inp[0][0].numel() if inp and torch.is_tensor(inp[0]) else 0))

            handles = [m.register_forward_hook(hook) for m in self.net.modules() if not list(m.children())]
            try:
                with self.ctx.switched("probe", self.chips[:1].to(self.device)):
                    self.net(x[:1].to(self.device))
            finally:
                for h in handles:
                    h.remove()
            elements = max([peak[0]] + [layer.probe_elements for layer in self.analog_layers()])
            self._act_bytes[key] = 4 * elements * 3  # temporaries around each op
        return self._act_bytes[key]

    def chip_block(self, x: torch.Tensor) -> int:
        """How many chips one pass evaluates together within the memory budget."""
        per_chip = x.shape[0] * self._per_image_chip_bytes(x)
        return max(1, min(len(self.chips), self.memory_budget // max(per_chip, 1)))

    @torch.no_grad()
    def forward(self, x: torch.Tensor, image_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits ``(T, B, ...)`` of every chip on the batch ``x`` ``(B, ...)``.

        ``image_ids`` are the images' global indices: read noise of image ``i`` on chip ``t`` is the
        same whatever batch it comes in. Without them, images are numbered in the order this model
        sees them (``images_seen``, ``images_seen + 1``, ...), so every batch gets fresh read noise.
        """
        x = x.to(self.device)
        b = x.shape[0]
        if image_ids is None:
            image_ids = torch.arange(self.images_seen, self.images_seen + b)
        self.images_seen += b
        self.ctx.image_ids = torch.as_tensor(image_ids).to(self.device)
        block = self.chip_block(x)
        outs = []
        for i in range(0, len(self.chips), block):
            chips = self.chips[i : i + block].to(self.device)
            self.ctx.chips = chips
            xin = x.unsqueeze(0).expand(len(chips), *x.shape).reshape(-1, *x.shape[1:])
            out = self.net(xin)
            outs.append(out.view(len(chips), b, *out.shape[1:]))
        return torch.cat(outs)

    # ------------------------------------------------------------------ calibration (MODEL.md 5, 7)
    def needs_calibration(self) -> bool:
        return any(hw.input_bits is not None or (hw.adc.bits is not None and hw.adc.range != "explicit")
                   for hw in (layer.hw for layer in self.analog_layers()))

    @torch.no_grad()
    def calibrate(self, batches: Iterable) -> dict:
        """Set input (DAC) ranges, then ADC ranges, from calibration images.

        Pass 1 runs the digital model and records each analog layer's inputs; pass 2 runs the
        error-free analog model (quantized inputs, ideal ADC, parasitics included) and records the raw
        column outputs. ``batches``: tensors or ``(images, labels)`` pairs.
        """
        data = [(b[0] if isinstance(b, (tuple, list)) else b).to(self.device) for b in batches]
        if not data:
            raise ValueError("calibrate: no calibration images")
        layers = self.analog_layers()

        def one_pass(mode):
            with self.ctx.switched(mode, self.chips[:1].to(self.device)):
                for x in data:
                    self.ctx.image_ids = torch.arange(x.shape[0], device=self.device)
                    self.net(x)

        one_pass("calibrate_inputs")
        for layer in layers:
            layer.finish_input_calibration()
            layer.clear_cache()
        adc_layers = [layer for layer in layers if layer.hw.adc.bits is not None and layer.hw.adc.range == "calibrated"]
        if adc_layers:
            one_pass("calibrate_adc")
            for layer in layers:
                if layer in adc_layers:
                    layer.finish_adc_calibration()
                else:  # recorded in the pass, not needed: its ADC is ideal or its range not calibrated
                    layer.clear_calibration_samples()
        return self.calibration()

    def calibration(self) -> dict:
        return {name: layer.calibration_state() for name, layer in zip(self.layer_names, self.analog_layers())}

    def load_calibration(self, state: dict | str | Path) -> None:
        if not isinstance(state, dict):
            state = json.loads(Path(state).read_text())
        if set(state) != set(self.layer_names):
            raise ValueError("calibration: its layers do not match this model's analog layers")
        for name, layer in zip(self.layer_names, self.analog_layers()):
            layer.load_calibration_state(state[name])

    def save_calibration(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.calibration(), indent=1))


def convert(
    model: nn.Module,
    hardware: Hardware | dict | None = None,
    trials: int | Sequence[int] = 1,
    seed: int = 0,
    *,
    device: str | torch.device | None = "auto",
    memory_budget: Optional[int] = None,
) -> AnalogModel:
    """The analog counterpart of ``model``: forward ``(B, ...) -> (T, B, classes)``, one slice per chip."""
    if hardware is None:
        hardware = Hardware()
    elif isinstance(hardware, dict):
        hardware = Hardware(**hardware)
    return AnalogModel(model, hardware, trials, seed, device, memory_budget).eval()
