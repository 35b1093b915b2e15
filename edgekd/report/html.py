"""report.html: one self-contained page (no network) with the tables, the plots, config, data and environment."""

from __future__ import annotations

import base64
import json
from html import escape

from edgekd.report.markdown import LOOP_HEADER, device_loop_rows
from edgekd.report.plots import render_figures
from edgekd.report.table import (
    DASH, artifact_rows, batch_rows, data_lines, fmt_count, fmt_delta, fmt_mb, fmt_ms, fmt_pct, fmt_rate, fmt_speedup,
    busy_machine_note, latency_pairs, selection_rows, target_name, tuning_rows, visible_columns,
)

# Inline CSS only: the file must open on an air-gapped laptop or as a CI artifact with no network.
CSS = """
:root { --fg:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#f8fafc; --card:#ffffff; --accent:#2563eb;
        --ok:#15803d; --bad:#b91c1c; --warn:#b45309; --chosen:#fef9c3; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font: 14px/1.5 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 28px 32px 48px; }
header { display:flex; justify-content:space-between; align-items:flex-end; border-bottom:1px solid var(--line);
         padding-bottom:14px; margin-bottom:20px; }
h1 { font-size: 24px; margin:0; letter-spacing:-0.01em; }
h1 .brand { color: var(--accent); }
h2 { font-size: 17px; margin: 34px 0 10px; }
h3 { font-size: 14px; margin: 18px 0 8px; color:#374151; }
.meta { color: var(--muted); font-size: 12.5px; text-align:right; }
.cards { display:grid; grid-template-columns: repeat(auto-fit, minmax(175px, 1fr)); gap:12px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:12px 14px; }
.card .k { color:var(--muted); font-size:11.5px; text-transform:uppercase; letter-spacing:.05em; }
.card .v { font-size:20px; font-weight:650; margin-top:2px; }
.card .s { color:var(--muted); font-size:12.5px; }
.panel { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:6px 0; overflow-x:auto; }
table { border-collapse: collapse; width:100%; font-size:13px; }
th, td { padding:7px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { font-size:11.5px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); font-weight:600;
     background:#f9fafb; white-space:nowrap; }
tr:last-child td { border-bottom:none; }
tbody tr:hover { background:#f3f4f6; }
td.num, th.num { text-align:right; font-variant-numeric: tabular-nums; white-space:nowrap; }
tr.recommended { background: var(--chosen); }
tr.recommended:hover { background: #fef08a; }
tr.teacher td:first-child { font-style: italic; }
tr.inactive td { color: var(--muted); }
.pill { display:inline-block; padding:1px 8px; border-radius:999px; font-size:11.5px; font-weight:600; }
.pill.ok { background:#dcfce7; color:var(--ok); } .pill.failed { background:#fee2e2; color:var(--bad); }
.pill.skipped { background:#fef3c7; color:var(--warn); }
.src { font-size:11.5px; color:var(--muted); white-space:nowrap; }
.src.measured { color: var(--ok); }
.fit { color: var(--ok); font-weight:600; } .over { color: var(--bad); font-weight:600; }
.reason { color: var(--muted); font-size:12px; }
td.why { white-space: normal; }
tr.has-note td { border-bottom: none; }
td.run { white-space: nowrap; }
tr.note-row td { padding-top: 0; }
.badge { font-size:11px; font-weight:700; color:#854d0e; background:#fde68a; border-radius:4px; padding:0 5px;
         margin-left:6px; }
.front { color: var(--accent); margin-left:4px; }
figure { margin: 0; background:var(--card); border:1px solid var(--line); border-radius:10px; padding:14px; }
figure img { max-width:100%; height:auto; display:block; margin:0 auto; }
figcaption { color:var(--muted); font-size:12.5px; margin-top:8px; }
.grid2 { display:grid; grid-template-columns: 1fr 1fr; gap:16px; }
@media (max-width: 980px) { .grid2 { grid-template-columns: 1fr; } }
.kv td:first-child { color:var(--muted); width: 34%; white-space:nowrap; }
.kv td { font-variant-numeric: tabular-nums; word-break: break-word; }
code { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background:#f3f4f6;
       padding:1px 4px; border-radius:4px; }
.note { color:var(--muted); font-size:12.5px; margin:8px 2px 0; }
.warn { margin-top:14px; padding:10px 14px; border-radius:10px; background:#fff7ed; border:1px solid #fed7aa;
        color:#9a3412; font-size:13px; }
footer { color:var(--muted); font-size:12px; margin-top:40px; border-top:1px solid var(--line); padding-top:12px; }
"""


