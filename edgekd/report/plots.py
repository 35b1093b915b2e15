"""Report figures as SVG: accuracy-latency Pareto, predicted vs measured, and the width selection."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.ticker  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402  (after choosing a headless backend)
from matplotlib.lines import Line2D  # noqa: E402

from edgekd.report.table import (  # noqa: E402
    ArtifactRow, artifact_rows, fmt_count, fmt_ms, latency_pairs, pareto_front, selection_rows, target_name,
)

# One colour per runtime (its descriptor's ``color``), the same in every figure; the teacher is always dark grey.
TEACHER_COLOR = "#3d3d3d"
UNKNOWN_RUNTIME_COLOR = "#16a085"
PRECISION_MARKERS = {"fp32": "o", "fp16": "s", "bf16": "s", "int8": "^"}
BUDGET_COLOR = "#c0392b"
CHOSEN_COLOR = "#f1c40f"

_RC = {
    "svg.fonttype": "path",          # text as paths: renders the same with no fonts installed
    "svg.hashsalt": "edgekd",        # stable element ids: the same report gives the same file
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e5e7eb",
    "grid.linewidth": 0.8,
    "axes.edgecolor": "#9ca3af",
    "axes.titleweight": "bold",
    "axes.titlesize": 10,
    "legend.frameon": False,
}


def to_svg(fig: Figure) -> str:
    buf = io.StringIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": "edgekd"})
    return buf.getvalue()


def runtime_color(runtime: str | None) -> str:
    from edgekd.runtimes import RUNTIMES

    return RUNTIMES.get(runtime).color if runtime in RUNTIMES else UNKNOWN_RUNTIME_COLOR


def _color(row: ArtifactRow) -> str:
    return TEACHER_COLOR if row.role == "teacher" else runtime_color(row.runtime)


def _ms_formatter():
    return matplotlib.ticker.FuncFormatter(lambda v, _: fmt_ms(v) if v > 0 else "0")


def _log_if_wide(ax, values) -> None:
    """Log latency axis when points span more than 5x: teacher and INT8 student on one readable plot."""
    vals = [v for v in values if v and v > 0]
    if vals and max(vals) / min(vals) > 5:
        _log_axis(ax.xaxis, min(vals), max(vals))


def _log_axis(axis, lo: float, hi: float) -> None:
    axis.axes.set_xscale("log") if axis is axis.axes.xaxis else axis.axes.set_yscale("log")
    # 1-2-5 ticks labelled in ms: a plot spanning 0.04 to 4 ms still shows five readable labels.
    subs = (1.0, 2.0, 5.0) if hi / lo < 300 else (1.0,)
    axis.set_major_locator(matplotlib.ticker.LogLocator(subs=subs))
    axis.set_major_formatter(_ms_formatter())
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


# Where a point's label may go, in points from the point, tried in order until it overlaps nothing.
_LABEL_SLOTS = ((6, 5, "left"), (6, -11, "left"), (-6, 5, "right"), (-6, -11, "right"), (6, 16, "left"),
                (6, -22, "left"), (-6, 16, "right"), (-6, -22, "right"), (0, 26, "center"), (0, -32, "center"))


def _declutter(fig: Figure, texts) -> None:
    """Move point labels to the first nearby slot that overlaps no label already placed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from matplotlib.transforms import Bbox

    renderer = FigureCanvasAgg(fig).get_renderer()
    # The markers themselves are obstacles too: a label must not cover another point.
    half = 5 * fig.dpi / 72
    placed = []
    for text in texts:
        x, y = text.axes.transData.transform(text.xy)
        placed.append(Bbox.from_extents(x - half, y - half, x + half, y + half))
    for text in texts:
        for dx, dy, ha in _LABEL_SLOTS:
            text.xyann = (dx, dy)
            text.set_ha(ha)
            box = text.get_window_extent(renderer).expanded(1.04, 1.15)
            inside = text.axes.bbox.contains(box.x0, box.y0) and text.axes.bbox.contains(box.x1, box.y1)
            if inside and not any(box.overlaps(other) for other in placed):
                break
        else:
            text.xyann, _ = (6, 5), text.set_ha("left")
        placed.append(text.get_window_extent(renderer))


