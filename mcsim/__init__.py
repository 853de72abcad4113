"""mcsim: Monte Carlo accuracy of neural networks on analog in-memory-computing chips.

Public API: ``Hardware``, ``convert``, ``count_energy``, ``load_scenario``, ``run_scenario``, ``open_result``.
Heavy modules (torch, xarray) load on first use, so ``import mcsim`` stays light.
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "Hardware": "mcsim.hardware",
    "convert": "mcsim.engine.convert",
    "count_energy": "mcsim.engine.counting",
    "load_scenario": "mcsim.scenario",
    "run_scenario": "mcsim.api",
    "open_result": "mcsim.api",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mcsim' has no attribute {name!r}")