def _img(svg: str, alt: str) -> str:
    # A data: URI keeps the SVG's XML namespace declarations out of the HTML text: the page holds no URL.
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/svg+xml;base64,{data}">'


def _source_html(source: str | None) -> str:
    if not source:
        return ""
    cls = "measured" if source.startswith("measured:") else "predicted"
    return f'<div class="src {cls}">{escape(source)}</div>'


def _cards(report: dict) -> str:
    cards = []
    target = report.get("target") or {}
    budget = report.get("budget_ms")
    if target:
        sub = " · ".join(x for x in (target.get("runtime"), target.get("precision")) if x)
        cards.append(("Target", target.get("name", "?"), sub))
    if budget is not None:
        cards.append(("Latency budget", f"{fmt_ms(budget)} ms", "p50 per image on the target"))
    student = report.get("student") or {}
    if student:
        sub = f"{fmt_count(student.get('params'))} params"
        if student.get("flops") is not None:
            sub += f" · {fmt_count(student['flops'])} FLOPs"
        cards.append(("Student", f"width {student.get('width', '?')}", sub))
        if student.get("accuracy") is not None:
            teacher = report.get("teacher") or {}
            tsub = f"teacher {fmt_pct(teacher['accuracy'])}%" if teacher.get("accuracy") is not None else ""
            cards.append(("Student accuracy", f"{fmt_pct(student['accuracy'])}%", tsub))
    teacher = report.get("teacher") or {}
    if teacher and student.get("params") and teacher.get("params"):
        cards.append(("Compression", f"{teacher['params'] / student['params']:.1f}×",
                      f"teacher {fmt_count(teacher['params'])} params"))
    rec = report.get("recommended") or {}
    rows = artifact_rows(report)
    rec_row = next((r for r in rows if r.recommended), None)
    if rec.get("name"):
        sub = ""
        if rec_row is not None:
            bits = []
            if rec_row.target_p50 is not None:
                bits.append(f"{fmt_ms(rec_row.target_p50)} ms on {target_name(report) or 'target'}")
            if rec_row.speedup is not None:
                bits.append(f"{fmt_speedup(rec_row.speedup)} vs teacher")
            sub = " · ".join(bits)
        cards.append(("Recommended", f"{rec['run']}/{rec['name']}" if rec.get("run") else rec["name"], sub))
    if not cards:
        return ""
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{escape(k)}</div><div class="v">{escape(str(v))}</div>'
        f'<div class="s">{escape(s)}</div></div>' for k, v, s in cards) + "</div>"


def _artifact_table(report: dict) -> str:
    rows = artifact_rows(report)
    multi_run = any(r.run for r in rows)
    tname = target_name(report) or "target"
    cols = visible_columns(rows)
    head = (["Run"] if multi_run else []) + ["Artifact", "Runtime", "Precision"]
    # (header, cell, shown): numeric columns, empty ones dropped (a bench of bare files has no accuracy).
    spec = [
        ("Size MB", lambda r: fmt_mb(r.size_mb), True),
        ("Accuracy %", lambda r: fmt_pct(r.accuracy), cols.accuracy),
        ("Δ vs FP32 pt", fmt_delta, cols.accuracy),
        ("Host p50 ms", lambda r: fmt_ms(r.host_p50) + (_source_html(r.host_source)
                                                         if r.host_source and r.host_source != "measured:host" else ""),
         True),
        ("Host p90 ms", lambda r: fmt_ms(r.host_p90), not multi_run),  # room for the Run column
        ("Speed-up", lambda r: fmt_speedup(r.speedup), cols.speedup),
        (f"{escape(tname)} p50 ms", None, cols.target),
    ]
    spec = [x for x in spec if x[2]]
    html = ["<table><thead><tr>"]
    html += [f"<th>{h}</th>" for h in head] + [f'<th class="num">{h}</th>' for h, _, _ in spec] + ["<th>Status</th>"]
    html.append("</tr></thead><tbody>")
    for r in rows:
        cls = " ".join(c for c in ("recommended" if r.recommended else "", "teacher" if r.role == "teacher" else "",
                                   "inactive" if not r.ok else "") if c)
        label = escape(r.label)
        if r.recommended:
            label += '<span class="badge">RECOMMENDED</span>'
        if r.on_frontier:
            label += '<span class="front" title="on the accuracy–latency frontier">◆</span>'
        fit = ""
        if r.fits is True:
            fit = ' <span class="fit" title="within budget">✓</span>'
        elif r.fits is False:
            fit = ' <span class="over" title="over budget">✗</span>'
        status = f'<span class="pill {escape(r.status)}">{escape(r.status)}</span>'
        lead = ([f'<td class="run">{escape(r.run or DASH)}</td>'] if multi_run else []) + [
            f"<td>{label}</td>", f"<td>{escape(r.runtime or DASH)}</td>", f"<td>{escape(r.precision)}</td>"]
        target_cell = f'<td class="num">{fmt_ms(r.target_p50)}{fit}{_source_html(r.target_source)}</td>'
        if r.size_mb is None and r.accuracy is None and r.host_p50 is None:
            # Nothing ran here (skipped, or failed to export): the reason takes the empty columns' width;
            # a target prediction, if any, still shows.
            span = len(spec) - (1 if cols.target else 0)
            cells = lead + [f'<td class="why" colspan="{span}"><span class="reason">{escape(r.reason or "")}'
                            "</span></td>"] + ([target_cell] if cols.target else []) + [f"<td>{status}</td>"]
            html.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>")
            continue
        cells = lead + [target_cell if fn is None else f'<td class="num">{fn(r)}</td>' for _, fn, _ in spec]
        cells.append(f'<td class="status">{status}</td>')
        if r.reason and not r.ok:
            # The reason gets its own line under the figures instead of squeezing into the status column.
            note = (f'<tr class="{cls} note-row"><td colspan="{len(lead)}"></td><td colspan="{len(spec) + 1}">'
                    f'<span class="reason">↳ {escape(r.reason)}</span></td></tr>')
            html.append(f'<tr class="{cls} has-note">' + "".join(cells) + "</tr>" + note)
            continue
        html.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>")
    html.append("</tbody></table>")
    return "".join(html)


