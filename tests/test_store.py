"""mcsim.runner.store: the Zarr layout, the ledger, calibration round trip, refusals, open_result."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from mcsim.api import open_result, run_scenario
from mcsim.runner.plan import make_plan
from mcsim.runner.store import ResultStore, StoreError, coord_array, inspect_store
from mcsim.runner.worker import CalibrationResult
from mcsim.scenario import load_scenario
from runner_support import RESULT_VARS, write_scenario


def tree(path):
    """Every file under ``path`` with its size and mtime (to prove a store untouched)."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished small run, written to an fsspec in-memory store (no local file system)."""
    d = tmp_path_factory.mktemp("finished")
    url = f"memory://{d.name}/store.zarr"
    path = write_scenario(d, output=url, data={"limit": 120, "batch_size": 40}, trials=4,
                          execution={"shard_images": 80, "trials_per_task": 3})
    ds = run_scenario(path, progress=False)
    return load_scenario(path), url, ds


def test_layout_chunks_ledger_and_attributes(finished):
    sc, url, _ = finished
    group = zarr.open_group(url, mode="r")
    ledger = group["ledger"]
    # sweep dims (sigma 2, point 2), 4 trials in blocks of 3, 120 images in shards of 80 (whole batches of 40)
    assert ledger["correct_top1"].shape == (2, 2, 4, 2)
    assert ledger["correct_top1"].chunks == (1, 1, 3, 1)
    assert ledger["done"].shape == (2, 2, 2, 2) and ledger["done"].chunks == (1, 1, 1, 1)
    assert np.asarray(ledger["done"][...]).all() and np.asarray(ledger["digital_done"][...]).all()
    assert list(np.asarray(ledger["shard_images"][...])) == [80, 40]
    assert ledger["correct_top1"].metadata.dimension_names == ("sigma", "point", "trial", "shard")
    # the result at the root: one chunk per point and trial block
    assert group["top1"].shape == (2, 2, 4) and group["top1"].chunks == (1, 1, 3)
    assert group["correct_top1"].chunks == (1, 1, 3) and group["complete"].chunks == (1, 1)
    assert group["top1"].metadata.dimension_names == ("sigma", "point", "trial")
    attrs = dict(group.attrs)
    assert attrs["fingerprint"] == sc.fingerprint and attrs["scenario"] == sc.text
    assert attrs["state"] == "complete" and attrs["device"] == "cpu"
    assert attrs["mcsim_version"] and attrs["torch_version"]
    assert attrs["created"] <= attrs["calibration_written"] <= attrs["finished"]
    assert attrs["runs"][0]["status"] == "finished" and attrs["runs"][0]["started"] <= attrs["runs"][0]["ended"]
    assert attrs["layout"]["shard_size"] == 80 and attrs["layout"]["trials_per_task"] == 3


def test_plain_xarray_opens_the_result(finished):
    """``xr.open_zarr`` alone gives the labelled result: consolidated metadata, no warning."""
    _, url, ds = finished
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = xr.open_zarr(url).load()
    for var in RESULT_VARS + ["complete"]:
        np.testing.assert_array_equal(plain[var].values, ds[var].values)
        assert plain[var].dims == ds[var].dims
    assert plain["complete"].all() and plain.attrs == ds.attrs
    assert list(plain["mapping"].values) == ["differential", "offset"]
    mean = plain["top1"].sel(sigma=0.0).mean("trial")
    assert mean.dims == ("point",) and (mean > 0.5).all()
    assert set(xr.open_zarr(url, group="ledger").data_vars) >= {"done", "correct_top1", "digital_done"}


