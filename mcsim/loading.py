"""``mcsim.load``: a saved analog model back as the same chips (the file: :mod:`mcsim.engine.saving`).

Above the workloads (the network is rebuilt from its spec by :mod:`mcsim.models`) and the engine
(it is converted again by :func:`mcsim.engine.convert.convert`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from mcsim.engine.convert import AnalogModel, convert
from mcsim.engine.saving import SavedModelError, layout, read
from mcsim.hardware import Hardware
from mcsim.models import BUILTINS, load_model
from mcsim.specs import ModelSpec

__all__ = ["load"]


def architecture(spec: ModelSpec) -> nn.Module:
    """The network of ``spec`` with fresh weights: a built-in is never trained, a torchvision model
    or a factory's network never reads a weights file. The global RNG is left as it was."""
    kind, _, arch = (spec.name or "").partition(":")
    with torch.random.fork_rng(devices=[]):
        if kind == "builtin":
            return BUILTINS[arch].build().eval()
        return load_model(spec.model_copy(update={"weights": None, "checkpoint": None}))


def _differences(saved: dict, built: dict) -> list[str]:
    """What differs between two layouts (mcsim.engine.saving.layout), saved module order first."""
    out = []
    for name, a in saved.items():
        where = f"module {name or '<root>'!r}"
        if name not in built:
            out.append(f"{where} missing from the rebuilt network")
            continue
        b = built[name]
        out += [f"{where}: {k} {a.get(k)!r} saved, {b.get(k)!r} rebuilt" for k in {**a, **b} if a.get(k) != b.get(k)]
    return out + [f"module {name!r} only in the rebuilt network" for name in built if name not in saved]


def load(path: str | Path, *, device: str | torch.device | None = "auto",
         memory_budget: Optional[int] = None) -> AnalogModel:
    """The analog model saved at ``path`` (:meth:`AnalogModel.save`): the same network, hardware,
    seed, chips and calibration, and the same ``images_seen``, so that on the same device its
    outputs are bit-identical to the saved model's.

    The network is rebuilt from its spec, checked against the saved layout (each module's class
    and settings), given the saved state and converted again; measured tables are read from their
    saved (absolute) paths and must have the saved content (docs/saving.md).

    Args:
        path: a file written by :meth:`AnalogModel.save`.
        device: as :func:`mcsim.convert`: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        memory_budget: as :func:`mcsim.convert` (chips run in blocks that fit; the numbers do not
            depend on it).

    Returns:
        An :class:`AnalogModel` in eval mode, calibrated as saved.

    Raises:
        SavedModelError: no such file, a damaged or foreign file, one written by another mcsim or
            torch version, a network that no longer rebuilds as saved (its factory changed), or
            hardware that no longer loads (a measured table changed or moved, a factory is gone).
        RuntimeError: ``device="cuda"`` where torch sees no GPU.

    Examples:
        >>> import tempfile, torch, mcsim
        >>> from mcsim.models import digits_cnn
        >>> analog = mcsim.convert(digits_cnn(), {"error": {"model": "proportional", "sigma": 0.1}}, trials=2,
        ...                        seed=7, device="cpu")
        >>> _ = analog.calibrate([torch.rand(16, 1, 8, 8)])
        >>> path = tempfile.mkdtemp() + "/chips.mcsim"
        >>> analog.save(path, model="builtin:digits-cnn")
        >>> loaded = mcsim.load(path, device="cpu")
        >>> loaded.chips.tolist(), loaded.layer_names
        ([0, 1], ['0', '3', '7'])
    """
    meta, state = read(path)
    spec = ModelSpec(**meta["model"])
    try:
        net = architecture(spec)
    except Exception as err:
        raise SavedModelError(f"{path}: cannot rebuild its network from {spec.factory or spec.name}: {err}") from None
    problems = _differences(meta["layout"], layout(net))
    if problems:
        raise SavedModelError(f"{path}: the network rebuilt from {spec.factory or spec.name} is not the one saved: "
                              + "; ".join(problems[:5]))
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise SavedModelError(f"{path}: the network rebuilt from {spec.factory or spec.name} does not take the "
                              f"saved state: {err}") from None
    try:
        hardware = Hardware.model_validate(meta["hardware"])
    except ValueError as err:  # pydantic's ValidationError: a table changed or moved, a factory gone
        raise SavedModelError(f"{path}: its hardware no longer loads:\n{err}") from None
    analog = convert(net, hardware, meta["chips"], meta["seed"], device=device, memory_budget=memory_budget)
    if analog.layer_names != meta["layer_names"]:
        raise SavedModelError(f"{path}: converted again, the network has analog layers {analog.layer_names}, "
                              f"the saved model {meta['layer_names']}")
    analog.load_calibration(meta["calibration"])
    analog.images_seen = meta["images_seen"]
    return analog
