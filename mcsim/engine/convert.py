"""From a trained torch model to its analog counterpart, evaluated for many chips at once.

``convert(model, hardware, trials, seed)`` rewrites attention modules so that their projections are
called as modules (:mod:`mcsim.engine.attention`; torch's Transformer layers:
:mod:`mcsim.engine.transformer`), folds BatchNorm into the preceding convolutions (docs/physics.md
section 1), replaces every convolution and Linear by an :class:`AnalogLayer`, and returns an
:class:`AnalogModel` whose forward maps a batch ``(B, ...)`` to logits ``(T, B, classes)``. All other
layers stay digital and see the chips as a larger batch ``(B * Tc, ...)``, image-major (row ``i * Tc + t``
is image i on chip t: the layout of the analog layers' grouped convolutions); ``AnalogModel.digital_layers``
lists the weight-carrying ones and why. Chips are processed in blocks sized to a memory budget, so
peak memory stays bounded however many chips are asked for.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import json
import re
import warnings
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
import torch.fx
from torch import nn

from mcsim.engine.allocator import reuse_large_buffers
from mcsim.engine.attention import ATTENTION_MODULES, DIGITAL_ATTENTION, projection_names, rewrite_attention
from mcsim.engine.convnd import CROSSBAR_TYPES
from mcsim.engine.layers import AnalogLayer, Context, DigitalLayer
from mcsim.engine import saving
from mcsim.engine.recurrent import DIGITAL_RECURRENCE, Recurrent, matrix_names, rewrite_recurrent
from mcsim.engine.transformer import TRANSFORMER_MODULES, rewrite_transformers
from mcsim.errors import InputError
from mcsim.hardware import Hardware, check_patterns
from mcsim.physics import devices


class ConversionError(InputError, ValueError):
    """A model mcsim cannot convert; the message names the module and why."""

    in_scenario = True


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer, with mcsim's attention, recurrent and Transformer modules kept whole (their
    forward branches on arguments, or loops over time steps; torch's own Transformer modules are leaves too)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (*ATTENTION_MODULES, *TRANSFORMER_MODULES, Recurrent)) or super().is_leaf_module(m, qualname)


def _trace(net: nn.Module) -> torch.fx.GraphModule:
    return torch.fx.GraphModule(net, _Tracer().trace(net), type(net).__name__)


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA GPU")
    return device


@contextlib.contextmanager
def ieee_float32():
    """float32 convolutions and matmuls in IEEE float32 (restored after): TF32 off on CUDA, and no
    reduced-precision math on the CPU's oneDNN kernels.

    cuDNN runs float32 convolutions in TF32 by default (10-bit mantissa): about 5e-4 relative on a
    ResNet50's logits, so ideal hardware would miss the digital logits, ADC codes would round
    differently than on the CPU, and the offset mapping's subtraction would exceed its 1e-4 bound
    (docs/physics.md section 10). oneDNN follows a user's ``bf16``/``tf32`` setting the same way, and
    the engine's prepacked CPU convolutions (mcsim.engine.conv.ConvWeight) run IEEE float32 whatever
    it is, so both kernels are pinned alike. Uses torch's per-backend ``fp32_precision`` settings,
    the API that does not mix with the legacy ``allow_tf32`` flags.
    """
    flags = (torch.backends.cudnn.conv, torch.backends.cuda.matmul, torch.backends.mkldnn.conv,
             torch.backends.mkldnn.matmul)
    saved = [f.fp32_precision for f in flags]
    try:
        for f in flags:
            f.fp32_precision = "ieee"
        yield
    finally:
        for f, v in zip(flags, saved):
            f.fp32_precision = v


def fold_batchnorm(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (eval mode; ``inplace``: the model itself) with every BatchNorm that follows
    a conv folded into it.

    Uses torch.fx's conv-BN fusion; a model fx cannot trace keeps its BatchNorms digital (warned).
    """
    model = (model if inplace else copy.deepcopy(model)).eval()
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(_trace(model), inplace=True, no_trace=True)
    except Exception as e:  # fx cannot trace data-dependent control flow
        warnings.warn(f"BatchNorm not folded (torch.fx could not trace the model: {e}); BN stays digital")
        return model


