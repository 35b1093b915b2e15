"""Devices over SSH against a real sshd on 127.0.0.1 whose "device" runtime is this machine's ONNX Runtime.

Every failure the issue lists is provoked for real: a stopped server, a key it does not accept, a host
key not in known_hosts, a python that is not there, a runtime that is not there, a runner that times
out or is killed, a connection cut while files are copied.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import slow_conv_onnx
from sshd_server import Killer, SSHServer, sshd_unavailable

REPO = Path(__file__).resolve().parents[1]

LOOPBACK_PROFILE = """\
name: loopback
description: this machine's CPU reached over SSH, ONNX Runtime FP32 on one thread (test device)
runtime: onnxruntime
precision: fp32
precisions: [fp32]
budget_ms: 0.1
memory_mb: 8192
measured: false
peak_gflops: {fp32: 83}
memory_bandwidth_gbs: 20
kernel_overhead_us: 2
channel_multiple: 8
inference_overhead_us: 8
conditions: {threads: 1, batch: 1}
software: {onnxruntime: "installed"}
sources: ["test profile: datasheet-like figures for a 2-core x86 VM"]
"""

WHY_NO_SSHD = sshd_unavailable()
needs_sshd = pytest.mark.skipif(WHY_NO_SSHD is not None, reason=WHY_NO_SSHD or "")


def edgekd(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**(env or os.environ), "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The command failed with exit 2 and one stderr line containing ``words``; that line."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A running sshd, a config folder of its own, the loopback profile and a device 'loop' on it."""
    if WHY_NO_SSHD:
        pytest.skip(WHY_NO_SSHD)
    root = tmp_path_factory.mktemp("devices")
    server = SSHServer(root / "ssh").start()
    profile = root / "loopback.yaml"
    profile.write_text(LOOPBACK_PROFILE)
    remote = root / "remote"  # the device's work folder: every test checks nothing is left in it
    remote.mkdir()
    old = {k: os.environ.get(k) for k in ("EDGEKD_CONFIG_DIR", "EDGEKD_SSH_CONFIG")}
    os.environ["EDGEKD_CONFIG_DIR"] = str(root / "config")
    os.environ["EDGEKD_SSH_CONFIG"] = str(server.config)  # for the library calls made in this process
    env = server.env()
    proc = edgekd("devices", "add", "loop", "--ssh", server.ssh_spec(), "--target", str(profile),
                  "--python", sys.executable, "--workdir", str(remote), env=env)
    assert proc.returncode == 0, proc.stderr
    yield {"server": server, "env": env, "profile": profile, "remote": remote, "root": root}
    subprocess.run(["ssh", "-F", str(server.config), "-O", "exit", "loop"], capture_output=True)
    server.stop()
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def add(world, name: str, ssh: str, *extra: str, target: str | None = None) -> None:
    proc = edgekd("devices", "add", name, "--ssh", ssh, "--target", target or str(world["profile"]),
                  "--python", sys.executable, "--workdir", str(world["remote"]), "--replace", *extra, env=world["env"])
    assert proc.returncode == 0, proc.stderr


def tiny_onnx(path: Path) -> Path:
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    torch.onnx.export(model, (torch.randn(2, 1, 28, 28),), str(path), dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim("batch")},), input_names=["x"])
    return path


def big_onnx(path: Path, megabytes: int = 160) -> Path:
    """A valid ONNX model with ``megabytes`` of weights: its copy takes long enough to be cut."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = megabytes * 1_000_000 // 4 // 8
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, n)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, n])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def bench_run(world, tmp_path_factory):
    """A run folder of one tiny model (`edgekd bench FILE --out`), as a device measures it."""
    folder = tmp_path_factory.mktemp("bench-run")
    model = tiny_onnx(folder / "student.onnx")
    proc = edgekd("bench", str(model), "--out", str(folder / "run"), "--seconds", "0.1", env=world["env"])
    assert proc.returncode == 0, proc.stderr
    return folder / "run"


def unchanged(run: Path):
    """Snapshot of a run folder's files; call the result to assert nothing changed since."""
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".edgekd.lock"}

    def check():
        after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".edgekd.lock"}
        assert after.keys() == before.keys(), set(after) ^ set(before)
        assert all(after[k] == before[k] for k in before), [str(k) for k in before if after[k] != before[k]]
    return check


