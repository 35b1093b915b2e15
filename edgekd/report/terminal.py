"""The report as rich tables in the terminal: headline, artifacts, and the width selection."""

from __future__ import annotations

from rich import box
from rich.table import Table
from rich.text import Text

from edgekd.report.table import (
    DASH, artifact_rows, batch_rows, fmt_count, fmt_delta, fmt_mb, fmt_ms, fmt_pct, fmt_rate, fmt_speedup, selection_rows, summary_lines, target_name, visible_columns,
)


SUPERSCRIPTS = "¹²³⁴⁵⁶⁷⁸⁹"


def _footnote_mark(i: int) -> str:
    return SUPERSCRIPTS[i] if i < len(SUPERSCRIPTS) else f"[{i + 1}]"


def _short_label(r) -> str:
    """Student rows by their format name alone; the teacher and bare model files say what they are."""
    base = r.name if r.role == "student" else (r.role if r.name in ("pytorch", r.role) else f"{r.role} · {r.name}")
    if r.role == "teacher" and r.name != "pytorch":
        base = f"teacher · {r.name}"
    elif r.role == "teacher":
        base = "teacher (pytorch)"
    return base


def _status_cells(rows) -> tuple[list[Text], list[str]]:
    """Each row's status cell, and the footnotes that carry the reasons of the failed and skipped rows."""
    footnotes: list[str] = []
    cells = []
    for r in rows:
        if r.ok:
            cells.append(Text("ok", style="green"))
            continue
        mark = _footnote_mark(len(footnotes))
        footnotes.append(f"{mark} {_short_label(r)}: {r.status}" + (f": {r.reason}" if r.reason else ""))
        cells.append(Text(r.status + mark, style="red" if r.status == "failed" else "yellow"))
    return cells, footnotes


def _target_cell(r) -> Text:
    cell = Text(fmt_ms(r.target_p50))
    if r.fits is False:
        cell.stylize("red")
    elif r.fits:
        cell.stylize("green")
    if r.target_source:
        cell.append(" pred" if r.target_source.startswith("predicted:") else " meas", style="dim")
    return cell


def _label_cell(r) -> Text:
    marks = ("★" if r.recommended else "") + ("◆" if r.on_frontier else "")
    text = Text(_short_label(r) + (" " + marks if marks else ""), style="bold" if r.recommended else "")
    if r.role == "teacher":
        text.stylize("italic")
    return text


def _delta_cell(r) -> Text:
    return Text(fmt_delta(r), style="red" if r.delta_pt is not None and r.delta_pt < -1 else "")


def _artifact_columns(rows, cols, tname: str | None) -> list[tuple]:
    """(header, justify, cell, keep-priority: lower survives longer on a narrow terminal) of the shown columns;
    a cell of None is the status column."""
    spec = [
        ("Run", "left", lambda r: r.run or DASH, 0, any(r.run for r in rows)),
        ("Artifact", "left", _label_cell, 0, True),
        ("Runtime", "left", lambda r: r.runtime or DASH, 6, True),
        ("Prec", "left", lambda r: r.precision, 3, True),
        ("MB", "right", lambda r: fmt_mb(r.size_mb), 5, True),
        ("Acc %", "right", lambda r: fmt_pct(r.accuracy), 1, cols.accuracy),
        ("Δ pt", "right", _delta_cell, 4, cols.accuracy),
        ("Host ms", "right", lambda r: fmt_ms(r.host_p50), 0, True),
        ("×teacher", "right", lambda r: fmt_speedup(r.speedup), 2, cols.speedup),
        (f"{tname or 'target'} ms", "right", _target_cell, 0, cols.target),
        ("Status", "left", None, 1, True),
    ]
    return [c[:4] for c in spec if c[4]]


def _columns_that_fit(spec: list[tuple], cells: list[list], width: int) -> list[int]:
    """The columns kept within ``width``: the least important go first."""
    def text_len(c) -> int:
        return len(c.plain if isinstance(c, Text) else str(c))

    def needed(keep) -> int:
        return sum(max([len(spec[j][0])] + [text_len(row[j]) for row in cells]) + 2 for j in keep) + 2

    keep = list(range(len(spec)))
    for priority in (6, 5, 4, 3, 2):
        if needed(keep) <= width:
            break
        keep = [j for j in keep if spec[j][3] < priority]
    return keep