def _batch_table(report: dict) -> str:
    rows = batch_rows(report)
    if not rows:
        return ""
    html = ['<table><thead><tr><th>Artifact</th><th>Runtime</th><th class="num">Batch</th><th class="num">p50 ms</th>'
            '<th class="num">p90 ms</th><th class="num">Images/s</th><th>Status</th></tr></thead><tbody>']
    for b in rows:
        status = f'<span class="pill {escape(b["status"])}">{escape(b["status"])}</span>'
        if b["reason"]:
            status += f' <span class="reason">{escape(b["reason"])}</span>'
        html.append(f"<tr><td>{escape((b['run'] + '/') if b['run'] else '')}{escape(b['label'])}</td>"
                    f"<td>{escape(b['runtime'] or DASH)}</td><td class=\"num\">{b['batch']}</td>"
                    f"<td class=\"num\">{fmt_ms(b['p50'])}</td><td class=\"num\">{fmt_ms(b['p90'])}</td>"
                    f"<td class=\"num\">{fmt_rate(b['throughput'])}</td><td class=\"why\">{status}</td></tr>")
    html.append("</tbody></table>")
    return "".join(html)


def _selection_table(report: dict) -> str:
    rows = selection_rows(report)
    if not rows:
        return ""
    html = ['<table><thead><tr><th class="num">Width</th><th class="num">Depth</th><th class="num">Params</th>'
            '<th class="num">FLOPs</th><th class="num">Predicted ms (interval)</th><th class="num">Memory MB</th>'
            "<th>Fits budget</th></tr></thead><tbody>"]
    for c in rows:
        fits = '<span class="fit">yes</span>' if c.fits else '<span class="over">no</span>'
        if c.chosen:
            fits += '<span class="badge">CHOSEN</span>'
        html.append(
            f'<tr class="{"recommended" if c.chosen else ""}"><td class="num">{c.width:g}</td>'
            f'<td class="num">{c.depth if c.depth is not None else DASH}</td>'
            f'<td class="num">{fmt_count(c.params)}</td><td class="num">{fmt_count(c.flops)}</td>'
            f'<td class="num">{c.predicted}</td><td class="num">{fmt_mb(c.memory_mb)}</td>'
            f"<td>{fits}</td></tr>")
    html.append("</tbody></table>")
    return "".join(html)