def _point_label(row: ArtifactRow) -> str:
    base = "teacher" if row.role == "teacher" and row.name in ("pytorch", "teacher") else row.name
    if row.role == "teacher" and base != "teacher":
        base = f"teacher {base}"
    return f"{row.run}/{base}" if row.run else base


def _pareto_panel(ax, rows: list[ArtifactRow], latency_of, source_of, title: str, budget: float | None) -> list:
    pts = [(r, latency_of(r)) for r in rows if r.ok and r.accuracy is not None and latency_of(r) is not None]
    texts = []
    if not pts:
        ax.set_visible(False)
        return texts
    front = pareto_front([(lat, r.accuracy) for r, lat in pts])
    on_front = {id(pts[i][0]) for i in front}
    # Beyond a dozen points (a sweep) labels would bury the plot: name only what a reader acts on.
    label_all = len(pts) <= 12
    if any(r.run for r, _ in pts):
        # Across runs (widths of a sweep), join each artifact kind's points: its own accuracy-latency curve.
        kinds: dict = {}
        for r, lat in pts:
            kinds.setdefault((r.role, r.name, r.runtime), []).append((lat, 100 * r.accuracy, _color(r)))
        for series in kinds.values():
            if len(series) > 1:
                series.sort()
                ax.plot([p[0] for p in series], [p[1] for p in series], color=series[0][2], alpha=0.35,
                        linewidth=1.0, zorder=2)
    for r, lat in pts:
        measured = (source_of(r) or "").startswith("measured:")
        color = _color(r)
        marker = "D" if r.role == "teacher" else PRECISION_MARKERS.get(r.precision, "P")
        size = 70 if r.role == "teacher" else 55
        ax.scatter([lat], [100 * r.accuracy], s=size, marker=marker, zorder=4, linewidths=1.6,
                   facecolors=color if measured else "white", edgecolors=color)
        if r.recommended:
            ax.scatter([lat], [100 * r.accuracy], s=330, marker="o", facecolors="none", edgecolors=CHOSEN_COLOR,
                       linewidths=2.5, zorder=3)
        if label_all or r.recommended or r.role == "teacher" or id(r) in on_front:
            texts.append(ax.annotate(_point_label(r), (lat, 100 * r.accuracy), xytext=(6, 5),
                                     textcoords="offset points", fontsize=7.5, color="#374151", zorder=5))
    if len(front) > 1:
        fx = [pts[i][1] for i in front]
        fy = [100 * pts[i][0].accuracy for i in front]
        ax.step(fx, fy, where="post", color="#9ca3af", linestyle=":", linewidth=1.3, zorder=2)
    lats = [lat for _, lat in pts]
    _log_if_wide(ax, lats + ([budget] if budget else []))
    if budget:
        ax.axvline(budget, color=BUDGET_COLOR, linestyle="--", linewidth=1.3, zorder=1)
        ax.axvspan(budget, max(lats + [budget]) * 10, color=BUDGET_COLOR, alpha=0.05, zorder=0)
        lo, hi = min(lats + [budget]), max(lats + [budget])
        if ax.get_xscale() == "log":
            ax.set_xlim(lo / 1.6, hi * 1.6)
        else:
            pad = (hi - lo) * 0.12 or hi * 0.1
            ax.set_xlim(max(0, lo - pad), hi + pad)
        ax.annotate(f"budget {fmt_ms(budget)} ms", (budget, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(4, -12), textcoords="offset points", fontsize=8, color=BUDGET_COLOR)
    ax.set_title(title, loc="left")
    ax.set_xlabel("latency p50, ms per batch (lower is better)")
    ax.set_ylabel("test accuracy, %")
    accs = [100 * r.accuracy for r, _ in pts]
    span = max(accs) - min(accs)
    ax.set_ylim(min(accs) - max(0.15, 0.15 * span), max(accs) + max(0.15, 0.15 * span))
    return texts


def pareto_figure(report: dict) -> Figure | None:
    """Accuracy against latency on this machine and on the target; filled = measured, hollow = predicted."""
    rows = artifact_rows(report)
    tname = target_name(report)
    budget = report.get("budget_ms")
    has_host = any(r.ok and r.host_p50 is not None and r.accuracy is not None for r in rows)
    has_target = any(r.ok and r.target_p50 is not None and r.accuracy is not None for r in rows)
    if not (has_host or has_target):
        return None
    ncols = int(has_host) + int(has_target)
    fig = Figure(figsize=(6.2 * ncols, 4.4))
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    i, texts = 0, []
    if has_target:
        texts += _pareto_panel(axes[i], rows, lambda r: r.target_p50, lambda r: r.target_source,
                      f"On the target: {tname}" if tname else "On the target", budget)
        i += 1
    if has_host:
        host_budget = budget if tname == "host" else None
        texts += _pareto_panel(axes[i], rows, lambda r: r.host_p50, lambda r: r.host_source,
                      "On this machine (measured)", host_budget)
    handles = [
        Line2D([], [], marker="o", linestyle="", markerfacecolor="#6b7280", markeredgecolor="#6b7280", label="measured"),
        Line2D([], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor="#6b7280", label="predicted"),
        Line2D([], [], marker="D", linestyle="", markerfacecolor=TEACHER_COLOR, markeredgecolor=TEACHER_COLOR,
               label="teacher"),
        Line2D([], [], marker="o", linestyle="", markersize=13, markerfacecolor="none", markeredgecolor=CHOSEN_COLOR,
               markeredgewidth=2.5, label="recommended"),
        Line2D([], [], color="#9ca3af", linestyle=":", label="Pareto frontier"),
    ]
    runtimes = sorted({r.runtime for r in rows if r.ok and r.role != "teacher" and r.runtime})
    handles += [Line2D([], [], marker="o", linestyle="", color=runtime_color(rt), label=rt)
                for rt in runtimes]
    precisions = sorted({r.precision for r in rows if r.ok and r.role != "teacher"},
                        key=lambda p: list(PRECISION_MARKERS).index(p) if p in PRECISION_MARKERS else 99)
    handles += [Line2D([], [], marker=PRECISION_MARKERS.get(p, "P"), linestyle="", color="#6b7280", label=p)
                for p in precisions]
    if budget:
        handles.append(Line2D([], [], color=BUDGET_COLOR, linestyle="--", label="latency budget"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8,
               bbox_to_anchor=(0.5, -0.08), frameon=False)
    fig.tight_layout()
    _declutter(fig, texts)
    return fig


def prediction_figure(report: dict) -> Figure | None:
    """Predicted against measured latency, one point per artifact and device, with y = x."""
    pairs = latency_pairs(report)
    if not pairs:
        return None
    fig = Figure(figsize=(5.0, 4.4))
    ax = fig.subplots()
    devices = sorted({p["device"] for p in pairs})
    palette = ["#2e86de", "#e4572e", "#5f9e1a", "#8e44ad", "#d4a017"]
    texts = []
    for k, dev in enumerate(devices):
        sel = [p for p in pairs if p["device"] == dev]
        ax.scatter([p["measured"] for p in sel], [p["predicted"] for p in sel], s=45, zorder=3,
                   color=palette[k % len(palette)], label=dev)
        for p in sel:
            texts.append(ax.annotate(p["name"], (p["measured"], p["predicted"]), xytext=(6, 5),
                                     textcoords="offset points", fontsize=7.5, color="#374151"))
    vals = [p["measured"] for p in pairs] + [p["predicted"] for p in pairs]
    lo, hi = min(vals) / 1.5, max(vals) * 1.5
    ax.plot([lo, hi], [lo, hi], color="#6b7280", linewidth=1, label="exact")
    ax.fill_between([lo, hi], [lo * 0.8, hi * 0.8], [lo * 1.25, hi * 1.25], color="#9ca3af", alpha=0.15,
                    label="±25%")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    _log_axis(ax.xaxis, lo, hi)
    _log_axis(ax.yaxis, lo, hi)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    errors = [abs(p["predicted"] - p["measured"]) / p["measured"] for p in pairs]
    mape = 100 * sum(errors) / len(errors)
    ax.set_title(f"Predicted vs measured (mean abs. error {mape:.0f}%)", loc="left")
    ax.set_xlabel("measured p50, ms")
    ax.set_ylabel("predicted p50, ms")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    _declutter(fig, texts)
    return fig


def selection_figure(report: dict) -> Figure | None:
    """Predicted latency per candidate width against the budget; parameters on a second axis."""
    rows = selection_rows(report)
    if not rows:
        return None
    selection = report.get("selection") or {}
    budget = selection.get("budget_ms", report.get("budget_ms"))
    fig = Figure(figsize=(7.0, 3.8))
    ax = fig.subplots()
    xs = list(range(len(rows)))
    colors = ["#27ae60" if c.fits else "#d1d5db" for c in rows]
    bars = ax.bar(xs, [c.predicted_ms for c in rows], color=colors, width=0.62, zorder=3,
                  edgecolor=["#111827" if c.chosen else "none" for c in rows],
                  linewidth=[2.0 if c.chosen else 0 for c in rows])
    for bar, c in zip(bars, rows):
        ax.annotate(fmt_ms(c.predicted_ms), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    xytext=(0, 3), textcoords="offset points", ha="center", fontsize=7.5,
                    fontweight="bold" if c.chosen else "normal")
    labels = [f"{c.width:g}" + (f"\nd{c.depth}" if c.depth not in (None, 1) else "") for c in rows]
    ax.set_xticks(xs, labels)
    for tick, c in zip(ax.get_xticklabels(), rows):
        if c.chosen:
            tick.set_fontweight("bold")
    ax.set_xlabel("student width multiplier (chosen: outlined)")
    ax.set_ylabel(f"predicted ms ({selection.get('latency_source', 'predicted')})")
    if budget:
        ax.axhline(budget, color=BUDGET_COLOR, linestyle="--", linewidth=1.3, zorder=4)
        ax.annotate(f"budget {fmt_ms(budget)} ms", (0, budget), xycoords=("axes fraction", "data"),
                    xytext=(4, 4), textcoords="offset points", fontsize=8, color=BUDGET_COLOR)
    ax.set_ylim(0, max([c.predicted_ms for c in rows] + [budget or 0]) * 1.18)
    ax2 = ax.twinx()
    ax2.plot(xs, [c.params for c in rows], color="#2e86de", marker="o", markersize=4, linewidth=1.3, zorder=5)
    ax2.set_ylabel("parameters", color="#2e86de")
    ax2.tick_params(axis="y", colors="#2e86de")
    ax2.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: fmt_count(v)))
    ax2.grid(False)
    ax2.spines["right"].set_visible(True)
    ax2.set_ylim(0, max(c.params for c in rows) * 1.18)
    ax.set_title("Width selection: predicted latency on the target", loc="left")
    fig.tight_layout()
    return fig


