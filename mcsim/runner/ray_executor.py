"""The Ray executor: a pool of Ray actors, each holding one :class:`~mcsim.runner.worker.Worker`.

Same interface as :class:`~mcsim.runner.local.LocalExecutor` (a context manager whose
:meth:`RayExecutor.run` yields results as tasks finish), so the driver, the store, resume and
progress are the same whether the work runs on this machine or on a cluster.

* Each actor loads the model and the evaluation data once and runs any number of tasks; only
  the small results (correct counts per chip) come back. Tasks sharing a converted model (same
  point and trial block) go to the same actor while it has any left, as in the local executor.
* A point's calibration goes into the object store once (``ray.put``) and every task of that
  point refers to it.
* Resources: an actor reserves ``execution.gpus_per_task`` GPUs (fractions share a GPU) when
  the scenario's device is ``cuda``, else ``threads`` CPUs (``auto`` reserves CPUs: on a GPU
  cluster say ``cuda``). The pool has ``workers`` actors (the ``workers`` argument, else
  ``execution.workers``, else as many as the cluster's resources allow now; give ``workers`` to
  make an autoscaling cluster grow to it). The driver does not need the device itself: a GPU
  study's driver may run on a CPU head.
* Fault tolerance is Ray's: actors are created with ``max_restarts`` and ``max_task_retries``
  (from ``execution.max_retries``), so a worker process that dies mid-task is replaced (the new
  one loads the model again) and its task is run again by Ray. A task that *raises* is retried
  here, up to ``max_retries`` times, like the local executor does. Every task writes its own
  region of the store and its ledger entry, so a task run twice cannot be counted twice. The
  actors are spread over the nodes (``SPREAD``); those of a node that is lost restart on the
  others where they have room (else when the autoscaler brings a node), and their tasks run there.

Addresses (``address``): ``None``/``"local"`` starts a Ray instance on this machine (loopback
only, sized to the machine); ``"auto"``, ``"host:6379"`` or ``"ray://host:10001"`` connect to
a running cluster. A Ray session this executor started is shut down when it closes; one that
was already connected (``ray.is_initialized()``) is left as it is.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Iterable, Iterator, Optional

from mcsim.errors import InputError
from mcsim.runner.local import available_cores
from mcsim.runner.malloc import with_tunables
from mcsim.runner.plan import Task
from mcsim.runner.jobs import JobQueue, RunError, TaskError

__all__ = ["ConnectError", "RayExecutor", "check_address", "init_ray", "ray_env"]

#: What a local cluster needs: loopback only, no usage reports (set unless already set).
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


class ConnectError(InputError, RuntimeError):
    """The Ray cluster cannot be reached (or started)."""


def ray_env() -> None:
    """RAY_ENV where unset; a token given in the environment ($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH)
    turns Ray's token authentication on for this process (a cluster started with it needs it)."""
    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_MODE"] = "token"
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


def _is_loopback(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def init_ray(address: Optional[str] = None, *, num_cpus: Optional[int] = None) -> bool:
    """Connect to (or start) Ray; returns True when this call did it (False: already connected).

    ``None``/``"local"``: a fresh local instance on 127.0.0.1 sized to this machine (or
    ``num_cpus``); ``"auto"``: the cluster of ``$RAY_ADDRESS`` or the one started on this host;
    ``"host:port"`` / ``"ray://host:port"``: that cluster.
    """
    ray_env()
    # torch before ray: in a Ray job's driver, importing torch after ray fails ("Intel oneMKL
    # FATAL ERROR: Cannot load libtorch_cpu.so"); the run needs torch anyway
    import torch  # noqa: F401
    import ray

    if ray.is_initialized():
        return False
    check_address(address)
    tunables = with_tunables({})  # the workers' allocator reuses large buffers (mcsim/runner/malloc.py)
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False,
                              "runtime_env": {"env_vars": tunables} if tunables else None}
    if address in (None, "local"):
        kwargs.update(address="local", num_cpus=num_cpus or available_cores(), include_dashboard=False,
                      _node_ip_address="127.0.0.1")
    else:
        kwargs["address"] = address
        resolved = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
        if not address.startswith("ray://") and (_is_loopback(resolved) or not resolved):
            kwargs["_node_ip_address"] = "127.0.0.1"
    try:
        ray.init(**kwargs)
    except Exception as err:  # noqa: BLE001 - any failure to connect is the same to the user
        where = "start a local Ray instance" if address in (None, "local") else f"connect to the Ray cluster at {address!r}"
        hint = ("" if address in (None, "local") or os.environ.get("RAY_AUTH_MODE") == "token" else
                "; a cluster with Ray's token authentication also needs its token in $RAY_AUTH_TOKEN or "
                "$RAY_AUTH_TOKEN_PATH")
        raise ConnectError(f"cannot {where}: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
                           f"{hint}") from None
    return True


