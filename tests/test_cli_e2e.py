"""The real ``edgekd`` CLI in a subprocess: the whole distill job on tiny settings, and its refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def edgekd(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_npz):
    out = tmp_path_factory.mktemp("e2e") / "run"
    # --max-drop 5: the test split has 300 images (1 point = 3 images), and a 6-epoch student this small
    # moves by several of them under INT8 (ONNX Runtime INT8 dropped 6 with a teacher trained without label
    # smoothing); these tests check the run folder and the labels, the accuracy gate is tested on its own.
    proc = edgekd("distill", "--target", "jetson-nano", "--data", str(tiny_npz), "--epochs", "6", "--batch-size", "64",
                  "--widths", "0.25,0.5,3", "--out", str(out), "--no-progress", "--bench-seconds", "0.1",
                  "--max-drop", "5")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


@pytest.mark.slow
def test_distill_writes_a_complete_run_folder(tiny_run):
    out, proc = tiny_run
    for name in ("report.json", "report.md", "report.html", "config.json", "student.safetensors", "teacher.safetensors"):
        assert (out / name).is_file(), name
    # Stage timings are printed for the user.
    for stage in ("data", "select", "teacher", "distill", "export", "bench"):
        assert f"{stage}:" in proc.stdout
    assert not list(out.rglob("*.tmp")), "temporary files left behind"


@pytest.mark.slow
def test_report_json_has_the_contract_fields(tiny_run):
    out, _ = tiny_run
    report = json.loads((out / "report.json").read_text())
    assert report["schema_version"] == 1
    assert report["target"]["name"] == "jetson-nano"
    budget = report["budget_ms"]
    assert budget > 0
    cands = report["selection"]["candidates"]
    assert [c["width"] for c in cands] == [0.25, 0.5, 3.0]
    for c in cands:
        assert {"width", "params", "flops", "predicted_ms", "fits"} <= set(c)
        assert c["fits"] == (c["predicted_ms"] <= budget)
    fitting = [c["width"] for c in cands if c["fits"]]
    assert report["selection"]["width"] == max(fitting), "the widest fitting candidate is chosen"
    assert any(not c["fits"] for c in cands), "the default budget must exclude the widest candidate"
    # Params and FLOPs grow with width.
    assert cands[0]["params"] < cands[1]["params"] < cands[2]["params"]
    assert cands[0]["flops"] < cands[1]["flops"] < cands[2]["flops"]
    for who in ("teacher", "student"):
        assert 0.0 <= report[who]["accuracy"] <= 1.0
        assert report[who]["params"] > 0
    assert report["student"]["params"] < report["teacher"]["params"]
    # On 1,200 real digits with 2 epochs the models learn something real.
    assert report["teacher"]["accuracy"] > 0.8
    assert report["student"]["accuracy"] > 0.5


@pytest.mark.slow
def test_every_artifact_is_measured_and_labelled(tiny_run):
    out, _ = tiny_run
    report = json.loads((out / "report.json").read_text())
    by_name = {(a["role"], a["name"]): a for a in report["artifacts"]}
    for key in (("student", "onnx"), ("student", "ort-int8"), ("student", "openvino-fp16"), ("student", "openvino-int8")):
        a = by_name[key]
        assert a["status"] == "ok", a
        assert a["format"] in ("onnx", "openvino")
        assert a["precision"] in ("fp32", "fp16", "int8")
        assert (out / a["path"]).exists() and a["size_bytes"] > 0
        assert 0.0 <= a["accuracy"] <= 1.0
        assert a["latency_ms"]["p50"] > 0 and a["latency_ms"]["p90"] >= a["latency_ms"]["p50"]
        assert a["latency_source"] == "measured:host"
        if a["format"] == "onnx":  # what TensorRT builds from: predicted on the Jetson
            assert a["target_latency_source"] == "predicted:jetson-nano"
            assert a["target_latency_ms"]["p50"] > 0
        else:  # an OpenVINO IR does not run on a Jetson: no made-up figure for it
            assert a["target_latency_ms"] is None and "jetson-nano" in a["target_note"]
    onnx = by_name[("student", "onnx")]
    assert onnx["parity"]["max_abs_diff"] <= 1e-4
    assert onnx["parity"]["top1_agreement"] == 1.0
    # Jetson Nano runs TensorRT: the engine is built on the device, and the run says so.
    trt = by_name[("student", "tensorrt-fp16")]
    assert trt["status"] in ("ok", "skipped")
    if trt["status"] == "skipped":
        assert "tensorrt" in trt["reason"].lower()
    assert report["recommended"]["name"] in ("onnx", "ort-int8"), "only what the Jetson's TensorRT loads is recommended"
    html = (out / "report.html").read_text()
    assert "<img" in html or "<svg" in html


def test_unknown_target_is_a_one_line_error(tmp_path):
    out = tmp_path / "run"
    proc = edgekd("distill", "--target", "jetson-nan", "--out", str(out))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "jetson-nano" in lines[0], proc.stderr
    assert not out.exists()


def test_missing_data_is_a_one_line_error(tmp_path):
    out = tmp_path / "run"
    proc = edgekd("distill", "--target", "host", "--data", str(tmp_path / "nope"), "--out", str(out))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_unreachable_budget_names_the_smallest_latency(tmp_path, tiny_npz):
    out = tmp_path / "run"
    proc = edgekd("distill", "--target", "jetson-nano", "--data", str(tiny_npz), "--budget-ms", "0.0001", "--out", str(out))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "ms" in lines[0] and "0.25" in lines[0], proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("args, word", [
    (["--temperature", "0"], "temperature"),
    (["--alpha", "1.5"], "alpha"),
    (["--epochs", "0"], "epochs"),
    (["--budget-ms", "-1"], "budget"),
])
def test_out_of_range_options_are_refused(tmp_path, args, word):
    out = tmp_path / "run"
    proc = edgekd("distill", "--target", "host", *args, "--out", str(out))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and word in lines[0], proc.stderr
    assert not out.exists()
