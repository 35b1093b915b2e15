"""Property-based tests of every command's file and shape inputs: whatever JSON, YAML, TOML or shape a user hands
gate, report, ingest, calibrate, predict, bench or search, the answer is a result or one line with exit 2 (or 1
for a budget the gate finds exceeded), never an internal error, and nothing written holds NaN."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from test_gate import make_onnx, make_run  # noqa: E402
from test_hostile import run_cli as _run_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
scalars = (st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=True, allow_infinity=True)
           | text | st.sampled_from(["../../etc/passwd", "/etc/passwd", "ok", "failed", "jetson-nano", "p50"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                           max_leaves=8)


def run_cli(capsys, *args) -> tuple[int, str]:
    code, out, err = _run_cli(capsys, *args)
    print(out, end="")  # put it back for the tests that read the JSON on stdout
    return code, err


def assert_clean(code: int, err: str, allowed=(0, 2)) -> None:
    assert code in allowed, err
    assert "internal error" not in err and "Traceback" not in err, err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edgekd: error:"), err


def _json_files_are_json(folder: Path) -> None:
    """Everything edgekd wrote is strict JSON: no NaN or Infinity (json.loads would accept them)."""
    for path in folder.rglob("*.json"):
        json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{path} holds {name}"))


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("fuzz-run") / "run")


def _mutated_run(template: Path, paths_and_values) -> Path:
    """A copy of the template run whose report.json has each (path, value) set, dict keys and list indexes."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz-run-"))
    run = shutil.copytree(template, folder / "run")
    report = json.loads((run / "report.json").read_text())
    for path, value in paths_and_values:
        node = report
        for key in path[:-1]:
            node = node[key] if isinstance(node, dict) and key in node else \
                node[key] if isinstance(node, list) and isinstance(key, int) and key < len(node) else None
            if node is None:
                break
        if isinstance(node, dict):
            node[path[-1]] = value
        elif isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node):
            node[path[-1]] = value
    (run / "report.json").write_text(json.dumps(report))
    return run


REPORT_PATHS = st.sampled_from([
    ("schema_version",), ("command",), ("target",), ("target", "name"), ("target", "runtime"), ("budget_ms",),
    ("data",), ("data", "num_classes"), ("data", "input_shape"), ("student",), ("student", "accuracy"),
    ("student", "params"), ("teacher", "params"), ("recommended",), ("recommended", "name"), ("artifacts",),
    ("artifacts", 2), ("artifacts", 2, "path"), ("artifacts", 2, "status"), ("artifacts", 2, "accuracy"),
    ("artifacts", 2, "accuracy_drop"), ("artifacts", 2, "size_bytes"), ("artifacts", 2, "latency_ms"),
    ("artifacts", 3, "latency_ms", "p50"), ("artifacts", 3, "target_latency_ms", "p50"), ("artifacts", 3, "role"),
    ("artifacts", 3, "target_latency_source"), ("artifacts", 3, "name"), ("artifacts", 3, "extra"),
])


@FUZZ
@given(st.lists(st.tuples(REPORT_PATHS, json_values), min_size=1, max_size=3))
def test_any_report_is_gated_and_rendered_or_refused_in_one_line(capsys, template, changes):
    run = _mutated_run(template, changes)
    try:
        code, err = run_cli(capsys, "gate", run, "--no-config", "--max-size-mb", "5", "--max-latency-ms", "100",
                            "--min-accuracy", "0.5", "--target", "jetson-nano")
        assert_clean(code, err, allowed=(0, 1, 2))
        code, err = run_cli(capsys, "report", run, "--no-html", "--quiet")
        assert_clean(code, err)
        if code == 0:  # report rewrote report.json: what it wrote is strict JSON (the input was the test's)
            _json_files_are_json(run)
    finally:
        shutil.rmtree(run.parent, ignore_errors=True)


RESULT_FIELDS = st.sampled_from(["model", "runtime", "batch", "runs", "status", "sha256", "latency_ms", "input_shape",
                                 "precision", "reason"])


@FUZZ
@given(row_changes=st.dictionaries(RESULT_FIELDS, json_values, max_size=3),
       p50=st.floats(allow_nan=True, allow_infinity=True) | scalars,
       device=st.dictionaries(st.sampled_from(["name", "cpu", "runtime"]), scalars, max_size=2),
       top=st.dictionaries(st.sampled_from(["format", "format_version", "results", "device"]), json_values, max_size=1))
@example(row_changes={}, p50=1.1235582092889474e308, device={}, top={})  # once overflowed the plot's axis limits
def test_any_device_results_are_ingested_or_refused(capsys, template, row_changes, p50, device, top):
    run = _mutated_run(template, [])
    row = {"model": "student.onnx", "runtime": "onnxruntime", "batch": 1, "status": "ok", "latency_ms": {"p50": p50}}
    row.update(row_changes)
    doc = {"format": "edgekd-device-results", "format_version": 1,
           "device": {"name": "jetson-nano", **device}, "results": [row], **top}
    results = run.parent / "results.json"
    results.write_text(json.dumps(doc))
    try:
        code, err = run_cli(capsys, "ingest", results, run)
        assert_clean(code, err)
        report = json.loads((run / "report.json").read_text(), parse_constant=lambda n: pytest.fail(n))
        for art in report["artifacts"]:
            for figure in (art.get("target_latency_ms") or {}).values():
                assert figure is None or (math.isfinite(figure) and figure >= 0)
    finally:
        shutil.rmtree(run.parent, ignore_errors=True)


