"""The rows every report format shows, computed once from report.json: artifacts, selection, frontier."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

HOST_SOURCE = "measured:host"


@dataclass
class ArtifactRow:
    """One artifact as the tables show it; None means "not known" and renders as a dash."""

    label: str                   # "student · ort-int8"
    name: str
    role: str
    format: str
    precision: str
    runtime: str
    status: str
    reason: str | None
    size_mb: float | None
    accuracy: float | None       # fraction
    delta_pt: float | None       # accuracy minus the FP32 student's, in percentage points
    is_reference: bool           # the FP32 PyTorch student all deltas are against
    host_p50: float | None
    host_p90: float | None
    host_source: str | None
    target_p50: float | None
    target_source: str | None
    speedup: float | None        # teacher-in-PyTorch host p50 / this row's host p50
    target_speedup: float | None
    fits: bool | None            # target p50 within the budget
    recommended: bool
    run: str | None = None
    on_frontier: bool = False
    batch: int | None = None
    throughput: float | None = None
    artifact: dict = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class CandidateRow:
    width: float
    depth: int | None
    params: int
    flops: int
    predicted_ms: float
    memory_mb: float | None
    fits: bool
    chosen: bool


def _p(lat: dict | None, key: str = "p50") -> float | None:
    if not lat:
        return None
    v = lat.get(key)
    if v is None or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def _is(art: dict, role: str, fmt: str = "pytorch") -> bool:
    return art.get("role", "student") == role and art.get("format") == fmt and art.get("status") == "ok"


def _same_run(a: dict, b: dict) -> bool:
    return a.get("run") == b.get("run")


def reference_accuracy(report: dict, art: dict | None = None) -> float | None:
    """The FP32 PyTorch student's accuracy (of the same run when reports are merged)."""
    for other in report.get("artifacts", []):
        if _is(other, "student") and (art is None or _same_run(other, art)) and other.get("accuracy") is not None:
            return other["accuracy"]
    student = report.get("student") or {}
    return student.get("accuracy") if art is None or art.get("run") is None else None


def teacher_baseline(report: dict, art: dict | None = None) -> dict | None:
    """The teacher's PyTorch eager row: every speed-up is against it."""
    rows = [a for a in report.get("artifacts", []) if _is(a, "teacher")]
    if art is not None:
        same = [a for a in rows if _same_run(a, art)]
        rows = same or rows
    return rows[0] if rows else None


def _speedup(base: float | None, value: float | None) -> float | None:
    if base is None or value is None or value <= 0:
        return None
    return base / value


def artifact_rows(report: dict) -> list[ArtifactRow]:
    budget = report.get("budget_ms")
    recommended = (report.get("recommended") or {}).get("name")
    recommended_run = (report.get("recommended") or {}).get("run")
    rows = []
    for art in report.get("artifacts", []):
        role = art.get("role", "student")
        # Figures are shown whatever the status: a row failed for its accuracy drop still has its numbers.
        # Plots, the frontier and speed-up baselines use only rows with status "ok".
        acc = art.get("accuracy")
        ref = reference_accuracy(report, art)
        is_ref = _is(art, "student") and art.get("precision", "fp32") == "fp32"
        if art.get("accuracy_drop") is not None and acc is not None:
            delta = -100.0 * art["accuracy_drop"]
        elif acc is not None and ref is not None and role == "student":
            delta = 100.0 * (acc - ref)
        else:
            delta = None
        if role != "student":
            delta = None
        teacher = teacher_baseline(report, art)
        host_p50 = _p(art.get("latency_ms"))
        target_p50 = _p(art.get("target_latency_ms"))
        lat = art.get("latency_ms") or {}
        size = art.get("size_bytes")
        rows.append(ArtifactRow(
            label=(f"{role} · {art['name']}" if art["name"] != role else role),
            name=art["name"], role=role, format=art.get("format", "?"), precision=art.get("precision", "?"),
            runtime=art.get("runtime") or "", status=art.get("status", "ok"), reason=art.get("reason"),
            size_mb=(size / 1e6 if isinstance(size, (int, float)) and size > 0 else None),
            accuracy=acc, delta_pt=delta, is_reference=is_ref,
            host_p50=host_p50, host_p90=_p(art.get("latency_ms"), "p90") if host_p50 is not None else None,
            host_source=art.get("latency_source") if host_p50 is not None else None,
            target_p50=target_p50,
            target_source=art.get("target_latency_source") if target_p50 is not None else None,
            speedup=_speedup(_p(teacher.get("latency_ms")) if teacher else None, host_p50),
            target_speedup=_speedup(_p(teacher.get("target_latency_ms")) if teacher else None, target_p50),
            fits=(target_p50 <= budget) if (target_p50 is not None and budget) else None,
            recommended=(art["name"] == recommended and role == "student" and art.get("run") == recommended_run
                         and art.get("status") == "ok"),
            run=art.get("run"),
            batch=lat.get("batch"), throughput=lat.get("throughput", art.get("throughput")),
            artifact=art,
        ))
    _mark_frontier(rows)
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower latency, higher accuracy),
    ordered by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def frontier_latency(row: ArtifactRow) -> float | None:
    """The latency the frontier is drawn on: the target's when known, else this machine's."""
    return row.target_p50 if row.target_p50 is not None else row.host_p50


