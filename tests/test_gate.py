"""edgekd gate: budgets from flags and pyproject, every check passing and failing, exit codes, CI outputs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgekd.errors import EdgeKDError
from edgekd.gate import CONFIG_KEYS, MB, Budgets, gate, junit_xml, load_config, parse_config, resolve_budgets
from edgekd.modelfile import onnx_param_count, shipped_files, size_bytes

REPO = Path(__file__).resolve().parents[1]
HIDDEN = 8
# Flatten(1x1x4x4) -> Gemm(16->8) -> Relu -> Gemm(8->10)
PARAMS = 16 * HIDDEN + HIDDEN + HIDDEN * 10 + 10


def make_onnx(path: Path, *, external: bool = False, hidden: int = HIDDEN, dynamic_batch: bool = True) -> Path:
    """A real 2-layer MLP ONNX model (runs in ONNX Runtime)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((hidden, 16)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((10, hidden)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1),
    ]
    batch = "batch" if dynamic_batch else 1
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def artifact_row(name, path, *, status="ok", role="student", accuracy=0.97, drop=0.002, host_ms=0.20,
                 target_ms=1.5, size=None, run_dir=None, fmt="onnx", precision="fp32"):
    return {
        "name": name, "role": role, "format": fmt, "precision": precision, "runtime": "onnxruntime",
        "path": path, "size_bytes": size if size is not None else ((run_dir / path).stat().st_size if run_dir and path else 1000),
        "status": status, "reason": None if status == "ok" else "tensorrt is not importable",
        "accuracy": accuracy if status == "ok" else None, "accuracy_drop": drop if status == "ok" else None,
        "parity": None,
        "latency_ms": {"p50": host_ms, "p90": host_ms * 1.2, "p99": host_ms * 1.5} if status == "ok" else None,
        "latency_source": "measured:host" if status == "ok" else None,
        "target_latency_ms": {"p50": target_ms}, "target_latency_source": "predicted:jetson-nano",
        "extra": {},
    }


def make_run(run_dir: Path, *, onnx_acc=0.97, int8_acc=0.965, int8_drop=0.007, int8_host_ms=0.2,
             int8_target_ms=1.5, hidden=HIDDEN) -> Path:
    """A run folder like `edgekd distill` writes: report.json plus real ONNX artifacts."""
    from edgekd.report.schema import new_report

    make_onnx(run_dir / "artifacts" / "student.onnx", hidden=hidden)
    make_onnx(run_dir / "artifacts" / "student.int8.onnx", hidden=hidden)
    report = new_report("distill")
    report["target"] = {"name": "jetson-nano", "runtime": "tensorrt", "precision": "fp16"}
    report["budget_ms"] = 2.0
    report["data"] = {"name": "mnist", "splits": {"test": {"name": "test", "size": 10000, "sha256": "0"}}}
    report["student"] = {"arch": "cnn", "width": 0.5, "depth": 1, "params": 1234, "accuracy": 0.972}
    report["teacher"] = {"arch": "cnn", "width": 4, "depth": 2, "params": 99999, "accuracy": 0.99}
    report["artifacts"] = [
        artifact_row("pytorch", None, role="teacher", accuracy=0.99, drop=None, size=400000, fmt="pytorch"),
        artifact_row("pytorch", None, accuracy=0.972, drop=0.0, size=50000, fmt="pytorch"),
        artifact_row("onnx", "artifacts/student.onnx", accuracy=onnx_acc, drop=0.972 - onnx_acc, run_dir=run_dir),
        artifact_row("ort-int8", "artifacts/student.int8.onnx", accuracy=int8_acc, drop=int8_drop,
                     host_ms=int8_host_ms, target_ms=int8_target_ms, run_dir=run_dir, precision="int8"),
        artifact_row("tensorrt-fp16", None, status="skipped", size=0, fmt="tensorrt"),
    ]
    report["recommended"] = {"name": "ort-int8", "why": "fastest within the accuracy budget"}
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    return run_dir


