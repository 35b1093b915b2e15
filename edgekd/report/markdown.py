"""report.md: the same tables as the terminal, as GitHub-flavoured Markdown (for PRs and CI summaries)."""

from __future__ import annotations

from edgekd.report.table import (
    DASH, artifact_rows, batch_rows, data_lines, fmt_count, fmt_delta, fmt_mb, fmt_ms, fmt_pct, fmt_rate, fmt_source,
    fmt_speedup, latency_pairs, selection_rows, status_text, summary_lines, target_name, tuning_rows,
    visible_columns,
)


def _cell(text) -> str:
    # A pipe or newline inside a cell would break the table.
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list], align: list[str]) -> list[str]:
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join(":---" if a == "l" else "---:" if a == "r" else ":---:" for a in align) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def artifacts_markdown(report: dict) -> list[str]:
    rows = artifact_rows(report)
    multi_run = any(r.run for r in rows)
    tname = target_name(report) or "target"
    cols = visible_columns(rows)
    # (header, alignment, cell function, shown)
    spec = [
        ("Run", "l", lambda r: r.run or DASH, multi_run),
        ("Artifact", "l", None, True),
        ("Runtime", "l", lambda r: r.runtime or DASH, True),
        ("Precision", "l", lambda r: r.precision, True),
        ("Size MB", "r", lambda r: fmt_mb(r.size_mb), True),
        ("Accuracy %", "r", lambda r: fmt_pct(r.accuracy), cols.accuracy),
        ("Δ vs FP32 pt", "r", fmt_delta, cols.accuracy),
        ("Host p50 ms", "r", lambda r: fmt_ms(r.host_p50), True),
        ("Speed-up", "r", lambda r: fmt_speedup(r.speedup), cols.speedup),
        (f"{tname} p50 ms", "r", None, cols.target),
        ("Latency source", "l", fmt_source, True),
        ("Status", "l", status_text, True),
    ]
    spec = [s for s in spec if s[3]]
    header = [s[0] for s in spec]
    align = [s[1] for s in spec]
    body = []
    for r in rows:
        label = f"**{r.label}** ★" if r.recommended else (f"*{r.label}*" if r.role == "teacher" else r.label)
        if r.on_frontier:
            label += " ◆"
        target = fmt_ms(r.target_p50)
        if r.fits is False:
            target += " ✗"
        elif r.fits:
            target += " ✓"
        cells = []
        for name, _, fn, _ in spec:
            cells.append(label if name == "Artifact" else target if fn is None else fn(r))
        body.append(cells)
    return _table(header, body, align)


def selection_markdown(report: dict) -> list[str]:
    rows = selection_rows(report)
    if not rows:
        return []
    body = [[f"**{c.width:g}**" if c.chosen else f"{c.width:g}", c.depth if c.depth is not None else DASH,
             fmt_count(c.params), fmt_count(c.flops), c.predicted, fmt_mb(c.memory_mb),
             ("✓" if c.fits else "✗") + (" ← chosen" if c.chosen else "")] for c in rows]
    return _table(["Width", "Depth", "Params", "FLOPs", "Predicted ms (interval)", "Memory MB", "Fits"], body,
                  ["r", "r", "r", "r", "r", "r", "l"])