def _mark_frontier(rows: list[ArtifactRow]) -> None:
    use_target = any(r.target_p50 is not None for r in rows)
    cands = [r for r in rows if r.ok and r.accuracy is not None
             and (r.target_p50 if use_target else r.host_p50) is not None]
    pts = [((r.target_p50 if use_target else r.host_p50), r.accuracy) for r in cands]
    for i in pareto_front(pts):
        cands[i].on_frontier = True


def selection_rows(report: dict) -> list[CandidateRow]:
    selection = report.get("selection") or {}
    chosen = selection.get("width")
    chosen_depth = (selection.get("chosen") or {}).get("depth")
    rows = []
    for c in selection.get("candidates", []):
        is_chosen = chosen is not None and math.isclose(c["width"], chosen) and (
            chosen_depth is None or c.get("depth") in (None, chosen_depth))
        rows.append(CandidateRow(
            width=c["width"], depth=c.get("depth"), params=int(c["params"]), flops=int(c["flops"]),
            predicted_ms=float(c["predicted_ms"]), memory_mb=c.get("memory_mb"), fits=bool(c["fits"]),
            chosen=is_chosen,
        ))
    return rows


def latency_pairs(report: dict) -> list[dict]:
    """(predicted, measured) latency pairs for the same artifact on the same device.

    Sources: an artifact whose target prediction was later replaced by an on-device measurement
    (``edgekd ingest`` keeps the prediction in ``predicted_target_latency_ms``), and an artifact
    predicted for the host target that was also measured on the host.
    """
    pairs = []
    for art in report.get("artifacts", []):
        if art.get("status") != "ok":
            continue
        kept = _p(art.get("predicted_target_latency_ms"))
        measured_target = _p(art.get("target_latency_ms"))
        source = art.get("target_latency_source") or ""
        if kept is not None and measured_target is not None and source.startswith("measured:"):
            pairs.append({"name": art["name"], "role": art.get("role", "student"), "run": art.get("run"),
                          "device": source.split(":", 1)[1], "predicted": kept, "measured": measured_target})
        elif source == "predicted:host" and measured_target is not None and _p(art.get("latency_ms")) is not None \
                and art.get("latency_source") == HOST_SOURCE:
            pairs.append({"name": art["name"], "role": art.get("role", "student"), "run": art.get("run"),
                          "device": "host", "predicted": measured_target, "measured": _p(art.get("latency_ms"))})
    return pairs


# ---- formatting shared by terminal, Markdown and HTML ----

DASH = "—"


def fmt_ms(v: float | None) -> str:
    """Three significant figures: 0.0521, 0.205, 3.84, 41.5; whole numbers from 100 ms."""
    if v is None:
        return DASH
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def fmt_pct(v: float | None, digits: int = 2) -> str:
    return DASH if v is None else f"{100 * v:.{digits}f}"


def fmt_delta(row: ArtifactRow) -> str:
    if row.is_reference:
        return "ref"
    if row.delta_pt is None:
        return DASH
    if abs(row.delta_pt) < 0.005:
        return "0.00"
    return f"{row.delta_pt:+.2f}".replace("-", "−")


def fmt_mb(v: float | None) -> str:
    if v is None:
        return DASH
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:,.0f}"


def fmt_speedup(v: float | None) -> str:
    if v is None:
        return DASH
    return f"{v:.2f}×" if v < 10 else f"{v:.1f}×"


def fmt_count(n: int | float | None) -> str:
    """12345 -> 12.3k, 4.5e6 -> 4.50M: parameter and FLOP counts at a glance."""
    if n is None:
        return DASH
    n = float(n)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            v = n / scale
            return f"{v:.2f}{unit}" if v < 10 else f"{v:.1f}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return f"{n:.0f}"


def fmt_source(row: ArtifactRow) -> str:
    """'measured:host' for the host column is the norm; say only what differs, and the target source."""
    parts = []
    if row.host_source and row.host_source != HOST_SOURCE:
        parts.append(f"host {row.host_source}")
    if row.target_source:
        parts.append(row.target_source)
    return ", ".join(parts) if parts else (DASH if row.host_source is None else HOST_SOURCE)


def status_text(row: ArtifactRow) -> str:
    if row.ok:
        return "ok"
    return f"{row.status}: {row.reason}" if row.reason else row.status


def target_name(report: dict) -> str | None:
    target = report.get("target") or {}
    return target.get("name")