@pytest.fixture
def cli(monkeypatch, capsys, tmp_path):
    """Run `edgekd ...` in-process through the real entry point; return (exit code, stdout, stderr)."""
    from edgekd.cli import main

    monkeypatch.setenv("COLUMNS", "250")  # rich tables unwrapped, so assertions see whole cells
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray pyproject.toml from the repo

    def run(*args):
        with pytest.raises(SystemExit) as exc:
            main(["gate", *map(str, args)])
        out, err = capsys.readouterr()
        return exc.value.code, out, err

    return run


def one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("edgekd: error: ")
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------------- size / params

def test_size_and_params_of_a_model_file(tmp_path, cli):
    model = make_onnx(tmp_path / "m.onnx")
    size = model.stat().st_size
    code, out, _ = cli(model, "--max-size-mb", size / MB * 1.01, "--max-params", PARAMS)
    assert code == 0, out
    assert "gate passed: 2 checks" in out and f"{PARAMS:,}" in out and "onnx initializers" in out
    code, out, _ = cli(model, "--max-size-mb", size / MB * 0.99)
    assert code == 1 and "FAIL" in out and "gate failed: 1 of 1" in out
    code, out, _ = cli(model, "--max-params", PARAMS - 1)
    assert code == 1 and "FAIL" in out


def test_external_data_counts_in_size(tmp_path):
    model = make_onnx(tmp_path / "ext" / "m.onnx", external=True)
    data = tmp_path / "ext" / "m.onnx.data"
    assert data.stat().st_size >= PARAMS * 4  # the weights really are outside the .onnx file
    assert shipped_files(model) == [model, data]
    total = model.stat().st_size + data.stat().st_size
    assert size_bytes(model) == total
    assert onnx_param_count(model) == PARAMS  # counted from dims, without loading the data
    # A budget that the .onnx alone meets but the model with its weights does not: the gate fails.
    between = (model.stat().st_size + total) / 2 / MB
    result = gate([model], Budgets(max_size_mb=between))
    assert not result.passed and result.results[0].value == total and result.results[0].source == "2 files"
    data.unlink()
    with pytest.raises(EdgeKDError, match="external data file 'm.onnx.data' .* is missing"):
        gate([model], Budgets(max_size_mb=1))


