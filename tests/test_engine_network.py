"""The study's network-level findings on a trained built-in model (mnist-cnn on mnist5k)."""
import numpy as np
import pytest
import torch

from mcsim import Hardware, convert
from workloads import mnist_cnn

pytestmark = pytest.mark.slow  # sweeps of a trained network


@pytest.fixture(scope="module")
def workload():
    return mnist_cnn(images=400, calibration=200)


def _accuracy(workload, hw, trials):
    model, xs, ys, cal = workload
    analog = convert(model, hw, trials=trials, seed=0)
    analog.calibrate([cal])
    return (analog(xs).argmax(-1) == ys).double().mean(1).numpy()  # one accuracy per chip


def test_offset_degrades_more_than_differential_under_proportional_error(workload):
    err = {"model": "proportional", "sigma": 0.1}
    diff = _accuracy(workload, Hardware(mapping="differential", error=err), trials=30)
    off = _accuracy(workload, Hardware(mapping="offset", error=err), trials=30)
    gap = diff.mean() - off.mean()
    se = np.sqrt(diff.var(ddof=1) / len(diff) + off.var(ddof=1) / len(off))
    assert gap > 4 * se, (diff.mean(), off.mean(), se)


def test_accuracy_falls_with_parasitic_resistance_more_for_offset(workload):
    acc = {
        (mapping, rp): _accuracy(workload, Hardware(mapping=mapping, parasitics={"rp": rp}), trials=1)[0]
        for mapping in ("differential", "offset")
        for rp in (0.0, 1e-5, 1e-4, 1e-3)
    }
    assert acc["differential", 1e-3] < acc["differential", 1e-4] - 0.03
    assert acc["differential", 1e-4] <= acc["differential", 0.0] + 0.01
    assert acc["offset", 0.0] > 0.9
    assert acc["offset", 1e-5] < acc["differential", 1e-5] - 0.3  # offset collapses first