def teacher_markdown(report: dict) -> list[str]:
    """The teacher's validation curve, why it stopped, and each rung of the capacity ladder tried."""
    teacher = report.get("teacher") or {}
    history = [h for h in teacher.get("history") or [] if isinstance(h, dict)]
    if not history:
        return []
    lines = ["## Teacher", "", f"Trained {teacher.get('epochs')} epochs; stopped: {teacher.get('stop_reason')}; "
             f"the weights of epoch {teacher.get('best_epoch')} (best on validation) were kept.", ""]
    body = [[h.get("epoch"), f"{h['loss']:.4f}" if h.get("loss") is not None else DASH,
             fmt_pct(h.get("val_accuracy")), f"{h['lr']:.2g}" if h.get("lr") is not None else DASH,
             "◀ kept" if h.get("epoch") == teacher.get("best_epoch") else ""] for h in history]
    lines += _table(["Epoch", "Train loss", "Val %", "LR", ""], body, ["r", "r", "r", "r", "l"]) + [""]
    rungs = teacher.get("rungs") or []
    if len(rungs) > 1:
        body = [[f"{r['arch']} w{r['width']:g} d{r['depth']}", fmt_count(r.get("params")), r.get("epochs"),
                 f"{r['label_smoothing']:g}" if r.get("label_smoothing") is not None else DASH,
                 fmt_pct(r.get("train_accuracy")), fmt_pct(r.get("val_accuracy")),
                 "underfits" if r.get("underfits") else "fits"] for r in rungs]
        lines += ["Capacity ladder (a teacher underfits when it fits fewer of its training images than the threshold; "
                  "the rung after it is bigger and, by default, trained without label smoothing):", ""]
        lines += _table(["Teacher", "Params", "Epochs", "Smoothing", "Train %", "Val %", ""], body,
                        ["l", "r", "r", "r", "r", "r", "l"]) + [""]
    return lines


def tuning_markdown(report: dict) -> list[str]:
    header, body = tuning_rows(report)
    if not body:
        return []
    tuning = report.get("tuning") or {}
    return ["## Tuning (validation split only)", "",
            f"{len(body)} trials, search {tuning.get('seconds', 0):.0f} s this session; the best one's settings "
            "trained the student above.", ""] + _table(header, body, ["r", "l"] + ["r"] * (len(header) - 2)) + [""]
LOOP_HEADER = ["Round", "Width", "Artifact", "Predicted ms", "Measured ms", "Error", "Budget ms", "Status",
               "Calibration used", "Next"]


def device_loop_rows(report: dict) -> list[list]:
    """One row per round of `edgekd distill --device` (empty for other runs)."""
    loop = report.get("device_loop") or {}
    rows = []
    for r in loop.get("rounds", []):
        pred, meas = r.get("predicted_ms"), r.get("measured_ms")
        err = f"{100 * (pred - meas) / meas:+.0f}%" if pred and meas else DASH
        nxt = f"width {r['next_width']:g}" if r.get("decision") == "next round" else (r.get("why") or r.get("error") or DASH)
        rows.append([r["round"], f"{r['width']:g}", r.get("artifact", DASH), fmt_ms(pred), fmt_ms(meas), err,
                     fmt_ms(r.get("budget_ms")), r.get("status", "failed"), r.get("calibration", DASH), nxt])
    return rows


def device_loop_markdown(report: dict) -> list[str]:
    loop = report.get("device_loop") or {}
    rows = device_loop_rows(report)
    if not rows:
        return []
    lines = [f"## Closed loop on {loop['device']}", "",
             f"Each round was distilled here, then timed on {loop['device']} ({loop.get('ssh')}) over SSH "
             f"(measured:{loop['device']}); predictions used the calibration named in its row. Over the budget, or "
             f"under {loop.get('under_budget_fraction', 0.7):g}x of it with a wider student predicted to fit, the "
             f"target was recalibrated from every measurement on the device and the width re-selected. "
             f"This report is round {loop.get('final_round')}.", ""]
    lines += _table(LOOP_HEADER, rows, ["r", "r", "l", "r", "r", "r", "r", "l", "l", "l"])
    if loop.get("stopped"):
        lines += ["", f"Stopped: {loop['stopped']}"]
    return lines + [""]


