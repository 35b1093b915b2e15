"""Measure model files on a device over SSH: probe it, copy the runner and the files, time there, bring JSON back."""

from __future__ import annotations

import hashlib
import json
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgekd.devices.ssh import Connection, DeviceError, remote_command
from edgekd.devices.store import Device
from edgekd.errors import EdgeKDError

RUNNER_NAME = "edgekd_runner.py"
RESULTS_NAME = "results.json"
LOG_NAME = "runner.log"
EXIT_NO_PYTHON, EXIT_OLD_PYTHON = 96, 95
LOAD_ALLOWANCE_S = 20      # per file: loading a model and the runner's warm-up on a slow board
BUILD_ALLOWANCE_S = 600    # per file: a TensorRT engine build on a Jetson Nano takes minutes


def device_runtime(device: Device, runtime: str):
    """The runtime's descriptor (edgekd.runtimes), when the device runner or a device tool can drive it."""
    from edgekd.runtimes import RUNTIMES

    rt = RUNTIMES.get(runtime) if runtime in RUNTIMES else None
    if rt is None or not (rt.device_modules or rt.device_tool):
        over = ", ".join(name for name, r in RUNTIMES.items() if r.device_modules or r.device_tool)
        raise EdgeKDError(f"device {device.name}: its target runs {runtime}, which edgekd cannot drive over SSH",
                          f"over SSH edgekd runs {over}; time {runtime} models with that platform's own benchmark "
                          "tool and `edgekd ingest` the results")
    return rt


def probe_modules(runtimes=None) -> list[str]:
    """Python modules to try on a device: numpy and what the runtimes' device runner backends import."""
    from edgekd.runtimes import RUNTIMES

    names = ["numpy"]
    for _, rt in RUNTIMES.items():
        if runtimes is None or rt.name in runtimes:
            names += [m for spec in rt.device_modules for m in spec.split("|") if m not in names]
    return names


# --- probing ----------------------------------------------------------------------------------------

def probe_source() -> str:
    """The probe script as the device runs it: edgekd's portable hardware probes, then probe.py."""
    from edgekd.bench import env
    from edgekd.bench.runner_script import portable_block

    return "import os, platform, sys\n" + portable_block(env) + "\n" + Path(__file__).with_name("probe.py").read_text()


def _python_checked(device: Device, then: str) -> str:
    """sh that fails with a known code when the device's python is missing or older than 3.6, else runs ``then``."""
    py = remote_command(device.python)
    return (f"command -v {py} >/dev/null 2>&1 || exit {EXIT_NO_PYTHON}\n"
            f"{py} -c 'import sys; sys.exit(0 if sys.version_info >= (3, 6) else 1)' || {{ {py} -V 2>&1; exit {EXIT_OLD_PYTHON}; }}\n"
            + then)


def python_failure(device: Device, code: int, output: str) -> DeviceError | None:
    if code == EXIT_NO_PYTHON:
        return DeviceError(f"device {device.name}: {device.python} is not found there (not on its PATH)",
                           f"install Python 3.6+ there, or point edgekd at one: `edgekd devices add {device.name} "
                           f"--ssh {device.ssh} --target {device.target} --python /path/to/python3 --replace`")
    if code == EXIT_OLD_PYTHON:
        return DeviceError(f"device {device.name}: {device.python} is {output.strip() or 'older than 3.6'}",
                           "the runner needs Python >= 3.6 (JetPack 4.6 ships 3.6); pass --python to a newer one")
    return None


def probe(conn: Connection, modules=None) -> dict:
    """Run the probe on the device: what it is and what it can run (see edgekd.devices.probe).

    ``modules``: the Python modules to try (default: every runtime's, see probe_modules).
    """
    device = conn.device
    names = " ".join(shlex.quote(m) for m in (modules or probe_modules()))
    script = _python_checked(device, f"exec {remote_command(device.python)} - {names}")
    proc = conn.run(f"sh -c {shlex.quote(script)}", step="probing", timeout=120, stdin=probe_source().encode(),
                    check=False)
    text = proc.stdout.decode("utf-8", "replace")
    failure = python_failure(device, proc.returncode, text)
    if failure:
        raise failure
    try:
        info = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise DeviceError(f"device {device.name}: the probe failed (exit {proc.returncode}): "
                          f"{(proc.stderr.decode('utf-8', 'replace').strip().splitlines() or ['no output'])[-1][:300]}",
                          f"check that {device.python} runs there (ssh to it and try it)") from None
    return info