def _qdq_int8(fp32: Path, out: Path) -> Path:
    """Static QDQ INT8 quantization (the TensorRT-compatible format edgekd exports)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Calib(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"x": rng.random((1, 1, 4, 4), dtype=np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp32), str(out), Calib(), quant_format=QuantFormat.QDQ,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    return out


def test_quantized_onnx_params_skip_scales(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = make_onnx(tmp_path / "m.onnx")
    dynamic = tmp_path / "m.dyn.onnx"
    quantize_dynamic(str(fp32), str(dynamic), weight_type=QuantType.QInt8)
    # Same weights, so the same count: scales and zero points are not parameters.
    assert onnx_param_count(dynamic) == PARAMS
    assert onnx_param_count(_qdq_int8(fp32, tmp_path / "m.qdq.onnx")) == PARAMS


def test_openvino_xml_counts_its_bin_and_params(tmp_path):
    import openvino as ov
    from edgekd.modelfile import openvino_param_count

    onnx_path = make_onnx(tmp_path / "m.onnx")
    xml = tmp_path / "ov" / "m.xml"
    xml.parent.mkdir()
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    bin_ = xml.with_suffix(".bin")
    assert bin_.stat().st_size >= PARAMS * 4  # the weights live in the .bin
    assert size_bytes(xml) == xml.stat().st_size + bin_.stat().st_size
    result = gate([xml], Budgets(max_latency_ms=1000, max_size_mb=1, max_params=PARAMS))
    assert result.passed
    latency = next(r for r in result.results if r.check.startswith("latency"))
    assert latency.source.startswith("measured:host (openvino")
    assert next(r for r in result.results if r.check == "params").source == "openvino constants"
    # FP16-compressed and INT8 (from QDQ ONNX) IRs hold the same weights: the same count.
    ov.save_model(ov.convert_model(str(onnx_path)), str(tmp_path / "ov" / "m16.xml"), compress_to_fp16=True)
    qdq = _qdq_int8(onnx_path, tmp_path / "m.qdq.onnx")
    ov.save_model(ov.convert_model(str(qdq)), str(tmp_path / "ov" / "m8.xml"))
    counts = [openvino_param_count(tmp_path / "ov" / n) for n in ("m.xml", "m16.xml", "m8.xml")]
    assert counts == [PARAMS] * 3
    bin_.unlink()
    with pytest.raises(EdgeKDError, match="OpenVINO weights .*m.bin for .*m.xml are missing"):
        gate([xml], Budgets(max_size_mb=1))


# ------------------------------------------------------------------------------------------- latency

def test_latency_measured_on_host_for_a_model_file(tmp_path, cli):
    model = make_onnx(tmp_path / "m.onnx")
    result = gate([model], Budgets(max_latency_ms=1000.0, latency_stat="p90"), time_budget_s=0.2)
    (row,) = result.results
    assert row.passed and row.check == "latency p90" and 0 < row.value < 1000
    assert row.source.startswith("measured:host (onnxruntime")
    # A batch of 4 through the dynamic batch dimension.
    assert gate([model], Budgets(max_latency_ms=1000.0, input_shape=(4, 1, 4, 4)), time_budget_s=0.1).passed
    code, out, _ = cli(model, "--max-latency-ms", "0.000001", "--target", "host")
    assert code == 1 and "measured:host" in out and "FAIL" in out


def test_latency_of_a_half_precision_model(tmp_path):
    """An FP16 export whose input is float16 is timed with float16 input, not refused."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from edgekd.modelfile import onnx_precision

    half = convert_float_to_float16(onnx.load(str(make_onnx(tmp_path / "m.onnx"))), keep_io_types=False)
    onnx.save_model(half, str(tmp_path / "m16.onnx"))
    assert onnx_precision(half) == "fp16" and onnx_param_count(tmp_path / "m16.onnx") == PARAMS
    (row,) = gate([tmp_path / "m16.onnx"], Budgets(max_latency_ms=1000.0), time_budget_s=0.1).results
    assert row.passed and row.source.startswith("measured:host (onnxruntime")


def test_latency_from_report_host_and_target(tmp_path, cli):
    run = make_run(tmp_path / "run", int8_host_ms=0.2, int8_target_ms=1.5)
    # Default target: the report's (jetson-nano), its predicted figure, labelled so.
    code, out, _ = cli(run, "--artifact", "ort-int8", "--max-latency-ms", 2.0)
    assert code == 0 and "1.500 ms" in out and "predicted:jetson-nano" in out
    code, out, _ = cli(run, "--artifact", "ort-int8", "--max-latency-ms", 1.0)
    assert code == 1 and "FAIL" in out
    # --target host: the host measurement recorded in the report.
    code, out, _ = cli(run, "--artifact", "ort-int8", "--max-latency-ms", 1.0, "--target", "host")
    assert code == 0 and "0.200 ms" in out and "measured:host" in out
    code, out, _ = cli(run, "--artifact", "ort-int8", "--max-latency-ms", 0.25, "--target", "host",
                       "--latency-stat", "p99")
    assert code == 1 and "0.300 ms" in out  # p99 = 1.5 x p50 in the fixture


def test_latency_predicted_for_another_target(tmp_path, cli):
    from edgekd.hardware import list_targets

    name = next(t.name for t in list_targets() if not t.measured)
    model = make_onnx(tmp_path / "m.onnx")
    result = gate([model], Budgets(max_latency_ms=1e6, target=name))
    (row,) = result.results
    assert row.passed and row.source.startswith(f"predicted:{name}") and row.value > 0
    assert not gate([model], Budgets(max_latency_ms=row.value / 2, target=name)).passed
    code, _, err = cli(model, "--max-latency-ms", 1, "--target", "jetson-nan")
    assert code == 2 and "did you mean 'jetson-nano'" in one_line_error(err)


