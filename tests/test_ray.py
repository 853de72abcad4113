"""Ray: `mcsim submit` to a real two-node local cluster (cluster/local.sh, 127.0.0.1 only), a
worker killed mid-run, and the same numbers on 1 and 2 Ray workers as on the local executor; token
authentication, and a node lost mid-run, each on a cluster of its own.

The clusters are stopped (`local.sh down`) even on failure.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

import pytest
import xarray as xr
from typer.testing import CliRunner

from mcsim.api import open_result, run_scenario
from mcsim.cli import app
from mcsim.runner.store import inspect_store
from mcsim.scenario import load_scenario
from runner_support import REPO, results_only, run_cli, write_scenario

pytestmark = pytest.mark.slow  # a two-node Ray cluster and runs on it

RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
LOCAL_SH = str(REPO / "cluster" / "local.sh")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(port: int, dashboard: int) -> list[int]:
    """Every port `cluster/local.sh up` derives from a GCS and a dashboard port (GCS, client,
    per-node ports at +10..+35, worker ports at +1000..+1399)."""
    return [port, port + 1, dashboard, *range(port + 10, port + 36), *range(port + 1000, port + 1400)]


def free_ports(taken: tuple[int, ...] = ()) -> tuple[int, int]:
    """A GCS port and a dashboard port such that every port `cluster/local.sh up` derives from
    them is free now and not in ``taken``, so that tests on a shared machine never collide with
    another cluster on fixed ports."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 50_000, 2)
        dashboard = rng.randrange(50_000, 60_000)
        needed = _ports(port, dashboard)
        if not set(needed) & set(taken) and all(_free(p) for p in needed):
            return port, dashboard
    raise RuntimeError("no free range of ports for the local Ray cluster")


PORT, DASHBOARD_PORT = free_ports()
GCS = f"127.0.0.1:{PORT}"
DASHBOARD = f"http://127.0.0.1:{DASHBOARD_PORT}"


@contextmanager
def local_cluster(port: int, dashboard: int, **settings: str):
    """A two-node `cluster/local.sh` cluster on these ports, with ``settings`` (``MCSIM_RAY_AUTH``,
    ``MCSIM_RAY_CPUS``); yields its addresses, its state folder and the environment of
    `local.sh` (for `stop-node`). The nodes inherit MCSIM_CACHE_DIR and MCSIM_THREADS=1."""
    state = tempfile.mkdtemp(prefix="mcr", dir="/tmp")  # short: Ray's socket paths live under it
    env = dict(os.environ, MCSIM_RAY_DIR=state, MCSIM_RAY_PORT=str(port), MCSIM_RAY_DASHBOARD_PORT=str(dashboard),
               **{"MCSIM_RAY_AUTH": "disabled", **settings})
    env.setdefault("RAY", os.path.join(os.path.dirname(sys.executable), "ray"))  # the tests' own Ray
    gcs, dash = f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}"
    try:
        up = subprocess.run([LOCAL_SH, "up"], env=env, capture_output=True, text=True, timeout=180)
        assert up.returncode == 0, up.stdout + up.stderr
        assert dash in up.stdout and gcs in up.stdout
        yield {"gcs": gcs, "dashboard": dash, "dir": state, "env": env}
    finally:
        subprocess.run([LOCAL_SH, "down"], env=env, capture_output=True, text=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(mcsim_cache_dir):
    """The two-node local cluster without authentication, for this process's Ray clients."""
    mp = pytest.MonkeyPatch()
    for key, value in RAY_ENV.items():
        mp.setenv(key, value)
    try:
        with local_cluster(PORT, DASHBOARD_PORT) as c:
            yield c
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mcsim_cache_dir):
    """The tiny study on the local executor (no Ray)."""
    d = tmp_path_factory.mktemp("ray-reference")
    path = write_scenario(d)
    return results_only(run_scenario(path, progress=False))


