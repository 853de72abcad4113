"""mcsim.runner: the plan, the worker, the local executor, resume after a kill, invariance of
every number under the cut of the work. Real runs on the digits data set, no mocks."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch
import xarray as xr

from mcsim.api import open_result, run_scenario
from mcsim.engine.rng import derive
from mcsim.runner.plan import make_plan, point_seed
from mcsim.runner.store import inspect_store
from mcsim.runner.worker import Worker
from mcsim.scenario import Execution, load_scenario
from runner_support import (
    kill_mid_run,
    ledger_count,
    results_only,
    run_cli,
    wait_gone,
    write_scenario,
)

# ---------------------------------------------------------------- plan (no torch work)


def test_shards_are_whole_global_batches(tmp_path):
    sc = load_scenario(write_scenario(tmp_path, execution={"shard_images": 120, "trials_per_task": 4}))
    plan = make_plan(sc, 230)
    assert plan.shard_size == 150  # 120 rounded up to whole batches of 50
    assert plan.shards == [(0, 150), (150, 230)]
    assert plan.batches(150, 230) == [(150, 200), (200, 230)]
    assert plan.trial_blocks == [(0, 4), (4, 6)]
    assert "rounded up to a multiple of the batch size 50" in "\n".join(plan.describe())
    tasks = plan.eval_tasks()
    assert len(tasks) == 4 * 2 * 2 == len({(t.point, t.block, t.shard) for t in tasks})
    # every image of every chip of every point exactly once
    for p in range(4):
        cover = np.zeros((6, 230), int)
        for t in tasks:
            if t.point == p:
                cover[t.t0:t.t1, t.i0:t.i1] += 1
        assert (cover == 1).all()
    # the batches are the same global windows whatever the shard size
    for shard_images in (1, 50, 99, 1000):
        other = make_plan(sc, 230, shard_images=shard_images)
        windows = [b for i0, i1 in other.shards for b in other.batches(i0, i1)]
        assert windows == [(0, 50), (50, 100), (100, 150), (150, 200), (200, 230)]


def test_point_seed_is_the_engine_fold_of_seed_and_point():
    for seed, point in [(0, 0), (0, 1), (3, 7), (2**40 + 5, 123)]:
        assert point_seed(seed, point) == derive(seed, point).item() & (2**63 - 1)
    assert len({point_seed(0, p) for p in range(1000)}) == 1000


def test_trials_per_task_larger_than_trials(tmp_path):
    sc = load_scenario(write_scenario(tmp_path, trials=2, execution={"trials_per_task": 10}))
    assert make_plan(sc, 10).trial_blocks == [(0, 2)]


# ---------------------------------------------------------------- worker


@pytest.fixture(scope="module")
def ideal_worker(tmp_path_factory):
    """A worker of an ideal chip (no quantization, no errors): analog == digital."""
    d = tmp_path_factory.mktemp("ideal")
    ideal = {"weight_bits": None, "input_bits": None, "adc": {"bits": None},
             "error": {"model": "none"}, "read_noise": {"model": "none"}}
    path = write_scenario(d, hardware=ideal, sweep={"grid": {"hardware.mapping": ["differential", "offset"]}},
                          data={"limit": 130, "batch_size": 40}, trials=3)
    return Worker(load_scenario(path), threads=1)


def test_worker_ideal_chip_counts_equal_digital(ideal_worker):
    w = ideal_worker
    plan = make_plan(w.scenario, w.n_images)
    assert w.n_images == 130
    digital = [w.digital(t) for t in plan.digital_tasks()]
    x = torch.stack([w.dataset[i][0] for i in range(130)])
    y = torch.tensor([w.dataset[i][1] for i in range(130)])
    with torch.no_grad():
        logits = w.model(x)
    assert sum(r.correct_top1 for r in digital) == int((logits.argmax(1) == y).sum())
    assert sum(r.correct_top5 for r in digital) == int((logits.topk(5, 1).indices == y[:, None]).any(1).sum())
    for ct in plan.calibration_tasks():
        cal = w.calibrate(ct)
        assert cal.state is None and cal.layers  # ideal: no calibration needed
        for t in plan.eval_tasks():
            if t.point != ct.point:
                continue
            r = w.evaluate(t, None)
            digital_shard = digital[t.shard]
            assert r.n_images == t.n_images
            assert (r.correct_top1 == digital_shard.correct_top1).all()
            assert (r.correct_top5 == digital_shard.correct_top5).all()


def test_worker_reuses_the_converted_model_within_a_group(ideal_worker):
    w = ideal_worker
    plan = make_plan(w.scenario, w.n_images, shard_images=40)
    tasks = [t for t in plan.eval_tasks() if t.point == 0]
    w.evaluate(tasks[0])
    first = w._analog
    w.evaluate(tasks[1])  # same point and trial block, next shard
    assert w._analog is first
    other = [t for t in plan.eval_tasks() if t.point == 1][0]
    w.evaluate(other)
    assert w._analog is not first


# ---------------------------------------------------------------- invariance


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The tiny study, run once with the base cut (shards of 100 images, blocks of 3 trials)."""
    d = tmp_path_factory.mktemp("reference")
    path = write_scenario(d)
    ds = run_scenario(path, progress=False)
    return path, ds