def readiness(device: Device, info: dict, runtime: str) -> tuple[str, DeviceError | None]:
    """('runner' or the tool that will time ``runtime``, None) or (what is missing, the error to raise)."""
    spec = device_runtime(device, runtime)
    modules = info.get("modules", {})
    if spec.device_tool and info.get(spec.device_tool):  # trtexec builds and times by itself: no numpy needed
        return spec.device_tool, None
    if not modules.get("numpy", {}).get("ok"):
        return "numpy", DeviceError(f"device {device.name}: {device.python} there has no numpy "
                                    f"({modules.get('numpy', {}).get('error', 'not importable')})",
                                    "pip3 install numpy there (the runner needs it), or pass --python to one that has it")
    # "a|b" in device_modules: any one of them will do (LiteRT's interpreter comes in three packages).
    missing = [m for m in spec.device_modules if not any(modules.get(a, {}).get("ok") for a in m.split("|"))]
    if not missing:
        return "runner", None
    what = f"{spec.device_tool} or " if spec.device_tool else ""
    first = missing[0].split("|")[0]
    why = modules.get(first, {}).get("error", "not importable")
    return runtime, DeviceError(f"device {device.name} cannot run {runtime}: no {what}{first} for {device.python} ({why})",
                                spec.device_install)


# --- measuring ----------------------------------------------------------------------------------------

@dataclass
class DeviceRun:
    """What came back from one measurement on a device, and what it cost to get it."""

    device: str
    results: dict                   # the on-device runner's results document (edgekd-device-results)
    files: dict[str, Path]          # name on the device -> local file
    method: str                     # "runner" or "trtexec"
    timings_s: dict = field(default_factory=dict)
    wall_s: float = 0.0
    retries: int = 0
    sent_bytes: int = 0

    @property
    def measuring_s(self) -> float:
        return self.timings_s.get("measuring", 0.0)

    def overhead_s(self) -> float:
        """Seconds spent on SSH (connecting, probing, copying, fetching) rather than timing models."""
        return round(max(0.0, self.wall_s - self.measuring_s), 3)

    def local(self, row: dict) -> Path | None:
        """The local file a result row measured."""
        return self.files.get(row.get("model", ""))

    def transfer_record(self) -> dict:
        return {"method": self.method, "files": len(self.files), "sent_bytes": self.sent_bytes,
                "retries": self.retries, "wall_s": round(self.wall_s, 3), "overhead_s": self.overhead_s(),
                "steps_s": dict(self.timings_s)}


@dataclass
class MeasureOptions:
    seconds: float = 3.0            # timing budget per model
    warmup: int = 20
    threads: int | None = None
    timeout_s: float | None = None  # the whole measurement on the device; default from the file count

    def __post_init__(self):
        # Checked here, before any connection: a typo must not cost an SSH round trip to be found.
        for flag, value, least in (("--seconds", self.seconds, None), ("--timeout", self.timeout_s, None),
                                   ("--warmup", self.warmup, 0), ("--threads", self.threads, 1)):
            if value is not None or flag in ("--seconds", "--warmup"):
                _check_option(flag, value, least)


def _check_option(flag: str, value, least: int | None) -> None:
    """A time in seconds (finite, > 0) when ``least`` is None, else a whole number >= ``least``."""
    import math

    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if least is None and not (number and value > 0):
        raise EdgeKDError(f"{flag} {value!r} is not a finite number of seconds > 0", f"pass e.g. {flag} 3")
    if least is not None and not (number and value == int(value) and value >= least):
        raise EdgeKDError(f"{flag} {value!r} is not a whole number >= {least}", f"pass e.g. {flag} {max(least, 2)}")


def _unique_names(files) -> dict[str, Path]:
    """Name on the device -> local file: the file name, or N/name when two files share it (each in its folder)."""
    names: dict[str, Path] = {}
    taken = set()
    for i, path in enumerate(Path(f) for f in files):
        if path in names.values():
            continue
        name = path.name if path.name not in taken else f"{i}/{path.name}"
        taken.add(path.name)
        names[name] = path
    return names


def external_files(path: Path) -> list[str]:
    """Files an ONNX model keeps its weights in (torch's dynamo exporter writes NAME.onnx.data), by the names it uses."""
    if path.suffix != ".onnx":
        return []
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    found = []
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            found += [e.value for e in tensor.external_data if e.key == "location" and e.value not in found]
    return found


def _companions(names: dict[str, Path]) -> dict[str, Path]:
    """Add what a model needs beside it: an OpenVINO IR's .bin, an ONNX model's external data files."""
    out = dict(names)
    for name, path in names.items():
        folder = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
        extras = [path.with_suffix(".bin").name] if path.suffix == ".xml" else external_files(path)
        for extra in extras:
            if (path.parent / extra).is_file():
                out[folder + extra] = path.parent / extra
    return out


