"""The command line's renderer: an ``edgekd.events`` listener that draws every event with rich.

Install it around a command's library call::

    with rendering() as renderer:          # or: with events.listening(RichRenderer()):
        run = distill(opts)

Stage lines carry their times, epochs one line each, ``progress`` events drive rich progress bars
keyed by their ``task``, ``table`` events become rich tables, warnings are yellow. Lines printed while
a bar is drawn go above it (through the live display's console), so bars never tear the log.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

from edgekd import events

# Progress data keys that are the bar's own, not figures to show beside it.
_PROGRESS_KEYS = {"task", "completed", "total", "description", "started", "finished"}
_EPOCH_KEYS = {"epoch", "epochs", "stage", "seconds"}


def make_console(stderr: bool = False, width: int = 160):
    """A rich console that folds at ``width`` when the output is not a terminal and COLUMNS is not set
    (CI logs, pipes): rich's 80 columns would fold every table."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    wide = stream.isatty() or "COLUMNS" in os.environ
    return Console(stderr=stderr, width=None if wide else width)


def print_report(out, report: dict, *, selection: bool = True) -> None:
    """Print a report.json's headline and tables on ``out`` (a :class:`RichRenderer` or a rich console)."""
    from edgekd.report.terminal import report_renderables

    console = out.console if isinstance(out, RichRenderer) else out
    for renderable in report_renderables(report, console.width, selection=selection):
        out.print(renderable, highlight=False)


def _number(key: str, value) -> str:
    if isinstance(value, float):
        # accuracies travel as fractions; everything else (loss, ms, MB) as is
        return f"{value:.2%}" if "acc" in key and 0.0 <= value <= 1.0 else f"{value:.4g}"
    return str(value)


def _figures(data: dict, skip: set[str]) -> str:
    return "  ".join(f"{k} {_number(k, v)}" for k, v in data.items()
                     if k not in skip and isinstance(v, (int, float, str)) and not isinstance(v, bool))