def test_submit_status_logs_to_a_finished_identical_dataset(cluster, reference, tmp_path):
    scenario = write_scenario(tmp_path, execution={"workers": None})  # as many workers as the cluster has
    out = tmp_path / "submitted.zarr"
    sub = run_cli("submit", str(scenario), "--address", cluster["dashboard"], "--output", str(out), timeout=120)
    assert sub.returncode == 0, sub.stderr
    job = sub.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"raysubmit_\w+", job), sub.stdout
    assert "mcsim status" in sub.stderr
    deadline, state = time.time() + 180, ""
    while time.time() < deadline:
        st = run_cli("status", job, "--address", cluster["dashboard"], timeout=60)
        assert st.returncode == 0, st.stderr
        state = st.stdout.strip()
        if state in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(1)
    logs = run_cli("logs", job, "--address", cluster["dashboard"], timeout=60)
    assert logs.returncode == 0, logs.stderr
    assert state == "SUCCEEDED", logs.stdout
    assert "evaluating: 18/18 tasks" in logs.stdout and "done:" in logs.stdout, logs.stdout
    followed = run_cli("logs", job, "--address", cluster["dashboard"], "--follow", timeout=60)
    assert followed.returncode == 0 and "evaluating: 18/18 tasks" in followed.stdout
    xr.testing.assert_identical(results_only(open_result(out)), reference)
    assert inspect_store(str(out)).attrs["runs"][-1]["workers"] == 2  # one per node (1 CPU each)


def test_job_commands_fail_cleanly(cluster):
    runner = CliRunner()
    unknown = runner.invoke(app, ["status", "raysubmit_nope", "--address", cluster["dashboard"]])
    assert unknown.exit_code == 2 and "no job 'raysubmit_nope'" in unknown.output
    unreachable = runner.invoke(app, ["logs", "raysubmit_nope", "--address", "http://127.0.0.1:1"])
    assert unreachable.exit_code == 2 and "cannot reach a Ray dashboard" in unreachable.output
    assert "Traceback" not in unknown.output + unreachable.output


