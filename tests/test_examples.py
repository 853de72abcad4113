"""The Examples sections of the public API's docstrings run as written (doctest)."""
from __future__ import annotations

import doctest
import warnings

import pytest

from mcsim.engine import convert, counting
from mcsim.hardware import Hardware
from mcsim.loading import load

DOCUMENTED = {
    "convert": convert.convert,
    "AnalogModel.calibrate": convert.AnalogModel.calibrate,
    "AnalogModel.forward": convert.AnalogModel.forward,
    "AnalogModel.save": convert.AnalogModel.save,
    "load": load,
    "count_energy": counting.counting,
    "Hardware.for_layer": Hardware.for_layer,
}


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_examples_run(name):
    function = DOCUMENTED[name]
    for section in ("Args:", "Returns:", "Raises:", "Examples:"):
        assert section in function.__doc__, (name, section)
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "these layers stay digital": not what is checked
        for test in finder.find(function, name, globs={"Hardware": Hardware}):
            runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0, name
