"""mcsim.analysis: selecting points by their labels and bracketing a swept axis (the findings' analysis)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from mcsim import analysis


def dataset():
    """sigma x on_off_ratio (NaN: infinite) x a zipped point (mapping, slices), 4 chips, 10,000 images:
    chip accuracies 0.95 - sigma (+-0.001), the offset points 0.05 lower."""
    sig, ratio = [0.0, 0.1, 0.2, 0.3], [10.0, np.nan]
    chips = np.array([-0.001, 0.0, 0.0, 0.001])
    acc = 0.95 - np.array(sig)[:, None, None, None] - np.array([0.0, 0.05])[None, None, :, None] + chips
    acc = np.broadcast_to(acc, (4, 2, 2, 4))
    return xr.Dataset(
        {"top1": (("sigma", "on_off_ratio", "point", "trial"), acc),
         "n_images": (("sigma", "on_off_ratio", "point"), np.full((4, 2, 2), 10_000)),
         "digital_top1": ((), 0.95)},
        coords={"sigma": sig, "on_off_ratio": ratio, "mapping": ("point", ["differential", "offset"]),
                "slices": ("point", [1, 4])})


def test_pick_selects_grid_null_and_zipped_labels():
    ds = dataset()
    p = analysis.pick(ds, sigma=0.1, on_off_ratio=None, mapping="offset", slices=4)
    assert math.isnan(float(p["on_off_ratio"])) and str(p["mapping"].values) == "offset"
    st = analysis.stat(ds, sigma=0.1, on_off_ratio=10.0, mapping="offset")
    assert (st.mean, st.trials, st.n_images) == (pytest.approx(0.80), 4, 10_000)
    assert st.std == pytest.approx(np.std([-0.001, 0, 0, 0.001], ddof=1))
    assert st.se == pytest.approx(math.sqrt(st.std**2 / 4 + 0.8 * 0.2 / 10_000))
    with pytest.raises(KeyError, match="0 matching points"):
        analysis.pick(ds, sigma=0.1, on_off_ratio=10.0, slices=5)


def test_threshold_brackets_against_digital_minus_the_tolerance():
    """The floor is 0.95 - 0.02 = 0.93: sigma 0 (0.95) is clearly above, 0.1 (0.85) clearly below."""
    ds = dataset()
    t = analysis.threshold(ds, "sigma", [0.3, 0.0, 0.2, 0.1], "up", on_off_ratio=None, mapping="differential")
    assert (t.ok, t.fail, t.axis_values, t.short()) == (0.0, 0.1, (0.0, 0.1, 0.2, 0.3), "0–0.1")
    assert analysis.tolerated(ds, "sigma", [0.0, 0.1], on_off_ratio=10.0, mapping="offset") is None  # 0.90 < 0.93
    assert analysis.values(ds, "mapping") == ["differential", "offset"]