def _flatten(d, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += _flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


def _value(v) -> str:
    if v is None:
        return DASH
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return escape(", ".join(str(x) for x in v)) if all(not isinstance(x, (dict, list)) for x in v) \
            else f"<code>{escape(json.dumps(v))}</code>"
    if isinstance(v, dict):
        return "{}"
    return escape(str(v))


def _kv_table(d: dict) -> str:
    items = _flatten(d)
    if not items:
        return '<p class="note">none recorded</p>'
    return '<table class="kv"><tbody>' + "".join(
        f"<tr><td>{escape(k)}</td><td>{_value(v)}</td></tr>" for k, v in items) + "</tbody></table>"


def _data_section(report: dict) -> str:
    data = report.get("data") or {}
    if not data:
        return ""
    html = [f'<p class="note">{escape(str(data.get("name", "?")))} from <code>{escape(str(data.get("source", "?")))}'
            f'</code> · {escape(str(data.get("num_classes", "?")))} classes · input '
            f'{escape(str(data.get("input_shape", "?")))}</p>']
    splits = data.get("splits") or {}
    if splits:
        html.append('<div class="panel"><table><thead><tr><th>Split</th><th class="num">Images</th><th>sha256</th>'
                    "</tr></thead><tbody>")
        for name, s in splits.items():
            html.append(f"<tr><td>{escape(name)}</td><td class=\"num\">{escape(str(s.get('size', DASH)))}</td>"
                        f"<td><code>{escape(str(s.get('sha256', ''))[:16])}</code></td></tr>")
        html.append("</tbody></table></div>")
    html += [f'<p class="note">{escape(line)}</p>' for line in data_lines(report)]
    return "".join(html)


def _timings(report: dict) -> str:
    timings = {k: v for k, v in (report.get("timings_s") or {}).items() if isinstance(v, (int, float))}
    if not timings:
        return ""
    total = sum(timings.values()) or 1.0
    longest = max(timings.values()) or 1.0
    rows = "".join(
        f'<tr><td>{escape(k)}</td><td class="num">{v:.1f} s</td><td style="width:60%">'
        f'<div style="background:#bfdbfe;height:10px;border-radius:3px;width:{100 * v / longest:.1f}%"></div></td></tr>'
        for k, v in timings.items())
    return (f'<h3>Stage timings (total {total:.1f} s)</h3><div class="panel"><table class="kv"><tbody>{rows}'
            "</tbody></table></div>")


def render_html(report: dict) -> str:
    figures = render_figures(report)
    parts = (_head(report) + _artifacts_section(report) + _figure_sections(report, figures) + _loop_section(report)
             + _selection_section(report) + _training_sections(report, figures) + _run_section(report))
    parts.append("<footer>Generated by edgekd from report.json (schema "
                 f"{escape(str(report.get('schema_version')))}); regenerate with <code>edgekd report RUN_DIR</code>."
                 "</footer></main></body></html>")
    return "\n".join(p for p in parts if p)


def _head(report: dict) -> list[str]:
    target = report.get("target") or {}
    title = "edgekd report" + (f" — {target['name']}" if target.get("name") else "")
    return [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>",
        '<header><div><h1><span class="brand">edgekd</span> report</h1>',
        f'<div class="note">{escape(report.get("command", ""))} run'
        + (f" for {escape(target['name'])}" if target.get("name") else "") + "</div></div>",
        f'<div class="meta">created {escape(report.get("created", "?"))}<br>edgekd '
        f'{escape(report.get("edgekd_version", "?"))} · schema {escape(str(report.get("schema_version")))}</div>'
        "</header>",
        _cards(report),
        (f'<div class="warn">⚠ {escape(busy_machine_note(report))}</div>' if busy_machine_note(report) else ""),
    ]


def _artifacts_section(report: dict) -> list[str]:
    parts = [
        "<h2>Artifacts</h2>",
        f'<div class="panel">{_artifact_table(report)}</div>',
        '<p class="note">Speed-up: the teacher\'s PyTorch p50 on this machine divided by the artifact\'s. '
        "<b>measured:&lt;device&gt;</b> was timed on that device; <b>predicted:&lt;target&gt;</b> comes from "
        "the latency model. Δ is the accuracy change against the FP32 PyTorch student, in points. "
        "◆ marks the accuracy–latency frontier; ✓/✗ within/over the budget.</p>",
    ]
    batches = _batch_table(report)
    if batches:
        parts += ["<h3>Latency and throughput by batch size (this machine)</h3>", f'<div class="panel">{batches}</div>']
    return parts


def _figure_sections(report: dict, figures: dict) -> list[str]:
    """The accuracy-latency plot and the latency model's figures."""
    parts = []
    if "pareto" in figures:
        parts += ["<h2>Accuracy against latency</h2>",
                  f"<figure>{_img(figures['pareto'], 'accuracy against latency (Pareto plot)')}"
                  "<figcaption>Filled markers were measured, hollow ones predicted; the marker shape is the "
                  "precision, the colour the runtime. The dotted line is the Pareto frontier; the dashed red line "
                  "the latency budget; the ringed point the recommended artifact.</figcaption></figure>"]
    if "selection" in figures or "prediction" in figures:
        parts.append("<h2>Latency model</h2>")
        panels = []
        if "selection" in figures:
            panels.append(f"<figure>{_img(figures['selection'], 'width selection')}<figcaption>Candidate widths "
                          "with their predicted latency; green fits the budget; the widest that fits is chosen."
                          "</figcaption></figure>")
        if "prediction" in figures:
            n = len(latency_pairs(report))
            panels.append(f"<figure>{_img(figures['prediction'], 'predicted vs measured latency')}<figcaption>"
                          f"{n} artifact(s) with both a prediction and a measurement on the same device."
                          "</figcaption></figure>")
        parts.append(f'<div class="grid2">{"".join(panels)}</div>' if len(panels) > 1 else panels[0])
    return parts


def _rows_table(header, rows) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="panel"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _loop_section(report: dict) -> list[str]:
    loop_rows = device_loop_rows(report)
    if not loop_rows:
        return []
    loop = report["device_loop"]
    return [f"<h2>Closed loop on {escape(loop['device'])}</h2>", _rows_table(LOOP_HEADER, loop_rows),
            f'<p class="note">Each round was distilled here and timed on {escape(loop["device"])} over SSH; this '
            f'report is round {loop.get("final_round")}.'
            + (f" Stopped: {escape(str(loop['stopped']))}" if loop.get("stopped") else "") + "</p>"]


def _selection_section(report: dict) -> list[str]:
    sel = _selection_table(report)
    if not sel:
        return []
    selection = report.get("selection") or {}
    return ["<h3>Width candidates</h3>", f'<div class="panel">{sel}</div>',
            f'<p class="note">Latencies {escape(str(selection.get("latency_source", "predicted")))}; budget '
            f'{fmt_ms(selection.get("budget_ms", report.get("budget_ms")))} ms.</p>']


def _training_sections(report: dict, figures: dict) -> list[str]:
    """The student's and the teacher's curves, whether the teacher was worth it, and the tuning trials."""
    parts = []
    if "training" in figures:
        student = report.get("student") or {}
        last = (student.get("history") or [{}])[-1]
        parts += ["<h2>Training</h2>",
                  f'<figure>{_img(figures["training"], "distillation curves")}<figcaption>'
                  f'{len(student.get("history") or [])} epochs; final validation accuracy '
                  f'{fmt_pct(last.get("val_accuracy"))}%, test accuracy {fmt_pct(student.get("accuracy"))}%.'
                  "</figcaption></figure>"]
    teacher = report.get("teacher") or {}
    if "teacher" in figures:
        parts += ["<h2>Teacher</h2>",
                  f'<figure>{_img(figures["teacher"], "teacher training curves")}<figcaption>'
                  f'{teacher.get("epochs")} epochs; stopped: {escape(str(teacher.get("stop_reason")))}; the weights of '
                  f'epoch {teacher.get("best_epoch")} (best validation accuracy, {fmt_pct(teacher.get("val_accuracy"))}%) '
                  "were kept.</figcaption></figure>"]
    if (teacher.get("worth") or {}).get("message"):
        cls = "note" if teacher["worth"].get("worth") else "warn"
        parts.append(f'<div class="{cls}">Teacher vs student alone: {escape(teacher["worth"]["message"])}</div>')
    header, body = tuning_rows(report)
    if body:
        parts += ["<h2>Tuning (validation split only)</h2>", _rows_table(header, body)]
    return parts


def _run_section(report: dict) -> list[str]:
    """Data, configuration, environment, timings, the target profile and each device measured on."""
    parts = []
    data = _data_section(report)
    if data:
        parts += ["<h2>Data</h2>", data]
    parts.append("<h2>Run</h2>")
    parts.append('<div class="grid2"><div><h3>Configuration</h3><div class="panel">'
                 f'{_kv_table(report.get("config") or {})}</div></div>'
                 f'<div><h3>Environment</h3><div class="panel">{_kv_table(report.get("environment") or {})}</div>'
                 f"{_timings(report)}</div></div>")
    target = report.get("target") or {}
    if target:
        parts += ["<h3>Target profile</h3>", f'<div class="panel">{_kv_table(target)}</div>']
    for name, dev in (report.get("devices") or {}).items():
        keys = ("board", "l4t", "jetpack", "power_mode", "gpu_mhz", "cpu", "cpu_features", "cores", "memory_mb",
                "governor", "temperature_c", "python", "numpy", "runtimes", "results_file", "ingested_from", "transfer")
        parts += [f"<h3>Device measured: {escape(name)}</h3>",
                  f'<div class="panel">{_kv_table({k: dev[k] for k in keys if dev.get(k) not in (None, {}, [])})}'
                  "</div>"]
    return parts
