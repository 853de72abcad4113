"""The progress view of a run: draws its events (:mod:`mcsim.runner.events`) with rich, on stderr.

Both faces use it: ``mcsim run`` and :func:`mcsim.api.run_scenario` (``progress=True``). rich is
imported on first use, so importing this module stays light.
"""
from __future__ import annotations

import time
from typing import Optional

from mcsim.runner import events as ev

__all__ = ["ProgressView", "make_console"]


def make_console(stderr: bool = False, width: Optional[int] = None):
    """A rich console without markup guessing (no highlighting; long lines wrap softly)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


class ProgressView:
    """Draws the events of a run (:mod:`mcsim.runner.events`) with rich, on stderr.

    Messages and the plan are lines; a phase is a progress bar (tasks done, images/s, ETA) on a
    terminal, or a line every few seconds in a log (e.g. a Ray job's output). The plan of a dry
    run goes to stdout: it is the command's output.
    """

    def __init__(self, console=None, out=None):
        self.console = console or make_console(stderr=True)
        self.out = out or make_console()
        self._phase = None

    def __call__(self, event) -> None:
        if isinstance(event, ev.Message):
            self.console.print(event.text, markup=False)
        elif isinstance(event, ev.Plan):
            if event.dry_run:
                self.out.print(event.title, markup=False)
            for line in event.lines:
                (self.out if event.dry_run else self.console).print(("  " if event.dry_run else "") + line,
                                                                    markup=False)
        elif isinstance(event, ev.PhaseStarted):
            self._phase = _PhaseView(self.console, event)
        elif isinstance(event, ev.TaskDone) and self._phase is not None:
            self._phase.advance(event.work, event.images)
        elif isinstance(event, ev.PhaseEnded) and self._phase is not None:
            self._phase.close()
            self._phase = None


class _PhaseView:
    """One phase: a rich progress bar on a terminal, else a line every 5 s and at the end."""

    def __init__(self, console, event):
        self.console, self.name, self.n_tasks = console, event.phase, event.tasks
        self.done = self.images = 0
        self.start = self.last = time.perf_counter()
        self.bar = None
        if not console.is_terminal:
            console.print(f"{self.name}: 0/{self.n_tasks} tasks", markup=False)
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.fields[tasks]} tasks"), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self.bar.start()
        self.id = self.bar.add_task(self.name, total=event.work, tasks=f"0/{self.n_tasks}", rate="")

    def advance(self, work: int, images: int) -> None:
        self.done += 1
        self.images += images
        t = time.perf_counter()
        rate = self.images / max(t - self.start, 1e-9)
        if self.bar is not None:
            self.bar.update(self.id, advance=work, tasks=f"{self.done}/{self.n_tasks}",
                            rate=f"{rate:,.0f} images/s" if self.images else "")
        elif t - self.last >= 5 or self.done == self.n_tasks:
            self.last = t
            self.console.print(f"{self.name}: {self.done}/{self.n_tasks} tasks"
                               + (f", {rate:,.0f} images/s" if self.images else "")
                               + f", {t - self.start:.0f} s", markup=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