def test_open_result_variables_and_coordinates(finished):
    sc, url, ds = finished
    assert dict(ds["top1"].sizes) == {"sigma": 2, "point": 2, "trial": 4}
    assert list(ds["sigma"].values) == [0.0, 0.3]
    assert list(ds["mapping"].values) == ["differential", "offset"] and ds["mapping"].dims == ("point",)
    assert list(ds["bits"].values) == [6, 8] and ds["bits"].dims == ("point",)
    assert list(ds["trial"].values) == [0, 1, 2, 3]
    assert list(ds["layer"].values) == ["0", "3", "7"]  # digits-cnn: conv, conv, linear
    assert ds["adc_lo"].dims == ("sigma", "point", "layer", "slice")
    assert (ds["n_images"] == 120).all()
    np.testing.assert_array_equal(ds["top1"].values, ds["correct_top1"].values / 120)
    assert ((0 <= ds["top1"]) & (ds["top1"] <= ds["top5"]) & (ds["top5"] <= 1)).all()
    assert 0.9 < float(ds["digital_top1"]) <= 1
    assert (ds["adc_lo"] < ds["adc_hi"]).all() and (ds["x_range"] > 0).all() and ds["analog"].all()
    reopened = open_result(url)
    assert reopened.attrs["fingerprint"] == sc.fingerprint


def test_calibration_round_trip_is_exact(tmp_path):
    """Calibrations of points with different layers, slices and none at all come back exactly."""
    sc = load_scenario(write_scenario(tmp_path))
    plan = make_plan(sc, 10)
    store = ResultStore.create(str(tmp_path / "cal.zarr"), sc, plan)
    tasks = plan.calibration_tasks()
    states = [
        {"a": {"x_range": 1.0 / 3, "signed": True, "adc_range": ([-1.5, -0.1], [2.25, 0.2])},
         "b": {"x_range": 4.5, "signed": False, "adc_range": None}},
        None,  # needs no calibration
        {"b": {"x_range": 2.0, "signed": None, "adc_range": ([math.pi], [math.e])},
         "c": {"x_range": None, "signed": None, "adc_range": None}},
        {"a": {"x_range": 0.1, "signed": False, "adc_range": ([0.0], [1e-12])}},
    ]
    layers = [["a", "b"], ["a", "b", "c"], ["b", "c"], ["a"]]
    results = [CalibrationResult(t, names, st, 0.0) for t, names, st in zip(tasks, layers, states)]
    store.write_calibration(list(reversed(results)))
    back = store.read_calibration()
    for t, st in zip(tasks, states):
        assert back[t.point] == (None if st is None else st)
    ds = open_result(str(tmp_path / "cal.zarr"), partial=True)
    assert list(ds["layer"].values) == ["a", "b", "c"] and ds.sizes["slice"] == 2
    assert store.attrs()["fingerprint"] == sc.fingerprint  # adding arrays keeps the attributes


def test_unfinished_store_is_refused_unless_partial(tmp_path):
    sc = load_scenario(write_scenario(tmp_path))
    store = ResultStore.create(str(tmp_path / "s.zarr"), sc, make_plan(sc, 200))
    with pytest.raises(StoreError, match="not finished"):
        open_result(store.path)
    ds = open_result(store.path, partial=True)
    assert (ds["n_images"] == 0).all() and np.isnan(ds["top1"].values).all()


def test_store_of_another_scenario_is_refused_and_untouched(tmp_path):
    sc = load_scenario(write_scenario(tmp_path))
    ResultStore.create(str(tmp_path / "out.zarr"), sc, make_plan(sc, 200))
    before = tree(tmp_path / "out.zarr")
    other = write_scenario(tmp_path, name="other.yaml", seed=4)
    with pytest.raises(StoreError, match=r"another scenario.*overwrite=True"):
        run_scenario(other, progress=False)
    with pytest.raises(StoreError, match="another scenario"):
        run_scenario(other, dry_run=True, progress=False)
    assert tree(tmp_path / "out.zarr") == before


def test_a_directory_that_is_not_a_store_is_never_deleted(tmp_path):
    (tmp_path / "out.zarr").mkdir()
    (tmp_path / "out.zarr" / "precious.txt").write_text("keep me")
    path = write_scenario(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="not a Zarr store"):
            run_scenario(path, overwrite=overwrite, progress=False)
    assert (tmp_path / "out.zarr" / "precious.txt").read_text() == "keep me"