def measure_files(device: Device, files, *, runtime: str, precisions: dict[Path, str] | None = None,
                  options: MeasureOptions | None = None, onnx_inputs: dict[Path, tuple] | None = None) -> DeviceRun:
    """Time ``files`` on ``device`` with ``runtime``; the runner-format results document comes back.

    ``precisions``: file -> precision to build at (TensorRT builds from ONNX); ``onnx_inputs``: file ->
    (input name, shape) for trtexec. Result rows name files as they are called on the device
    (``run.files`` maps them back). Connection drops are retried from the copy on (bounded); any other
    failure is a one-line DeviceError naming the device, and nothing is left in its work folder.
    """
    options = options or MeasureOptions()
    t0 = time.perf_counter()
    names = _unique_names(files)
    precisions = {name: (precisions or {})[path] for name, path in names.items() if path in (precisions or {})}
    onnx_inputs = {name: (onnx_inputs or {})[path] for name, path in names.items() if path in (onnx_inputs or {})}
    with Connection(device) as conn:
        spec = device_runtime(device, runtime)
        info = conn.retrying(lambda: probe(conn, probe_modules([runtime])), "probing")
        method, problem = readiness(device, info, runtime)
        if problem:
            raise problem
        timeout = options.timeout_s or (60 + len(names) * (options.seconds + options.warmup * 0.05 + LOAD_ALLOWANCE_S
                                                           + (BUILD_ALLOWANCE_S if spec.builds_on_device else 0)))
        with tempfile.TemporaryDirectory(prefix="edgekd-device-") as tmp:
            payload = _companions(names)
            if method == "trtexec":
                script, fetch = _trtexec_script(info, names, precisions, onnx_inputs, options, timeout)
            else:
                from edgekd.bench.runner_script import write_runner_script

                payload[RUNNER_NAME] = write_runner_script(Path(tmp) / RUNNER_NAME)
                script, fetch = _runner_script(device, names, runtime, precisions, options, timeout)

            def attempt():
                workdir = conn.put(payload)
                return conn.run_in(workdir, script, step="measuring", timeout=timeout + 60, fetch=fetch)

            try:
                code, got = conn.retrying(attempt, "measuring")
            finally:
                conn.remove_workdirs(conn.leftovers)  # what dropped copies left behind, best effort
        results = _results(device, info, method, code, got, names, precisions, onnx_inputs, timeout,
                           elapsed=conn.timings.get("measuring", 0.0))
        run = DeviceRun(device=device.name, results=results, files=names, method=method,
                        timings_s=dict(conn.timings), retries=conn.retries, sent_bytes=conn.sent_bytes)
    run.wall_s = time.perf_counter() - t0
    return run


def _timeout_prefix(seconds: float) -> str:
    # The device's own `timeout` stops the runner even when our connection is gone (no tty: no SIGHUP).
    return (f"if command -v timeout >/dev/null 2>&1; then set -- timeout -k 10 {int(seconds)}; else set --; fi\n")


def _runner_script(device: Device, names: dict[str, Path], runtime: str, precisions: dict[str, str],
                   options: MeasureOptions, timeout: float) -> tuple[str, list[str]]:
    """sh that runs the runner once per build precision (one group for CPU runtimes) into results-N.json."""
    groups: dict[str | None, list[str]] = {}
    for name in names:
        groups.setdefault(precisions.get(name) if runtime == "tensorrt" else None, []).append(name)
    lines, fetch = [_timeout_prefix(timeout), "status=0"], [LOG_NAME]
    for i, (precision, group) in enumerate(groups.items()):
        args = [*group, "--device-name", device.name, "--runtime", runtime, "--seconds", f"{options.seconds:g}",
                "--warmup", str(options.warmup), "--out", f"results-{i}.json"]
        if options.threads:
            args += ["--threads", str(options.threads)]
        if precision:
            args += ["--precision", precision]
        quoted = " ".join(shlex.quote(a) for a in args)
        lines.append(f'"$@" {remote_command(device.python)} {RUNNER_NAME} {quoted} >> {LOG_NAME} 2>&1 || status=$?')
        fetch.append(f"results-{i}.json")
    lines.append("(exit $status)")  # sets $? for run_in; a plain exit would skip the fetch
    return "\n".join(lines), fetch


