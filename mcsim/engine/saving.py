"""A converted analog model as one file: what :meth:`AnalogModel.save` writes and :func:`mcsim.load` reads.

The file is a ``torch.save`` archive of two entries, read back with ``torch.load(weights_only=True)``
(tensors, strings and numbers only: loading runs no pickled code):

* ``meta``: a JSON string: the format and the versions of mcsim and torch that wrote it; how to
  rebuild the network (``model``: a model spec, as a scenario's ``model:`` section) and its
  ``layout`` (each module's class and plain settings); the hardware (``Hardware``, per-layer
  overrides and table hashes included), seed, chips, calibration and ``images_seen``; a sha256 of
  the state.
* ``state``: the network's ``state_dict`` as it was given to :func:`convert` (before BatchNorm
  folding), on the CPU.

Loading rebuilds the network from its spec, checks its layout, loads the state and converts it
again with the saved hardware, seed and chips: chips are keyed draws of (seed, chip) (docs/physics.md
section 9), so the same chips come back without storing them. Measured tables are referenced by
absolute path and content hash (the hardware refuses a table that changed); factory functions by
their ``package.module:function`` name (their code is not checked). Only the mcsim and torch
versions that wrote a file read it: the draws and kernels behind "the same chips" may change
between versions.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from mcsim._version import __version__
from mcsim.errors import InputError
from mcsim.specs import ModelSpec

__all__ = ["FORMAT", "SavedModelError", "Source", "layout", "read", "save", "state_digest"]

FORMAT = "mcsim analog model 1"  # bump when the file's entries change meaning
_PLAIN = (bool, int, float, str, type(None))


class SavedModelError(InputError, ValueError):
    """A saved analog model that cannot be written or read as asked: the message names the file and why."""


def _plain(value: Any) -> bool:
    return isinstance(value, _PLAIN) or (isinstance(value, (tuple, list)) and all(_plain(v) for v in value))


def layout(model: nn.Module) -> dict[str, dict]:
    """Each module's class and public plain settings (sizes, strides, flags: the values of its
    attributes that are numbers, strings or tuples of them), by module path: what a network rebuilt
    from its spec must match besides its state's names and shapes."""
    out = {}
    for name, m in model.named_modules():
        entry = {"class": f"{type(m).__module__}.{type(m).__qualname__}"}
        entry.update({k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training" and _plain(v)})
        out[name] = entry
    return json.loads(json.dumps(out))  # tuples as lists: as read back


@dataclass(frozen=True)
class Source:
    """The network as :func:`convert` got it: its spec when known (``mcsim.models.load_model`` tags
    its models with ``mcsim_spec``), its layout and a CPU copy of its state."""

    spec: Optional[ModelSpec]
    layout: dict[str, dict]
    state: dict[str, torch.Tensor]

    @classmethod
    def of(cls, model: nn.Module) -> "Source":
        state = {k: v.detach().to("cpu", copy=True) if torch.is_tensor(v) else v  # extra state: refused by save
                 for k, v in model.state_dict().items()}
        return cls(getattr(model, "mcsim_spec", None), layout(model), state)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of the names, dtypes, shapes and bytes of ``state``'s tensors."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _spec(model: ModelSpec | dict | str | None, source: Source) -> ModelSpec:
    if model is None:
        if source.spec is None:
            raise SavedModelError(
                "save: mcsim cannot tell how to rebuild this network: pass model='package.module:function' (a "
                "function returning the network, called without arguments), model='builtin:<name>' or "
                "'torchvision:<arch>', or a model spec dict as in a scenario's model: section")
        return source.spec
    if isinstance(model, ModelSpec):
        return model
    try:
        if isinstance(model, str):
            kind = model.partition(":")[0]
            return ModelSpec(**({"name": model} if kind in ("builtin", "torchvision") else {"factory": model}))
        return ModelSpec(**model)
    except (ValueError, TypeError) as err:
        raise SavedModelError(f"save: model={model!r} is not a model spec: {err}") from None


def _absolute_tables(data: Any) -> Any:
    """``data`` (a hardware dump) with every measured table's ``file`` made absolute: the saved
    model reads it from wherever it is loaded (its ``sha256`` checks the content)."""
    if not isinstance(data, dict):
        return data
    out = {k: _absolute_tables(v) for k, v in data.items()}
    if isinstance(out.get("file"), str) and "sha256" in out:
        out["file"] = str(Path(out["file"]).resolve())
    return out


def save(analog, path: str | Path, model: ModelSpec | dict | str | None = None) -> None:
    """Write ``analog`` (an :class:`~mcsim.engine.convert.AnalogModel`) to ``path``, atomically (the
    module docstring: what the file holds). See :meth:`AnalogModel.save`."""
    names = [n for n, layer in zip(analog.layer_names, analog.analog_layers()) if not layer.calibrated]
    if names:
        raise SavedModelError(f"save: the model is not calibrated (layers {', '.join(names[:3])}"
                              f"{', ...' if len(names) > 3 else ''}): call .calibrate() or .load_calibration() "
                              "before saving, so that the saved chips are the ones evaluated")
    other = [k for k, v in analog.source.state.items() if not torch.is_tensor(v)]
    if other:
        raise SavedModelError(f"save: the network's state holds entries that are not tensors ({', '.join(other[:3])}): "
                              "a saved model holds tensors only (it loads with torch.load(weights_only=True))")
    spec = _spec(model, analog.source)
    meta = {
        "format": FORMAT, "mcsim": __version__, "torch": str(torch.__version__),
        "model": spec.model_dump(mode="json", exclude_defaults=True), "layout": analog.source.layout,
        "hardware": _absolute_tables(analog.hardware.model_dump(mode="json")),
        "seed": analog.ctx.seed, "chips": analog.chips.tolist(), "calibration": analog.calibration(),
        "images_seen": analog.images_seen, "layer_names": analog.layer_names,
        "state_sha256": state_digest(analog.source.state),
    }
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"meta": json.dumps(meta), "state": analog.source.state}, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The ``(meta, state)`` of the saved model at ``path``, checked: its format, the mcsim and torch
    versions that wrote it (they must be this one's) and its state's hash.

    Raises:
        SavedModelError: no such file, not a saved mcsim model, a damaged file, or one written by
            another mcsim or torch version.
    """
    path = Path(path)
    if not path.is_file():
        raise SavedModelError(f"{path}: no such file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, damaged, or not a torch archive
        raise SavedModelError(f"{path}: not a saved mcsim model, or a damaged one (torch.load: {err})") from None
    try:
        meta = json.loads(blob["meta"])
        state = blob["state"]
        assert isinstance(meta, dict) and isinstance(state, dict)
        fmt = meta["format"]
    except Exception:
        raise SavedModelError(f"{path}: not a saved mcsim model (no mcsim header; AnalogModel.save writes them)") from None
    if fmt != FORMAT:
        raise SavedModelError(f"{path}: format {fmt!r}, this mcsim reads {FORMAT!r}")
    if (meta.get("mcsim"), meta.get("torch")) != (__version__, str(torch.__version__)):
        raise SavedModelError(
            f"{path}: saved by mcsim {meta.get('mcsim')} with torch {meta.get('torch')}; this is mcsim {__version__} "
            f"with torch {torch.__version__}. The same chips are only promised within one version: convert the "
            "network again here (the file's 'state' and JSON 'meta' entries hold its weights, hardware, seed, "
            "chips and calibration; docs/saving.md)")
    if state_digest(state) != meta.get("state_sha256"):
        raise SavedModelError(f"{path}: damaged: the network's state does not match its recorded sha256")
    return meta, state