def summary_lines(report: dict) -> list[tuple[str, str]]:
    """Headline facts as (label, value): target, budget, chosen student, teacher, recommendation."""
    out = []
    target = report.get("target") or {}
    if target:
        bits = [target.get("name", "?")]
        extra = ", ".join(x for x in (target.get("runtime"), target.get("precision")) if x)
        if extra:
            bits.append(f"({extra})")
        out.append(("Target", " ".join(bits)))
    if report.get("budget_ms") is not None:
        out.append(("Latency budget", f"{fmt_ms(report['budget_ms'])} ms per image on the target"))
    selection = report.get("selection") or {}
    for role in ("student", "teacher"):
        model = report.get(role) or {}
        if not model:
            continue
        width = model.get("width", selection.get("width", "?") if role == "student" else "?")
        desc = f"{model.get('arch', role)} width {width}"
        if model.get("depth") not in (None, 1):
            desc += f" depth {model['depth']}"
        desc += f", {fmt_count(model.get('params'))} params"
        if model.get("accuracy") is not None:
            desc += f", accuracy {fmt_pct(model['accuracy'])}%"
        if model.get("predicted_ms") is not None:
            desc += f", predicted {fmt_ms(model['predicted_ms'])} ms"
        out.append((role.capitalize(), desc))
    busy = busy_machine_note(report)
    if busy:
        out.append(("Warning", busy))
    rec = report.get("recommended") or {}
    if rec.get("name"):
        run = f" (run {rec['run']})" if rec.get("run") else ""
        out.append(("Recommended", f"{rec['name']}{run}" + (f": {rec['why']}" if rec.get("why") else "")))
    return out


@dataclass
class Columns:
    """Which optional columns carry anything: a bench of bare files has no accuracy, teacher or target."""

    accuracy: bool
    speedup: bool
    target: bool


def visible_columns(rows: list[ArtifactRow]) -> Columns:
    return Columns(accuracy=any(r.accuracy is not None for r in rows),
                   speedup=any(r.speedup is not None for r in rows),
                   target=any(r.target_p50 is not None for r in rows))


def batch_rows(report: dict) -> list[dict]:
    """Latency and throughput per batch size, for artifacts measured at more than batch 1."""
    out = []
    for r in artifact_rows(report):
        extra = r.artifact.get("extra") or {}
        more = extra.get("host_measurements") or []
        if not more:
            continue
        entries = []
        if r.host_p50 is not None:
            lat = r.artifact.get("latency_ms") or {}
            entries.append({"batch": 1, "status": "ok", "latency_ms": lat, "throughput":
                            r.throughput if r.throughput is not None else (1000.0 / r.host_p50 if r.host_p50 else None)})
        entries += more
        for m in sorted(entries, key=lambda m: m.get("batch", 0)):
            lat = m.get("latency_ms") or {}
            out.append({"label": r.label, "run": r.run, "runtime": r.runtime, "batch": m.get("batch"),
                        "status": m.get("status", "ok"), "reason": m.get("reason"),
                        "p50": _p(lat), "p90": _p(lat, "p90"), "throughput": m.get("throughput")})
    return out


def fmt_rate(v: float | None) -> str:
    return DASH if v is None else f"{v:,.0f}"


def busy_machine_note(report: dict) -> str | None:
    """A warning when the host was overloaded while measuring: its latencies are then inflated."""
    env = report.get("environment") or {}
    load = env.get("load_avg")
    cores = env.get("usable_cores") or env.get("cores")
    if not load or not cores or load[0] <= cores:
        return None
    return (f"this machine was busy while measuring (load {load[0]:.1f} on {cores} cores): host latencies are "
            "inflated, multi-threaded runtimes most; re-run `edgekd bench RUN_DIR` on an idle machine")


def data_lines(report: dict) -> list[str]:
    """How the run read its pixels and which files it skipped, one sentence each (from ``data``)."""
    data = report.get("data") or {}
    pre = data.get("preprocess") or {}
    lines = []
    if pre:
        teacher = pre.get("teacher_image_size")
        crops = (f"; training crops {pre['crop_scale'][0]:g}-{pre['crop_scale'][1]:g} of the area"
                 f"{' + flips' if pre.get('flip') else ''}" if pre.get("train_crop") == "random-resized-crop" else "")
        lines.append(f"Pixels: {pre.get('resize', '?')}{f' (teacher at {teacher} px)' if teacher else ''}; "
                     f"{pre.get('channels', '?')} channel(s); mean {_floats(pre.get('mean'))}, std {_floats(pre.get('std'))} "
                     f"({pre.get('mean_source', '?')}){crops}.")
    bad = data.get("bad_files") or {}
    if bad:
        names = sorted({b["path"] for v in bad.values() for b in v.get("first", [])})
        lines.append(f"Skipped image files (would not decode): "
                     + ", ".join(f"{k} {v.get('count', 0)}" for k, v in bad.items())
                     + f"; e.g. {', '.join(names[:5])}.")
    lines += [str(n) for n in data.get("notes") or []]
    return lines


def _floats(values) -> str:
    return ",".join(f"{float(v):.3f}" for v in values or []) or "?"