def _artifacts_caption(rows, cols, speedup_shown: bool) -> str:
    notes = ["Host ms: p50 measured on this machine"]
    if cols.target:
        notes.append("pred = predicted by the latency model, meas = measured on the device")
    if cols.speedup and speedup_shown:
        notes.append("×teacher: speed-up vs the teacher in PyTorch here")
    if any(r.recommended for r in rows):
        notes.append("★ recommended")
    if any(r.on_frontier for r in rows):
        notes.append("◆ accuracy–latency frontier")
    return "; ".join(notes)


def artifacts_table(report: dict, width: int = 160) -> tuple[Table, list[str]]:
    """The artifact table fitted to ``width`` columns, and the footnotes (reasons of failed/skipped rows).

    Reasons live under the table, not in it: one long reason would otherwise squeeze every column.
    Columns that carry nothing are left out, and on a narrow terminal the least important go first.
    """
    rows = artifact_rows(report)
    tname = target_name(report)
    budget = report.get("budget_ms")
    cols = visible_columns(rows)
    status_cells, footnotes = _status_cells(rows)
    spec = _artifact_columns(rows, cols, tname)
    cells = [[status_cells[i] if fn is None else fn(r) for (_, _, fn, _) in spec] for i, r in enumerate(rows)]
    keep = _columns_that_fit(spec, cells, width)
    title = "Artifacts"
    if tname:
        title += f" on {tname}" + (f" (budget {fmt_ms(budget)} ms)" if budget else "")
    caption = _artifacts_caption(rows, cols, any(spec[j][0] == "×teacher" for j in keep))
    table = Table(title=title, box=box.SIMPLE_HEAVY, title_style="bold", header_style="bold cyan",
                  caption=caption, caption_style="dim")
    for j in keep:
        table.add_column(spec[j][0], justify=spec[j][1], no_wrap=spec[j][0] != "Artifact")
    for row in cells:
        table.add_row(*[row[j] for j in keep])
    return table, footnotes


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
    table.add_column("Predicted ms (interval)", justify="right")
    table.add_column("Memory MB", justify="right")
    table.add_column("Fits")
    for c in rows:
        table.add_row(
            f"{c.width:g}", str(c.depth) if c.depth is not None else DASH, fmt_count(c.params), fmt_count(c.flops),
            c.predicted, fmt_mb(c.memory_mb),
            Text("yes ◀ chosen" if c.chosen else "yes", style="bold green" if c.chosen else "green") if c.fits
            else Text("no", style="red"),
            style="bold" if c.chosen else "",
        )
    return table


def batch_table(report: dict) -> Table | None:
    rows = batch_rows(report)
    if not rows:
        return None
    table = Table(title="Latency and throughput by batch size (this machine)", box=box.SIMPLE_HEAVY,
                  title_style="bold", header_style="bold cyan")
    for col, justify in (("Artifact", "left"), ("Runtime", "left"), ("Batch", "right"), ("p50 ms", "right"),
                         ("p90 ms", "right"), ("Images/s", "right"), ("Status", "left")):
        table.add_column(col, justify=justify)
    for b in rows:
        status = Text("ok", style="green") if b["status"] == "ok" else Text(
            f"{b['status']}: {b['reason']}", style="red" if b["status"] == "failed" else "yellow")
        table.add_row((f"{b['run']}/" if b["run"] else "") + b["label"], b["runtime"] or DASH, str(b["batch"]),
                      fmt_ms(b["p50"]), fmt_ms(b["p90"]), fmt_rate(b["throughput"]), status)
    return table


def report_renderables(report: dict, width: int = 160, *, selection: bool = True) -> list:
    """The headline lines, the width-selection table (optionally), the artifact table fitted to ``width``
    with its footnotes, and the batch table: what a front end prints, in order."""
    out: list = [Text.from_markup(f"[bold]{label}:[/bold] ") + Text(str(value)) for label, value in summary_lines(report)]
    table = selection_table(report) if selection else None
    if table is not None:
        out.append(table)
    table, footnotes = artifacts_table(report, width=width)
    out.append(table)
    out.extend(Text(note, style="dim") for note in footnotes)
    batches = batch_table(report)
    if batches is not None:
        out.append(batches)
    return out