def training_figure(report: dict) -> Figure | None:
    """Distillation loss and accuracy per epoch, from the student's training history."""
    history = [h for h in ((report.get("student") or {}).get("history") or []) if isinstance(h, dict)]
    if len(history) < 2 or not all("epoch" in h for h in history):
        return None
    fig = Figure(figsize=(6.0, 3.6))
    ax = fig.subplots()
    epochs = [h["epoch"] for h in history]
    if all("loss" in h for h in history):
        ax.plot(epochs, [h["loss"] for h in history], color="#e4572e", marker="o", markersize=3, label="train loss")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("distillation loss", color="#e4572e")
    ax.tick_params(axis="y", colors="#e4572e")
    ax2 = ax.twinx()
    for key, color, label in (("train_accuracy", "#9ca3af", "train accuracy"), ("val_accuracy", "#2e86de",
                                                                                "val accuracy")):
        if all(h.get(key) is not None for h in history):
            ax2.plot(epochs, [100 * h[key] for h in history], color=color, marker="o", markersize=3, label=label)
    ax2.set_ylabel("accuracy, %", color="#2e86de")
    ax2.grid(False)
    ax2.spines["right"].set_visible(True)
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.set_title("Distillation", loc="left")
    fig.tight_layout()
    fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=3, bbox_to_anchor=(0.5, -0.08), frameon=False)
    return fig


def render_figures(report: dict) -> dict[str, str]:
    """name -> SVG text for every figure the report has data for."""
    out = {}
    with matplotlib.rc_context(_RC):
        for name, build in (("pareto", pareto_figure), ("prediction", prediction_figure),
                            ("selection", selection_figure), ("training", training_figure)):
            fig = build(report)
            if fig is not None:
                out[name] = to_svg(fig)
    return out