# --- the device list -------------------------------------------------------------------------------

def test_devices_are_stored_atomically_and_validated(tmp_path):
    env = {**os.environ, "EDGEKD_CONFIG_DIR": str(tmp_path / "cfg")}
    ok = edgekd("devices", "add", "lab-nano", "--ssh", "ubuntu@192.168.1.40:2222", "--target", "jetson-nano", env=env)
    assert ok.returncode == 0, ok.stderr
    listed = json.loads(edgekd("devices", "list", "--json", env=env).stdout)
    assert listed[0]["name"] == "lab-nano" and listed[0]["ssh"] == "ubuntu@192.168.1.40:2222"
    assert listed[0]["target"] == "jetson-nano" and listed[0]["python"] == "python3"
    store = json.loads((tmp_path / "cfg" / "devices.json").read_text())
    assert list(store["devices"]) == ["lab-nano"] and not list((tmp_path / "cfg").glob("*.tmp"))
    one_line_error(edgekd("devices", "add", "lab-nano", "--ssh", "u@h", "--target", "jetson-nano", env=env),
                   "already exists", "--replace")
    one_line_error(edgekd("devices", "add", "x", "--ssh", "u@h:99999", "--target", "jetson-nano", env=env), "port")
    one_line_error(edgekd("devices", "add", "x", "--ssh", "u@@h", "--target", "jetson-nano", env=env), "SSH address")
    one_line_error(edgekd("devices", "add", "cuda", "--ssh", "u@h", "--target", "jetson-nano", env=env), "reserved")
    one_line_error(edgekd("devices", "add", "x", "--ssh", "u@h", "--target", "jetson-nan", env=env), "jetson-nano")
    one_line_error(edgekd("devices", "check", "lab-nan0", env=env), "unknown device", "lab-nano")
    assert edgekd("devices", "remove", "lab-nano", env=env).returncode == 0
    assert json.loads(edgekd("devices", "list", "--json", env=env).stdout) == []


def test_ssh_addresses_parse():
    from edgekd.devices.store import parse_ssh

    assert parse_ssh("ubuntu@192.168.1.40") == ("ubuntu", "192.168.1.40", None)
    assert parse_ssh("pi@raspberrypi.local:2222") == ("pi", "raspberrypi.local", 2222)
    assert parse_ssh("lab-nano") == (None, "lab-nano", None)  # an alias from ~/.ssh/config
    assert parse_ssh("root@[fe80::1]:22") == ("root", "fe80::1", 22)


# --- check -------------------------------------------------------------------------------------------