class RichRenderer:
    """Renders edgekd events on a rich console; a listener for :func:`edgekd.events.listening`.

    ``progress=False`` draws no bars (a line when a task finishes instead, nothing while it runs):
    for logs that are not terminals or callers that want only the lines.
    """

    def __init__(self, console=None, progress: bool = True):
        self.console = console if console is not None else make_console()
        self.show_progress = progress
        self._bars = None  # rich.progress.Progress while any task is live
        self._tasks: dict[str, int] = {}
        self._candidates: list[str] = []  # candidate lines held until it is known whether a table repeats them
        self._handlers = {
            "stage_started": self._stage_started, "stage_finished": self._stage_finished,
            "epoch_end": self._epoch_end, "candidate_costed": self._candidate, "artifact_exported": self._artifact,
            "artifact_measured": self._artifact, "progress": self._progress, "info": self._info,
            "warning": self._warning, "table": self._table,
        }

    # -- listener protocol -------------------------------------------------------------------------
    def __call__(self, event: events.Event) -> None:
        if event.kind != "candidate_costed" and self._candidates:
            self._flush_candidates(dropped=event.kind == "table")
        self._handlers.get(event.kind, self._info)(event)

    def close(self) -> None:
        """Stop any bar still drawn (a run that raised between a task's start and its end)."""
        if self._candidates:
            self._flush_candidates(dropped=False)
        if self._bars is not None:
            self._bars.stop()
            self._bars, self._tasks = None, {}

    def __enter__(self) -> "RichRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- output ------------------------------------------------------------------------------------
    @property
    def _out(self):
        # While bars are live, print through their console so each line lands above the bars.
        return self._bars.console if self._bars is not None else self.console

    def line(self, text: str, style: str | None = None) -> None:
        """One plain-text line (no markup is read from ``text``)."""
        from rich.text import Text

        self._out.print(Text(text, style=style or ""), highlight=False, soft_wrap=True)

    def print(self, renderable, **kwargs) -> None:
        """Anything rich can render (a table from :mod:`edgekd.report.terminal`), above any live bars."""
        self._out.print(renderable, **kwargs)

    # -- handlers ----------------------------------------------------------------------------------
    def _stage_started(self, event) -> None:
        self.line(f"▶ {event.message or event.data.get('stage', '')}", "bold cyan")

    def _stage_finished(self, event) -> None:
        d = event.data
        self.line(f"  {d['stage']}: {d['seconds']:.1f} s" if "seconds" in d and "stage" in d else event.message, "dim")

    def _epoch_end(self, event) -> None:
        if event.message:
            self.line(event.message)
            return
        d = event.data
        head = f"epoch {d.get('epoch', '?')}/{d['epochs']}" if "epochs" in d else f"epoch {d.get('epoch', '?')}"
        tail = f"  {d['seconds']:.1f}s" if isinstance(d.get("seconds"), (int, float)) else ""
        self.line(f"{head}  {_figures(d, _EPOCH_KEYS)}{tail}")

    def _candidate(self, event) -> None:
        """Held back: the selection table that usually follows shows every candidate (a live display shows
        the latest as progress meanwhile); lines only when something other than a table comes next."""
        d = event.data
        fits = {True: "fits", False: "over budget"}.get(d.get("fits"), "")
        ms = d.get("predicted_ms")
        text = event.message or "  " + "  ".join(str(x) for x in (
            d.get("family", ""), f"width {d['width']:g}" if "width" in d else "",
            f"depth {d['depth']:g}" if d.get("depth") is not None else "",
            f"{d['image_size']}px" if d.get("image_size") else "",
            f"{ms:.4g} ms" if isinstance(ms, (int, float)) else "", fits) if x)
        self._candidates.append(text)
        if self.show_progress:
            self._progress(events.Event("progress", "costing candidates", {
                "task": "candidates", "completed": float(len(self._candidates)), "total": None,
                "candidate": text.strip()}))

    def _flush_candidates(self, dropped: bool) -> None:
        lines, self._candidates = self._candidates, []
        if self.show_progress:
            self._end_task("candidates")
        if not dropped:
            for text in lines:
                self.line(text, "dim")

    def _artifact(self, event) -> None:
        if event.message:
            self.line(event.message)
            return
        d = event.data
        verb = "exported" if event.kind == "artifact_exported" else "measured"
        self.line(f"  {verb} {d.get('format', '')}  {d.get('path', '')}  "
                  f"{_figures(d, {'format', 'path'})}".rstrip())

    def _info(self, event) -> None:
        self.line(event.message)

    def _warning(self, event) -> None:
        from rich.text import Text

        self._out.print(Text.assemble(("warning: ", "bold yellow"), (event.message, "yellow")), highlight=False,
                        soft_wrap=True)

    def _table(self, event) -> None:
        from rich.table import Table

        d = event.data
        table = Table(title=d.get("title") or event.message or None, title_justify="left")
        for name in d.get("columns", []):
            table.add_column(str(name), overflow="fold")
        for row in d.get("rows", []):
            table.add_row(*(str(c) for c in row))
        self._out.print(table)

    def _progress(self, event) -> None:
        d = event.data
        task = str(d.get("task", event.message))
        if not self.show_progress:
            if d.get("finished") and d.get("total") is not None:
                self.line(f"  {event.message}: {d.get('completed', 0):g}/{d['total']:g}", "dim")
            return
        if d.get("finished"):
            self._end_task(task)
            return
        bars = self._start_bars()
        detail = _figures(d, _PROGRESS_KEYS)
        if task not in self._tasks:
            self._tasks[task] = bars.add_task(event.message or task, total=d.get("total"),
                                              completed=d.get("completed", 0.0), detail=detail)
        else:
            bars.update(self._tasks[task], description=event.message or None, total=d.get("total"),
                        completed=d.get("completed"), detail=detail)

    def _start_bars(self):
        if self._bars is None:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                  console=self.console, transient=True)
            self._bars.start()
        return self._bars

    def _end_task(self, task: str) -> None:
        if task in self._tasks and self._bars is not None:
            self._bars.remove_task(self._tasks.pop(task))
        if not self._tasks:
            self.close()


@contextmanager
def rendering(console=None, progress: bool = True, *, verbose: bool = True) -> Iterator[RichRenderer | None]:
    """Render the events emitted inside the block (nothing at all with ``verbose=False``), and stop any
    bar left drawn when the block ends, even by an error."""
    if not verbose:
        with events.silenced():
            yield None
        return
    with RichRenderer(console, progress=progress) as renderer, events.listening(renderer):
        yield renderer
