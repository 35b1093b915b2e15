"""The defects a hostile user found (issue 27): nothing trusted by mistake (ingest, symlinked photo folders, lists)
and every user mistake one line with exit 2 (or 1 for a failed check), never an internal error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_gate import make_onnx, make_run  # noqa: E402  (the gate tests' real tiny ONNX run folder)
from test_hostile import one_line, run_cli  # noqa: E402


@pytest.fixture
def run(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.setenv("COLUMNS", "250")
    return make_run(tmp_path / "run")


# --- item 2: ingest trusts only timings of this run's files, on this run's target ---------------------------

def _results(run: Path, *, sha: str | None = None, name: str = "jetson-nano", target: str | None = "jetson-nano") -> Path:
    from edgekd.fsutil import file_sha256

    row = {"model": "student.onnx", "runtime": "onnxruntime", "batch": 1, "status": "ok", "runs": 10,
           "latency_ms": {"p50": 0.25}, "sha256": sha or file_sha256(run / "artifacts" / "student.onnx")}
    doc = {"format": "edgekd-device-results", "format_version": 1, "device": {"name": name}, "results": [row]}
    if target:
        doc["target"] = target
    path = run.parent / "res.json"
    path.write_text(json.dumps(doc))
    return path


def test_ingest_refuses_timings_of_another_model_by_hash(capsys, run):
    from edgekd.fsutil import file_sha256

    other = make_onnx(run.parent / "other.onnx", hidden=5)
    before = (run / "report.json").read_bytes()
    code, _, err = run_cli(capsys, "ingest", _results(run, sha=file_sha256(other)), run)
    line = one_line(code, err, 2, "another model", file_sha256(other), file_sha256(run / "artifacts" / "student.onnx"))
    assert "student.onnx" in line
    assert (run / "report.json").read_bytes() == before
    # The same file under its own hash is ingested.
    code, out, err = run_cli(capsys, "ingest", _results(run), run)
    assert code == 0 and "measured:jetson-nano  student.onnx -> onnx" in out, err


def test_ingest_refuses_results_recorded_on_another_target_unless_forced(capsys, run):
    results = _results(run, name="raspberry-pi-4", target="raspberry-pi-4")
    before = (run / "report.json").read_bytes()
    # --device says jetson-nano, but the file's own record says a raspberry-pi-4 measured it.
    code, _, err = run_cli(capsys, "ingest", results, run, "--device", "jetson-nano")
    one_line(code, err, 2, "records its device as raspberry-pi-4", "targets 'jetson-nano'", "--force")
    assert (run / "report.json").read_bytes() == before
    code, out, err = run_cli(capsys, "ingest", results, run, "--device", "jetson-nano", "--force")
    assert code == 0 and "measured:jetson-nano" in out, err
    art = json.loads((run / "report.json").read_text())["artifacts"][2]
    assert art["target_latency_source"] == "measured:jetson-nano" and art["target_latency_ms"]["p50"] == 0.25


def test_ingest_refuses_a_registered_device_of_another_target(capsys, run):
    code, _, err = run_cli(capsys, "devices", "add", "lab-pi", "--ssh", "pi@10.0.0.9", "--target", "raspberry-pi-4")
    assert code == 0, err
    results = _results(run, name="lab-pi", target="lab-pi")
    code, _, err = run_cli(capsys, "ingest", results, run, "--device", "jetson-nano")
    one_line(code, err, 2, "lab-pi (a raspberry-pi-4)")
    # A device name that is no target says nothing against the run: --device is the user's word.
    code, out, err = run_cli(capsys, "ingest", _results(run, name="bench-7", target="bench-7"), run,
                             "--device", "jetson-nano")
    assert code == 0, err