@needs_sshd
def test_check_reports_python_runtimes_and_machine(world):
    proc = edgekd("devices", "check", "loop", "--json", env=world["env"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    info = report["info"]
    assert report["ready"] and report["method"] == "runner"
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["modules"]["onnxruntime"]["ok"] and "CPUExecutionProvider" in info["modules"]["onnxruntime"]["providers"]
    assert info["modules"]["numpy"]["ok"] and not info["modules"]["tensorrt"]["ok"]
    assert info["cores"] == os.cpu_count() and info["os"] and info["cpu"]
    assert report["timings_s"]["round_trip_ms"] > 0
    table = edgekd("devices", "check", "loop", env=world["env"])
    assert table.returncode == 0 and "ready: loopback's onnxruntime runs on loop" in table.stdout
    for row in ("python", "onnxruntime", "trtexec not found", "cpu", "os"):
        assert row in table.stdout


@needs_sshd
def test_unknown_host_key_is_refused_with_the_command_to_trust_it(world):
    add(world, "stranger", "loop-unknown")
    line = one_line_error(edgekd("devices", "check", "stranger", env=world["env"]), "device stranger", "host key")
    port = world["server"].port
    assert f"ssh-keyscan -p {port} 127.0.0.1 >> {world['server'].empty_known_hosts}" in line
    assert world["server"].empty_known_hosts.read_text() == ""  # nothing trusted behind the user's back


@needs_sshd
def test_wrong_key_is_refused(world):
    add(world, "badkey", "loop-badkey")
    one_line_error(edgekd("devices", "check", "badkey", env=world["env"]), "device badkey", "Permission denied",
                   "ssh-copy-id")


@needs_sshd
def test_missing_python_and_missing_runtime(world):
    proc = edgekd("devices", "add", "nopython", "--ssh", world["server"].ssh_spec(), "--target", str(world["profile"]),
                  "--python", "python3-edgekd-absent", "--replace", env=world["env"])
    assert proc.returncode == 0
    one_line_error(edgekd("devices", "check", "nopython", env=world["env"]), "device nopython",
                   "python3-edgekd-absent is not found", "--python")
    # The same machine registered as a Jetson: no trtexec, no tensorrt module.
    add(world, "fake-nano", world["server"].ssh_spec(), target="jetson-nano")
    one_line_error(edgekd("devices", "check", "fake-nano", env=world["env"]), "device fake-nano cannot run tensorrt",
                   "trtexec")


@needs_sshd
def test_stopped_server_is_unreachable(world, tmp_path):
    other = SSHServer(tmp_path / "ssh").start()
    env = other.env(EDGEKD_CONFIG_DIR=os.environ["EDGEKD_CONFIG_DIR"])
    add({**world, "env": env}, "brief", other.ssh_spec())
    assert edgekd("devices", "check", "brief", env=env).returncode == 0
    subprocess.run(["ssh", "-F", str(other.config), "-O", "exit", "127.0.0.1"], capture_output=True)
    other.stop()
    one_line_error(edgekd("devices", "check", "brief", env=env), "device brief", "refused the connection",
                   f"ssh -p {other.port}")


# --- bench --device ----------------------------------------------------------------------------------

@needs_sshd
def test_bench_on_the_device_ingests_measured_timings(world, bench_run):
    from edgekd.devices import history

    proc = edgekd("bench", str(bench_run), "--device", "loop", "--seconds", "0.3", env=world["env"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((bench_run / "report.json").read_text())
    row = next(a for a in report["artifacts"] if a["name"] == "student.onnx")
    assert row["target_latency_source"] == "measured:loop" and 0 < row["target_latency_ms"]["p50"] < 50
    assert row["extra"]["device_measurements"][0]["runtime"] == "onnxruntime"
    device = report["devices"]["loop"]
    assert device["python"] == ".".join(map(str, sys.version_info[:3])) and device["cores"] == os.cpu_count()
    assert device["transfer"]["files"] == 1 and device["transfer"]["retries"] == 0
    assert 0 < device["transfer"]["overhead_s"] < device["transfer"]["wall_s"]
    assert (bench_run / "device-results" / "loop.json").is_file()
    assert "SSH:" in proc.stdout and "measured:loop" in proc.stdout
    assert not any(world["remote"].iterdir()), "the remote work folder was not cleaned"
    rows = history.load_rows("loop")
    assert any(r["measured_file"] == "student.onnx" and r["threads"] == 1 for r in rows)


@needs_sshd
def test_runner_timeout_leaves_the_run_as_it_was(world, tmp_path):
    model = slow_conv_onnx(tmp_path / "student.onnx")
    run = tmp_path / "run"
    assert edgekd("bench", str(model), "--out", str(run), "--seconds", "0.1", env=world["env"]).returncode == 0
    same = unchanged(run)
    proc = edgekd("bench", str(run), "--device", "loop", "--seconds", "30", "--timeout", "3", env=world["env"])
    one_line_error(proc, "device loop", "did not finish within 3 s", "--timeout")
    same()
    assert not any(world["remote"].iterdir())


@needs_sshd
def test_runner_killed_on_the_device_is_a_crash(world, bench_run):
    same = unchanged(bench_run)
    with Killer(world["server"], runs_runner,
                connection=False, times=1) as killer:
        proc = edgekd("bench", str(bench_run), "--device", "loop", "--seconds", "5", env=world["env"])
    assert killer.hits == 1
    one_line_error(proc, "device loop", "killed by signal 9", "dmesg")
    same()
    assert not any(world["remote"].iterdir())


@needs_sshd
def test_connection_dropped_once_is_retried(world, bench_run):
    with Killer(world["server"], runs_runner, times=1) as killer:
        proc = edgekd("bench", str(bench_run), "--device", "loop", "--seconds", "0.5", env=world["env"])
    assert killer.hits == 1 and proc.returncode == 0, proc.stderr
    report = json.loads((bench_run / "report.json").read_text())
    assert report["devices"]["loop"]["transfer"]["retries"] == 1
    assert "1 retried" in proc.stdout


@needs_sshd
def test_connection_dropped_mid_copy_leaves_the_run_as_it_was(world, tmp_path):
    big = big_onnx(tmp_path / "big.onnx")
    run = tmp_path / "run"
    assert edgekd("bench", str(big), "--out", str(run), "--seconds", "0.05", env=world["env"]).returncode == 0
    same = unchanged(run)
    # Every copy attempt is cut: its tar is frozen and the sshd processes carrying the link are killed.
    with Killer(world["server"], lambda argv: bool(argv) and argv[0].endswith("tar") and "-xf" in argv) as killer:
        proc = edgekd("bench", str(run), "--device", "loop", env=world["env"])
    assert killer.hits == 3  # the first try and two retries
    one_line_error(proc, "device loop", "dropped while copying files", "3 attempts")
    same()
    assert not any(world["remote"].iterdir()), "the cut copies' folders were not cleaned"


# --- calibrate --device -----------------------------------------------------------------------------

@needs_sshd
def test_calibrate_on_the_device_fits_the_target(world):
    from edgekd.hardware.targets import load_target

    proc = edgekd("calibrate", "--target", str(world["profile"]), "--device", "loop", "--count", "10",
                  "--seconds", "0.3", "--json", env=world["env"])
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["n_measurements"] >= 10 and Path(out["path"]).is_file()
    before, after = out["errors"]["before"], out["errors"]["after"]
    assert before["n"] == after["n"] == 10
    assert after["median_abs_pct_err"] < 30 and after["median_abs_pct_err"] < before["median_abs_pct_err"]
    assert out["transfer"]["files"] == 10 and out["transfer"]["overhead_s"] > 0
    target = load_target(str(world["profile"]))
    assert target.calibration.startswith("calibrated from") and "loop" in target.calibration
    one_line_error(edgekd("calibrate", "--target", "jetson-nano", "--device", "loop", env=world["env"]),
                   "device loop is a loopback, not a jetson-nano")
    one_line_error(edgekd("calibrate", "--target", "jetson-nano", env=world["env"]), "--measurements", "--device")


# --- distill --device: the closed loop -------------------------------------------------------------

LOOP_WIDTHS = (0.25, 1.0, 3.0)


@pytest.fixture(scope="module")
def loop_budget(world):
    """A budget the widest candidate misses on the device by a clear margin, and each width's latency there.

    Measured, not assumed: 0.75x the widest student's latency on this CPU, which the narrower ones
    (about 8x and 20x faster on the MNIST family) meet whatever the CPU.
    """
    from edgekd.devices.remote import MeasureOptions, measure_files
    from edgekd.devices.store import get_device
    from edgekd.hardware.graph import cached_onnx

    files = [cached_onnx("cnn", num_classes=10, input_shape=[1, 1, 28, 28], width=w, depth=1) for w in LOOP_WIDTHS]
    best = {}
    for _ in range(2):  # the quieter of two measurements: load on the machine only adds time
        run = measure_files(get_device("loop"), files, runtime="onnxruntime", options=MeasureOptions(seconds=0.5, threads=1))
        for w, row in zip(LOOP_WIDTHS, run.results["results"]):
            best[w] = min(best.get(w, float("inf")), row["latency_ms"]["p50"])
    budget = 0.75 * best[3.0]
    assert best[1.0] < 0.5 * budget, best
    return budget, best


@pytest.fixture(scope="module")
def random_teacher(tmp_path_factory) -> Path:
    """A teacher that was never trained: the loop is about latency, and this saves minutes of CPU."""
    import torch

    from edgekd.models import ModelSpec, create, save_model

    torch.manual_seed(0)
    spec = ModelSpec("cnn", 10, 1, width=1.0, depth=1)
    model = create("cnn", num_classes=10, in_channels=1, width=1.0, depth=1).eval()
    return save_model(tmp_path_factory.mktemp("teacher") / "teacher.safetensors", model, spec)


def miscalibrate(world, truth: dict | None = None) -> float:
    """Fit the loopback profile from the device's measurements, then scale it to underestimate 2x.

    With ``truth`` (each width's measured latency) the factor makes the widest student's prediction exactly
    half its measured time: the probes the fit reads may have been timed under another load than ``truth``
    (a shared CI machine moves sub-millisecond timings by a third), and a plain x0.5 of such a fit put the
    widest over the budget already in round 1, or left it under by less than the loop's check. Returns the
    factor.
    """
    from edgekd.devices.calibrate import scale_calibration
    from edgekd.devices.history import load_rows
    from edgekd.hardware.graph import cached_onnx
    from edgekd.hardware.latency import predict_latency_ms
    from edgekd.hardware.targets import load_target

    count = "10" if len(load_rows("loop")) < 10 else "0"  # probes once per module; later refits reuse them
    proc = edgekd("calibrate", "--target", str(world["profile"]), "--device", "loop", "--count", count,
                  "--seconds", "0.3", env=world["env"])
    assert proc.returncode == 0, proc.stderr
    factor = 0.5
    if truth is not None:
        widest = cached_onnx("cnn", num_classes=10, input_shape=[1, 1, 28, 28], width=3.0, depth=1)
        factor = 0.5 * truth[3.0] / predict_latency_ms(widest, load_target(str(world["profile"]))).total_ms
    scale_calibration("loopback", factor)
    return factor


def runs_runner(argv: list[str]) -> bool:
    """The device's Python running the copied runner (not the shell that copies it or starts it)."""
    return bool(argv) and "python" in Path(argv[0]).name and any(a.endswith("edgekd_runner.py") for a in argv[1:])


def distill_on_loop(world, tiny_npz, teacher: Path, out: Path, budget: float) -> subprocess.CompletedProcess:
    return edgekd("distill", "--target", str(world["profile"]), "--device", "loop", "--data", str(tiny_npz),
                  "--teacher", str(teacher),
                  "--epochs", "2", "--batch-size", "64", "--widths", ",".join(f"{w:g}" for w in LOOP_WIDTHS),
                  "--budget-ms", f"{budget:.5f}", "--formats", "onnx", "--out", str(out), "--no-progress",
                  "--bench-seconds", "0.3", "--force", env=world["env"])  # --force: the teacher is untrained


@pytest.mark.slow
@needs_sshd
def test_closed_loop_corrects_a_profile_that_underestimates_2x(world, tiny_npz, random_teacher, tmp_path, loop_budget):
    budget, truth = loop_budget
    factor = miscalibrate(world, truth)
    out = tmp_path / "run"
    proc = distill_on_loop(world, tiny_npz, random_teacher, out, budget)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    loop = report["device_loop"]
    r1, r2 = loop["rounds"]
    # Round 1 trusted the halved profile: the widest student, predicted in budget, measured over it.
    assert r1["width"] == 3.0 and r1["predicted_ms"] <= budget < r1["measured_ms"] and r1["status"] == "over"
    assert r1["predicted_ms"] == pytest.approx(0.5 * truth[3.0], rel=0.02) and f"x{factor:g}" in r1["calibration"]
    assert r1["measured_ms"] / r1["predicted_ms"] > 1.5
    assert r1["decision"] == "next round" and r1["next_width"] == 1.0
    assert r1["recalibrated"]["n_measurements"] >= 11  # the probes and round 1's student
    # Round 2 was selected and predicted with the recalibrated profile, and fits.
    assert r2["width"] == 1.0 and r2["measured_ms"] <= budget and r2["status"] == "fits" and r2["decision"] == "stop"
    assert r2["calibration"].startswith("calibrated from") and f"x{factor:g}" not in r2["calibration"]
    assert abs(r2["predicted_ms"] - r2["measured_ms"]) / r2["measured_ms"] < 0.5
    assert loop["final_round"] == 2 and loop["status"] == "fits" and loop["stopped"] is None
    # The run folder's report is round 2's; which numbers were measured where is on every row.
    assert report["selection"]["width"] == 1.0 and report["recommended"]["path"].startswith("rounds/2/")
    rec = next(a for a in report["artifacts"] if a["name"] == report["recommended"]["name"])
    assert rec["target_latency_source"] == "measured:loop" and rec["latency_source"] == "measured:host"
    assert rec["predicted_target_latency_source"].startswith("predicted:loopback")
    assert "Closed loop on loop" in (out / "report.md").read_text()
    gate = edgekd("gate", str(out), "--artifact", "recommended", "--max-latency-ms", f"{budget:.5f}", env=world["env"])
    assert gate.returncode == 0, gate.stdout + gate.stderr
    print(f"\nbudget {budget:.4f} ms; truth {truth}")
    for r in loop["rounds"]:
        print(f"round {r['round']}: width {r['width']:g}, predicted {r['predicted_ms']:.4f} ms ({r['calibration']}), "
              f"measured {r['measured_ms']:.4f} ms, {r['status']}, SSH overhead {r['device_overhead_s']:.2f} s")


@pytest.mark.slow
@needs_sshd
def test_closed_loop_keeps_the_last_good_round_when_the_link_drops(world, tiny_npz, random_teacher, tmp_path,
                                                                  loop_budget):
    budget, truth = loop_budget
    miscalibrate(world, truth)
    out = tmp_path / "run"
    # Round 1's runner goes through; every try of round 2's loses its connection.
    with Killer(world["server"], runs_runner, skip=1) as killer:
        proc = distill_on_loop(world, tiny_npz, random_teacher, out, budget)
    assert killer.hits == 3, proc.stdout[-3000:] + proc.stderr[-2000:]
    line = one_line_error(proc, "round 2", "device loop", "dropped", "keeps round 1", "--resume")
    report = json.loads((out / "report.json").read_text())
    assert report["device_loop"]["final_round"] == 1 and report["selection"]["width"] == 3.0
    assert report["recommended"]["path"].startswith("rounds/1/")
    assert "dropped" in report["device_loop"]["stopped"]
    assert [r["round"] for r in report["device_loop"]["rounds"]] == [1, 2]
    assert not any(world["remote"].iterdir())
    # The command the error gives continues the loop: round 2 is measured and the run moves to it.
    resume = line.split("continue with: ", 1)[1].split()
    assert resume == ["edgekd", "distill", "--resume", "--out", str(out)]  # the rest is read from config.json
    proc = edgekd(*resume[1:], env=world["env"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["device_loop"]["final_round"] == 2 and report["selection"]["width"] == 1.0
    assert report["device_loop"]["stopped"] is None
    assert [r["status"] for r in report["device_loop"]["rounds"]] == ["over", "fits"]



def test_a_reselected_round_keeps_the_family_and_size_round_1_searched(tmp_path):
    """`--student auto` / `--image-sizes` are searched in round 1; round 2 distils the re-selected width in the
    family and at the size round 1 took (it searched the families again and ignored the width)."""
    from edgekd.config import RunConfig
    from edgekd.devices.loop import round_config

    cfg = RunConfig(target="host", out=str(tmp_path / "run"))
    cfg.student.family, cfg.selection.image_sizes, cfg.selection.widths = "auto", (32, 64), (0.5, 1.0)
    cfg.device.remote = "loop"
    first = round_config(cfg, {"rounds": [], "next_width": None}, tmp_path / "run" / "rounds" / "1", False)
    assert (first.student.family, first.selection.width, first.selection.image_sizes) == ("auto", None, (32, 64))
    assert first.device.remote is None and first.out.endswith("rounds/1")
    state = {"rounds": [{"round": 1, "width": 1.0, "arch": "mobilenet_v2", "image_size": 64}], "next_width": 0.5}
    second = round_config(cfg, state, tmp_path / "run" / "rounds" / "2", False)
    assert (second.student.family, second.selection.width, second.selection.widths) == ("mobilenet_v2", 0.5, None)
    assert second.selection.image_sizes == (64,)
    second.validate()
    assert (cfg.student.family, cfg.selection.widths) == ("auto", (0.5, 1.0))  # the loop's own config is untouched


MOBILE_WIDTHS = (0.25, 0.5, 3.0)


@pytest.mark.slow
@needs_sshd
def test_closed_loop_reselects_in_the_runs_family(world, tiny_npz, random_teacher, tmp_path):
    """`--student mobilenet_v3_small`: round 2 is re-selected among mobilenet_v3_small's widths, costed as that
    family (the loop used to re-select among the cnn family's predictions whatever --student said)."""
    from edgekd.devices.calibrate import scale_calibration
    from edgekd.devices.remote import MeasureOptions, measure_files
    from edgekd.devices.store import get_device
    from edgekd.hardware.graph import cached_onnx

    arch = "mobilenet_v3_small"
    files = [cached_onnx(arch, num_classes=10, input_shape=[1, 1, 28, 28], width=w, depth=1, image_size=28)
             for w in MOBILE_WIDTHS]
    run = measure_files(get_device("loop"), files, runtime="onnxruntime", options=MeasureOptions(seconds=0.3, threads=1))
    truth = {w: row["latency_ms"]["p50"] for w, row in zip(MOBILE_WIDTHS, run.results["results"])}
    budget = 0.5 * truth[3.0]  # the widest misses it on the device, by more than load on a shared machine moves it
    miscalibrate(world)
    scale_calibration("loopback", 0.5)  # a quarter of the truth: round 1 takes the widest, whatever the family's fit
    out = tmp_path / "run"
    proc = edgekd("distill", "--target", str(world["profile"]), "--device", "loop", "--data", str(tiny_npz),
                  "--teacher", str(random_teacher), "--student", arch, "--epochs", "1", "--batch-size", "64",
                  "--widths", ",".join(f"{w:g}" for w in MOBILE_WIDTHS), "--budget-ms", f"{budget:.5f}",
                  "--formats", "onnx", "--out", str(out), "--no-progress", "--bench-seconds", "0.3", "--max-rounds", "2",
                  "--force", env=world["env"])  # --force: the teacher is untrained
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    loop = json.loads((out / "report.json").read_text())["device_loop"]
    r1, r2 = loop["rounds"]
    assert r1["width"] == 3.0 and r1["status"] == "over" and r1["decision"] == "next round", r1
    # Round 1's re-selection: every width of the run's family, the measured one judged by its measurement.
    rows = {c["width"]: c for c in r1["candidates"]}
    assert {c["arch"] for c in r1["candidates"]} == {arch} and set(rows) == set(MOBILE_WIDTHS)
    assert rows[3.0]["source"] == "measured:loop" and rows[3.0]["latency_ms"] == r1["measured_ms"]
    assert all(rows[w]["source"].startswith("predicted:loopback") for w in MOBILE_WIDTHS if w != 3.0)
    assert r1["next_width"] == max(w for w, c in rows.items() if c["fits"]) == r2["width"]
    # Round 2 distilled that family at that width, and its own selection costed it as the loop did.
    second = json.loads((out / "rounds" / "2" / "report.json").read_text())
    assert second["student"]["arch"] == arch and second["student"]["width"] == r2["width"]
    assert second["selection"]["family"] == arch
    assert {c["family"] for c in second["selection"]["candidates"]} == {arch}
    assert second["student"]["predicted_ms"] == pytest.approx(rows[r2["width"]]["latency_ms"], rel=1e-6)
    print(f"\nbudget {budget:.4f} ms; truth {truth}; round 1 candidates {rows}")


# --- TensorRT on a Jetson: trtexec builds and times there -------------------------------------------

TRTEXEC_LOG = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v8201] # /usr/src/tensorrt/bin/trtexec --onnx=student.onnx --fp16
[11/29/2026-10:00:01] [I] === Performance summary ===
[11/29/2026-10:00:01] [I] Throughput: 3190.2 qps
[11/29/2026-10:00:01] [I] Latency: min = 0.2854 ms, max = 1.20312 ms, mean = 0.310181 ms, median = 0.30127 ms, percentile(99%) = 0.62207 ms
[11/29/2026-10:00:01] [I] GPU Compute Time: min = 0.2 ms, max = 1.1 ms, mean = 0.21 ms, median = 0.205 ms, percentile(99%) = 0.5 ms
&&&& PASSED TensorRT.trtexec [TensorRT v8201]
"""


def _trace(queries) -> str:
    """An --exportTimes trace of (start ms, latency ms) queries in trtexec's layout (sampleReporting.cpp)."""
    rows = []
    for t, ms in queries:
        rows.append(f'{{ "startEnqMs" : {t}, "endEnqMs" : {t + 0.01}, "startH2dMs" : {t}, "endH2dMs" : {t + 0.01}, '
                    f'"startComputeMs" : {t + 0.01}, "endComputeMs" : {t + ms - 0.01}, "startD2hMs" : {t + ms - 0.01}, '
                    f'"endD2hMs" : {t + ms}, "h2dMs" : 0.01, "computeMs" : {ms - 0.02}, "d2hMs" : 0.01, '
                    f'"latencyMs" : {ms}, "endToEndMs" : {ms} }}')
    return "[\n  " + "\n, ".join(rows) + "\n]\n"


def test_trtexec_commands_and_results():
    from edgekd.devices import trtexec

    cmd = trtexec.command("/usr/src/tensorrt/bin/trtexec", "student.int8.onnx", "int8", input_name="x",
                          input_shape=[1, 1, 28, 28], seconds=3)
    assert "--onnx=student.int8.onnx" in cmd and "--fp16 --int8" in cmd and "--shapes=x:1x1x28x28" in cmd
    assert "--exportTimes=student.int8.onnx.times.json" in cmd and "--duration=3" in cmd
    assert cmd.endswith("> student.int8.onnx.trtexec.log 2>&1")
    assert "--fp16" not in trtexec.command("trtexec", "m.onnx", "fp32", input_name=None, input_shape=None, seconds=1)
    # The trace holds the warm-up (compute started before 500 ms), which is not timed.
    warmup = [(i * 50.0, 5.0) for i in range(10)]
    timed = [(600.0 + i, 0.3) for i in range(50)] + [(700.0, 0.9)]
    trace = _trace(warmup + timed)
    row = trtexec.result_row("student.onnx", "fp16", log=TRTEXEC_LOG, times=trace.encode(), version="v8201")
    assert row["status"] == "ok" and row["runs"] == 51 and row["latency_ms"]["p50"] == pytest.approx(0.3)
    assert row["runtime"] == "tensorrt" and row["provider"] == "trtexec" and row["precision"] == "fp16"
    # Without a trace (an old trtexec), the log's summary line.
    row = trtexec.result_row("student.onnx", "fp16", log=TRTEXEC_LOG, times=None, version="v8201")
    assert row["latency_ms"]["p50"] == pytest.approx(0.30127) and row["latency_ms"]["p99"] == pytest.approx(0.62207)
    failed = trtexec.result_row("student.onnx", "fp16", log="[E] [TRT] ModelImporter.cpp:773: unsupported op\n"
                                "&&&& FAILED TensorRT.trtexec", times=None, version=None)
    assert failed["status"] == "failed" and "unsupported op" in failed["reason"]


@pytest.mark.tensorrt
@pytest.mark.skipif(not any(Path(p).is_file() for p in ("/usr/src/tensorrt/bin/trtexec", "/usr/bin/trtexec")),
                    reason="needs trtexec and an NVIDIA GPU on the device (a Jetson); the loopback device has neither")
def test_trtexec_builds_and_times_on_the_device(world, bench_run):
    add(world, "nano-like", world["server"].ssh_spec(), target="jetson-nano")
    proc = edgekd("bench", str(bench_run), "--device", "nano-like", "--seconds", "1", env=world["env"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads((bench_run / "report.json").read_text())
    row = next(a for a in report["artifacts"] if a["name"] == "student.onnx")
    assert row["target_latency_source"] == "measured:nano-like"
    assert report["devices"]["nano-like"]["transfer"]["method"] == "trtexec"


@needs_sshd
def test_calibrating_an_int8_target_times_quantized_probes(world):
    """A Raspberry Pi profile predicts at INT8: its probes run there as QDQ models, costed as their FP32 graph."""
    from edgekd.devices.history import load_rows

    profile = world["root"] / "loopback-int8.yaml"
    profile.write_text(LOOPBACK_PROFILE.replace("name: loopback", "name: loopback-int8")
                       .replace("precision: fp32", "precision: int8").replace("precisions: [fp32]", "precisions: [fp32, int8]")
                       .replace("peak_gflops: {fp32: 83}", "peak_gflops: {fp32: 83, int8: 332}"))
    add(world, "loop-int8", world["server"].ssh_spec(), target=str(profile))
    proc = edgekd("calibrate", "--target", str(profile), "--device", "loop-int8", "--count", "4", "--seconds", "0.2",
                  "--json", env=world["env"])
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["coefficients"]["precision"] == "int8" and out["n_measurements"] == 4
    rows = load_rows("loop-int8")
    assert {r["precision"] for r in rows} == {"int8"} and all(r["measured_file"].endswith(".int8.onnx") for r in rows)
    assert all(not r["model"].endswith(".int8.onnx") for r in rows)  # costed as the FP32 graph