def test_report_latency_for_a_target_it_does_not_record(tmp_path):
    """A run made for jetson-nano, gated for raspberry-pi-4: predicted from the run's ONNX graph, even for
    an artifact whose own file the latency model cannot read."""
    run = make_run(tmp_path / "run")
    report = json.loads((run / "report.json").read_text())
    int8 = next(r for r in report["artifacts"] if r["name"] == "ort-int8")
    int8["path"] = "artifacts/student.int8.xml"  # not on disk: predicted from the onnx row's graph
    (run / "report.json").write_text(json.dumps(report))
    result = gate([run], Budgets(max_latency_ms=1e6, target="raspberry-pi-4"))
    assert [r.artifact for r in result.results] == ["onnx", "ort-int8"]
    assert all(r.passed and r.source.startswith("predicted:raspberry-pi-4") for r in result.results)


# ------------------------------------------------------------------------------------------- accuracy

def test_accuracy_and_accuracy_drop(tmp_path, cli):
    run = make_run(tmp_path / "run", onnx_acc=0.97, int8_acc=0.965, int8_drop=0.007)
    code, out, _ = cli(run, "--min-accuracy", 0.96, "--max-accuracy-drop", 0.01)
    assert code == 0 and "gate passed: 4 checks" in out  # onnx and ort-int8, two checks each
    assert "96.50%" in out and "0.70 pts" in out and "test split, 10000 images" in out
    code, out, _ = cli(run, "--min-accuracy", 0.968)
    assert code == 1 and "gate failed: 1 of 2" in out  # ort-int8 is below, onnx is not
    code, out, _ = cli(run, "--max-accuracy-drop", 0.005)
    assert code == 1 and "gate failed: 1 of 2" in out


def test_default_artifacts_and_selection(tmp_path, cli):
    run = make_run(tmp_path / "run")
    result = gate([run], Budgets(max_size_mb=1))
    # Teacher rows, the PyTorch baselines and the skipped TensorRT engine are not gated by default.
    assert [r.artifact for r in result.results] == ["onnx", "ort-int8"]
    assert result.results[0].source == "file"
    result = gate([run], Budgets(max_size_mb=0.1, artifacts=("pytorch", "teacher/pytorch")))
    assert [(r.artifact, r.value, r.passed) for r in result.results] == [
        ("pytorch", 50000, True), ("teacher/pytorch", 400000, False)]
    result = gate([run / "report.json"], Budgets(max_size_mb=1, artifacts=("recommended",)))
    assert [r.artifact for r in result.results] == ["ort-int8"]
    # Naming an artifact that did not export fails the gate with its reason; it is never skipped silently.
    code, out, _ = cli(run, "--artifact", "tensorrt-fp16", "--max-size-mb", 1)
    assert code == 1 and "skipped" in out and "tensorrt is not importable" in out
    code, _, err = cli(run, "--artifact", "ort-int9", "--max-size-mb", 1)
    assert code == 2 and "did you mean 'ort-int8'" in one_line_error(err)


def test_report_without_artifact_files_uses_recorded_size(tmp_path):
    run = make_run(tmp_path / "run")
    report = run / "report.json"
    moved = tmp_path / "only" / "report.json"
    moved.parent.mkdir()
    moved.write_text(report.read_text())
    result = gate([moved], Budgets(max_size_mb=1, artifacts=("onnx",)))
    assert result.results[0].source == "report"
    assert result.results[0].value == (run / "artifacts" / "student.onnx").stat().st_size


# ------------------------------------------------------------------------------------------- baseline

