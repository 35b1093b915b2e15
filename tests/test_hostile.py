"""Every command as careful as distill (issue 19): hostile inputs to gate, predict, export, bench, ingest, report,
runner, search and targets give one line and the README's exit code (0 ok, 1 over budget, 2 bad input, 3 bug,
130 Ctrl-C), whether or not --debug is given, and never leave a half-written or clobbered output."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_gate import make_onnx, make_run  # noqa: E402  (the gate tests' real tiny ONNX run folder)
from conftest import slow_conv_onnx  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`edgekd ARGS` through the console script's main(); (exit code, stdout, stderr)."""
    from edgekd.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code: int, err: str, expected_code: int, *words: str) -> str:
    lines = err.strip().splitlines()
    assert code == expected_code, err
    assert len(lines) == 1 and lines[0].startswith("edgekd: error:"), err
    assert "internal error" not in err and "Traceback" not in err
    for word in words:
        assert word.lower() in lines[0].lower(), f"{word!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture
def run(tmp_path, monkeypatch) -> Path:
    """A run folder like distill writes (report.json and real ONNX artifacts), with the cwd beside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.setenv("COLUMNS", "250")
    return make_run(tmp_path / "run")


# --- 1: a shape the model cannot take is exit 2; no figure is negative, NaN or overflowed -------------------

@pytest.mark.parametrize("args, words", [
    (["gate", "{model}", "--no-config", "--target", "jetson-nano", "--max-latency-ms", "1",
      "--input-shape", "1,1,3000000000,3000000000"], ["over 2147483647"]),
    (["gate", "{model}", "--no-config", "--max-latency-ms", "1", "--input-shape", "1,3,4,4"], ["dimension 1 is fixed at 1"]),
    (["predict", "--target", "jetson-nano", "--onnx", "{model}", "--input", "1x1x3000000000x3000000000", "--json"],
     ["over 2147483647"]),
    (["predict", "--target", "jetson-nano", "--onnx", "{model}", "--input", "1x3x4x4", "--json"], ["fixed at 1"]),
    (["predict", "--target", "jetson-nano", "--onnx", "{model}", "--input", "1x1x2x2", "--json"], ["fixed at 4"]),
    (["predict", "--target", "jetson-nano", "--onnx", "{model}", "--input", "12345678901234567890x1x4x4"],
     ["12345678901234567890"]),
    (["bench", "{model}", "--input-shape", "1,0,4", "--out", "b"], ["bad input shape"]),
    (["search", "--target", "jetson-nano", "--input", "1x99999999999x28"], ["over 2147483647"]),
])
def test_shapes_a_model_cannot_take_are_refused(capsys, run, args, words):
    model = make_onnx(run.parent / "m.onnx", dynamic_batch=False)
    code, _, err = run_cli(capsys, *[a.format(model=model) for a in args])
    one_line(code, err, 2, *words)


def test_predictions_are_finite_and_positive(capsys, run):
    model = make_onnx(run.parent / "dyn.onnx")
    code, out, err = run_cli(capsys, "predict", "--target", "jetson-nano", "--onnx", model, "--input", "64x1x4x4", "--json")
    assert code == 0, err
    assert 0 < json.loads(out)["predicted_ms"] < 1e6


# --- 2: exit codes do not depend on --debug ------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["gate", "missing", "--max-size-mb", "1"], 2),
    (["gate", "{run}", "--no-config", "--max-size-mb", "0.000001"], 1),
    (["predict", "--target", "jetson-nan", "--onnx", "x.onnx"], 2),
    (["report", "missing"], 2),
    (["ingest", "missing.json", "{run}"], 2),
    (["bench", "missing.onnx"], 2),
    (["runner", "--out", "runner.txt"], 2),
    (["export", "--model", "nope.py:build", "--out", "e"], 2),
    (["search", "--target", "jetson-nano", "--num-classes", "0"], 2),
    (["targets", "nope"], 2),
    (["calibrate", "--target", "jetson-nano", "--measurements", "missing.json"], 2),
    (["distill", "--target", "nope", "--out", "d"], 2),
])
@pytest.mark.parametrize("debug", [False, True])
def test_exit_codes_do_not_depend_on_debug(capsys, run, args, expected, debug):
    code, _, err = run_cli(capsys, *(["--debug"] if debug else []), *[a.format(run=run) for a in args])
    assert code == expected, err
    assert ("Traceback" in err) == (debug and expected == 2 and args[0] != "search"), err  # search: a usage error
    if expected == 2:
        assert err.strip().splitlines()[-1].startswith("edgekd: error:"), err


def test_a_bug_is_exit_3_with_and_without_debug():
    from edgekd.cli import error_line

    assert error_line(RuntimeError("boom"))[0] == 3
    assert error_line(ZeroDivisionError())[1].startswith("edgekd: internal error: ZeroDivisionError")
    assert error_line(MemoryError())[0] == 2 and error_line(PermissionError(13, "denied", "/x"))[0] == 2
    assert error_line(KeyboardInterrupt())[0] == 130


def test_ctrl_c_is_130(tmp_path):
    model = slow_conv_onnx(tmp_path / "m.onnx")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # As from a terminal: Ctrl-C at its default (a process started with SIGINT ignored, as some earlier
    # test's library can leave this one, rightly ignores it and the command would finish with 0).
    proc = subprocess.Popen([sys.executable, "-m", "edgekd.cli", "bench", str(model), "--seconds", "60",
                             "--out", str(tmp_path / "b")], stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(8)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "edgekd: interrupted" and not (tmp_path / "b" / "report.json").exists()


# --- 3: outputs are not overwritten without --overwrite ------------------------------------------------------

def test_outputs_of_another_command_are_not_overwritten(capsys, run):
    before = (run / "report.json").read_bytes()
    model = run / "artifacts" / "student.onnx"
    for args in (["export", run, "--formats", "onnx", "--out", run],
                 ["bench", model, "--out", run],
                 ["bench", run, "--out", run.parent / "elsewhere"],
                 ["report", run, run.parent / "copy", "--out", run]):
        if args[0] == "report":
            shutil.copytree(run, run.parent / "copy")
        code, _, err = run_cli(capsys, *args)
        one_line(code, err, 2)
    assert (run / "report.json").read_bytes() == before


@pytest.mark.parametrize("command", ["bench", "export", "runner"])
def test_existing_outputs_need_overwrite(capsys, run, command):
    model = run / "artifacts" / "student.onnx"
    target = run.parent / ("mine.py" if command == "runner" else "taken")
    if command == "runner":
        target.write_text("# mine\n")
    else:
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    args = {"bench": ["bench", model, "--seconds", "0.05", "--out", target],
            "export": ["export", "--model", "torchvision:squeezenet1_0", "--input", "1x3x32x32", "--formats", "onnx",
                       "--out", target],
            "runner": ["runner", "--out", target]}[command]
    code, _, err = run_cli(capsys, *args)
    one_line(code, err, 2, "--overwrite")
    assert (target.read_text() if command == "runner" else (target / "notes.txt").read_text()) in ("# mine\n", "mine")
    if command == "runner":
        code, out, err = run_cli(capsys, *args, "--overwrite")
        assert code == 0 and "python3 mine.py" in out, err


# --- 4: ingest: only real measurements enter report.json ----------------------------------------------------

@pytest.mark.parametrize("change, words", [
    ({"latency_ms": {"p50": float("nan")}}, ["NaN is not a JSON number"]),
    ({"latency_ms": {"p50": float("inf")}}, ["Infinity is not a JSON number"]),
    ({"latency_ms": {"p50": -1}}, ["latency_ms.p50 = -1 is not a latency"]),
    ({"latency_ms": {"p50": 0}}, ["latency_ms.p50 = 0 is not a latency"]),
    ({"latency_ms": {"p50": "fast"}}, ["latency_ms.p50 = 'fast' is not a latency"]),
    # Finite but absurd (found by the fuzz test: 1.1e308 ms overflowed the Pareto plot's axis limits).
    ({"latency_ms": {"p50": 1.1235582092889474e308}}, ["latency_ms.p50 = 1.12", "at most a day"]),
    ({"latency_ms": {"p50": 0.2, "p99": True}}, ["latency_ms.p99 = True"]),
    ({"latency_ms": {}}, ["has no latency_ms.p50"]),
    ({"sha256": "0" * 63}, ["is not a SHA-256 digest"]),
    ({"batch": -3}, ["batch -3 is not a whole number"]),
    ({"runs": 0}, ["runs 0 is not a whole number"]),
    ({"status": "great"}, ["has status 'great'"]),
    ({"model": ""}, ["has no 'model'"]),
])
def test_ingest_refuses_what_is_not_a_measurement(capsys, run, change, words):
    row = {"model": "student.onnx", "runtime": "onnxruntime", "batch": 1, "status": "ok", "latency_ms": {"p50": 0.2},
           **change}
    doc = {"format": "edgekd-device-results", "format_version": 1, "device": {"name": "jetson-nano"}, "results": [row]}
    (run.parent / "res.json").write_text(json.dumps(doc))
    before = (run / "report.json").read_bytes()
    code, _, err = run_cli(capsys, "ingest", run.parent / "res.json", run)
    one_line(code, err, 2, *words)
    assert (run / "report.json").read_bytes() == before


def test_reports_never_hold_nan(tmp_path):
    from edgekd.fsutil import atomic_write_json

    path = atomic_write_json(tmp_path / "r.json", {"a": float("nan"), "b": [float("inf"), 1.5]})
    assert json.loads(path.read_text()) == {"a": None, "b": [None, 1.5]}


# --- 5: the user's or the environment's mistakes are exit 2, not "internal error" --------------------------

def _deep(path: Path) -> Path:
    path.write_text("[" * 100_000 + "]" * 100_000)
    return path


def _yaml_with(tmp: Path, **changes) -> Path:
    data = yaml.safe_load((REPO / "targets" / "jetson-nano.yaml").read_text())
    data.update(name="mine", **changes)
    path = tmp / "mine.yaml"
    path.write_text(yaml.safe_dump(data).replace("'BIG'", "1" + "0" * 400))
    return path


@pytest.mark.parametrize("case", [
    "report-out-proc", "export-out-proc", "runner-out-proc", "bench-out-proc", "export-out-file", "bench-out-file",
    "config-dir-file", "cache-dir-file", "factory-raises", "factory-needs-arguments", "fake-onnx-bench",
    "deep-json-gate", "deep-json-report", "deep-json-ingest", "deep-json-calibrate", "deep-yaml-target",
    "400-digit-yaml", "nan-yaml", "search-num-classes-0", "predict-20-digit-dim", "predict-needs-too-much-memory",
    "gate-needs-too-much-memory", "baseline-dev-zero", "target-is-a-folder", "junit-under-proc",
    "profile-export-under-proc", "profile-config-under-proc", "profile-max-mflops-nan", "distill-out-under-proc",
])
def test_mistakes_are_exit_2_not_internal_errors(capsys, run, monkeypatch, case):
    tmp = run.parent
    model = run / "artifacts" / "student.onnx"
    (tmp / "afile").write_text("x")
    (tmp / "f.py").write_text("def boom():\n    raise RuntimeError('no')\n\ndef needs(n):\n    return n\n")
    (tmp / "fake.onnx").write_text("not a model")
    args = {
        "report-out-proc": ["report", run, shutil.copytree(run, tmp / "r2"), "--out", "/proc/edgekd"],
        "export-out-proc": ["export", run, "--formats", "onnx", "--out", "/proc/edgekd"],
        "runner-out-proc": ["runner", "--out", "/proc/edgekd/r.py"],
        "bench-out-proc": ["bench", model, "--out", "/proc/edgekd"],
        "export-out-file": ["export", "--model", "f.py:boom", "--out", tmp / "afile"],
        "bench-out-file": ["bench", model, "--out", tmp / "afile"],
        "config-dir-file": ["targets"],
        "cache-dir-file": ["predict", "--target", "jetson-nano", "--model", "torchvision:resnet18"],
        "factory-raises": ["export", "--model", "f.py:boom", "--out", tmp / "e"],
        "factory-needs-arguments": ["export", "--model", "f.py:needs", "--out", tmp / "e"],
        "fake-onnx-bench": ["bench", tmp / "fake.onnx", "--out", tmp / "b"],
        "deep-json-gate": ["gate", _deep(tmp / "d.json"), "--max-size-mb", "1"],
        "deep-json-report": ["report", _deep(tmp / "d.json")],
        "deep-json-ingest": ["ingest", _deep(tmp / "d.json"), run],
        "deep-json-calibrate": ["calibrate", "--target", "jetson-nano", "--measurements", _deep(tmp / "d.json")],
        "deep-yaml-target": ["predict", "--target", _deep(tmp / "d.yaml"), "--onnx", model],
        "400-digit-yaml": ["predict", "--target", _yaml_with(tmp, budget_ms="BIG"), "--onnx", model],
        "nan-yaml": ["predict", "--target", _yaml_with(tmp, memory_bandwidth_gbs=float("nan")), "--onnx", model],
        "search-num-classes-0": ["search", "--target", "jetson-nano", "--num-classes", "0"],
        "predict-20-digit-dim": ["predict", "--target", "jetson-nano", "--onnx", model, "--input", "1x1x4x" + "9" * 20],
        "predict-needs-too-much-memory": ["predict", "--target", "host", "--onnx", model, "--input", "100000x1x4x4"],
        "gate-needs-too-much-memory": ["gate", model, "--no-config", "--max-latency-ms", "1", "--input-shape",
                                       "100000,1,4,4"],
        "baseline-dev-zero": ["gate", run, "--baseline", "/dev/zero", "--max-growth", "5"],
        "target-is-a-folder": ["predict", "--target", tmp / "run.yaml", "--onnx", model],
        "junit-under-proc": ["gate", run, "--no-config", "--max-size-mb", "5", "--junit", "/proc/edgekd.xml"],
        "profile-export-under-proc": ["profile", "--export", "/proc/edgekd"],
        "distill-out-under-proc": ["distill", "--target", "host", "--out", "/proc/edgekd-run"],
        "profile-config-under-proc": ["profile"],
        "profile-max-mflops-nan": ["profile", "--max-mflops", "nan", "--export", tmp / "probes"],
    }[case]
    if case == "config-dir-file":
        monkeypatch.setenv("EDGEKD_CONFIG_DIR", str(tmp / "afile"))
    if case == "cache-dir-file":
        monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp / "afile"))
    if case == "profile-config-under-proc":  # minutes of timing must not end in a calibration that cannot be saved
        monkeypatch.setenv("EDGEKD_CONFIG_DIR", "/proc/edgekd")
    if case == "target-is-a-folder":
        (tmp / "run.yaml").mkdir()
    if case.endswith("too-much-memory"):  # a machine with 1 MiB free: the check, not the allocation, must stop it
        monkeypatch.setattr("edgekd.hardware.measure.available_memory_bytes", lambda: 2**20)
    code, _, err = run_cli(capsys, *args)
    one_line(code, err, 2)
    assert not (tmp / "e").exists() and not (tmp / "b").exists()


# --- 6: a failed artifact is not recommended, and keeps no stale figures --------------------------------------

def test_bench_rechooses_the_recommendation_when_it_fails(capsys, run):
    int8 = run / "artifacts" / "student.int8.onnx"
    int8.write_bytes(int8.read_bytes()[:200])  # truncated after the run
    code, out, err = run_cli(capsys, "gate", run, "--no-config", "--max-size-mb", "5")
    assert code == 1 and "unreadable" in out, err  # the report says ok; the file no longer parses
    code, _, err = run_cli(capsys, "bench", run, "--seconds", "0.05")
    assert code == 0, err
    report = json.loads((run / "report.json").read_text())
    row = next(a for a in report["artifacts"] if a["name"] == "ort-int8")
    assert row["status"] == "failed" and row["accuracy"] is None and row["size_bytes"] == 200
    assert "the file changed since the run" in row["reason"]
    assert report["recommended"]["name"] == "onnx"
    code, out, err = run_cli(capsys, "gate", run, "--no-config", "--artifact", "recommended", "--max-size-mb", "5")
    assert code == 0 and " onnx " in out, err


# --- 7: runs that do not compare are refused or kept apart --------------------------------------------------

def _variant(run: Path, name: str, **changes) -> Path:
    """A copy of ``run`` whose report has ``section__field=value`` changed (a renamed target renames its sources)."""
    other = shutil.copytree(run, run.parent / name)
    report = json.loads((other / "report.json").read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if key == "target__name":
            for row in report["artifacts"]:
                row["target_latency_source"] = f"predicted:{value}"
        report.setdefault(section, {})[field] = value
    (other / "report.json").write_text(json.dumps(report))
    return other


def _with_data(run: Path, num_classes: int, input_shape: list) -> None:
    report = json.loads((run / "report.json").read_text())
    report["data"].update(num_classes=num_classes, input_shape=input_shape)
    (run / "report.json").write_text(json.dumps(report))


def test_report_refuses_other_tasks_and_the_same_run_twice(capsys, run):
    _with_data(run, 10, [1, 4, 4])
    other_task = _variant(run, "cifar", data__num_classes=100, data__input_shape=[3, 224, 224])
    code, _, err = run_cli(capsys, "report", run, other_task)
    one_line(code, err, 2, "another task")
    code, _, err = run_cli(capsys, "report", run, run / "report.json")
    one_line(code, err, 2, "the same run")


def test_report_of_two_devices_recommends_nothing_across_them(capsys, run):
    pi = _variant(run, "pi", target__name="raspberry-pi-4")
    code, _, err = run_cli(capsys, "report", run, pi, "--out", run.parent / "cmp", "--quiet")
    assert code == 0, err
    merged = json.loads((run.parent / "cmp" / "report.json").read_text())
    assert merged.get("recommended") is None and "different devices" in merged["note"]
    assert "target" not in merged and "budget_ms" not in merged


# --- 8: a baseline for another target says why latency is not compared ---------------------------------------

def test_baseline_of_another_target_is_refused(capsys, run):
    # Issue 27: a run gated against a baseline of another target compares nothing (it was a skip row and a
    # pass); refused, as `edgekd report` refuses runs of another task.
    pi = _variant(run, "pi", target__name="raspberry-pi-4")
    code, out, err = run_cli(capsys, "gate", run, "--no-config", "--baseline", pi, "--max-growth", "5")
    one_line(code, err, 2, "target raspberry-pi-4", "jetson-nano")


# --- 9: a model file that exits on import ---------------------------------------------------------------------

@pytest.mark.parametrize("body", ["import sys\nsys.exit(0)\n", "import sys\nsys.exit('bye')\n", "raise SystemExit\n"])
def test_model_file_that_exits_is_an_error_and_writes_nothing(capsys, run, body):
    (run.parent / "quit.py").write_text(body)
    code, _, err = run_cli(capsys, "export", "--model", "quit.py:build", "--formats", "onnx", "--out", "q")
    one_line(code, err, 2, "sys.exit")
    assert not (run.parent / "q").exists()


# --- 10: reports are validated before anything reads them ----------------------------------------------------

@pytest.mark.parametrize("mutate, words", [
    (lambda r: r["student"].update(accuracy="0.97"), ["student.accuracy"]),
    (lambda r: r.pop("target"), ["names no target"]),
    (lambda r: r["artifacts"][2].update(path="../../../../etc/passwd"), ["points outside the run folder"]),
    (lambda r: r["artifacts"][2].update(path="/etc/passwd"), ["points outside the run folder"]),
    (lambda r: r["artifacts"][2].update(size_bytes=-5), ["size_bytes"]),
    (lambda r: r.update(budget_ms=-1), ["budget_ms"]),
    (lambda r: r["data"].update(input_shape=[1, "28"]), ["input_shape"]),
    (lambda r: r["teacher"].update(params=1.5), ["teacher.params"]),
    (lambda r: r["artifacts"][2].update(latency_ms={"p50": float("nan")}), ["NaN"]),
])
@pytest.mark.parametrize("command", ["gate", "report"])
def test_malformed_reports_are_refused_by_every_command(capsys, run, mutate, words, command):
    report = json.loads((run / "report.json").read_text())
    mutate(report)
    (run / "report.json").write_text(json.dumps(report))
    args = ["gate", run, "--no-config", "--max-size-mb", "5"] if command == "gate" else ["report", run]
    code, _, err = run_cli(capsys, *args)
    one_line(code, err, 2, *words)


# --- 11: the budget verdict wins over an unwritable job summary ----------------------------------------------

@pytest.mark.parametrize("budget, expected", [("5", 0), ("0.000001", 1)])
def test_unwritable_step_summary_is_a_warning(capsys, run, monkeypatch, budget, expected):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", "/proc/edgekd/summary.md")
    code, out, err = run_cli(capsys, "gate", run, "--no-config", "--max-size-mb", budget)
    assert code == expected, err
    assert "::warning" in out and "GITHUB_STEP_SUMMARY" in out


# --- beyond the list: values that are not numbers, caught before any work --------------------------

@pytest.mark.parametrize("option", [
    ["--temperature", "nan"], ["--budget-ms", "nan"], ["--lr", "inf"], ["--width", "nan"], ["--widths", "1,nan"],
    ["--max-drop", "nan"], ["--bench-seconds", "-1"], ["--bench-seconds", "nan"], ["--threads", "-1"],
    ["--threads", "99999999"], ["--seed", "-1"], ["--seed", "99999999999999999999999"],
])
def test_distill_refuses_values_that_are_not_numbers(capsys, tmp_path, option):
    code, _, err = run_cli(capsys, "distill", "--data", tmp_path / "nowhere.npz", "--out", tmp_path / "d", *option)
    one_line(code, err, 2, option[0])
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("option, words", [
    (["--opset", "5"], ["--opset must be 18"]), (["--opset", "99"], ["--opset must be 18"]),
    (["--max-drop", "nan"], ["--max-drop"]), (["--max-drop", "-5"], ["--max-drop"]),
    (["--num-classes", "0"], ["--num-classes"]), (["--input", "1x3x0x0"], ["bad input shape"]),
    (["--input", "1x3x40000x40000"], ["elements, over"]), (["--input", "3x224"], ["not an input shape"]),
])
def test_export_refuses_options_before_any_work(capsys, tmp_path, option, words):
    code, _, err = run_cli(capsys, "export", "--model", "torchvision:resnet18", "--formats", "onnx",
                           "--out", tmp_path / "e", *option)
    one_line(code, err, 2, *words)
    assert not (tmp_path / "e").exists()
