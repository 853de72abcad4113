"""mcsim: Monte Carlo accuracy of neural networks on analog in-memory-computing chips.

Public API:

* :class:`~mcsim.hardware.Hardware`: the chip's settings (a pydantic model).
* :func:`~mcsim.engine.convert.convert`: a torch model -> an analog model of Monte Carlo chips.
* :func:`~mcsim.loading.load`: an analog model saved with :meth:`~mcsim.engine.convert.AnalogModel.save`.
* :func:`~mcsim.engine.counting.count_energy`: count what the chips do, for the energy per image.
* :func:`~mcsim.scenario.load_scenario`: read and validate a scenario YAML file.
* :func:`~mcsim.api.run_scenario`: run (or resume) a scenario into its result store.
* :func:`~mcsim.api.open_result`: the result dataset of a run.

Errors derive from :class:`mcsim.errors.MCSimError` (:mod:`mcsim.errors`).

The names load on first use (``__getattr__``): ``import mcsim`` takes about 2 ms, where importing
them all at once (torch, torchvision, xarray, zarr) takes about 2 s (``python -X importtime -c
"import mcsim"``, 5 runs each: 1.5-6.5 ms lazy, 1.8-2.4 s explicit), and the CLI's ``--help`` needs
none of it. ``__dir__`` and ``__all__`` list them for ``help(mcsim)`` and tab completion; the
imports under ``TYPE_CHECKING`` show them to IDEs and type checkers.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from mcsim._version import __version__

if TYPE_CHECKING:
    from mcsim.api import open_result, run_scenario
    from mcsim.engine.convert import convert
    from mcsim.engine.counting import count_energy
    from mcsim.hardware import Hardware
    from mcsim.loading import load
    from mcsim.scenario import load_scenario

_LAZY = {
    "Hardware": "mcsim.hardware",
    "convert": "mcsim.engine.convert",
    "count_energy": "mcsim.engine.counting",
    "load": "mcsim.loading",
    "load_scenario": "mcsim.scenario",
    "run_scenario": "mcsim.api",
    "open_result": "mcsim.api",
}
__all__ = ["Hardware", "__version__", "convert", "count_energy", "load", "load_scenario", "open_result", "run_scenario"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mcsim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
