"""Latency measurement (warm-up, fixed runs, time budget, percentiles) and the environment record."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgekd.bench.env import collect_environment, cpu_info, device_info
from edgekd.bench.measure import LatencyStats, measure_latency
from edgekd.errors import EdgeKDError


class Counter:
    def __init__(self, sleep_s: float = 0.0):
        self.calls = 0
        self.sleep_s = sleep_s

    def __call__(self, x):
        self.calls += 1
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return x


def test_fixed_runs_and_warmup_counts():
    fn = Counter()
    stats = measure_latency(fn, np.zeros((8, 1, 4, 4), np.float32), warmup=7, runs=25)
    assert fn.calls == 32
    assert stats.runs == 25 and stats.batch == 8
    assert 0 <= stats.min <= stats.p50 <= stats.p90 <= stats.p99 <= stats.max
    assert stats.throughput == pytest.approx(8 * 1000.0 / stats.mean)


def test_latency_of_a_known_sleep():
    stats = measure_latency(Counter(sleep_s=0.003), np.zeros((1, 3)), warmup=1, runs=12)
    # time.sleep never returns early; scheduler overshoot on a loaded 2-core box stays well under 10 ms.
    assert 3.0 <= stats.p50 < 13.0
    assert stats.throughput == pytest.approx(1000.0 / stats.mean)


def test_time_budget_bounds_the_run():
    fn = Counter(sleep_s=0.002)
    t0 = time.perf_counter()
    stats = measure_latency(fn, np.zeros((2, 3)), warmup=0, time_budget_s=0.1)
    elapsed = time.perf_counter() - t0
    assert 0.1 <= elapsed < 0.6
    assert stats.runs == fn.calls and stats.runs >= 10
    assert stats.runs <= 0.1 / 0.002 + 1


def test_time_budget_runs_at_least_min_runs():
    fn = Counter(sleep_s=0.02)
    stats = measure_latency(fn, np.zeros((1,)), warmup=0, time_budget_s=0.001, min_runs=5)
    assert stats.runs == 5 == fn.calls


def test_max_runs_caps_a_fast_callable():
    stats = measure_latency(lambda x: None, np.zeros((1,)), warmup=0, time_budget_s=5.0, max_runs=500)
    assert stats.runs == 500


def test_percentiles_from_known_samples():
    stats = LatencyStats.from_samples(np.arange(1, 101, dtype=float), batch=4)
    assert stats.p50 == pytest.approx(50.5)
    assert stats.p90 == pytest.approx(90.1)
    assert stats.p99 == pytest.approx(99.01)
    assert stats.mean == pytest.approx(50.5)
    assert stats.throughput == pytest.approx(4 * 1000 / 50.5)
    d = stats.to_dict()
    assert set(d) >= {"p50", "p90", "p99", "mean", "runs", "batch", "throughput"} and d["runs"] == 100


@pytest.mark.parametrize("kwargs, message", [
    ({"warmup": -1}, "warm-up must be >= 0"),
    ({"runs": 0}, "runs must be >= 1"),
    ({"time_budget_s": 0}, "time budget must be > 0"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(EdgeKDError, match=message):
        measure_latency(lambda x: x, np.zeros((1,)), **kwargs)


def test_empty_samples_rejected():
    with pytest.raises(EdgeKDError, match="no latency samples"):
        LatencyStats.from_samples([])


X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
physical id\t: 0
core id\t: 0
flags\t\t: fpu sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
physical id\t: 0
core id\t: 0
flags\t\t: fpu sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni amx_tile amx_int8

processor\t: 2
physical id\t: 0
core id\t: 1
flags\t\t: fpu sse4_2 avx avx2
"""

# /proc/cpuinfo of a Jetson Nano (4x Cortex-A57): no "model name", features under "Features".
JETSON_CPUINFO = """processor\t: 0
model name\t: ARMv8 Processor rev 1 (v8l)
BogoMIPS\t: 38.40
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32
CPU implementer\t: 0x41
CPU part\t: 0xd07

processor\t: 1
model name\t: ARMv8 Processor rev 1 (v8l)
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32
CPU part\t: 0xd07
"""