def test_file_urls_are_local_paths(tmp_path):
    sc = load_scenario(write_scenario(tmp_path))
    store = ResultStore.create(f"file://{tmp_path / 'deep' / 'out.zarr'}", sc, make_plan(sc, 200))
    assert store.path == str(tmp_path / "deep" / "out.zarr")
    assert (tmp_path / "deep" / "out.zarr" / "ledger" / "done" / "zarr.json").is_file()
    assert inspect_store(f"file://{tmp_path / 'deep' / 'out.zarr'}").kind == "mcsim"


def test_inspect_store_kinds(tmp_path, finished):
    assert inspect_store(str(tmp_path / "nothing")).kind == "absent"
    (tmp_path / "empty").mkdir()
    assert inspect_store(str(tmp_path / "empty")).kind == "empty"
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    assert inspect_store(str(tmp_path / "plain.zarr")).kind == "zarr"
    assert inspect_store(finished[1]).kind == "mcsim"


def test_coord_array():
    assert coord_array([0, 0.05]).dtype == np.float64
    assert coord_array([4, 8]).dtype == np.int64
    assert np.isnan(coord_array([4, None])[1])
    assert coord_array([True, False]).dtype == bool
    assert list(coord_array(["differential", "offset"])) == ["differential", "offset"]
    assert list(coord_array([{"bits": 4}, None])) == ['{"bits": 4}', "null"]


def _eval_result(task, top1: int, top5: int):
    from mcsim.runner.worker import EvalResult

    n = task.n_trials
    return EvalResult(task, np.full(n, top1), np.full(n, top5), task.n_images, 0.0)