def test_run_on_an_unreachable_cluster_fails_cleanly_and_writes_nothing(tmp_path):
    scenario = write_scenario(tmp_path, data={"limit": 50})
    result = CliRunner().invoke(app, ["run", str(scenario), "--address", "127.0.0.1:1"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: cannot connect to the Ray cluster at '127.0.0.1:1'")
    assert not (tmp_path / "out.zarr").exists()


def test_a_worker_killed_mid_run_is_replaced_and_the_dataset_is_unchanged(cluster, reference, tmp_path):
    """SIGKILL every pool actor's process (found through Ray's state API) as soon as the first
    evaluation result is in, while the others are running: Ray restarts the actors and retries
    their tasks; each task is recorded once and the numbers are those of an undisturbed run."""
    from ray.util.state import list_actors

    from mcsim.runner.ray_executor import RayExecutor

    def alive_actors():
        return list_actors(address=cluster["dashboard"], filters=[("class_name", "=", "McsimWorker"),
                                                                  ("state", "=", "ALIVE")],
                           raise_on_missing_output=False)

    killed, after = [], []

    class Killing(RayExecutor):
        def run(self, jobs):
            for result in super().run(jobs):
                if result.task.kind == "evaluate" and not killed:
                    for actor in alive_actors():
                        os.kill(actor.pid, signal.SIGKILL)
                        killed.append(actor.pid)
                yield result
            import ray

            after[:] = [info["pid"] for info in ray.get([a.info.remote() for a in self.actors])]

    # many small tasks: 4 points x 3 trial blocks x 4 shards
    path = write_scenario(tmp_path, execution={"shard_images": 50, "trials_per_task": 2, "workers": 2})
    from mcsim.runner import driver

    ds = driver.run(load_scenario(path),
                    executor_factory=lambda sc, n: Killing(sc, n, address=cluster["gcs"]))
    assert len(killed) == 2, killed
    assert len(after) == 2 and not set(after) & set(killed), (killed, after)  # replaced by new processes
    runs = inspect_store(str(tmp_path / "out.zarr")).attrs["runs"]
    assert runs[-1]["status"] == "finished" and runs[-1]["computed"]["evaluate"] == 48  # nothing twice
    xr.testing.assert_identical(results_only(ds), reference)


def test_one_and_two_ray_workers_give_the_local_numbers(cluster, reference, tmp_path):
    # RayExecutor on the two-node cluster, one worker
    one = run_scenario(write_scenario(tmp_path, name="one.yaml", output=tmp_path / "one.zarr"), progress=False,
                       address=cluster["gcs"], workers=1)
    assert inspect_store(str(tmp_path / "one.zarr")).attrs["runs"][-1]["workers"] == 1
    xr.testing.assert_identical(results_only(one), reference)
    # `mcsim run --address local`: a Ray instance of its own on this machine, two workers
    two = tmp_path / "two.zarr"
    res = run_cli("run", str(write_scenario(tmp_path, name="two.yaml", output=two)), "--address", "local",
                  "--workers", "2", "--quiet", timeout=240)
    assert res.returncode == 0, res.stderr
    assert inspect_store(str(two)).attrs["runs"][-1]["workers"] == 2
    xr.testing.assert_identical(results_only(open_result(two)), reference)


def test_adaptive_trials_on_ray_give_the_local_rounds_and_numbers(cluster, tmp_path):
    """The driver's rounds run on Ray as on the local executor: the same stops, the same numbers."""
    trials = {"target_se": 0.02, "min": 2, "max": 6}
    local = run_scenario(write_scenario(tmp_path, name="local.yaml", output=tmp_path / "local.zarr", trials=trials),
                         progress=False)
    ray = run_scenario(write_scenario(tmp_path, name="ray.yaml", output=tmp_path / "ray.zarr", trials=trials),
                       progress=False, address=cluster["gcs"], workers=2)
    xr.testing.assert_identical(results_only(ray), results_only(local))
    xr.testing.assert_identical(ray[["n_trials", "complete"]].drop_attrs(), local[["n_trials", "complete"]].drop_attrs())
    assert local["n_trials"].min() < 6  # some point stopped early


def test_a_failing_task_is_retried_then_reported(cluster, tmp_path):
    """A task that raises (a calibration missing) is retried max_retries times, then reported."""
    from mcsim.runner.local import TaskError
    from mcsim.runner.plan import make_plan
    from mcsim.runner.ray_executor import RayExecutor

    sc = load_scenario(write_scenario(tmp_path, execution={"max_retries": 1}, data={"limit": 50}))
    task = make_plan(sc, 50).eval_tasks()[0]
    with RayExecutor(sc, 1, address=cluster["gcs"]) as ex:
        assert ex.device == "cpu" and ex.workers == 1
        with pytest.raises(TaskError, match=r"failed 2 times.*needs a calibration"):
            list(ex.run([(task, None)]))


def test_a_cuda_study_on_a_cluster_without_gpu_is_refused(cluster, tmp_path):
    """The driver itself needs no GPU (it may run on a CPU head), the cluster does."""
    from mcsim.runner.driver import SetupError

    path = write_scenario(tmp_path, execution={"device": "cuda", "gpus_per_task": 0.5, "workers": None},
                          data={"limit": 50})
    with pytest.raises(SetupError, match="cuda, but the Ray cluster has no GPU"):
        run_scenario(path, progress=False, address=cluster["gcs"])


def test_token_auth_refuses_a_submit_without_the_token_and_takes_one_with_it(tmp_path, mcsim_cache_dir):
    """A cluster with Ray's token authentication (cluster/local.sh's default): `mcsim submit` and
    `mcsim status` without a token or with a wrong one exit 2 with a clear message and submit
    nothing; with the token (here from $RAY_AUTH_TOKEN_PATH) the job runs to the end. `mcsim run
    --address` to it fails (exit 2, naming the token) without the token and runs with it."""
    port, dashboard = free_ports(taken=tuple(_ports(PORT, DASHBOARD_PORT)))
    scenario = write_scenario(tmp_path, data={"limit": 50}, trials=2, execution={"workers": None})
    home = tmp_path / "home"  # no ~/.ray/auth_token of this machine's user
    home.mkdir()
    bare = {**RAY_ENV, "HOME": str(home), "RAY_AUTH_TOKEN": None, "RAY_AUTH_TOKEN_PATH": None}
    runner = CliRunner()
    with local_cluster(port, dashboard, MCSIM_RAY_AUTH="token") as c:
        token = os.path.join(c["dir"], "auth_token")
        assert os.stat(token).st_mode & 0o077 == 0  # the token file is its owner's only
        submit = ["submit", str(scenario), "--address", c["dashboard"], "--output", str(tmp_path / "out.zarr")]
        none = runner.invoke(app, submit, env=bare)
        assert none.exit_code == 2, none.output
        assert none.output.startswith(f"error: the cluster at {c['dashboard']} requires Ray token authentication "
                                      "and mcsim found no token"), none.output
        wrong = runner.invoke(app, submit, env={**bare, "RAY_AUTH_TOKEN": "0" * 64})
        assert wrong.exit_code == 2 and "refused the Ray token from $RAY_AUTH_TOKEN" in wrong.output, wrong.output
        peek = runner.invoke(app, ["status", "raysubmit_x", "--address", c["dashboard"]], env=bare)
        assert peek.exit_code == 2 and "found no token" in peek.output, peek.output
        assert "Traceback" not in none.output + wrong.output + peek.output
        with_token = {**bare, "RAY_AUTH_TOKEN_PATH": token}
        sub = runner.invoke(app, submit, env=with_token)
        assert sub.exit_code == 0, sub.output
        job = re.search(r"raysubmit_\w+", sub.output).group(0)
        logs = runner.invoke(app, ["logs", job, "--address", c["dashboard"], "--follow"], env=with_token)
        status = runner.invoke(app, ["status", job, "--address", c["dashboard"]], env=with_token)
        # the job's driver reached the cluster with the nodes' token
        assert status.output.startswith("SUCCEEDED") and "done:" in logs.output, status.output + logs.output
        # `mcsim run --address` from here: the token in the environment turns Ray's token mode on
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
        env["HOME"] = str(home)
        direct = ("run", str(scenario), "--address", c["gcs"], "--output", str(tmp_path / "direct.zarr"), "--quiet")
        refused = run_cli(*direct, env=env, timeout=120)
        assert refused.returncode == 2 and "also needs its token in $RAY_AUTH_TOKEN" in refused.stderr, refused.stderr
        ran = run_cli(*direct, env={**env, "RAY_AUTH_TOKEN_PATH": token}, timeout=240)
        assert ran.returncode == 0, ran.stderr


def test_a_node_lost_mid_run_leaves_the_dataset_unchanged(reference, tmp_path):
    """Stop the second node (`local.sh stop-node`: its raylet and every worker on it) as soon as the
    first evaluation result is in: its actor restarts on the head (the pool is spread, one actor
    per node, and the head has room), its tasks run again there; each task is recorded once and the
    numbers are those of an undisturbed run."""
    from mcsim.runner import driver
    from mcsim.runner.ray_executor import RayExecutor

    port, dashboard = free_ports(taken=tuple(_ports(PORT, DASHBOARD_PORT)))
    mp = pytest.MonkeyPatch()
    for key, value in RAY_ENV.items():
        mp.setenv(key, value)
    with local_cluster(port, dashboard, MCSIM_RAY_CPUS="2") as c:
        nodes, stopped = [], []

        class LosingANode(RayExecutor):
            def run(self, jobs):
                import ray

                nodes[:] = [info["node"] for info in ray.get([a.info.remote() for a in self.actors])]
                for result in super().run(jobs):
                    if result.task.kind == "evaluate" and not stopped:
                        out = subprocess.run([LOCAL_SH, "stop-node"], env=c["env"], capture_output=True,
                                             text=True, timeout=60)
                        stopped.append(out.stdout)
                    yield result
                nodes.append(ray.get([a.info.remote() for a in self.actors]))

        path = write_scenario(tmp_path, execution={"shard_images": 50, "trials_per_task": 2, "workers": 2})
        try:
            ds = driver.run(load_scenario(path),
                            executor_factory=lambda sc, n: LosingANode(sc, n, address=c["gcs"]))
        finally:
            mp.undo()
    assert len(set(nodes[:2])) == 2, nodes  # one actor on each node before
    assert stopped == ["second node stopped\n"], stopped
    after = {info["node"] for info in nodes[2]}
    assert len(after) == 1 and after < set(nodes[:2]), nodes  # both on the node that is left
    runs = inspect_store(str(tmp_path / "out.zarr")).attrs["runs"]
    assert runs[-1]["status"] == "finished" and runs[-1]["computed"]["evaluate"] == 48  # nothing twice
    xr.testing.assert_identical(results_only(ds), reference)
