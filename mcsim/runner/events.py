"""What a run reports as it goes: a stream of small typed events, drawn by whoever listens.

The driver calls ``on_event(event)`` for each of them; it never prints. The progress view of the
CLI and the API (:class:`mcsim.progress.ProgressView`) draws them with rich: messages as lines, a
phase as a progress bar (tasks done, images/s, ETA), or as a line every few seconds in a log (a
Ray job's output).
A notebook may collect them, or ignore them (the default).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Union

__all__ = ["Event", "EventSink", "Message", "PhaseEnded", "PhaseStarted", "Phase", "Plan", "TaskDone"]

#: The phases of a run: the calibration of every point, then the digital baseline and the chips.
Phase = Literal["calibrating", "evaluating"]


@dataclass(frozen=True)
class Message:
    """A line for the user (a resume, a note about the store's layout, nothing left to do)."""

    text: str


@dataclass(frozen=True)
class Plan:
    """The cut of the work and what the store holds; ``dry_run``: nothing will be computed."""

    title: str
    lines: tuple[str, ...]
    dry_run: bool = False


@dataclass(frozen=True)
class PhaseStarted:
    """A phase of ``tasks`` tasks begins; ``work`` is its size in image-chips (at least 1)."""

    phase: Phase
    tasks: int
    work: int


@dataclass(frozen=True)
class TaskDone:
    """A task's result is stored: ``work`` image-chips of the phase, ``images`` evaluated."""

    phase: Phase
    work: int
    images: int


@dataclass(frozen=True)
class PhaseEnded:
    phase: Phase


Event = Union[Message, Plan, PhaseStarted, TaskDone, PhaseEnded]
EventSink = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The listener of a run nobody watches."""