def test_an_interrupted_store_opens_with_plain_xarray(tmp_path):
    """Half the tasks written: the result shows which points are complete, NaN where nothing is."""
    from mcsim.runner.worker import DigitalResult

    sc = load_scenario(write_scenario(tmp_path))
    plan = make_plan(sc, 200)  # shards of 100, trial blocks of 3 (of 6 trials)
    store = ResultStore.create(str(tmp_path / "s.zarr"), sc, plan)
    tasks = plan.eval_tasks()
    for t in tasks:
        if t.point == 0 or (t.point == 1 and t.block == 0 and t.shard == 0):
            store.write_eval(_eval_result(t, 60 + t.shard, 90))
    store.write_digital(DigitalResult(plan.digital_tasks()[0], 97, 100, 100, 0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(store.path).load()
    assert ds["complete"].values.tolist() == [[True, False], [False, False]]
    np.testing.assert_array_equal(ds["n_images"].values[0, 0], [200] * 6)
    np.testing.assert_array_equal(ds["top1"].values[0, 0], [121 / 200] * 6)
    np.testing.assert_array_equal(ds["n_images"].values[0, 1], [100] * 3 + [0] * 3)  # one shard of block 0
    np.testing.assert_array_equal(ds["top1"].values[0, 1, :3], [0.6] * 3)
    assert np.isnan(ds["top1"].values[0, 1, 3:]).all() and np.isnan(ds["top1"].values[1]).all()
    assert float(ds["digital_top1"]) == 0.97  # over the digital shards done
    # the ledger has the same story, and open_result refuses it unless partial
    assert int(xr.open_zarr(store.path, group="ledger")["done"].sum()) == len(tasks) // 4 + 1
    with pytest.raises(StoreError, match="not finished"):
        open_result(store.path)
    xr.testing.assert_equal(open_result(store.path, partial=True)["top1"], ds["top1"])


def test_a_store_refreshes_its_result_from_the_ledger(tmp_path):
    """A result chunk that lags its ledger (a kill between the two writes) is recomputed."""
    sc = load_scenario(write_scenario(tmp_path))
    plan = make_plan(sc, 200)
    store = ResultStore.create(str(tmp_path / "s.zarr"), sc, plan)
    store.write_eval(_eval_result(plan.eval_tasks()[0], 50, 80))
    zarr.open_group(store.path, mode="r+")["top1"][0, 0, :] = np.nan  # as if the result write was lost
    ResultStore(store.path, plan).refresh()
    np.testing.assert_array_equal(xr.open_zarr(store.path)["top1"].values[0, 0, :3], [0.5] * 3)


@pytest.mark.slow
@pytest.mark.parametrize("attrs, message", [
    ({"mcsim_version": "0.0.1"}, r"computed with mcsim 0\.0\.1, this is mcsim .*overwrite=True"),
    ({"torch_version": "1.0.0"}, r"computed with torch 1\.0\.0, this is torch .*overwrite=True"),
    ({"device": "cuda"}, r"computed on cuda, this run computes on cpu.*overwrite=True"),
])
def test_a_store_of_another_version_or_device_is_not_resumed(tmp_path, attrs, message):
    """Resuming would silently mix numbers of two versions or device types: refused, store
    untouched; overwrite=True starts again."""
    from mcsim.runner.driver import versions

    path = write_scenario(tmp_path, trials=2, data={"limit": 50}, execution={"device": "cpu"})
    sc = load_scenario(path)
    ResultStore.create(sc.output, sc, make_plan(sc, 50), extra_attrs={**versions(), **attrs})
    before = tree(tmp_path / "out.zarr")
    with pytest.raises(StoreError, match=message):
        run_scenario(path, progress=False)
    assert tree(tmp_path / "out.zarr") == before
    ds = run_scenario(path, progress=False, overwrite=True)
    assert ds["complete"].all() and ds.attrs["device"] == "cpu" and ds.attrs["mcsim_version"] != "0.0.1"


def test_results_of_another_device_type_are_refused_before_they_are_written(tmp_path):
    """The device of a Ray executor is known from its first result: checked before writing it."""
    from mcsim.runner.driver import RunRecord

    sc = load_scenario(write_scenario(tmp_path))
    store = ResultStore.create(str(tmp_path / "s.zarr"), sc, make_plan(sc, 200))
    with pytest.raises(StoreError, match="computed on cpu, this run computes on cuda"):
        with RunRecord(store) as record:
            record.check("cpu")
            assert store.attrs()["device"] == "cpu"
            record.check("cuda:0")  # already checked: a record checks its first device only
            RunRecord(store).check("cuda:0")
    assert store.attrs()["runs"][-1]["status"] == "failed"


def test_every_task_writes_whole_chunks_of_its_own(tmp_path):
    """zarr loses data when concurrent writes share a chunk: each evaluation task's regions (its
    ledger counts and entry, its result) are whole chunks that no other task writes."""
    sc = load_scenario(write_scenario(tmp_path, trials=7, execution={"trials_per_task": 3}))
    plan = make_plan(sc, 230, shard_images=60)
    store = ResultStore.create(str(tmp_path / "s.zarr"), sc, plan)
    group = zarr.open_group(store.path, mode="r")
    owners: dict = {}
    for task in plan.eval_tasks():
        pos = plan.sweep.points[task.point].position
        for name, region in (("ledger/correct_top1", pos + (slice(task.t0, task.t1), task.shard)),
                             ("ledger/done", pos + (task.block, task.shard)),
                             ("top1", pos + (slice(task.t0, task.t1),))):
            array = group[name]
            chunks = []
            for axis, (index, size, chunk) in enumerate(zip(region, array.shape, array.chunks)):
                start, stop = (index.start, index.stop) if isinstance(index, slice) else (index, index + 1)
                assert start % chunk == 0 and (stop - start == chunk or stop == size), (name, task)
                chunks.append(start // chunk)
            key = (name, tuple(chunks))
            if name != "top1":  # a result chunk belongs to a point and trial block (its shards in turn)
                assert key not in owners, (task, owners.get(key))
            owners[key] = task
