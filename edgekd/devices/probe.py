"""What a device can run: Python, numpy, runtimes, trtexec, GPU, OS, Jetson state; one JSON object on stdout.

Sent over SSH to the device's Python (>= 3.6, standard library only) with edgekd.bench.env's portable
probes prepended, so the device is described exactly as the on-device runner describes it. Keep it
Python 3.6: no annotations, walrus, f"{x=}", dataclasses or `from __future__ import annotations`.
"""

import json
import os
import platform
import shutil
import subprocess
import sys

try:
    device_info, platform_string  # noqa: B018 - defined above this file when it is shipped to a device
except NameError:  # imported within edgekd (tests)
    from edgekd.bench.env import device_info, platform_string

PROBE_FORMAT = "edgekd-device-probe"
# Python modules to try when none are named (edgekd names its runtimes' device_modules).
MODULES = ("numpy", "onnxruntime", "openvino", "tensorrt", "pycuda")
# JetPack installs trtexec here, off the PATH.
TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/TensorRT/bin/trtexec", "/opt/tensorrt/bin/trtexec")


def _first_line(err):
    text = str(err).strip().splitlines()
    return "{}: {}".format(type(err).__name__, text[0][:200] if text else "")


def _output(cmd, timeout=20):
    try:
        out = subprocess.check_output(cmd, stderr=subprocess.STDOUT, timeout=timeout)
    except Exception:
        return None
    return out.decode("utf-8", "replace")


def module_info(name):
    """Whether ``name`` imports here, its version, and what it can run on (providers, devices)."""
    try:
        module = __import__(name)
    except Exception as err:  # ImportError, or a broken install raising anything at import
        return {"ok": False, "error": _first_line(err)}
    info = {"ok": True, "version": getattr(module, "__version__", None)}
    try:
        if name == "onnxruntime":
            info["providers"] = list(module.get_available_providers())
        elif name == "openvino":
            core = module.Core() if hasattr(module, "Core") else module.runtime.Core()
            info["devices"] = list(core.available_devices)
            if info["version"] is None and hasattr(module, "get_version"):
                info["version"] = module.get_version()
    except Exception as err:
        info["warning"] = _first_line(err)
    return info


def trtexec_info():
    path = shutil.which("trtexec")
    if path is None:
        path = next((p for p in TRTEXEC_PATHS if os.access(p, os.X_OK)), None)
    if path is None:
        return None
    # trtexec 8.x has no --version; its banner "&&&& RUNNING TensorRT.trtexec [TensorRT v8201]" says it.
    text = _output([path, "--help"]) or ""
    version = None
    marker = "[TensorRT v"
    if marker in text:
        version = "v" + text.split(marker, 1)[1].split("]", 1)[0]
    return {"path": path, "version": version}


def gpus():
    """Discrete NVIDIA GPUs (nvidia-smi); a Jetson's integrated GPU shows in its board model instead."""
    text = _output(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    if not text:
        return []
    return [line.strip() for line in text.strip().splitlines() if line.strip() and "failed" not in line.lower()]


def os_name():
    for line in (_read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform_string()


def _read(path):
    try:
        with open(path) as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError):
        return None


def probe(modules=MODULES):
    info = device_info()
    info.update({
        "format": PROBE_FORMAT, "python_executable": sys.executable, "python": platform.python_version(),
        "os": os_name(), "modules": dict((name, module_info(name)) for name in modules),
        "trtexec": trtexec_info(), "gpus": gpus(), "timeout_tool": shutil.which("timeout") is not None,
        "tar": shutil.which("tar") is not None,
    })
    return info


def main(argv=None):
    # Arguments name the modules to try (importing every runtime takes seconds on a small board).
    names = [m for m in (sys.argv[1:] if argv is None else argv) if m.replace("_", "").isalnum()] or MODULES
    sys.stdout.write(json.dumps(probe(names)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