def test_baseline_growth(tmp_path, cli):
    old = make_run(tmp_path / "old", hidden=8, int8_host_ms=0.2, int8_acc=0.965)
    same = make_run(tmp_path / "same", hidden=8, int8_host_ms=0.205, int8_acc=0.965)
    code, out, _ = cli(same, "--baseline", old / "report.json", "--max-growth", 5, "--target", "host")
    assert code == 0, out
    assert "size growth" in out and "latency growth" in out and "accuracy vs baseline" in out
    assert "+2.50%" in out  # 0.2 -> 0.205 ms
    # Bigger model (hidden 64), slower and less accurate int8: three failures for ort-int8, size for onnx.
    grown = make_run(tmp_path / "grown", hidden=64, int8_host_ms=0.3, int8_acc=0.96)
    result = gate([grown], Budgets(baseline=old, max_growth=5, target="host", artifacts=("ort-int8",)))
    failed = {r.check for r in result.failures}
    assert failed == {"size growth", "latency growth", "accuracy vs baseline"}
    latency = next(r for r in result.results if r.check == "latency growth")
    assert latency.value == pytest.approx(50.0)
    code, out, _ = cli(grown, "--baseline", old, "--max-growth", 5, "--target", "host")
    assert code == 1 and "gate failed: 4 of 6" in out
    # Accuracy may fall within --max-accuracy-fall.
    result = gate([grown], Budgets(baseline=old, max_growth=1000, max_accuracy_fall=0.01, target="host"))
    assert result.passed


def test_baseline_for_model_files_matches_by_file_name(tmp_path):
    old = make_run(tmp_path / "old")
    bigger = make_onnx(tmp_path / "new" / "student.int8.onnx", hidden=32)
    result = gate([bigger], Budgets(baseline=old, max_growth=10))
    (row,) = [r for r in result.results if r.check == "size growth"]
    assert not row.passed and row.value > 10
    # A model file is timed on the host, so it is compared with the baseline's host figure (0.2 ms).
    (row,) = [r for r in result.results if r.check == "latency growth"]
    assert row.source.startswith("0.200 -> ") and "measured:host (onnxruntime" in row.source
    with pytest.raises(EdgeKDError, match="no artifact file named other.onnx"):
        gate([make_onnx(tmp_path / "other.onnx")], Budgets(baseline=old, max_growth=10))


# ------------------------------------------------------------------------------------------- pyproject

def test_pyproject_budgets_and_cli_override(tmp_path, cli):
    model = make_onnx(tmp_path / "m.onnx")
    (tmp_path / "pyproject.toml").write_text(
        "[project]\nname = 'app'\n\n[tool.edgekd.gate]\nmax-params = 100\nmax_size_mb = 1.0\n")
    sub = tmp_path / "src" / "deep"
    sub.mkdir(parents=True)
    os.chdir(sub)  # found by walking up from the cwd
    budgets, found = resolve_budgets({})
    assert found == tmp_path / "pyproject.toml" and budgets.max_params == 100 and budgets.max_size_mb == 1.0
    code, out, _ = cli(model)
    assert code == 1 and "<= 100" in out and "budgets from" in out
    code, out, _ = cli(model, "--max-params", 10_000)  # the flag overrides the file
    assert code == 0 and "<= 10,000" in out
    code, out, _ = cli(model, "--no-config", "--max-size-mb", 1)
    assert code == 0 and "gate passed: 1 check within budget" in out


def test_pyproject_report_budgets_do_not_apply_to_model_files(tmp_path, cli):
    """One pyproject serves CI (run folders) and a pre-commit hook (.onnx files): accuracy budgets and the
    artifact choice are shown as not applicable for a bare model, not an error; typed on the command line
    they are an error."""
    model = make_onnx(tmp_path / "m.onnx")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.edgekd.gate]\nmax_params = 1000\nmin_accuracy = 0.9\nmax_accuracy_drop = 0.01\nartifacts = "recommended"\n')
    junit = tmp_path / "gate.xml"
    code, out, _ = cli(model, "--junit", junit)
    assert code == 0, out
    assert "gate passed: 1 check within budget, 2 not applicable" in out and "skip" in out
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("skipped") == "2" and len(suite.findall("testcase/skipped")) == 2
    code, _, err = cli(model, "--min-accuracy", 0.9)
    assert code == 2 and "accuracy is known only for report artifacts" in one_line_error(err)
    code, _, err = cli(model, "--artifact", "onnx")
    assert code == 2 and "--artifact selects artifacts of a report" in one_line_error(err)
    # The same pyproject on a run folder checks everything.
    run = make_run(tmp_path / "run", int8_acc=0.95, int8_drop=0.02)
    code, out, _ = cli(run)
    assert code == 1 and "gate failed: 2 of 3 checks" in out  # ort-int8 (recommended): 1,234 params, drop 2 pts