def execution_order(net: nn.Module, layers: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """``layers`` in the order the forward pass runs them (torch.fx), which need not be the order in
    which they were registered; registration order (warned) when fx cannot trace the model."""
    try:
        graph = _Tracer().trace(net)
    except Exception as e:  # data-dependent control flow
        warnings.warn(f"analog_first_layer/analog_last_layer: torch.fx could not trace the model ({e}); "
                      "taking the first and last layers in registration order")
        return layers
    called = [n.target for n in graph.nodes if n.op == "call_module"]
    rank = {name: i for i, name in enumerate(called)}

    def order(name: str) -> int:  # a layer inside a module fx keeps whole (attention, recurrent, Transformer) runs with it
        while name not in rank and name:
            name = name.rpartition(".")[0]
        return rank.get(name, len(rank))  # never called as modules: last

    return sorted(layers, key=lambda item: order(item[0]))


_TORCH_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                 nn.ConvTranspose3d)


def _as_torch_layers(net: nn.Module) -> None:
    """Give every subclass of a torch convolution or Linear that only changes how it is built
    (torchvision's video ``Conv3DSimple``: no method but ``__init__``) its torch class, in place:
    torch.fx then keeps it whole as it does torch's own layers (instead of reading its weight as a
    tensor inside its forward) and folds the BatchNorm that follows it. Its forward is torch's either way."""
    for m in net.modules():
        base = next((b for b in _TORCH_LAYERS if isinstance(m, b)), None)
        if base is None or type(m) is base:
            continue
        own = type(m).__mro__[: type(m).__mro__.index(base)]
        if not any(inspect.isfunction(v) and k != "__init__" for c in own for k, v in vars(c).items()):
            m.__class__ = base


_WEIGHT_READ = re.compile(r"self\.(\w+)\.weight\b")
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.LocalResponseNorm,
          nn.modules.instancenorm._InstanceNorm)


@functools.lru_cache(maxsize=None)
def _forward_source(cls: type) -> str:
    try:
        return inspect.getsource(cls.forward)
    except (OSError, TypeError):  # generated (torch.fx) or built-in code: the graph scan covers it
        return ""


def functional_uses(net: nn.Module) -> dict[str, tuple[str, str]]:
    """The convolutions and Linear layers of ``net`` whose ``.weight`` is read as a tensor (handed to a function)
    instead of being called: name -> (type, who reads it). An analog layer has no weight tensor to hand
    over, so these stay digital. Looks at the traced graph (before BatchNorm folding, which would turn
    such a layer into a bare holder of its tensors) and at the source of every module's forward."""
    layers = {n: type(m).__name__ for n, m in net.named_modules() if isinstance(m, CROSSBAR_TYPES)}
    uses = {}
    try:
        graph = _Tracer().trace(net)
    except Exception:  # untraceable: the source scan below still sees direct reads
        graph = None
    for node in graph.nodes if graph is not None else []:
        owner, _, attr = str(node.target).rpartition(".")
        if node.op == "get_attr" and attr == "weight" and owner in layers:
            uses[owner] = (layers[owner], "the model's forward reads its .weight as a tensor (a functional call)")
    for pname, parent in net.named_modules():
        for child in set(_WEIGHT_READ.findall(_forward_source(type(parent)))):
            full = f"{pname}.{child}" if pname else child
            if full in layers:
                uses[full] = (layers[full], f"{type(parent).__name__}.forward reads self.{child}.weight as a tensor "
                                            "(a functional call)")
    return uses


def _digital_inventory(net: nn.Module, kept: dict[str, tuple[str, str]]) -> list[dict]:
    """Every weight-carrying part of ``net`` that does not run on arrays, with the reason. ``kind``:
    ``layer`` (a Conv/Linear kept digital), ``attention``, ``recurrent``, ``normalization`` or ``parameters``."""
    out = [{"name": n, "type": t, "kind": "layer", "reason": r} for n, (t, r) in kept.items()]
    for name, m in net.named_modules():
        if isinstance(m, AnalogLayer) or name in kept:
            continue
        if isinstance(m, ATTENTION_MODULES):
            out.append({"name": name, "type": type(m).__name__, "kind": "attention", "reason": DIGITAL_ATTENTION})
        elif isinstance(m, Recurrent):
            out.append({"name": name, "type": m.mode, "kind": "recurrent", "reason": DIGITAL_RECURRENCE})
        elif isinstance(m, _NORMS):
            out.append({"name": name, "type": type(m).__name__, "kind": "normalization",
                        "reason": "normalization (per-sample statistics, elementwise affine): digital"})
        elif m._parameters and any(p is not None for p in m._parameters.values()):
            params = ", ".join(k for k, p in m._parameters.items() if p is not None)
            out.append({"name": name or "<root>", "type": type(m).__name__, "kind": "parameters",
                        "reason": f"elementwise or additive parameters ({params}): digital"})
    return out


