"""Report: schema checks, table rows, Markdown/terminal/HTML rendering, multi-run merge."""

from __future__ import annotations

import copy
import io
import json
import re
from pathlib import Path

import pytest

from edgekd.errors import EdgeKDError
from edgekd.report import (
    SCHEMA_VERSION, load_report, merge_reports, render_html, render_markdown, validate_report,
    write_reports,
)
from edgekd.report.table import artifact_rows, latency_pairs, pareto_front, selection_rows


def _art(name, role, fmt, precision, runtime, acc, p50, target_p50, *, size=None, status="ok", reason=None,
         target_source="predicted:jetson-nano"):
    ok = status == "ok"
    return {
        "name": name, "role": role, "format": fmt, "precision": precision, "runtime": runtime,
        "path": None if not ok else f"artifacts/{role}.{name}", "size_bytes": size if ok else 0,
        "status": status, "reason": reason,
        "accuracy": acc if ok else None, "accuracy_drop": None,
        "parity": {"max_abs_diff": 2.1e-6, "top1_agreement": 1.0, "inputs": "test split"} if ok else None,
        "latency_ms": {"p50": p50, "p90": p50 * 1.12, "p99": p50 * 1.6, "runs": 400, "batch": 1,
                       "throughput": 1000.0 / p50} if ok and p50 else None,
        "latency_source": "measured:host" if ok and p50 else None,
        "target_latency_ms": {"p50": target_p50} if ok and target_p50 else None,
        "target_latency_source": target_source if ok and target_p50 else None,
        "extra": {},
    }