README_PYPROJECT = """
[tool.edgekd.gate]
max_size_mb = 2.0
max_params = 500_000
max_latency_ms = 5.0
target = "jetson-nano"            # "host" = measured on the CI machine
min_accuracy = 0.98
max_accuracy_drop = 0.01
baseline = "ci/baseline-report.json"   # relative to this pyproject.toml
max_growth = 5                    # percent
"""


def test_readme_pyproject_serves_run_folders_and_model_files(tmp_path, cli):
    """The README's configuration: the CI job gates the run folder, the pre-commit hook gates .onnx files."""
    (tmp_path / "pyproject.toml").write_text(README_PYPROJECT)
    old = make_run(tmp_path / "old", onnx_acc=0.985, int8_acc=0.982, int8_drop=0.002)
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "baseline-report.json").write_text((old / "report.json").read_text())
    new = make_run(tmp_path / "runs" / "ci", onnx_acc=0.985, int8_acc=0.982, int8_drop=0.002)
    code, out, _ = cli(new)
    assert code == 0, out
    assert "predicted:jetson-nano" in out and "size growth" in out and "not applicable" not in out
    # Pre-commit: a file the baseline knows is compared with it; one it does not know is not applicable.
    code, out, _ = cli(new / "artifacts" / "student.int8.onnx", make_onnx(tmp_path / "other.onnx"))
    assert code == 0, out
    assert "size growth" in out and "no artifact file named other.onnx" in out
    # 5 checks on the baselined file, 3 on the other; accuracy (2 x 2) and the other's baseline do not apply.
    assert "gate passed: 8 checks within budget, 5 not applicable" in out


def test_pyproject_baseline_is_relative_to_the_file(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.edgekd.gate]\nbaseline = "ci/baseline.json"\nartifacts = "recommended"\n')
    values = load_config(tmp_path / "pyproject.toml")
    assert values == {"baseline": tmp_path / "ci" / "baseline.json", "artifacts": ("recommended",)}


@pytest.mark.parametrize("body, message", [
    ("max_sise_mb = 1", "unknown key 'max_sise_mb' in \\[tool.edgekd.gate\\].*did you mean 'max_size_mb'"),
    ("max_params = 'big'", "max_params must be a number"),
    ("max_params = true", "max_params must be a number"),
    ("min_accuracy = 98", "min_accuracy in .*pyproject.toml must be a fraction in \\[0, 1\\], got 98.0; accuracies are fractions"),
    ("max_size_mb = -1", "max_size_mb in .*pyproject.toml must be a number >= 0"),
    ("max_size_mb = ", "cannot read .*pyproject.toml"),
])
def test_pyproject_bad_values_exit_2(tmp_path, cli, body, message):
    model = make_onnx(tmp_path / "m.onnx")
    (tmp_path / "pyproject.toml").write_text(f"[tool.edgekd.gate]\n{body}\n")
    code, _, err = cli(model)
    assert code == 2
    assert re.search(message, one_line_error(err)), err


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(
    st.sampled_from(sorted(CONFIG_KEYS) + ["max-size-mb", "maxsize", ""]),
    st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=12),
                 lambda inner: st.lists(inner, max_size=4), max_leaves=6).filter(lambda v: v is not None),
    max_size=4))