@pytest.mark.slow
def test_reference_run_is_complete_and_plausible(reference_run):
    path, ds = reference_run
    sc = load_scenario(path)
    assert inspect_store(sc.output).attrs["state"] == "complete"
    assert dict(ds["top1"].sizes) == {"sigma": 2, "point": 2, "trial": 6}
    assert (ds["n_images"] == 200).all()
    # no programming error (sigma 0) with differential mapping: close to the digital model
    assert float(ds["top1"].sel(sigma=0.0).isel(point=0).mean()) > float(ds["digital_top1"]) - 0.05
    # chips differ (programming errors, read noise)
    assert float(ds["top1"].sel(sigma=0.3).std("trial").max()) > 0


@pytest.mark.slow
@pytest.mark.parametrize("execution, threads", [
    ({"shard_images": 50, "trials_per_task": 2, "workers": 2}, 1),
    ({"shard_images": 1000, "trials_per_task": 6, "workers": 1}, 2),
    ({"shard_images": 70, "trials_per_task": 4, "workers": 2}, 1),
], ids=["small-tasks-2-workers", "one-task-per-point-2-threads", "uneven"])
def test_numbers_do_not_depend_on_the_cut_of_the_work(reference_run, tmp_path, monkeypatch, execution, threads):
    monkeypatch.setenv("MCSIM_THREADS", str(threads))  # the reference ran with 1 thread per worker
    path, reference = reference_run
    sc = load_scenario(path)
    other = sc.model_copy(update={"execution": Execution(**execution), "output": str(tmp_path / "other.zarr")})
    assert other.fingerprint == sc.fingerprint
    ds = run_scenario(other, progress=False)
    layout = inspect_store(other.output).layout
    assert layout["trials_per_task"] == execution["trials_per_task"]
    xr.testing.assert_identical(results_only(ds), results_only(reference))


# ---------------------------------------------------------------- resume after a kill


@pytest.mark.slow
def test_resume_after_sigkill_computes_only_the_missing_tasks(reference_run, tmp_path):
    path, reference = reference_run
    # many small tasks so that the run can be caught in the middle: 4 points x 3 blocks x 4 shards
    scenario = write_scenario(tmp_path, execution={"shard_images": 50, "trials_per_task": 2, "workers": 1})
    store = tmp_path / "out.zarr"
    workers = kill_mid_run(scenario, store)
    done, total = ledger_count(store)
    assert total == 48 and 0 < done < total, f"the run was not caught in the middle ({done}/{total})"
    assert workers, "the driver had no worker process"
    assert wait_gone(workers) == [], "worker processes outlived their killed driver"
    with pytest.raises(Exception, match="not finished"):
        open_result(store)
    plain = xr.open_zarr(store).load()  # the killed run's store opens with plain xarray
    assert not plain["complete"].all() and np.isnan(plain["top1"].values).any()
    assert int((plain["n_images"] > 0).sum()) <= done * 2  # a task: 2 chips; the result may lag its ledger

    second = run_cli("run", str(scenario), "--quiet")
    assert second.returncode == 0, second.stderr
    runs = inspect_store(str(store)).attrs["runs"]
    assert [r["status"] for r in runs] == ["running", "finished"]  # the killed run never finished
    assert runs[-1]["computed"]["evaluate"] == total - done
    assert runs[-1]["computed"]["calibrate"] == 0  # the calibration was stored before any evaluation
    xr.testing.assert_identical(results_only(open_result(store)), results_only(reference))

    # a third run has nothing left to do
    third = run_cli("run", str(scenario))
    assert third.returncode == 0 and "already complete" in third.stderr