@FUZZ
@given(st.dictionaries(st.sampled_from(["device", "results", "format", "target"]), json_values, max_size=3)
       | st.lists(json_values, max_size=2) | scalars)
def test_any_measurements_file_calibrates_or_is_refused(capsys, tmp_path, doc):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    code, err = run_cli(capsys, "calibrate", "--target", "jetson-nano", "--measurements", path, "--dry-run")
    assert_clean(code, err)


def _profile() -> dict:
    return yaml.safe_load((REPO / "targets" / "raspberry-pi-4.yaml").read_text())


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(_profile())), json_values, max_size=2))
def test_any_profile_predicts_a_finite_latency_or_is_refused(capsys, tmp_path_factory, changes):
    folder = tmp_path_factory.mktemp("profile")
    model = make_onnx(folder / "m.onnx")
    profile = folder / "device.yaml"
    profile.write_text(yaml.safe_dump({**_profile(), "name": "device", **changes}, allow_unicode=True))
    code, err = run_cli(capsys, "predict", "--target", profile, "--onnx", model, "--json")
    assert_clean(code, err)
    out = capsys.readouterr().out
    if code == 0 and out:
        assert math.isfinite(json.loads(out)["predicted_ms"]) and json.loads(out)["predicted_ms"] >= 0


GATE_KEYS = st.sampled_from(["max_size_mb", "max_params", "max_latency_ms", "target", "latency_stat", "min_accuracy",
                             "max_accuracy_drop", "baseline", "max_growth", "max_accuracy_fall", "artifacts",
                             "input_shape", "max-size-mb", "typo"])
toml_values = (st.integers(-10**20, 10**20) | st.floats(allow_nan=True, allow_infinity=True) | st.booleans()
               | text | st.lists(st.integers(-5, 10**12), max_size=5) | st.lists(text, max_size=2))


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


@FUZZ
@given(st.dictionaries(GATE_KEYS, toml_values, min_size=1, max_size=4))
def test_any_pyproject_budgets_gate_or_are_refused(capsys, template, tmp_path_factory, table):
    folder = tmp_path_factory.mktemp("pyproject")
    pyproject = folder / "pyproject.toml"
    pyproject.write_text("[tool.edgekd.gate]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in table.items()))
    code, err = run_cli(capsys, "gate", template, "--config", pyproject, "--target", "jetson-nano")
    assert_clean(code, err, allowed=(0, 1, 2))


shape_text = (st.lists(st.integers(-3, 3 * 10**9) | st.sampled_from([1, 4, 28]), min_size=0, max_size=6)
              .flatmap(lambda dims: st.sampled_from([",", "x", "X", " x "]).map(lambda sep: sep.join(map(str, dims))))
              | text | st.sampled_from(["1,1,4,4", "1x1x4x4", "8x1x4x4", "1,4,4", "4,4", "1e3x1x4x4", "1,,4", "nan"]))


@FUZZ
@given(shape=shape_text, command=st.sampled_from(["predict", "gate", "bench"]))
def test_any_shape_is_used_or_refused_in_one_line(capsys, template, tmp_path_factory, shape, command):
    model = template / "artifacts" / "student.onnx"
    out = tmp_path_factory.mktemp("bench") / "out"
    args = {
        "predict": ["predict", "--target", "jetson-nano", "--onnx", model, "--input", shape, "--json"],
        "gate": ["gate", model, "--no-config", "--target", "jetson-nano", "--max-latency-ms", "5", "--input-shape", shape],
        "bench": ["bench", model, "--input-shape", shape, "--seconds", "0.01", "--warmup", "0", "--out", out],
    }[command]
    code, err = run_cli(capsys, *args)
    assert_clean(code, err, allowed=(0, 1, 2))
    if out.exists():
        _json_files_are_json(out)


@FUZZ
@given(shape=st.lists(st.integers(-2, 64), min_size=0, max_size=5).map(lambda d: "x".join(map(str, d))) | text,
       widths=st.sampled_from(["1", "0", "-1", "nan", "inf", "1e400", "0.5,,1", "abc", "100"]),
       depths=st.sampled_from(["1", "0", "1.5", "inf", "99", "-2", "x"]),
       classes=st.sampled_from(["10", "0", "-1", "1e3", "99999999999", "two"]))
def test_any_search_space_is_searched_or_refused(capsys, shape, widths, depths, classes):
    code, err = run_cli(capsys, "search", "--target", "jetson-nano", "--input", shape, "--widths", widths,
                        "--depths", depths, "--num-classes", classes, "--json")
    assert_clean(code, err)