def test_pyproject_table_never_crashes(table):
    """Whatever a [tool.edgekd.gate] table holds: valid budgets or a one-line EdgeKDError, never a traceback."""
    try:
        values = parse_config(table, Path("/project/pyproject.toml"))
    except EdgeKDError as err:
        assert "\n" not in str(err) and str(err)
    else:
        Budgets(**values).validate()


# ------------------------------------------------------------------------------------------- CI outputs

def test_junit_xml(tmp_path, cli):
    run = make_run(tmp_path / "run", int8_acc=0.95, int8_drop=0.022)
    junit = tmp_path / "reports" / "gate.xml"
    code, _, _ = cli(run, "--min-accuracy", 0.96, "--max-size-mb", 1, "--junit", junit)
    assert code == 1
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "4" and root.get("failures") == "1"
    cases = root.findall("./testsuite/testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        ("edgekd.gate.onnx", "size"), ("edgekd.gate.onnx", "accuracy"),
        ("edgekd.gate.ort-int8", "size"), ("edgekd.gate.ort-int8", "accuracy")]
    failures = [c.find("failure") for c in cases]
    assert [f is not None for f in failures] == [False, False, False, True]
    assert "accuracy of ort-int8: 95.00% exceeds budget >= 96.00%" in failures[3].get("message")
    assert not list(junit.parent.glob(".*tmp"))  # written atomically: no temp file left behind
    # Passing gate: a valid file with no failures.
    code, _, _ = cli(run, "--max-size-mb", 1, "--junit", junit)
    assert code == 0 and ET.parse(junit).getroot().get("failures") == "0"


def test_github_actions_annotations_and_summary(tmp_path, cli, monkeypatch):
    run = make_run(tmp_path / "run", int8_acc=0.95)
    summary = tmp_path / "summary.md"
    summary.write_text("previous step\n")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    # The cli fixture clears GITHUB_ACTIONS; call main directly here.
    from edgekd.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["gate", str(run), "--min-accuracy", "0.96"])
    assert exc.value.code == 1
    text = summary.read_text()
    assert text.startswith("previous step\n")  # appended, never replaced
    assert "| check | artifact | value | budget | result | source |" in text
    assert "| accuracy | ort-int8 | 95.00% | >= 96.00% | ❌ FAIL |" in text
    assert "| accuracy | onnx | 97.00% | >= 96.00% | ✅ pass |" in text


def test_github_annotation_lines(tmp_path):
    from edgekd.gate import report_to_github

    run = make_run(tmp_path / "run", int8_acc=0.95)
    result = gate([run], Budgets(min_accuracy=0.96))
    lines = []
    report_to_github(result, echo=lines.append, environ={"GITHUB_ACTIONS": "true"})
    # Workflow-command escaping: ':' in the title property, '%' in the message.
    assert lines == ["::error title=edgekd gate%3A accuracy of ort-int8::accuracy of ort-int8: 95.00%25 exceeds "
                     "budget >= 96.00%25 (report (test split, 10000 images))"]
    lines.clear()
    report_to_github(result, echo=lines.append, environ={})
    assert lines == []  # outside GitHub Actions: nothing


# ------------------------------------------------------------------------------------------- bad input

