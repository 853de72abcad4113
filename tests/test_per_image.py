"""Per-image outcomes (``output: {path: ..., per_image: true}``): each chip's top-1 outcome per image,
packed as bits, with the images' classes. The bits are checked against the stored correct counts and
the classes against the data set; keeping them changes no other number. Real runs on digits."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import yaml

from mcsim.api import run_scenario
from mcsim.data import evaluation_dataset
from mcsim.report import per_class, summarize
from mcsim.scenario import ScenarioError, load_scenario, parse_scenario
from runner_support import BASE, merge, results_only, run_cli, write_scenario

#: shards of 50 images (not a multiple of 8: bytes straddle the shards), adaptive trials (chips not
#: run), two points
SMALL = {"sweep": {"grid": {"hardware.error.sigma": [0.0, 0.3]}}, "hardware": {"mapping": "offset"},
         "trials": {"target_se": 0.02, "min": 2, "max": 6},
         "execution": {"shard_images": 50, "trials_per_task": 2, "workers": 1}}


def text(output) -> str:
    data = merge(BASE, {"output": output})
    return yaml.safe_dump(data, sort_keys=False)


def test_output_is_a_path_or_a_mapping_with_per_image():
    plain = parse_scenario(text("out.zarr"))
    assert plain.output == "out.zarr" and plain.per_image is False
    kept = parse_scenario(text({"path": "out.zarr", "per_image": True}))
    assert kept.output == "out.zarr" and kept.per_image is True
    assert parse_scenario(kept.text) == kept
    assert kept.fingerprint == plain.fingerprint  # what a store keeps changes no number
    named = parse_scenario(text({"per_image": True}))
    assert named.output == "outputs/tiny.zarr"  # the default path
    with pytest.raises(ScenarioError, match="output: per_images is not a setting of output"):
        parse_scenario(text({"path": "out.zarr", "per_images": True}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("per-image")
    kept = write_scenario(d, "kept.yaml", output=d / "kept.zarr", per_image=True, **SMALL)
    plain = write_scenario(d, "plain.yaml", output=d / "plain.zarr", **SMALL)
    return kept, run_scenario(kept, progress=False), run_scenario(plain, progress=False)


@pytest.mark.slow
def test_bits_reproduce_the_correct_counts_and_the_labels_the_data(runs):
    path, ds, _ = runs
    n = ds.sizes["image"]
    bits = np.unpackbits(ds["image_top1"].values, axis=-1, count=n)
    np.testing.assert_array_equal(bits.sum(-1), ds["correct_top1"].values)  # the chips not run: 0 and 0
    assert (ds["n_trials"] < ds.sizes["trial"]).any()  # some point stopped early: its later chips are zero
    data = evaluation_dataset(load_scenario(path).data)
    np.testing.assert_array_equal(ds["label"].values, [int(data[i][1]) for i in range(n)])
    np.testing.assert_array_equal(ds["image"].values, np.arange(n))


@pytest.mark.slow
def test_keeping_outcomes_changes_no_number(runs):
    _, kept, plain = runs
    xr.testing.assert_identical(results_only(kept), results_only(plain))
    xr.testing.assert_identical(kept["n_trials"], plain["n_trials"])


@pytest.mark.slow
def test_per_class_accuracy_adds_up_to_the_mean(runs):
    path, ds, _ = runs
    df = per_class(ds)
    overall = summarize(ds, metrics=("top1",))
    for i, (_, row) in enumerate(overall.iterrows()):
        rows = df.iloc[i * 10:(i + 1) * 10]  # the digits: 10 classes per point
        assert rows["images"].sum() == ds.sizes["image"] and rows["trials"].iloc[0] == row["trials"]
        assert np.isclose((rows["mean"] * rows["images"]).sum() / rows["images"].sum(), row["mean"], rtol=0, atol=1e-12)
    store = load_scenario(path).output
    res = run_cli("report", store, "--per-class")
    assert res.returncode == 0, res.stderr
    assert "per class" in res.stdout
    res = run_cli("report", store.replace("kept", "plain"), "--per-class")
    assert res.returncode == 2 and "per_image: true" in res.stderr, res.stderr
