"""Events: how the library says what it is doing, so that only front ends (the CLI, a user's callback) print.

Library code never prints. It calls :func:`emit` (or :func:`info`, :func:`warning`, :func:`stage`,
:func:`progress`) and whoever listens renders the event: the CLI with rich, a notebook user's callback
into their tracker, nobody at all (``verbose=False``). Listeners are held in a context variable, like
``logging``'s handlers but scoped to one run, so that two runs in one process (or in two threads) keep
their own listeners and deep helpers need no ``console`` parameter threaded through every call.

Event kinds (``Event.kind``) and the fields their ``data`` carries:

- ``stage_started`` / ``stage_finished``: ``stage`` (name), ``seconds`` (finished only)
- ``epoch_end``: ``epoch``, ``epochs``, and the epoch's metrics (``loss``, ``val_accuracy``, ...)
- ``candidate_costed``: ``family``, ``width``, ``depth``, ``image_size``, ``predicted_ms``, ``fits``
- ``artifact_exported`` / ``artifact_measured``: ``format``, ``path``, and the figures
- ``progress``: ``task`` (a stable id), ``completed``, ``total`` (None when unknown), ``description``
- ``info`` / ``warning``: only ``message``
- ``table``: ``title``, ``columns`` (list of names), ``rows`` (list of lists of strings)

A listener is any callable taking one :class:`Event`. A listener that raises does not stop the run.
"""

from __future__ import annotations

import contextvars
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

EVENT_KINDS = ("stage_started", "stage_finished", "epoch_end", "candidate_costed", "artifact_exported",
               "artifact_measured", "progress", "info", "warning", "table")

Listener = Callable[["Event"], Any]


@dataclass(frozen=True)
class Event:
    """One thing the library did or noticed. ``message`` is a plain-text line a front end may show as is."""

    kind: str
    message: str = ""
    data: dict = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def __getitem__(self, key: str):
        return self.data[key]


_listeners: contextvars.ContextVar[tuple[Listener, ...]] = contextvars.ContextVar("edgekd_listeners", default=())


@contextmanager
def listening(*listeners: Listener | None, replace: bool = False) -> Iterator[None]:
    """Send the events emitted inside this block to ``listeners`` (as well as to the outer ones,
    unless ``replace``)."""
    added = tuple(cb for cb in listeners if cb is not None)
    token = _listeners.set(added if replace else _listeners.get() + added)
    try:
        yield
    finally:
        _listeners.reset(token)


@contextmanager
def silenced() -> Iterator[None]:
    """No listener hears what is emitted inside this block (a nested trial run, a probe)."""
    token = _listeners.set(())
    try:
        yield
    finally:
        _listeners.reset(token)


def has_listeners() -> bool:
    return bool(_listeners.get())


def emit(kind: str, message: str = "", **data) -> Event:
    """Tell every listener; returns the event (handy in tests)."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}; one of {', '.join(EVENT_KINDS)}")
    event = Event(kind, " ".join(str(message).split()) if "\n" not in str(message) else str(message), data)
    for listener in _listeners.get():
        try:
            listener(event)
        except Exception:  # noqa: BLE001 - a user's logging callback must not end their training run
            pass
    return event


def info(message: str, **data) -> Event:
    return emit("info", message, **data)


def warning(message: str, **data) -> Event:
    return emit("warning", message, **data)


def table(title: str, columns: list[str], rows: list[list[str]], **data) -> Event:
    return emit("table", title, title=title, columns=list(columns), rows=[list(map(str, r)) for r in rows], **data)


@contextmanager
def stage(name: str, what: str = "", seconds: dict | None = None) -> Iterator[None]:
    """Emit ``stage_started``/``stage_finished`` around the block; its duration also lands in ``seconds[name]``."""
    emit("stage_started", what or name, stage=name)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        dt = time.perf_counter() - t0
        if seconds is not None:
            seconds[name] = round(dt, 2)
        emit("stage_finished", f"{name}: {dt:.1f} s", stage=name, seconds=round(dt, 2))


class Progress:
    """A counted task that emits ``progress`` events; front ends draw a bar from them.

    Use as ``with progress("train", "epochs", total=10) as p: ... p.advance()``.
    """

    def __init__(self, task: str, description: str, total: float | None):
        self.task, self.description, self.total, self.completed = task, description, total, 0.0

    def update(self, completed: float | None = None, *, advance: float = 0.0, description: str | None = None,
               total: float | None = None, **data) -> None:
        if completed is not None:
            self.completed = completed
        self.completed += advance
        if description is not None:
            self.description = description
        if total is not None:
            self.total = total
        emit("progress", self.description, task=self.task, completed=self.completed, total=self.total, **data)

    def advance(self, n: float = 1.0, **data) -> None:
        self.update(advance=n, **data)


@contextmanager
def progress(task: str, description: str, total: float | None = None) -> Iterator[Progress]:
    p = Progress(task, description, total)
    emit("progress", description, task=task, completed=0.0, total=total, started=True)
    try:
        yield p
    finally:
        emit("progress", p.description, task=task, completed=p.completed, total=p.total, finished=True)


class Recorder:
    """A listener that keeps every event (tests, notebooks): ``events.listening(rec := Recorder())``."""

    def __init__(self):
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]