def sample_report() -> dict:
    """A realistic `edgekd distill --target jetson-nano` report on MNIST, written by hand."""
    widths = (0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
    candidates = []
    for w in widths:
        params = int(23_000 * w * w + 1_500 * w)
        pred = round(0.06 + 0.33 * w * w, 4)
        candidates.append({"width": w, "depth": 1, "resolution": None, "params": params, "flops": params * 260,
                           "predicted_ms": pred, "fits": pred <= 0.5, "memory_mb": round(0.4 + 0.9 * w, 2)})
    artifacts = [
        _art("pytorch", "teacher", "pytorch", "fp32", "pytorch", 0.9921, 3.84, 2.91, size=4_611_000),
        _art("pytorch", "student", "pytorch", "fp32", "pytorch", 0.9874, 0.412, 0.392, size=98_400),
        _art("onnx", "student", "onnx", "fp32", "onnxruntime", 0.9874, 0.0521, 0.392, size=101_230),
        _art("ort-int8", "student", "onnx", "int8", "onnxruntime", 0.9869, 0.0614, 0.471, size=36_910),
        _art("openvino-fp16", "student", "openvino", "fp16", "openvino", 0.9873, 0.0452, 0.205, size=52_870),
        _art("openvino-int8", "student", "openvino", "int8", "openvino", 0.9861, 0.0388, 0.244, size=41_200),
        _art("tensorrt-fp16", "student", "tensorrt", "fp16", "tensorrt", None, None, None, status="skipped",
             reason="tensorrt is not importable: pip install 'edgekd[tensorrt]' on a machine with an NVIDIA GPU"),
        _art("executorch", "student", "executorch", "fp32", "executorch", None, None, None, status="failed",
             reason="XNNPACK partitioner rejected aten.max_pool2d_with_indices; upgrade executorch"),
    ]
    return {
        "schema_version": SCHEMA_VERSION, "edgekd_version": "0.1.0", "created": "2026-11-23T18:40:00+00:00",
        "command": "distill",
        "config": {"target": "jetson-nano", "data": None, "teacher": None, "budget_ms": None, "epochs": 3, "seed": 0,
                   "device": "cpu", "distill": {"loss": "kd", "temperature": 4.0, "alpha": 0.9, "lr": 0.003}},
        "target": {"name": "jetson-nano", "description": "NVIDIA Jetson Nano 4GB (Maxwell, 128 CUDA cores)",
                   "runtime": "tensorrt", "precision": "fp16", "precisions": ["fp32", "fp16"], "budget_ms": 0.5,
                   "memory_mb": 4096, "measured": False, "calibration": "datasheet"},
        "budget_ms": 0.5,
        "data": {"name": "mnist (packaged)", "source": "edgekd:mnist", "num_classes": 10, "input_shape": [1, 28, 28],
                 "splits": {"train": {"name": "train", "size": 54000, "sha256": "a" * 64},
                            "val": {"name": "val", "size": 6000, "sha256": "b" * 64},
                            "calib": {"name": "calib", "size": 256, "sha256": "c" * 64},
                            "test": {"name": "test", "size": 10000, "sha256": "d" * 64}}},
        "selection": {"width": 1.0, "budget_ms": 0.5, "latency_source": "predicted:jetson-nano",
                      "candidates": candidates},
        "teacher": {"arch": "cnn", "width": 4.0, "depth": 2, "params": 1_150_000, "flops": 96_000_000,
                    "accuracy": 0.9921, "path": "teacher.safetensors", "cached": True},
        "student": {"arch": "cnn", "width": 1.0, "depth": 1, "params": 24_500, "flops": 6_370_000,
                    "accuracy": 0.9874, "val_accuracy": 0.9881, "path": "student.safetensors", "predicted_ms": 0.39,
                    "history": [{"epoch": e, "loss": 1.6 / e, "train_accuracy": 0.9 + 0.02 * e,
                                 "val_accuracy": 0.93 + 0.019 * e, "lr": 0.003, "seconds": 13.8} for e in (1, 2, 3)]},
        "artifacts": artifacts,
        "recommended": {"name": "openvino-fp16", "why": "fastest artifact on the target within 0.5 points of FP32"},
        "timings_s": {"data": 0.4, "teacher": 0.2, "select": 3.1, "distill": 41.5, "export": 18.2, "bench": 9.8,
                      "report": 1.1},
        "environment": {"python": "3.11.7", "platform": "Linux-6.1-x86_64", "cpu": "AMD EPYC",
                        "cpu_features": ["avx2", "avx512f", "avx512_vnni"], "cores": 2, "torch": "2.14.1",
                        "onnxruntime": "1.32.0", "openvino": "2026.4.1"},
    }


# ---- schema ----

def test_sample_is_valid_and_json_round_trips(tmp_path):
    report = sample_report()
    validate_report(report)
    paths = write_reports(tmp_path, report)
    assert set(paths) == {"json", "md", "html"}
    assert load_report(tmp_path) == json.loads(json.dumps(report))
    assert load_report(tmp_path / "report.json")["schema_version"] == SCHEMA_VERSION
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json", "report.md"]


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.update(schema_version=2), "schema_version is 2"),
    (lambda r: r.pop("schema_version"), "schema_version is None"),
    (lambda r: r.pop("artifacts"), "has no 'artifacts'"),
    (lambda r: r["artifacts"][2].update(status="done"), "artifacts[2].status"),
    (lambda r: r["artifacts"][2].update(accuracy=98.7), "not a fraction"),
    (lambda r: r["artifacts"][2].update(size_bytes="12kB"), "artifacts[2].size_bytes is str"),
    (lambda r: r["artifacts"][3]["latency_ms"].update(p50=-1.0), "latency_ms.p50"),
    (lambda r: r["artifacts"][3]["latency_ms"].update(p50=1e308), "latency_ms.p50"),  # longer than a day per call
    (lambda r: r["artifacts"][1].pop("format"), "artifacts[1] has no 'format'"),
    (lambda r: r["selection"]["candidates"][0].pop("fits"), "candidates[0] has no 'fits'"),
    (lambda r: r["selection"]["candidates"][0].update(fits=1), "fits is int"),
    (lambda r: r.update(budget_ms=True), "budget_ms is bool"),
])
def test_invalid_reports_give_one_line_errors(mutate, message):
    report = sample_report()
    mutate(report)
    with pytest.raises(EdgeKDError) as info:
        validate_report(report)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_load_report_errors(tmp_path):
    with pytest.raises(EdgeKDError, match="has no report.json"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(EdgeKDError, match="not valid JSON"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({**sample_report(), "schema_version": 99}))
    with pytest.raises(EdgeKDError, match="schema_version is 99, this edgekd reads schema_version 1"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text("[1, 2]")
    with pytest.raises(EdgeKDError, match="expected a JSON object"):
        load_report(tmp_path)


def test_invalid_report_writes_nothing(tmp_path):
    report = sample_report()
    report["artifacts"][0]["status"] = "??"
    with pytest.raises(EdgeKDError):
        write_reports(tmp_path, report)
    assert list(tmp_path.iterdir()) == []


# ---- rows ----

def test_rows_speedup_delta_fit_and_recommendation():
    rows = {(r.role, r.name): r for r in artifact_rows(sample_report())}
    teacher = rows[("teacher", "pytorch")]
    assert teacher.speedup == pytest.approx(1.0)
    assert teacher.delta_pt is None
    assert rows[("student", "pytorch")].is_reference
    ov = rows[("student", "openvino-fp16")]
    assert ov.speedup == pytest.approx(3.84 / 0.0452)
    assert ov.target_speedup == pytest.approx(2.91 / 0.205)
    assert ov.delta_pt == pytest.approx(-0.01, abs=1e-9)
    assert ov.recommended and ov.fits and ov.size_mb == pytest.approx(0.05287)
    assert rows[("teacher", "pytorch")].fits is False
    skipped = rows[("student", "tensorrt-fp16")]
    assert skipped.status == "skipped" and skipped.host_p50 is None and skipped.speedup is None
    assert "tensorrt is not importable" in skipped.reason
    # The frontier on the target: openvino-fp16 (0.205 ms, 98.73%) dominates int8 ORT (slower, less accurate).
    frontier = {r.name for r in rows.values() if r.on_frontier and r.role == "student"}
    assert "openvino-fp16" in frontier and "ort-int8" not in frontier


def test_pareto_front():
    pts = [(1.0, 0.90), (2.0, 0.95), (1.5, 0.89), (3.0, 0.95), (0.5, 0.80), (4.0, 0.99)]
    assert pareto_front(pts) == [4, 0, 1, 5]


def test_selection_rows_mark_the_chosen_width():
    rows = selection_rows(sample_report())
    assert [r.width for r in rows if r.chosen] == [1.0]
    assert [r.fits for r in rows] == [True, True, True, True, True, False, False, False]


# ---- renderers ----

def test_markdown_has_every_artifact_and_the_selection():
    md = render_markdown(sample_report())
    table = [line for line in md.splitlines() if line.startswith("| ")]
    for name in ("openvino-fp16", "ort-int8", "tensorrt-fp16", "executorch", "teacher"):
        assert any(name in line for line in table), name
    ov = next(line for line in table if "openvino-fp16" in line)
    assert "**student · openvino-fp16** ★" in ov and "85.0×" in ov and "0.205 ✓" in ov
    assert "predicted:jetson-nano" in ov
    assert any("skipped: tensorrt is not importable" in line for line in table)
    assert any("**1** " in line and "← chosen" in line for line in table)
    assert "Latency budget:** 0.5 ms" in md


def _terminal(report, width):
    from rich.console import Console

    from edgekd.cli.render import print_report

    console = Console(file=io.StringIO(), width=width, color_system=None)
    print_report(console, report)
    return console.file.getvalue()


def test_terminal_table_renders():
    out = _terminal(sample_report(), 200)
    assert "Artifacts on jetson-nano (budget 0.5 ms)" in out
    line = next(ln for ln in out.splitlines() if "openvino-fp16 ★◆" in ln)
    assert re.search(r"openvino-fp16 ★◆\s+openvino\s+fp16\s+0\.053\s+98\.73\s+−0\.01\s+0\.0452\s+85\.0×\s+"
                     r"0\.205 pred\s+ok", line), line
    assert "Width selection" in out and "yes ◀ chosen" in out
    # Reasons are footnotes under the table, not a column that squeezes every other one.
    assert "skipped¹" in out and "failed²" in out
    assert "¹ tensorrt-fp16: skipped: tensorrt is not importable" in out


def test_terminal_table_fits_a_narrow_terminal():
    out = _terminal(ingested_sample(), 80)
    table = out[out.index("Artifacts on"):out.index("¹")]
    assert max(len(line) for line in table.splitlines()) <= 80
    rows = [ln for ln in table.splitlines() if "openvino-fp16" in ln or "teacher (pytorch)" in ln]
    # The essentials survive: name, accuracy, host and target latency (with its source), status.
    assert any(re.search(r"openvino-fp16 ★◆\s+98\.73\s+.*0\.0452.*0\.231 meas\s+ok", ln) for ln in rows), rows
    assert "…" not in table  # columns are dropped whole, never truncated


def test_html_is_self_contained_with_plots(tmp_path):
    report = ingested_sample()
    html = render_html(report)
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", html), "external resource reference"
    imgs = re.findall(r'<img alt="([^"]+)" src="data:image/svg\+xml;base64,', html)
    assert imgs == ["accuracy against latency (Pareto plot)", "width selection", "predicted vs measured latency",
                    "distillation curves"]
    assert "RECOMMENDED" in html and "openvino-fp16" in html and "measured:jetson-nano" in html
    assert "<script" not in html.lower()
    # Strings from the report are escaped.
    report["artifacts"][6]["reason"] = "<b>boom</b>"
    assert "&lt;b&gt;boom&lt;/b&gt;" in render_html(report)


def ingested_sample() -> dict:
    """The sample after on-device measurements replaced two predictions (as `edgekd ingest` does)."""
    report = sample_report()
    for art, measured in ((report["artifacts"][2], 0.455), (report["artifacts"][4], 0.231)):
        art["predicted_target_latency_ms"] = art["target_latency_ms"]
        art["predicted_target_latency_source"] = art["target_latency_source"]
        art["target_latency_ms"] = {"p50": measured, "p90": measured * 1.1, "p99": measured * 1.3}
        art["target_latency_source"] = "measured:jetson-nano"
    return report


def test_busy_machine_warning():
    report = sample_report()
    assert "busy" not in render_markdown(report)
    report["environment"].update(load_avg=[7.9, 6.0, 5.1], usable_cores=2)
    assert "**Warning:** this machine was busy while measuring (load 7.9 on 2 cores)" in render_markdown(report)
    assert '<div class="warn">' in render_html(report)


def test_latency_pairs_from_ingested_measurements():
    pairs = latency_pairs(ingested_sample())
    assert [(p["name"], p["device"], p["predicted"], p["measured"]) for p in pairs] == [
        ("onnx", "jetson-nano", 0.392, 0.455), ("openvino-fp16", "jetson-nano", 0.205, 0.231)]


def test_report_without_target_or_selection_renders(tmp_path):
    """`edgekd bench MODEL_FILE` writes a report with only measured host rows."""
    report = sample_report()
    report["command"] = "bench"  # a distill report must name its target
    for key in ("target", "budget_ms", "selection", "teacher", "student", "recommended", "data"):
        report.pop(key)
    for art in report["artifacts"]:
        art["target_latency_ms"] = art["target_latency_source"] = None
    paths = write_reports(tmp_path, report)
    html = paths["html"].read_text()
    assert "accuracy against latency" in html and "width selection" not in html
    assert "Host p50 ms" in paths["md"].read_text()


def test_merge_reports_frontier_across_runs():
    a, b = sample_report(), sample_report()
    b["student"]["width"] = 0.75
    for art in b["artifacts"]:
        if art["role"] == "student" and art["status"] == "ok":
            art["accuracy"] -= 0.002
            art["target_latency_ms"] = {"p50": art["target_latency_ms"]["p50"] * 0.6}
    b["artifacts"][3]["accuracy"] = 0.9890  # a more accurate INT8 model in run b, within budget
    merged = merge_reports([("w1", a), ("w0.75", b)])
    validate_report(merged)
    # The teacher both runs share appears once; every student artifact of both runs is there.
    assert len(merged["artifacts"]) == 2 * len(a["artifacts"]) - 1
    assert [x["run"] for x in merged["artifacts"] if x["role"] == "teacher"] == ["w1"]
    assert merged["teacher"]["accuracy"] == 0.9921
    assert merged["recommended"]["name"] == "ort-int8" and merged["recommended"]["run"] == "w0.75"
    assert merged["target"]["name"] == "jetson-nano" and merged["budget_ms"] == 0.5
    md = render_markdown(merged)
    assert "| Run |" in md and "w0.75" in md
    rows = artifact_rows(merged)
    assert sum(r.recommended for r in rows) == 1


def test_merge_drops_target_columns_when_targets_differ():
    a, b = sample_report(), copy.deepcopy(sample_report())
    b["target"] = {**b["target"], "name": "raspberry-pi-4"}
    b["teacher"] = {**b["teacher"], "accuracy": 0.95}
    merged = merge_reports([("a", a), ("b", b)], command="sweep")
    assert "target" not in merged and merged["command"] == "sweep"
    assert len([x for x in merged["artifacts"] if x["role"] == "teacher"]) == 2 and "teacher" not in merged


def test_write_reports_overwrites_atomically(tmp_path):
    write_reports(tmp_path, sample_report())
    report = sample_report()
    report["artifacts"] = report["artifacts"][:2]
    write_reports(tmp_path, report)
    assert len(load_report(tmp_path)["artifacts"]) == 2
    assert not [p for p in Path(tmp_path).iterdir() if p.name.startswith(".")]


# ---- on-device results: runner -> ingest -> report, and the CLI ----

REPO = Path(__file__).resolve().parents[1]


def _edgekd(*args, cwd=None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "edgekd.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=300)


def _tiny_onnx(path: Path) -> Path:
    """A real ONNX classifier (flatten + linear, dynamic batch) built with onnx.helper: no torch needed."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((784, 10)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(10, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w", "b"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def run_with_onnx(tmp_path):
    """A run folder whose 'onnx' artifact is a real file, and device results for a renamed copy of it."""
    import shutil
    import subprocess
    import sys

    from edgekd.bench.runner_script import write_runner_script

    run = tmp_path / "run"
    model = _tiny_onnx(run / "artifacts" / "student.onnx")
    report = sample_report()
    report["artifacts"][2]["path"] = "artifacts/student.onnx"
    write_reports(run, report)
    device = tmp_path / "device"
    device.mkdir()
    shutil.copy(model, device / "copied-to-nano.onnx")  # renamed on the device: matched by its hash
    script = write_runner_script(device / "edgekd_runner.py")
    proc = subprocess.run([sys.executable, "-I", str(script), "copied-to-nano.onnx", "--batch", "1,2", "--runs", "20",
                           "--device-name", "jetson-nano", "--out", "results.json"],
                          capture_output=True, text=True, cwd=device, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return run, device / "results.json"


def test_ingest_round_trip(run_with_onnx):
    run, results = run_with_onnx
    device_doc = json.loads(results.read_text())
    measured_p50 = device_doc["results"][0]["latency_ms"]["p50"]

    proc = _edgekd("ingest", results, run)
    assert proc.returncode == 0, proc.stderr
    assert "measured:jetson-nano  copied-to-nano.onnx -> onnx" in proc.stdout

    report = load_report(run)
    art = report["artifacts"][2]
    assert art["target_latency_source"] == "measured:jetson-nano"
    assert art["target_latency_ms"]["p50"] == measured_p50
    assert art["predicted_target_latency_ms"] == {"p50": 0.392}
    assert art["predicted_target_latency_source"] == "predicted:jetson-nano"
    assert [m["latency_ms"]["batch"] for m in art["extra"]["device_measurements"]] == [1, 2]
    assert report["devices"]["jetson-nano"]["cpu"] == device_doc["device"]["cpu"]
    # Other artifacts keep their predictions.
    assert report["artifacts"][3]["target_latency_source"] == "predicted:jetson-nano"
    pairs = latency_pairs(report)
    assert [(p["name"], p["predicted"], p["measured"]) for p in pairs] == [("onnx", 0.392, measured_p50)]
    html = (run / "report.html").read_text()
    assert 'alt="predicted vs measured latency"' in html and "Device measured: jetson-nano" in html
    assert "measured:jetson-nano" in (run / "report.md").read_text()

    # Ingesting the same file again changes nothing.
    before = load_report(run)
    assert _edgekd("ingest", results, run).returncode == 0
    assert load_report(run) == before


def test_ingest_refuses_another_device_and_foreign_files(run_with_onnx, tmp_path):
    run, results = run_with_onnx
    before = (run / "report.json").read_text()
    proc = _edgekd("ingest", results, run, "--device", "raspberry-pi-4")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "from device 'raspberry-pi-4' but the run targets 'jetson-nano'" in proc.stderr
    doc = json.loads(results.read_text())
    for row in doc["results"]:
        row["sha256"] = "0" * 64
        row["model"] = "other.onnx"
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(doc))
    proc = _edgekd("ingest", foreign, run)
    assert proc.returncode == 2 and "none of the measured models (other.onnx) is an artifact" in proc.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"results": 3}')
    proc = _edgekd("ingest", bad, run)
    assert proc.returncode == 2 and "has no 'device' object and 'results' list" in proc.stderr
    assert (run / "report.json").read_text() == before


def test_cli_report_rebuilds_one_and_compares_several(tmp_path):
    a, b = tmp_path / "w1", tmp_path / "w075"
    write_reports(a, sample_report(), html=False)
    other = sample_report()
    other["student"]["width"] = 0.75
    write_reports(b, other, html=False)
    assert not (a / "report.html").exists()
    proc = _edgekd("report", a)
    assert proc.returncode == 0, proc.stderr
    assert (a / "report.html").exists() and "openvino-fp16" in proc.stdout
    proc = _edgekd("report", a, b, "--out", tmp_path / "cmp", "--quiet")
    assert proc.returncode == 0, proc.stderr
    merged = load_report(tmp_path / "cmp")
    assert merged["command"] == "compare" and {x["run"] for x in merged["artifacts"]} == {"w1", "w075"}
    assert "| Run |" in (tmp_path / "cmp" / "report.md").read_text()


def test_cli_report_errors_are_one_line(tmp_path):
    proc = _edgekd("report", tmp_path)
    assert proc.returncode == 2 and "has no report.json" in proc.stderr and proc.stderr.count("\n") == 1
    (tmp_path / "report.json").write_text(json.dumps({**sample_report(), "schema_version": 7}))
    proc = _edgekd("report", tmp_path)
    assert proc.returncode == 2 and "schema_version is 7" in proc.stderr and proc.stderr.count("\n") == 1


def test_cli_runner_writes_the_script(tmp_path):
    proc = _edgekd("runner", "--out", tmp_path / "r.py")
    assert proc.returncode == 0, proc.stderr
    import ast

    ast.parse((tmp_path / "r.py").read_text(), feature_version=(3, 6))


def test_teacher_section_shows_the_ladder_with_each_rungs_smoothing():
    from edgekd.report.markdown import teacher_markdown

    report = sample_report()
    report["teacher"].update(
        history=[{"epoch": e, "loss": 1.0 / e, "val_accuracy": 0.8 + 0.01 * e, "lr": 1e-3} for e in (1, 2)],
        epochs=2, best_epoch=2, stop_reason="ran its 2 epochs",
        rungs=[{"arch": "cnn", "width": 4.0, "depth": 1, "params": 372_682, "epochs": 9, "label_smoothing": 0.1,
                "train_accuracy": 0.87, "val_accuracy": 0.88, "underfits": True},
               {"arch": "cnn", "width": 3.0, "depth": 2, "params": 646_522, "epochs": 18, "label_smoothing": 0.0,
                "train_accuracy": 0.99, "val_accuracy": 0.916, "underfits": False}])
    text = "\n".join(teacher_markdown(report))
    assert "| Teacher | Params | Epochs | Smoothing |" in text
    assert "| cnn w4 d1 | 373k | 9 | 0.1 | 87.00 | 88.00 | underfits |" in text
    assert "| cnn w3 d2 | 647k | 18 | 0 | 99.00 | 91.60 | fits |" in text