PI_CPUINFO = """processor\t: 0
Features\t: fp asimd evtstrm crc32 cpuid
CPU part\t: 0xd08

Hardware\t: BCM2835
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""


def test_cpu_info_x86():
    info = cpu_info(X86_CPUINFO)
    assert info["model"] == "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"
    assert {"avx2", "avx512f", "avx512_vnni", "amx_int8"} <= set(info["features"])
    assert info["physical_cores"] == 2


def test_cpu_info_arm():
    info = cpu_info(JETSON_CPUINFO)
    assert info["model"] == "ARMv8 Processor rev 1 (v8l)"
    assert info["features"] == ["asimd"]
    pi = cpu_info(PI_CPUINFO)
    assert pi["model"] == "BCM2835" and pi["features"] == ["asimd"]


def test_environment_of_this_machine():
    env = collect_environment(threads=2)
    for key in ("cpu", "cpu_features", "cores", "usable_cores", "python", "platform", "numpy", "onnxruntime",
                "edgekd", "governor", "temperature_c"):
        assert key in env, key
    assert env["cores"] >= 1 and 1 <= env["usable_cores"] <= env["cores"]
    assert env["threads"] == 2
    assert isinstance(env["temperature_c"], dict)
    with open("/proc/cpuinfo") as fh:
        flags = fh.read()
    if " avx2 " in flags:
        assert "avx2" in env["cpu_features"]


def test_portable_probes_parse_as_python36_and_run_standalone(tmp_path):
    """The probes copied into the on-device runner need nothing but the standard library."""
    from edgekd.bench import env
    from edgekd.bench.runner_script import portable_block

    src = portable_block(env)
    ast.parse(src, feature_version=(3, 6))
    script = tmp_path / "probe.py"
    script.write_text("import json, os, platform\n" + src + "\nprint(json.dumps(device_info()))\n")
    out = subprocess.run([sys.executable, "-I", str(script)], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert json.loads(out.stdout)["cpu"] == device_info()["cpu"]


# ---- the standalone on-device runner ----

def _tiny_onnx(path):
    """A real (tiny) CNN exported the way edgekd exports students: dynamo, dynamic batch."""
    import torch

    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, 10)).eval()
    torch.onnx.export(model, (torch.randn(2, 1, 28, 28),), str(path), dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim("batch")},), input_names=["x"])
    return path


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return _tiny_onnx(tmp_path_factory.mktemp("onnx") / "student.onnx")


def test_runner_script_parses_as_python36():
    from edgekd.bench.runner_script import OLDEST_PYTHON, python36_problems, render_runner_script

    source = render_runner_script()
    assert python36_problems(source) == []
    tree = ast.parse(source, feature_version=OLDEST_PYTHON)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names} | {n.module.split(".")[0] for n in ast.walk(tree)
                                     if isinstance(n, ast.ImportFrom) and n.module}
    assert "edgekd" not in imported and "__future__" not in imported
    # The copy embeds the one timing loop and the one set of probes instead of importing them.
    assert "def time_calls(" in source and "def device_info(" in source and "def measure(" not in source


@pytest.mark.parametrize("snippet", [
    "from __future__ import annotations\n",
    "import time\nt = time.perf_counter_ns()\n",
    "import subprocess\nsubprocess.run(['ls'], capture_output=True)\n",
    "import subprocess\nsubprocess.check_output(['ls'], text=True)\n",
    "import dataclasses\n",
    "from dataclasses import dataclass\n",
    "import contextlib\nctx = contextlib.nullcontext()\n",
    "import importlib.resources\n",
    "from importlib import resources\n",
    "import datetime\nd = datetime.datetime.fromisoformat('2020-01-01')\n",
    "if (n := 3):\n    pass\n",
    "def f(a, /):\n    pass\n",
    "breakpoint()\n",
    "from edgekd.bench.env import device_info\n",
])
def test_python36_checker_rejects_newer_constructs(snippet):
    """The checker that guards the runner when no Python 3.6 is at hand catches what 3.6 cannot run."""
    from edgekd.bench.runner_script import check_python36, python36_problems

    assert python36_problems(snippet)
    with pytest.raises(RuntimeError, match="not Python 3.6"):
        check_python36(snippet)


def test_device_runner_is_an_importable_module():
    """The runner's source is a real module: its functions are edgekd's own, called directly here."""
    from edgekd.bench import device_runner, measure
    from edgekd.runtimes import RUNTIMES

    assert device_runner.time_calls is measure.time_calls and device_runner.device_info is device_info
    assert set(device_runner.BACKENDS) == {n for n, rt in RUNTIMES.items() if rt.on_device}
    assert device_runner.runtimes_for("m.xml", None) == ["openvino"]
    assert device_runner.runtimes_for("m.tflite", None) == ["litert"]
    assert device_runner.runtimes_for("m.engine", None) == ["tensorrt"]
    assert device_runner.runtimes_for("m.onnx", ["tensorrt"]) == ["tensorrt"]  # builds an engine only when asked
    assert device_runner.runtimes_for("m.onnx", None) == ["onnxruntime"]
    samples = device_runner.time_calls(lambda x: x, 1, warmup=0, runs=7)
    assert len(samples) == 7 and device_runner.latency_summary(samples, 1)["runs"] == 7


@pytest.mark.slow
def test_runner_script_measures_an_onnx_model(tmp_path, tiny_onnx):
    from edgekd.bench.runner_script import RESULTS_FORMAT, write_runner_script

    script = write_runner_script(tmp_path / "edgekd_runner.py")
    assert script.stat().st_mode & 0o111
    # Run outside the repository with -I: the script may rely on nothing but numpy and the runtime.
    proc = subprocess.run(
        [sys.executable, "-I", str(script), str(tiny_onnx), "--runtime", "onnxruntime", "--batch", "1,3",
         "--runs", "25", "--warmup", "3", "--threads", "1", "--device-name", "jetson-nano", "--out", "res.json"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "res.json").read_text())
    assert doc["format"] == RESULTS_FORMAT and doc["format_version"] == 1
    assert doc["device"]["name"] == doc["target"] == "jetson-nano"
    assert doc["device"]["cpu"] == device_info()["cpu"] and doc["device"]["runtime"] == "onnxruntime"
    assert "onnxruntime" in doc["device"]["runtimes"]
    rows = doc["results"]
    assert [(r["runtime"], r["batch"], r["status"]) for r in rows] == [("onnxruntime", 1, "ok"),
                                                                        ("onnxruntime", 3, "ok")]
    for row, batch in zip(rows, (1, 3)):
        # Relative to the results file, so tools reading it find the model (edgekd calibrate does).
        assert (tmp_path / row["model"]).resolve() == tiny_onnx.resolve() and row["runs"] == 25
        assert row["precision"] == "fp32"
        assert row["input_shape"] == [batch, 1, 28, 28] and row["output_shape"] == [batch, 10]
        lat = row["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert row["provider"] == "CPUExecutionProvider"
    assert "p50" in proc.stdout and not list(tmp_path.glob("*.tmp"))


PY36_PACKAGES = ("numpy<1.20", "onnxruntime==1.10.0")  # the last releases for Python 3.6, as on JetPack 4.6


def _python36() -> tuple[str | None, str]:
    """A Python 3.6 with numpy and onnxruntime (what JetPack 4.6 has), and why not when there is none.

    $EDGEKD_PYTHON36 if set; else a venv kept in the user cache, built here (once) from a Python 3.6
    interpreter found in pyenv or on PATH, with PY36_PACKAGES from the package registry.
    """
    import glob
    import os
    import shutil

    def works(exe) -> bool:
        probe = subprocess.run([exe, "-I", "-c", "import sys, numpy, onnxruntime; print(sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=120)
        return probe.returncode == 0 and probe.stdout.strip() == "(3, 6)"

    if os.environ.get("EDGEKD_PYTHON36"):
        exe = os.environ["EDGEKD_PYTHON36"]
        assert works(exe), f"EDGEKD_PYTHON36={exe} is not a Python 3.6 with numpy and onnxruntime"  # asked for: no skip
        return exe, ""
    venv = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgekd-tests" / "py36"
    exe = venv / "bin" / "python"
    if exe.is_file() and works(exe):
        return str(exe), ""
    pyenv = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    found = sorted(glob.glob(f"{pyenv}/versions/3.6*/bin/python3.6")) + list(filter(None, [shutil.which("python3.6")]))
    if not found:
        return None, "no Python 3.6 interpreter here (pyenv install 3.6.15, or set EDGEKD_PYTHON36)"
    steps = [[found[0], "-m", "venv", "--clear", str(venv)],
             [str(exe), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--upgrade", "pip<22"],
             [str(exe), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PY36_PACKAGES]]
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            return None, f"could not give {found[0]} {', '.join(PY36_PACKAGES)}: {tail[0]}"
    return (str(exe), "") if works(exe) else (None, f"the venv built from {found[0]} does not import numpy and onnxruntime")


def _opset13_onnx(path):
    """A tiny CNN at opset 13, the newest the ONNX Runtime builds for Python 3.6 read."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def test_runner_runs_on_a_real_python36(tmp_path):
    """The copied runner on an actual Python 3.6 interpreter, numpy and ONNX Runtime, as on JetPack 4.6."""
    from edgekd.bench.runner_script import write_runner_script

    exe, why = _python36()
    if exe is None:
        pytest.skip(why + "; test_python36_checker_* and test_runner_script_parses_as_python36 guard the runner instead")
    script = write_runner_script(tmp_path / "edgekd_runner.py")
    model = _opset13_onnx(tmp_path / "m.onnx")
    proc = subprocess.run([exe, "-I", str(script), str(model), "--batch", "1,2", "--runs", "10", "--warmup", "2",
                           "--device-name", "jetson-nano", "--out", "res.json"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "res.json").read_text())
    assert doc["device"]["python"].startswith("3.6.")
    assert [(r["batch"], r["status"], r["runs"]) for r in doc["results"]] == [(1, "ok", 10), (2, "ok", 10)]
    assert all(0 < r["latency_ms"]["p50"] <= r["latency_ms"]["max"] for r in doc["results"])


