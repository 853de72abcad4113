"""The queue of an executor's jobs: grouped so that a worker keeps its converted model, with retries.

A job is ``(task_id, task, calibration)``. Jobs of one group (same sweep point and trial block:
:attr:`mcsim.runner.plan.EvalTask.group`) share a converted model, so a worker that worked on a
group takes its next job from the same group while there is one, then an untouched group, then
helps with the group that has the most jobs left. A failed job goes back to the front of its group
until it has failed more than ``max_retries`` times (then :class:`TaskError`).

Both executors (:mod:`mcsim.runner.local`, :mod:`mcsim.runner.ray_executor`) open their runs with
:meth:`JobQueue.of`; it knows nothing of processes or Ray.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from mcsim.errors import RunFailure

__all__ = ["JobQueue", "RunError", "TaskError"]


class RunError(RunFailure, RuntimeError):
    """The run cannot go on (a task failed too often, the workers cannot start)."""


class TaskError(RunError):
    """A task failed ``max_retries + 1`` times."""


@dataclass
class JobQueue:
    """Pending jobs by group, in submission order; a failed job goes back to the front until it has
    failed more than ``max_retries`` times."""

    max_retries: int = 0
    groups: "OrderedDict[tuple, deque]" = field(default_factory=OrderedDict)
    started: set = field(default_factory=set)
    failures: dict = field(default_factory=dict)

    @classmethod
    def of(cls, jobs: Iterable[tuple[Any, Optional[dict]]], max_retries: int = 0,
           share: Optional[Callable[[dict], Any]] = None) -> "JobQueue":
        """The queue of a run's ``(task, calibration)`` jobs, numbered in order: the opening of
        both executors' ``run``.

        ``share``: called once per calibration (a sweep point's dict, by identity) for what its
        jobs carry instead (the Ray executor puts it into the object store once); default the
        dict itself.
        """
        queue = cls(max_retries)
        shared: dict[int, tuple[dict, Any]] = {}  # id -> (the dict, kept alive so ids stay unique; its stand-in)
        for task_id, (task, calibration) in enumerate(jobs):
            if calibration is not None and share is not None:
                if id(calibration) not in shared:
                    shared[id(calibration)] = (calibration, share(calibration))
                calibration = shared[id(calibration)][1]
            queue.push((task_id, task, calibration))
        return queue

    def retry(self, job: tuple, why: str) -> None:
        task_id, task = job[0], job[1]
        self.failures[task_id] = self.failures.get(task_id, 0) + 1
        if self.failures[task_id] > self.max_retries:
            raise TaskError(f"task {task} failed {self.failures[task_id]} times; last error: {why}")
        self.push(job, front=True)

    def push(self, job: tuple, front: bool = False) -> None:
        q = self.groups.setdefault(job[1].group, deque())
        q.appendleft(job) if front else q.append(job)

    def __len__(self) -> int:
        return sum(len(q) for q in self.groups.values())

    def take(self, group: Optional[tuple]) -> Optional[tuple]:
        """The next job for a process that worked on ``group``: same group, else a new one, else
        the group with the most jobs left."""
        if group in self.groups and self.groups[group]:
            return self._pop(group)
        fresh = [g for g, q in self.groups.items() if q and g not in self.started]
        if fresh:
            return self._pop(fresh[0])
        busy = [g for g, q in self.groups.items() if q]
        if busy:
            return self._pop(max(busy, key=lambda g: len(self.groups[g])))
        return None

    def _pop(self, group: tuple) -> tuple:
        self.started.add(group)
        job = self.groups[group].popleft()
        if not self.groups[group]:
            del self.groups[group]
        return job