def crossbar_layers(model: nn.Module) -> list[str]:
    """The module paths of ``model``'s convolutions and Linear layers, in registration order: the names
    that ``hardware.layers`` patterns match."""
    names, dropped = [], []
    for n, m in model.named_modules():
        if isinstance(m, CROSSBAR_TYPES) and not any(n.startswith(d) for d in dropped):
            names.append(n)
        added, gone = projection_names(m)  # what the attention rewrite adds and drops
        added = added + matrix_names(m)  # a recurrent module's matrices (mcsim.engine.recurrent)
        names += [f"{n}.{p}" if n else p for p in added]
        dropped += [f"{n}.{p}." if n else f"{p}." for p in gone]
    return names


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
    """A model on analog chips (build it with :func:`convert`).

    Attributes:
        layer_names: the module paths of the layers on arrays (every convolution and Linear, attention
            projections included), in registration order.
        digital_layers: every weight-carrying part that stays digital, as ``{"name", "type", "kind",
            "reason"}``; ``kind`` is ``layer`` for a Conv/Linear kept digital (a functional use of its
            weight, ``analog_first_layer``/``analog_last_layer``), else ``attention``,
            ``normalization``, ``recurrent`` (gates and state) or ``parameters`` (docs/physics.md section 1).
        rewritten: the attention and recurrent modules replaced by their mcsim equivalents
            (mcsim.engine.attention, mcsim.engine.recurrent), and torch's Transformer modules given their
            unfused forward (mcsim.engine.transformer).
        source: the network as given (spec when known, layout, a CPU copy of its state): what
            :meth:`save` writes (mcsim.engine.saving).

    Raises:
        ConversionError: a model that cannot be converted (the message names the module and why).
    """

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
        reuse_large_buffers()  # large buffers kept for the next call, not mapped anew (allocator.py)
        self.hardware = hardware
        for message in devices.hardware_warnings(hardware):
            warnings.warn(message)
        self.device = pick_device(device)
        self.ctx = Context(seed=int(seed))
        chips = list(range(trials)) if isinstance(trials, int) else [int(t) for t in trials]
        if not chips or min(chips) < 0:
            raise ValueError("trials: need at least one chip, with non-negative indices")
        self.chips = torch.tensor(chips, dtype=torch.int64)
        self.source = saving.Source.of(model)
        net = copy.deepcopy(model).eval()
        _as_torch_layers(net)
        try:  # attention and recurrent modules whose projections and matrices are now modules;
            # Transformer layers on their unfused path
            self.rewritten = rewrite_attention(net) + rewrite_recurrent(net) + rewrite_transformers(net)
        except ValueError as e:
            raise ConversionError(str(e)) from None
        uses = functional_uses(net)
        self.net = fold_batchnorm(net, inplace=True)
        self.layer_names, self.digital_layers = self._replace(hardware, uses)
        self._finish(hardware, chips, memory_budget)

    def _replace(self, hardware: Hardware, uses: dict[str, tuple[str, str]]) -> tuple[list[str], list[dict]]:
        """Put every convolution and Linear on arrays, except those kept digital (warned, with the reason)."""
        targets = [(n, m) for n, m in self.net.named_modules() if isinstance(m, CROSSBAR_TYPES)]
        if not targets and not uses:
            raise ConversionError("the model has no convolution or Linear layer to put on crossbars")
        kept = dict(uses)
        if kept:  # not what the hardware asks for: say so
            warnings.warn("these layers stay digital: " + "; ".join(f"{n} ({r})" for n, (_, r) in kept.items()))
        #: every convolution/Linear's effective hardware (its ``analog`` says whether it is on crossbars)
        self.layer_hardware = layer_hardware(self.net, targets, hardware) if targets else {}
        for name, m in targets:
            if name not in kept and not self.layer_hardware[name].analog:
                kept[name] = (type(m).__name__,
                              "analog: false (hardware.layers, analog_first_layer or analog_last_layer)")
        names = []
        for name, module in targets:
            parent, _, child = name.rpartition(".")
            if name in kept:  # canonical shapes here too (determinism); weight and bias stay readable
                setattr(self.net.get_submodule(parent), child, DigitalLayer(module, name))
                continue
            layer = AnalogLayer(module, self.layer_hardware[name], name, self.ctx)
            setattr(self.net.get_submodule(parent), child, layer)
            names.append(name)
        return names, _digital_inventory(self.net, kept)

    def _finish(self, hardware: Hardware, chips: list[int], memory_budget: Optional[int]) -> None:
        self.net.to(self.device)
        for layer in self.analog_layers():
            layer.part.to(self.device)
        self.memory_budget = memory_budget or _memory_budget(self.device)
        self.images_seen = 0  # default image ids number the images in the order the model sees them
        self._act_bytes: dict[tuple, int] = {}
        # Keep programmed chips between forward calls when they fit in half the budget: a task evaluates
        # many batches on the same chips. Per chip: weights per slice (and read-noise variances). On the
        # CPU, kept chips also keep the kernel's own layout of their weights (mcsim.engine.conv.ConvWeight),
        # a second copy, when both copies fit: caching matters more than the reorder it saves.
        chip_bytes = sum(4 * layer.hw.slices * (2 if layer.hw.read_noise.model != "none" else 1)
                         * layer.digital_weight.numel() for layer in self.analog_layers())
        self.ctx.cache = chip_bytes * len(chips) <= self.memory_budget // 2
        self.ctx.pack = self.device.type == "cpu" and 2 * chip_bytes * len(chips) <= self.memory_budget // 2

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
    @ieee_float32()
    def forward(self, x: torch.Tensor, image_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits of every chip on the batch ``x``: the chips evaluate the same images.

        Chips run in blocks that fit the memory budget (:meth:`chip_block`); the numbers do not
        depend on the block (docs/physics.md section 9).

        Args:
            x: a batch ``(B, ...)`` as the digital model takes it (moved to this model's device).
            image_ids: the images' global indices ``(B,)``: read noise of image ``i`` on chip ``t``
                is the same whatever batch it comes in (docs/physics.md section 9). None: the
                images are numbered in the order this model sees them (``images_seen``,
                ``images_seen + 1``, ...), so every batch gets fresh read noise.

        Returns:
            The outputs ``(T, B, ...)``, one slice per chip in the order of ``trials`` (logits
            ``(T, B, classes)`` for a classifier), on this model's device.

        Raises:
            RuntimeError: a model whose inputs or ADC need calibrating and that was neither
                calibrated (:meth:`calibrate`) nor given a calibration (:meth:`load_calibration`).

        Examples:
            >>> import torch, mcsim
            >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
            >>> analog = mcsim.convert(net, {"error": {"model": "proportional", "sigma": 0.05}}, trials=4,
            ...                        device="cpu")
            >>> _ = analog.calibrate([torch.rand(32, 1, 8, 8)])
            >>> analog(torch.rand(5, 1, 8, 8)).shape
            torch.Size([4, 5, 10])
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
            xin = x.unsqueeze(1).expand(b, len(chips), *x.shape[1:]).reshape(-1, *x.shape[1:])  # image-major
            out = self.net(xin)
            outs.append(out.view(b, len(chips), *out.shape[1:]).transpose(0, 1))
        return torch.cat(outs)

    # ------------------------------------------------------------------ calibration (docs/physics.md 5, 7)
    def needs_calibration(self) -> bool:
        return any(hw.input_bits is not None or (hw.adc.bits is not None and hw.adc.range != "explicit")
                   for hw in (layer.hw for layer in self.analog_layers()))

    @torch.no_grad()
    @ieee_float32()
    def calibrate(self, batches: Iterable) -> dict:
        """Set input (DAC) ranges, then ADC ranges, from calibration images (docs/physics.md 5, 7).

        Pass 1 runs the digital model and records each analog layer's inputs; pass 2 runs the
        error-free analog model (quantized inputs, ideal ADC, parasitics included) and records the raw
        column outputs: one range per layer, shared by every chip (the runner calibrates once per
        sweep point). Layers whose ADC is ideal or whose range is not ``calibrated`` skip pass 2.

        Args:
            batches: an iterable of image tensors ``(B, ...)`` or ``(images, labels)`` pairs (a
                ``DataLoader`` works); every image is kept in memory for the two passes.

        Returns:
            The calibration, ``{layer name: {"x_range", "signed", "adc_range"}}`` (as
            :meth:`calibration`): save it with :meth:`save_calibration`, give it to another model of
            the same network and hardware with :meth:`load_calibration`.

        Raises:
            ValueError: ``batches`` holds no image.

        Examples:
            >>> import torch, mcsim
            >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
            >>> analog = mcsim.convert(net, {"adc": {"bits": 6}}, trials=2, device="cpu")
            >>> state = analog.calibrate([torch.rand(32, 1, 8, 8)])
            >>> sorted(state["1"])
            ['adc_range', 'signed', 'x_range']
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

    def save(self, path: str | Path, model=None) -> None:
        """Save these chips, calibrated, to one file that :func:`mcsim.load` turns back into them.

        The file holds the network's state as it was given to :func:`convert`, how to rebuild the
        network, the hardware, seed, chips, calibration and ``images_seen``: loaded on the same
        device, the model's outputs are bit-identical to this one's (docs/saving.md).

        Args:
            path: the file to write (replaced atomically).
            model: how to rebuild the network: ``"builtin:<name>"``, ``"torchvision:<arch>"``, a
                factory ``"package.module:function"`` (called without arguments), or a model spec
                dict as a scenario's ``model:`` section; weights are never read from it (the file
                has them). None: the spec of a network from ``mcsim.models.load_model``.

        Returns:
            None.

        Raises:
            SavedModelError: a model that is not calibrated (call :meth:`calibrate` first), or
                ``model`` None for a network whose spec is unknown, or an invalid ``model``.

        Examples:
            >>> import tempfile, torch, mcsim
            >>> from mcsim.models import digits_cnn
            >>> analog = mcsim.convert(digits_cnn(), {"read_noise": {"model": "proportional", "sigma": 0.05}},
            ...                        trials=3, device="cpu")
            >>> _ = analog.calibrate([torch.rand(16, 1, 8, 8)])
            >>> path = tempfile.mkdtemp() + "/chips.mcsim"
            >>> analog.save(path, model="mcsim.models:digits_cnn")
            >>> x = torch.rand(4, 1, 8, 8)
            >>> torch.equal(mcsim.load(path, device="cpu")(x), analog(x))
            True
        """
        saving.save(self, path, model)


def convert(
    model: nn.Module,
    hardware: Hardware | dict | None = None,
    trials: int | Sequence[int] = 1,
    seed: int = 0,
    *,
    device: str | torch.device | None = "auto",
    memory_budget: Optional[int] = None,
) -> AnalogModel:
    """The analog counterpart of ``model``: the same network on ``trials`` Monte Carlo chips.

    Every convolution (1-, 2- and 3-D, transposed too) and Linear (attention projections included) goes on crossbar arrays: its weights
    quantized, mapped to conductances and programmed with each chip's device errors
    (docs/physics.md sections 1-4); BatchNorm is folded into the layer before it first. What stays
    digital, and why, is in :attr:`AnalogModel.digital_layers` (and a warning). The analog model
    maps a batch ``(B, ...)`` to ``(T, B, classes)``: one slice per chip.

    Args:
        model: a torch classifier; it is copied, never changed.
        hardware: the chip's settings: a :class:`~mcsim.hardware.Hardware`, a dict of its fields,
            or None for the defaults.
        trials: the number of chips (``16``: chips 0..15), or the chips' indices
            (``range(40, 50)``): with the same ``seed``, chip ``t`` is the same chip in every
            model and run (docs/physics.md section 9).
        seed: the study's seed; with a chip's index it keys every random draw of that chip.
        device: ``"auto"`` (CUDA when torch sees a GPU, else the CPU), ``"cpu"``, ``"cuda"`` or a
            ``torch.device``.
        memory_budget: bytes the evaluation may hold at once (chips run in blocks that fit);
            default half the GPU's free memory, or on the CPU a quarter of the RAM, at most 4 GiB.

    Returns:
        An :class:`AnalogModel` in eval mode. Calibrate it (:meth:`AnalogModel.calibrate`) before
        evaluating when its inputs are quantized or its ADC range is calibrated (the defaults).

    Raises:
        ConversionError: a model that cannot be converted (the message names the module and why).
        LayerNameError: a pattern of ``hardware.layers`` that names no convolution or Linear of the model.
        pydantic.ValidationError: a ``hardware`` dict with an invalid setting (the message names it).
        ValueError: ``trials`` with no chip or a negative index.
        RuntimeError: ``device="cuda"`` where torch sees no GPU.

    Examples:
        >>> import torch, mcsim
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> analog = mcsim.convert(net, {"error": {"model": "proportional", "sigma": 0.05}}, trials=4,
        ...                        device="cpu")
        >>> analog.layer_names
        ['1']
        >>> _ = analog.calibrate([torch.rand(32, 1, 8, 8)])
        >>> analog(torch.rand(5, 1, 8, 8)).shape  # (chips, batch, classes)
        torch.Size([4, 5, 10])
    """
    if hardware is None:
        hardware = Hardware()
    elif isinstance(hardware, dict):
        hardware = Hardware(**hardware)
    return AnalogModel(model, hardware, trials, seed, device, memory_budget).eval()