@pytest.mark.slow
def test_failing_task_is_retried_then_reported(tmp_path):
    """A task that always fails (a calibration missing) fails the run after its retries."""
    from mcsim.runner.local import LocalExecutor, TaskError

    sc = load_scenario(write_scenario(tmp_path, execution={"max_retries": 1}, data={"limit": 50}))
    plan = make_plan(sc, 50)
    task = plan.eval_tasks()[0]
    with LocalExecutor(sc, workers=1, threads=1) as ex:
        with pytest.raises(TaskError, match=r"failed 2 times.*needs a calibration"):
            list(ex.run([(task, None)]))
        assert ex.device == "cpu"


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_its_task_rerun(tmp_path):
    from mcsim.runner.local import LocalExecutor

    sc = load_scenario(write_scenario(tmp_path, data={"limit": 100}, sweep={},
                                      hardware={"adc": {"bits": None}, "input_bits": None}))
    plan = make_plan(sc, 100, shard_images=50)
    tasks = plan.digital_tasks() + plan.eval_tasks()
    results = {}
    with LocalExecutor(sc, workers=1, threads=1) as ex:
        for r in ex.run((t, None) for t in tasks):
            if not results:  # after the first result, kill the worker (it may be running the next task)
                os.kill(ex.info["pid"], signal.SIGKILL)
            results[r.task] = r
    assert set(results) == set(tasks)
    worker = Worker(sc, threads=1)
    for t in tasks:
        expected = worker.run(t)
        assert np.array_equal(results[t].correct_top1, expected.correct_top1), t


def test_job_queue_keeps_groups_together_and_counts_retries(tmp_path):
    from mcsim.runner.jobs import JobQueue, TaskError

    sc = load_scenario(write_scenario(tmp_path, data={"limit": 200}))
    tasks = make_plan(sc, 200).eval_tasks()  # 4 points x 2 blocks x 2 shards
    queue = JobQueue(max_retries=1)
    for i, t in enumerate(tasks):
        queue.push((i, t, None))
    first = queue.take(None)
    assert queue.take(first[1].group)[1].group == first[1].group  # same point and block
    other = queue.take(None)
    assert other[1].group != first[1].group  # an untouched group for a fresh worker
    queue.retry(other, "boom")
    assert queue.take(other[1].group) == other and len(queue) == len(tasks) - 3
    with pytest.raises(TaskError, match="failed 2 times; last error: boom again"):
        queue.retry(other, "boom again")


def test_one_keyed_hash():
    """SplitMix64 lives in mcsim.engine.rng only: the plan and the data subsets call it."""
    from pathlib import Path

    import mcsim

    root = Path(mcsim.__file__).parent
    holders = [str(p.relative_to(root)) for p in root.rglob("*.py") if "0xBF58476D1CE4E5B9" in p.read_text().upper()
               .replace("0XBF58476D1CE4E5B9", "0xBF58476D1CE4E5B9")]
    assert holders == ["engine/rng.py"]
    assert point_seed(2**64 + 3, 7) == point_seed(3, 7) and 0 <= point_seed(2**63 + 1, 2) < 2**63


@pytest.mark.slow
def test_the_driver_loads_the_model_once_and_plans_once(tmp_path, monkeypatch):
    """Per-layer settings (the sweep needs the layer names), the preflight and the energy layers
    all read one load of the model in the driver process; the plan is built once. The workers are
    separate processes (each loads its own copy once), so the counters see the driver only."""
    import mcsim.models
    from mcsim.runner import driver

    loads, plans = [], []
    real_load, real_plan = mcsim.models.load_model, driver.make_plan
    monkeypatch.setattr(mcsim.models, "load_model", lambda spec: loads.append(spec) or real_load(spec))
    monkeypatch.setattr(driver, "make_plan", lambda *a, **k: plans.append(a) or real_plan(*a, **k))
    sc = load_scenario(write_scenario(tmp_path, data={"limit": 50}, trials=1, sweep={}, energy=True,
                                      hardware={"layers": {"7": {"adc": {"bits": 8}}}}))
    ds = driver.run(sc)
    assert len(loads) == 1 and len(plans) == 1
    assert ds.sizes["trial"] == 1 and "energy" in " ".join(ds.data_vars)  # the energy layers were counted