def test_bad_inputs_exit_2_with_one_line(tmp_path, cli):
    from edgekd.report.schema import new_report

    model = make_onnx(tmp_path / "m.onnx")
    not_onnx = tmp_path / "junk.onnx"
    not_onnx.write_bytes(os.urandom(2000))
    text_onnx = tmp_path / "text.onnx"
    text_onnx.write_text("hello, I am not a model\n")
    v2 = tmp_path / "v2.json"
    v2.write_text(json.dumps({**new_report("distill"), "schema_version": 2}))
    cases = [
        ((tmp_path / "missing.onnx", "--max-size-mb", 1), "missing.onnx does not exist"),
        ((not_onnx, "--max-size-mb", 1), "junk.onnx is not an ONNX model"),
        ((text_onnx, "--max-size-mb", 1), "text.onnx is not an ONNX model"),
        ((v2, "--max-size-mb", 1), "schema_version is 2, this edgekd reads schema_version 1"),
        ((tmp_path, "--max-size-mb", 1), "has no report.json"),
        ((model,), "no budgets to check"),
        ((), "nothing to gate"),
        ((model, "--min-accuracy", 97), "accuracies are fractions"),
        ((model, "--min-accuracy", 0.9), "accuracy is known only for report artifacts"),
        ((model, "--max-size-mb", -1), "--max-size-mb must be a number >= 0"),
        ((model, "--max-latency-ms", 1, "--input-shape", "1,a"), "bad input shape"),
        ((model, "--max-latency-ms", 1, "--input-shape", "1x16"), "input shape 1x16 has 2 dimensions; m.onnx's input has 4"),
        ((tmp_path / "notes.txt", "--max-size-mb", 1), "does not exist"),
        ((model, "--baseline", tmp_path / "nope.json", "--max-growth", 5), "nope.json does not exist"),
    ]
    (tmp_path / "weights.txt").write_text("x")
    cases.append(((tmp_path / "weights.txt", "--max-size-mb", 1), "is not a model file"))
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    cases.append(((model, "--max-size-mb", 1, "--junit", blocked / "gate.xml"), "cannot write JUnit XML"))
    for args, message in cases:
        code, out, err = cli(*args)
        assert code == 2, (args, out, err)
        assert message in one_line_error(err), (args, err)
        assert "gate passed" not in out and "gate failed" not in out


def test_no_exported_artifact_fails(tmp_path):
    run = make_run(tmp_path / "run")
    report = json.loads((run / "report.json").read_text())
    for row in report["artifacts"]:
        row["status"] = "failed"
    (run / "report.json").write_text(json.dumps(report))
    result = gate([run], Budgets(max_size_mb=1))
    assert not result.passed and result.results[0].value_text == "no artifact with status ok"


def test_raise_for_failures_has_exit_code_1(tmp_path):
    from edgekd.gate import GateFailed

    result = gate([make_onnx(tmp_path / "m.onnx")], Budgets(max_params=10))
    with pytest.raises(GateFailed) as exc:
        result.raise_for_failures()
    assert exc.value.exit_code == 1 and "params of m.onnx" in str(exc.value)
    assert junit_xml(result).startswith(b"<?xml")


# ------------------------------------------------------------------------------------------- real processes

def _run(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    env.pop("GITHUB_ACTIONS", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_exit_codes_in_a_real_process(tmp_path):
    model = make_onnx(tmp_path / "m.onnx")
    ok = _run(["-m", "edgekd.cli", "gate", str(model), "--max-params", str(PARAMS)], tmp_path)
    assert ok.returncode == 0, ok.stderr
    over = _run(["-m", "edgekd.cli", "gate", str(model), "--max-params", "10"], tmp_path)
    assert over.returncode == 1 and "gate failed" in over.stdout and over.stderr == ""
    bad = _run(["-m", "edgekd.cli", "gate", str(tmp_path / "nope.onnx"), "--max-params", "10"], tmp_path)
    assert bad.returncode == 2 and "nope.onnx does not exist" in one_line_error(bad.stderr)
    # The command object on its own (not under the edgekd group) keeps the same contract.
    code = "from edgekd.cli.gate import command; command()"
    alone = _run(["-c", code, str(tmp_path / "nope.onnx"), "--max-params", "10"], tmp_path)
    assert alone.returncode == 2 and "nope.onnx does not exist" in one_line_error(alone.stderr)
    alone = _run(["-c", code, str(model), "--max-params", "10"], tmp_path)
    assert alone.returncode == 1 and "gate failed" in alone.stdout
    alone = _run(["-c", code, str(model), "--max-latency-ms", "1", "--input-shape", "1,a"], tmp_path)
    assert alone.returncode == 2 and "bad input shape" in one_line_error(alone.stderr)
