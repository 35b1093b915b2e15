"""The report as rich tables in the terminal: headline, artifacts, and the width selection."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgekd.report.table import (
    DASH, artifact_rows, fmt_count, fmt_delta, fmt_mb, fmt_ms, fmt_pct, fmt_source, fmt_speedup,
    selection_rows, summary_lines, target_name,
)


def artifacts_table(report: dict) -> Table:
    rows = artifact_rows(report)
    multi_run = any(r.run for r in rows)
    tname = target_name(report)
    budget = report.get("budget_ms")
    title = "Artifacts: accuracy and latency"
    if tname:
        title += f" (target {tname}" + (f", budget {fmt_ms(budget)} ms)" if budget else ")")
    table = Table(title=title, box=box.SIMPLE_HEAVY, title_style="bold", header_style="bold cyan",
                  caption="speed-up: against the teacher in PyTorch on this machine; ★ recommended; "
                          "◆ on the accuracy–latency frontier", caption_style="dim")
    if multi_run:
        table.add_column("Run")
    table.add_column("Artifact", no_wrap=True)
    table.add_column("Runtime")
    table.add_column("Prec")
    table.add_column("Size MB", justify="right")
    table.add_column("Acc %", justify="right")
    table.add_column("Δ pt", justify="right")
    table.add_column("Host p50 ms", justify="right")
    table.add_column("Speed-up", justify="right")
    table.add_column(f"{tname or 'Target'} p50 ms", justify="right")
    table.add_column("Source")
    table.add_column("Status", max_width=48)
    for r in rows:
        marks = ("★" if r.recommended else "") + ("◆" if r.on_frontier else "")
        label = Text(r.label + (" " + marks if marks else ""), style="bold" if r.recommended else "")
        if r.role == "teacher":
            label.stylize("dim italic")
        target_cell = Text(fmt_ms(r.target_p50))
        if r.fits is False:
            target_cell.stylize("red")
        elif r.fits:
            target_cell.stylize("green")
        if r.target_source and r.target_source.startswith("predicted:"):
            target_cell.append(" (pred)", style="dim")
        if r.ok:
            status = Text("ok", style="green")
        else:
            status = Text(r.status + (f": {r.reason}" if r.reason else ""),
                          style="red" if r.status == "failed" else "yellow")
        delta = fmt_delta(r)
        delta_cell = Text(delta, style=("red" if delta.startswith("−") and r.delta_pt is not None and r.delta_pt < -1
                                        else ""))
        cells = [label, r.runtime or DASH, r.precision, fmt_mb(r.size_mb), fmt_pct(r.accuracy), delta_cell,
                 fmt_ms(r.host_p50), fmt_speedup(r.speedup), target_cell, Text(fmt_source(r), style="dim"), status]
        if multi_run:
            cells.insert(0, r.run or DASH)
        table.add_row(*cells)
    return table


def selection_table(report: dict) -> Table | None:
    rows = selection_rows(report)
    if not rows:
        return None
    selection = report.get("selection") or {}
    budget = selection.get("budget_ms", report.get("budget_ms"))
    source = selection.get("latency_source", "")
    table = Table(title=f"Width selection (budget {fmt_ms(budget)} ms, latency {source})",
                  box=box.SIMPLE_HEAVY, title_style="bold", header_style="bold cyan")
    table.add_column("Width", justify="right")
    table.add_column("Depth", justify="right")
    table.add_column("Params", justify="right")
    table.add_column("FLOPs", justify="right")
    table.add_column("Predicted ms", justify="right")
    table.add_column("Memory MB", justify="right")
    table.add_column("Fits")
    for c in rows:
        table.add_row(
            f"{c.width:g}", str(c.depth) if c.depth is not None else DASH, fmt_count(c.params), fmt_count(c.flops),
            fmt_ms(c.predicted_ms), fmt_mb(c.memory_mb),
            Text("yes ◀ chosen" if c.chosen else "yes", style="bold green" if c.chosen else "green") if c.fits
            else Text("no", style="red"),
            style="bold" if c.chosen else "",
        )
    return table


def render_terminal(report: dict, console: Console | None = None, *, selection: bool = True) -> None:
    """Print the headline, the artifact table and (optionally) the width-selection table."""
    console = console or Console()
    for label, value in summary_lines(report):
        console.print(f"[bold]{label}:[/bold] {value}", highlight=False)
    if selection:
        table = selection_table(report)
        if table is not None:
            console.print(table)
    console.print(artifacts_table(report))
