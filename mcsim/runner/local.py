"""The local executor: worker processes on this machine, each holding one :class:`Worker`.

Each process loads the model and the data once, then runs the tasks the driver hands it, one
at a time, over its own pipe, and sends back the (small) result; the driver writes the store.
Tasks that share a converted model (same point and trial block) go to the same process while
it has any left, so each process converts a model once per group; an idle process then takes
the next untouched group, or helps with the group that has the most tasks left.

On CUDA (``execution.device`` cuda, or auto where torch sees a GPU) each process gets one GPU of
this machine in turn (its ``CUDA_VISIBLE_DEVICES``), and the default is one process per GPU
(``1 / execution.gpus_per_task`` per GPU for fractions): the numbers do not depend on which GPU
or how many (docs/physics.md section 9).

A failed task is retried (``max_retries``) on the next free process; a process that dies is
replaced. Worker processes exit by themselves when the driver goes away (even killed), as their
pipe closes.

No torch at import time: the worker processes import it, with their thread counts set first.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from mcsim.runner.malloc import with_tunables
from mcsim.runner.plan import Task
from mcsim.runner.jobs import JobQueue, RunError, TaskError

__all__ = ["LocalExecutor", "RunError", "TaskError", "available_cores", "default_workers"]


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_workers(cores: Optional[int] = None) -> int:
    """One worker process per two cores (torch uses the other thread), at least one."""
    return max(1, (cores or available_cores()) // 2)


def local_gpus(device: str) -> list[str]:
    """The GPUs of this machine that worker processes of a ``device`` study share out (their
    ``CUDA_VISIBLE_DEVICES`` ids); none for the CPU or where torch sees no GPU."""
    if device == "cpu":
        return []
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(n)]
    return ids[:n]


# --------------------------------------------------------------------------------------
# the worker process


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _worker_main(conn: Connection, threads: int) -> None:
    """Body of a worker process: build the Worker, then run tasks until told to stop.

    Ctrl-C reaches the whole process group: the driver handles it (and stops the workers), so a
    worker ignores it rather than dying with a traceback of its own.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent_pid = os.getppid()
    try:
        scenario_text = conn.recv()
        from mcsim.runner.worker import Worker
        from mcsim.scenario import parse_scenario

        worker = Worker(parse_scenario(scenario_text, source="<scenario>"), threads=threads)
        conn.send(("ready", {"device": str(worker.device), "n_images": worker.n_images, "pid": os.getpid()}))
    except (EOFError, OSError):
        return
    except BaseException as err:  # noqa: BLE001 - reported to the driver
        try:
            conn.send(("init_error", _describe(err), traceback.format_exc()))
        except (EOFError, OSError):
            pass
        return
    while True:
        try:
            if not conn.poll(1.0):
                if os.getppid() != parent_pid:  # the driver is gone
                    return
                continue
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        task_id, task, calibration = msg
        try:
            result = worker.run(task, calibration)
        except Exception as err:  # noqa: BLE001 - reported to the driver, which retries
            reply = ("error", task_id, _describe(err), traceback.format_exc())
        else:
            reply = ("done", task_id, result)
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m mcsim.runner.local FD THREADS``: a worker process on socket ``FD``."""
    fd, threads = (int(a) for a in (argv if argv is not None else sys.argv[1:]))
    _worker_main(Connection(fd), threads)


# --------------------------------------------------------------------------------------
# the driver's side


@dataclass
class _Proc:
    process: Any
    conn: Any
    ready: bool = False
    job: Optional[tuple] = None  # (task_id, task, calibration) being run
    group: Optional[tuple] = None  # the group it works on


class LocalExecutor:
    """Runs tasks on ``workers`` local processes with ``threads`` torch threads each.

    Defaults: ``execution.workers``, else one process per GPU on CUDA (see the module documentation),
    else one process per two cores; threads: ``$MCSIM_THREADS``,
    else the cores divided among the processes (on a machine shared with other jobs, fewer
    threads than cores avoid oversubscription).

    Use as a context manager; :meth:`run` yields results as tasks finish.
    """

    def __init__(self, scenario, workers: Optional[int] = None, threads: Optional[int] = None,
                 max_retries: Optional[int] = None):
        cores = available_cores()
        self.scenario_text = scenario.text
        self.gpus = local_gpus(scenario.execution.device)
        per_gpu = max(1, int(1 / scenario.execution.gpus_per_task + 1e-9)) * len(self.gpus) if self.gpus else None
        self.workers = workers or scenario.execution.workers or per_gpu or default_workers(cores)
        env_threads = os.environ.get("MCSIM_THREADS", "").strip()
        self.threads = threads or (int(env_threads) if env_threads.isdigit() and int(env_threads) > 0
                                   else max(1, cores // self.workers))
        self.max_retries = scenario.execution.max_retries if max_retries is None else max_retries
        self.info: dict = {}  # what the first worker reported (device, n_images)
        self._procs: list[_Proc] = []

    # ---- lifetime

    def __enter__(self) -> "LocalExecutor":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        while len(self._procs) < self.workers:
            self._procs.append(self._spawn(len(self._procs)))

    def wait_ready(self) -> None:
        """Block until every worker process has loaded the model and data (for benchmarks:
        :meth:`run` does not need it)."""
        if not self._procs:
            self.start()
        for p in self._procs:
            if p.ready:
                continue
            try:
                msg = p.conn.recv()
            except (EOFError, OSError):
                raise RunError("a worker process died while starting") from None
            if msg[0] == "init_error":
                raise RunError(f"a worker process cannot start: {msg[1]}\n{msg[2]}")
            p.ready = True
            self.info = self.info or msg[1]

    def worker_env(self, slot: int) -> dict:
        """The environment of the worker process in ``slot`` (its GPU, on CUDA: slot modulo GPUs)."""
        env = with_tunables(os.environ)  # large buffers reused, not mapped anew per call (malloc.py)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        root = str(Path(__file__).resolve().parents[2])  # the directory holding the mcsim package
        env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        return env

    def _spawn(self, slot: int) -> _Proc:
        """A fresh worker process (``python -m mcsim.runner.local``) for ``slot`` on one end of a
        socket pair.

        A plain subprocess, not multiprocessing: nothing of the caller's ``__main__`` is
        re-imported (scripts without a main guard, stdin, notebooks all work).
        """
        ours, theirs = socket.socketpair()
        env = self.worker_env(slot)
        process = subprocess.Popen(
            [sys.executable, "-m", "mcsim.runner.local", str(theirs.fileno()), str(self.threads)],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
        )
        theirs.close()
        conn = Connection(ours.detach())
        conn.send(self.scenario_text)
        return _Proc(process, conn)

    def close(self) -> None:
        for p in self._procs:
            try:
                p.conn.send(None)
            except (OSError, EOFError, ValueError):
                pass
        for p in self._procs:
            try:
                p.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.process.terminate()
                try:
                    p.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.process.kill()
                    p.process.wait()
            p.conn.close()
        self._procs = []

    @property
    def device(self) -> Optional[str]:
        return self.info.get("device")

    # ---- running

    def run(self, jobs: Iterable[tuple[Task, Optional[dict]]]) -> Iterator[Any]:
        """Run ``(task, calibration)`` jobs; yield each result as its task finishes."""
        self.start()  # a no-op once started
        queue = JobQueue.of(jobs, self.max_retries)
        deaths = 0  # deaths of processes without a task (while starting)
        running = 0
        while len(queue) or running:
            for p in self._procs:  # hand out work
                if p.ready and p.job is None:
                    job = queue.take(p.group)
                    if job is None:
                        break
                    p.job, p.group = job, job[1].group
                    running += 1
                    try:
                        p.conn.send(job)
                    except OSError:  # it just died: its closed pipe reports it below
                        pass
            by_conn = {p.conn: p for p in self._procs}
            for conn in wait(list(by_conn)):
                p = by_conn[conn]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):  # the process died
                    job = p.job
                    self._replace(p)
                    why = f"the worker process died (exit code {p.process.returncode})"
                    if job is None:
                        deaths += 1
                        if deaths > self.max_retries:
                            raise RunError(why)
                    else:
                        running -= 1
                        queue.retry(job, why)
                    continue
                kind = msg[0]
                if kind == "ready":
                    p.ready = True
                    self.info = self.info or msg[1]
                elif kind == "init_error":  # loading the model or data failed: no use retrying
                    raise RunError(f"a worker process cannot start: {msg[1]}\n{msg[2]}")
                elif kind == "done":
                    p.job = None
                    running -= 1
                    yield msg[2]
                elif kind == "error":
                    job, p.job = p.job, None
                    running -= 1
                    queue.retry(job, f"{msg[2]}\n{msg[3]}")

    def _replace(self, p: _Proc) -> None:
        """Replace a dead process by a fresh one."""
        try:
            p.conn.close()
        except OSError:
            pass
        if p.process.poll() is None:
            p.process.kill()
        p.process.wait()
        slot = self._procs.index(p)
        self._procs[slot] = self._spawn(slot)


if __name__ == "__main__":
    main()