def render_markdown(report: dict) -> str:
    title = "edgekd report" + (f": {report['command']}" if report.get("command") else "")
    lines = [f"# {title}", ""]
    lines.append(f"Created {report.get('created', '?')} by edgekd {report.get('edgekd_version', '?')}.")
    lines.append("")
    for label, value in summary_lines(report):
        lines.append(f"- **{label}:** {value}")
    lines += ["", "## Artifacts", ""]
    lines += artifacts_markdown(report)
    lines += ["", "Speed-up is the teacher's PyTorch p50 on this machine divided by the artifact's. "
              "Latency source `measured:<device>` was timed on that device; `predicted:<target>` comes from "
              "the latency model. ★ recommended, ◆ on the accuracy–latency frontier, ✓/✗ within/over budget.", ""]
    batches = batch_rows(report)
    if batches:
        lines += ["## Latency and throughput by batch size (this machine)", ""]
        body = [[(f"{b['run']}/" if b["run"] else "") + b["label"], b["runtime"] or DASH, b["batch"],
                 fmt_ms(b["p50"]), fmt_ms(b["p90"]), fmt_rate(b["throughput"]),
                 "ok" if b["status"] == "ok" else f"{b['status']}: {b['reason']}"] for b in batches]
        lines += _table(["Artifact", "Runtime", "Batch", "p50 ms", "p90 ms", "Images/s", "Status"], body,
                        ["l", "l", "r", "r", "r", "r", "l"]) + [""]
    pairs = latency_pairs(report)
    if pairs:
        lines += ["## Predicted vs measured", ""]
        body = [[p["name"] if not p.get("run") else f"{p['run']}/{p['name']}", p["device"], fmt_ms(p["predicted"]),
                 fmt_ms(p["measured"]), f"{100 * (p['predicted'] - p['measured']) / p['measured']:+.0f}%"]
                for p in pairs]
        lines += _table(["Artifact", "Device", "Predicted ms", "Measured ms", "Error"], body, ["l", "l", "r", "r", "r"])
        lines.append("")
    lines += device_loop_markdown(report)
    sel = selection_markdown(report)
    if sel:
        selection = report.get("selection") or {}
        lines += ["## Width selection", "",
                  f"Budget {fmt_ms(selection.get('budget_ms', report.get('budget_ms')))} ms; latencies "
                  f"{selection.get('latency_source', 'predicted')}. The widest candidate that fits is chosen.", ""]
        lines += sel + [""]
    lines += teacher_markdown(report) + tuning_markdown(report)
    data = report.get("data") or {}
    if data.get("splits"):
        lines += ["## Data", "", f"{data.get('name', '?')} from `{data.get('source', '?')}`, "
                  f"{data.get('num_classes', '?')} classes, input {data.get('input_shape', '?')}.", ""]
        body = [[name, s.get("size", DASH), f"`{str(s.get('sha256', ''))[:12]}`"] for name, s in data["splits"].items()]
        lines += _table(["Split", "Images", "sha256"], body, ["l", "r", "l"]) + [""]
        lines += [line + "\n" for line in data_lines(report)]
    timings = report.get("timings_s") or {}
    if timings:
        lines += ["## Timings", "", " · ".join(f"{k} {v:.1f} s" for k, v in timings.items()
                                               if isinstance(v, (int, float))), ""]
    env = report.get("environment") or {}
    if env:
        from edgekd.runtimes import runtimes

        # Each runtime's main distribution (torch for PyTorch, ai-edge-litert for LiteRT, ...).
        keys = ("cpu", "cpu_features", "cores", "usable_cores", "governor", "python",
                *(rt.packages[0] for rt in runtimes() if rt.packages), "gpu")
        lines += ["## Environment", ""]
        for k in keys:
            if env.get(k) not in (None, "", [], {}):
                v = ", ".join(env[k]) if isinstance(env[k], list) else env[k]
                lines.append(f"- {k}: {v}")
        lines.append("")
    for name, dev in (report.get("devices") or {}).items():
        lines += [f"## Device measured: {name}", ""]
        for k in ("board", "l4t", "jetpack", "power_mode", "gpu_mhz", "cpu", "cores", "memory_mb", "governor",
                  "temperature_c", "python", "runtimes"):
            v = dev.get(k)
            if v not in (None, "", [], {}):
                v = ", ".join(f"{a} {b}" for a, b in v.items()) if isinstance(v, dict) else v
                lines.append(f"- {k}: {v}")
        transfer = dev.get("transfer") or {}
        if transfer:
            lines.append(f"- over SSH: {transfer.get('files')} file(s), {transfer.get('wall_s')} s in all, "
                         f"{transfer.get('overhead_s')} s not measuring, {transfer.get('retries', 0)} retried")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