def _trtexec_script(info: dict, names: dict[str, Path], precisions: dict[str, str], inputs: dict,
                    options: MeasureOptions, timeout: float) -> tuple[str, list[str]]:
    from edgekd.devices import trtexec

    tool = info["trtexec"]["path"]
    lines, fetch = [_timeout_prefix(timeout), "status=0"], []
    for name in names:
        input_name, shape = inputs.get(name, (None, None))
        cmd = trtexec.command(tool, name, precisions.get(name, "fp16"), input_name=input_name, input_shape=shape,
                              seconds=options.seconds)
        lines.append(f'"$@" {cmd} || status=$?')
        fetch += [name + trtexec.LOG_SUFFIX, name + trtexec.TIMES_SUFFIX]
    lines.append("(exit $status)")  # sets $? for run_in; a plain exit would skip the fetch
    return "\n".join(lines), fetch


def _results(device: Device, info: dict, method: str, code: int, got: dict, names: dict[str, Path],
             precisions: dict[str, str], inputs: dict, timeout: float, elapsed: float) -> dict:
    """The results document, or the one-line error that says why there is none."""
    # `timeout` exits 124, or 137 when its KILL was needed; a runner killed by anything else also gives 137.
    if code == 124 or (code == 137 and elapsed >= timeout):
        raise DeviceError(f"device {device.name}: the measurement did not finish within {timeout:g} s",
                          "raise --timeout, time fewer or smaller models, or check what else runs there (top)")
    if method == "trtexec":
        doc = _trtexec_results(info, got, names, precisions, inputs)
    else:
        docs = [json.loads(got[k]) for k in sorted(got) if k.startswith("results-")]
        log = got.get(LOG_NAME, b"").decode("utf-8", "replace")
        if not docs:
            raise _runner_crash(device, code, log)
        doc = docs[0]
        for extra in docs[1:]:
            doc["results"] += extra["results"]
    doc["device"] = {**info, **doc.get("device", {}), "name": device.name}
    doc["device"].pop("modules", None)
    doc["device"]["runtimes"] = {k: v.get("version") for k, v in info.get("modules", {}).items() if v.get("ok")}
    doc["target"] = device.name
    for row in doc["results"]:
        local = names.get(row.get("model", ""))
        if local is not None and "sha256" not in row:
            row["sha256"] = _sha256(local)
    ok = [r for r in doc["results"] if r.get("status") == "ok"]
    if not ok:
        reasons = "; ".join(f"{r.get('model')}: {r.get('reason')}" for r in doc["results"][:3]) or "no result rows"
        raise DeviceError(f"device {device.name}: nothing could be measured ({reasons})",
                          "fix what the reason says (a model the runtime there cannot load?) and rerun")
    return doc


def _runner_crash(device: Device, code: int, log: str) -> DeviceError:
    lines = [ln for ln in log.strip().splitlines() if ln.strip()]
    last = lines[-1][:300] if lines else "no output"
    if code < 0 or code > 128:
        signal = -code if code < 0 else code - 128
        return DeviceError(f"device {device.name}: the runner was killed by signal {signal} before writing results ({last})",
                           "out of memory? check `dmesg` there (the OOM killer) and rerun with fewer models")
    return DeviceError(f"device {device.name}: the runner failed (exit {code}) before writing results: {last}",
                       f"run it by hand there to see the traceback (edgekd runner --out {RUNNER_NAME})")


def _trtexec_results(info: dict, got: dict, names: dict[str, Path], precisions: dict[str, str], inputs: dict) -> dict:
    from edgekd.version import __version__
    from edgekd.bench.device_runner import RESULTS_FORMAT, RESULTS_VERSION
    from edgekd.devices import trtexec

    version = (info.get("trtexec") or {}).get("version")
    rows = []
    for name in names:
        log = got.get(name + trtexec.LOG_SUFFIX, b"").decode("utf-8", "replace")
        row = trtexec.result_row(name, precisions.get(name, "fp16"), log=log,
                                 times=got.get(name + trtexec.TIMES_SUFFIX), version=version)
        if name in inputs:
            row["input_shape"] = list(inputs[name][1])
        rows.append(row)
    return {"format": RESULTS_FORMAT, "format_version": RESULTS_VERSION, "edgekd_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": {"runtime": "tensorrt"},
            "results": rows}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check(device: Device) -> tuple[dict, dict]:
    """Connect and probe: (what the device is and has, seconds per step)."""
    with Connection(device) as conn:
        t0 = time.perf_counter()
        info = conn.retrying(lambda: probe(conn), "probing")
        timings = {**conn.timings, "total": round(time.perf_counter() - t0, 3)}
        t1 = time.perf_counter()
        conn.run("true", step="round trip", timeout=30)
        timings["round_trip_ms"] = round((time.perf_counter() - t1) * 1000, 1)
    return info, timings