@pytest.mark.slow
def test_runner_script_measures_a_litert_model(tmp_path):
    """LiteRT runs on the device too: a .tflite from edgekd's exporter, timed by the copied runner."""
    import torch

    from edgekd.bench.runner_script import write_runner_script
    from edgekd.export import FORMATS, export_all

    ok, why = FORMATS.get("litert").available()
    assert ok, why  # the test extra installs LiteRT
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10))
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    (art,) = export_all(net, ["litert"], tmp_path / "art", example=x[:1], calib=x, parity_inputs=x, progress=False)
    assert art.status == "ok", art.reason
    script = write_runner_script(tmp_path / "edgekd_runner.py")
    proc = subprocess.run([sys.executable, "-I", str(script), str(art.path), "--batch", "1,2", "--runs", "5",
                           "--out", "res.json"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "res.json").read_text())["results"]
    assert [(r["runtime"], r["batch"], r["status"]) for r in rows] == [("litert", 1, "ok"), ("litert", 2, "skipped")]
    assert rows[0]["output_shape"] == [1, 10] and "fixed batch of 1" in rows[1]["reason"]


def test_runner_script_reports_bad_files_per_row(tmp_path, tiny_onnx):
    from edgekd.bench.runner_script import write_runner_script

    script = write_runner_script(tmp_path)
    assert script.name == "edgekd_runner.py"
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    proc = subprocess.run([sys.executable, "-I", str(script), str(broken), str(tiny_onnx), "--runs", "5",
                           "--out", "res.json"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr  # one good model is enough for a useful file
    rows = json.loads((tmp_path / "res.json").read_text())["results"]
    assert rows[0]["status"] == "failed" and rows[0]["reason"]
    assert rows[1]["status"] == "ok"
    missing = subprocess.run([sys.executable, "-I", str(script), "nothere.onnx"], capture_output=True, text=True,
                             cwd=tmp_path, timeout=60)
    assert missing.returncode == 2 and "nothere.onnx does not exist" in missing.stderr


def test_runner_output_must_be_python(tmp_path):
    from edgekd.bench.runner_script import write_runner_script

    with pytest.raises(EdgeKDError, match="must end in .py"):
        write_runner_script(tmp_path / "runner.txt")


# ---- edgekd bench: this machine, per runtime and batch size ----

def _edgekd(*args, cwd=None):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "edgekd.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or repo, timeout=300)


@pytest.mark.slow
def test_bench_run_dir_adds_runtime_rows_and_batches(tmp_path, tiny_onnx):
    import shutil

    from edgekd.bench.host import BenchOptions, bench_run
    from edgekd.bench.evaluate import accuracy_of
    from edgekd.bench.runners import load_runner
    from edgekd.data import load_data, normalize
    from edgekd.models import ModelSpec, save_model
    from edgekd.report import load_report, new_report, write_reports

    run = tmp_path / "run"
    (run / "artifacts").mkdir(parents=True)
    shutil.copy(tiny_onnx, run / "artifacts" / "student.onnx")
    spec = ModelSpec("cnn", 10, 1, width=0.25)
    save_model(run / "teacher.safetensors", spec.build().eval(), spec)
    splits = load_data()
    report = new_report("distill")
    report["data"] = splits.describe()
    report["target"] = {"name": "host", "runtime": "onnxruntime", "precision": "fp32", "measured": True}

    def row(name, role, fmt, runtime, path):
        return {"name": name, "role": role, "format": fmt, "precision": "fp32", "runtime": runtime, "path": path,
                "size_bytes": (run / path).stat().st_size, "status": "ok", "reason": None, "accuracy": 0.5,
                "extra": {}}

    report["artifacts"] = [row("pytorch", "teacher", "pytorch", "pytorch", "teacher.safetensors"),
                           row("onnx", "student", "onnx", "onnxruntime", "artifacts/student.onnx")]
    write_reports(run, report, html=False)

    opts = BenchOptions(runtimes=["onnxruntime", "openvino", "pytorch"], batches=[1, 2], seconds=0.05, warmup=2,
                        threads=1)
    out = bench_run(run, opts)
    saved = load_report(run)
    assert saved["artifacts"] == json.loads(json.dumps(out["artifacts"]))
    by_name = {(a["role"], a["name"]): a for a in saved["artifacts"]}
    assert set(by_name) == {("teacher", "pytorch"), ("student", "onnx"), ("student", "onnx@openvino")}
    for key in by_name:
        art = by_name[key]
        assert art["status"] == "ok", art
        assert art["latency_source"] == "measured:host" and art["latency_ms"]["p50"] > 0
        # The target is this machine: its latency is the measurement, labelled as such.
        assert art["target_latency_source"] == "measured:host"
        assert art["target_latency_ms"]["p50"] == art["latency_ms"]["p50"]
        assert [m["batch"] for m in art["extra"]["host_measurements"]] == [2]
        assert art["extra"]["host_measurements"][0]["throughput"] > 0
    ov = by_name[("student", "onnx@openvino")]
    x = normalize(splits.test.x, splits.mean, splits.std)
    expected = accuracy_of(load_runner(run / "artifacts/student.onnx").run, x, splits.test.y)
    assert ov["accuracy"] == pytest.approx(expected, abs=0.002)  # same FP32 graph, another runtime
    assert ov["runtime"] == "openvino" and ov["extra"]["source_artifact"] == "onnx"
    assert saved["config"]["bench"]["batches"] == [1, 2] and saved["environment"]["threads"] == 1
    assert (run / "report.html").exists()
    # Benchmarking again updates the rows instead of adding more.
    bench_run(run, opts)
    assert len(load_report(run)["artifacts"]) == 3


def test_bench_model_files_cli(tmp_path, tiny_onnx):
    proc = _edgekd("bench", tiny_onnx, "--runtimes", "onnxruntime,openvino", "--batch", "1,4", "--seconds", "0.05",
                   "--out", tmp_path / "b")
    assert proc.returncode == 0, proc.stderr
    from edgekd.report import load_report

    report = load_report(tmp_path / "b")
    assert report["command"] == "bench"
    rows = {a["name"]: a for a in report["artifacts"]}
    assert set(rows) == {"student.onnx", "student.onnx@openvino"}
    for art in rows.values():
        assert art["status"] == "ok" and art["precision"] == "fp32" and art["role"] == "model"
        assert art["latency_ms"]["p50"] > 0 and art["extra"]["input_shape"] == [1, 28, 28]
        assert art["extra"]["host_measurements"][0]["batch"] == 4
    assert "Latency and throughput by batch size" in proc.stdout
    assert "Latency and throughput by batch size" in (tmp_path / "b" / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["nothere.onnx"], "model file nothere.onnx does not exist"),
    (["{model}", "--runtimes", "onnxruntim"], "did you mean"),
    (["{model}", "--batch", "1,x"], "--batch must be comma-separated integers"),
    (["{model}", "--batch", "0"], "batch sizes must be 1 to 65536"),
])
def test_bench_errors_are_one_line(tmp_path, tiny_onnx, args, message):
    proc = _edgekd("bench", *[a.format(model=tiny_onnx) for a in args], "--out", tmp_path / "b")
    assert proc.returncode == 2, proc.stdout
    assert message in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "b").exists()