def check_address(address: Optional[str], timeout: float = 10.0) -> None:
    """For ``host:port`` and ``ray://host:port``: a quick TCP connect, so that an unreachable
    cluster is a clear error at once (Ray itself retries for minutes). Nothing for local/auto."""
    import socket

    if address in (None, "local", "auto"):
        return
    rest = address.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ConnectError(f"address={address!r}: expected local, auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConnectError(f"cannot connect to the Ray cluster at {address!r}: {err.strerror or err}") from None


def _threads() -> int:
    env = os.environ.get("MCSIM_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else 1


class McsimWorker:
    """The body of a pool actor (made a Ray actor class by :func:`_actor_class`)."""

    def __init__(self, scenario_text: str, threads: int):
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        from mcsim.runner.worker import Worker
        from mcsim.scenario import parse_scenario

        self.worker = Worker(parse_scenario(scenario_text, source="<scenario>"), threads=threads)

    def info(self) -> dict:
        import ray

        return {"device": str(self.worker.device), "n_images": self.worker.n_images, "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id()}

    def run(self, task: Task, calibration: Optional[dict] = None):
        return self.worker.run(task, calibration)


_ACTOR_CLASS = None


def _actor_class():
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        import ray

        _ACTOR_CLASS = ray.remote(McsimWorker)
    return _ACTOR_CLASS


class RayExecutor:
    """Runs tasks on a pool of Ray actors; see the module documentation.

    ``workers``: pool size (default ``execution.workers``, else what the cluster's resources
    allow); ``threads``: torch threads and CPUs reserved per actor (default ``$MCSIM_THREADS``,
    else 1); ``max_retries``: default ``execution.max_retries``.
    """

    def __init__(self, scenario, workers: Optional[int] = None, *, address: Optional[str] = None,
                 threads: Optional[int] = None, max_retries: Optional[int] = None):
        self.scenario = scenario
        self.scenario_text = scenario.text
        self.address = address
        self.asked_workers = workers or scenario.execution.workers
        self.workers: Optional[int] = self.asked_workers
        self.threads = threads or _threads()
        self.max_retries = scenario.execution.max_retries if max_retries is None else max_retries
        self.info: dict = {}
        self.actors: list = []
        self._starting: dict = {}  # info ref -> actor index, for actors not yet ready
        self._ready: list[int] = []  # indices of the ready actors
        self._owns_ray = False

    # ---- lifetime

    def __enter__(self) -> "RayExecutor":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _resources(self) -> dict:
        cuda = self.scenario.execution.device == "cuda"
        if cuda:
            return {"num_gpus": self.scenario.execution.gpus_per_task, "num_cpus": 1}
        return {"num_cpus": self.threads}

    def _pool_size(self) -> int:
        import ray

        total = ray.cluster_resources()
        res = self._resources()
        if self.asked_workers:
            if res.get("num_gpus") and not total.get("GPU"):
                import sys

                sys.stderr.write("note: the Ray cluster has no GPU yet; the workers wait for GPU nodes "
                                 "(an autoscaler starts them; a fixed cluster without GPUs never will)\n")
            return int(self.asked_workers)
        if res.get("num_gpus"):
            n = math.floor(total.get("GPU", 0) / res["num_gpus"] + 1e-9)
            if n < 1:
                from mcsim.runner.driver import SetupError

                raise SetupError(f"execution.device is cuda, but the Ray cluster has no GPU "
                                 f"(execution.gpus_per_task {res['num_gpus']}; cluster: {total.get('GPU', 0)})")
        else:
            n = math.floor(total.get("CPU", 0) / res["num_cpus"] + 1e-9)
        return max(1, n)

    def start(self) -> None:
        if self.actors:
            return
        self._owns_ray = init_ray(self.address)
        import ray

        retries = self.max_retries
        # SPREAD: the actors over as many nodes as have room, so that a lost node costs the fewest
        # workers and its actors' restarts find room on the others
        cls = _actor_class().options(max_restarts=retries, max_task_retries=retries, scheduling_strategy="SPREAD",
                                     **self._resources())
        try:
            self.workers = self._pool_size()
        except Exception:
            self.close()
            raise
        self.actors = [cls.remote(self.scenario_text, self.threads) for _ in range(self.workers)]
        # actors still starting (or waiting for resources, e.g. an autoscaler's new node) get
        # tasks only once ready; the first one to load the model reports the device
        self._starting = {a.info.remote(): i for i, a in enumerate(self.actors)}
        self._ready: list[int] = []
        ready, _ = ray.wait(list(self._starting), num_returns=1)
        self._check_ready(ready)

    def wait_ready(self) -> None:
        """Block until every actor has loaded the model and data (for benchmarks: :meth:`run`
        does not need it; on a cluster short of resources this waits for them)."""
        if not self.actors:
            self.start()
        self._check_ready(list(self._starting))

    def _check_ready(self, refs) -> None:
        import ray

        for ref in refs:
            i = self._starting.pop(ref)
            try:
                info = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                self.close()
                raise RunError(f"a Ray worker cannot start: {err}") from None
            self.info = self.info or info
            self._ready.append(i)

    def close(self) -> None:
        try:
            import ray

            for actor in self.actors:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            self.actors, self._starting, self._ready = [], {}, []
            if self._owns_ray and ray.is_initialized():
                ray.shutdown()
        finally:
            self._owns_ray = False

    @property
    def device(self) -> Optional[str]:
        return self.info.get("device")

    # ---- running

    def run(self, jobs: Iterable[tuple[Task, Optional[dict]]]) -> Iterator[Any]:
        """Run ``(task, calibration)`` jobs; yield each result as its task finishes."""
        import ray

        self.start()  # a no-op once started
        queue = JobQueue.of(jobs, self.max_retries, share=ray.put)  # one put per point's calibration
        idle = list(self._ready)
        groups: dict[int, Optional[tuple]] = {i: None for i in range(len(self.actors))}
        running: dict[Any, tuple[int, tuple]] = {}  # ref -> (actor index, job)
        while len(queue) or running:
            while idle and len(queue):
                i = idle.pop(0)
                job = queue.take(groups[i])
                groups[i] = job[1].group
                running[self.actors[i].run.remote(job[1], job[2])] = (i, job)
            if len(queue) and self._starting:  # more work than ready actors: watch the others
                done, _ = ray.wait(list(running) + list(self._starting), num_returns=1)
                started = [r for r in done if r in self._starting]
                if started:
                    n = len(self._ready)
                    self._check_ready(started)
                    idle += self._ready[n:]
                    continue
            else:
                done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                i, job = running.pop(ref)
                idle.append(i)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as err:  # the task raised: retry it here
                    queue.retry(job, str(err.cause if err.cause is not None else err))
                    continue
                except ray.exceptions.RayActorError as err:  # died more often than Ray retries
                    raise TaskError(f"task {job[1]}: its Ray worker died {self.max_retries + 1} times; "
                                    f"last: {err}") from None
                yield result


def actor_pids(timeout: float = 10.0) -> list[int]:
    """Pids of this job's live pool actors (through Ray's state API)."""
    from ray.util.state import list_actors

    end = time.time() + timeout
    while True:
        actors = list_actors(filters=[("class_name", "=", "McsimWorker"), ("state", "=", "ALIVE")],
                             raise_on_missing_output=False)
        pids = [a.pid for a in actors if a.pid]
        if pids or time.time() > end:
            return pids
        time.sleep(0.2)
