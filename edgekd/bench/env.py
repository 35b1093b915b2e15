"""The environment a latency was measured in: CPU model and ISA features, cores, clocks, temperature, versions."""

from __future__ import annotations

import os
import platform
import sys

# The probes between the PORTABLE markers are copied verbatim into the standalone on-device runner
# (edgekd.bench.runner_script), which must run on Python 3.6 with only the standard library and numpy:
# keep them free of annotations, walrus, f-string "=", dataclasses and anything newer than 3.6.
# One implementation means the host row and the device rows of a report describe hardware the same way.

# PORTABLE-BEGIN
# ISA features that decide which kernels a runtime can use (VNNI/AMX for INT8, F16C/asimdhp for FP16...).
ISA_FEATURES = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
    "neon", "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2",
)


def _read_text(path, default=None):
    try:
        with open(path, "r") as fh:
            return fh.read().strip().replace("\x00", "")
    except (OSError, UnicodeDecodeError):
        return default


def cpu_info(cpuinfo_text=None):
    """CPU model, ISA feature flags and physical core count from /proc/cpuinfo (Linux, x86 and ARM)."""
    text = _read_text("/proc/cpuinfo", "") if cpuinfo_text is None else cpuinfo_text
    model = None
    flags = set()
    arm_part = None
    cores = set()
    physical = "0"
    for line in text.splitlines():
        if ":" not in line:
            continue
        key, _, value = line.partition(":")
        key = key.strip().lower()
        value = value.strip()
        if key in ("model name", "hardware", "cpu model", "processor") and value and not value.isdigit():
            if model is None or key == "model name":
                model = value
        elif key in ("flags", "features"):
            flags.update(value.split())
        elif key == "cpu part" and arm_part is None:
            arm_part = value
        elif key == "physical id":
            physical = value
        elif key == "core id":
            cores.add((physical, value))
    if model is None:
        model = platform.machine() or "unknown"  # not platform.processor(): it runs `uname -p` (see platform_string)
        if arm_part:
            model = "{} (ARM part {})".format(model, arm_part)
    features = [f for f in ISA_FEATURES if f in flags]
    return {"model": model, "features": features, "physical_cores": len(cores) or None}


def cpu_clock():
    """Frequency governor and current/max clock of CPU 0, where the kernel exposes them."""
    base = "/sys/devices/system/cpu/cpu0/cpufreq/"
    governor = _read_text(base + "scaling_governor")
    cur = _read_text(base + "scaling_cur_freq")
    top = _read_text(base + "cpuinfo_max_freq")
    return {
        "governor": governor,
        "cur_mhz": int(cur) // 1000 if cur and cur.isdigit() else None,
        "max_mhz": int(top) // 1000 if top and top.isdigit() else None,
    }


def temperatures_c():
    """Thermal zone temperatures in degrees C by zone type (SoCs throttle when hot, which shows in p99)."""
    out = {}
    root = "/sys/class/thermal"
    try:
        zones = sorted(z for z in os.listdir(root) if z.startswith("thermal_zone"))
    except OSError:
        return out
    for zone in zones:
        raw = _read_text(os.path.join(root, zone, "temp"))
        kind = _read_text(os.path.join(root, zone, "type"), zone) or zone
        try:
            value = int(raw) / 1000.0
        except (TypeError, ValueError):
            continue
        if -40.0 < value < 150.0:
            out[kind] = round(value, 1)
    return out


def memory_mb():
    text = _read_text("/proc/meminfo", "")
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) // 1024
    return None


def usable_cores(cpu_max="/sys/fs/cgroup/cpu.max", cfs="/sys/fs/cgroup/cpu"):
    """CPUs this process may run on: affinity, narrowed by a cgroup CPU quota (containers): v2's
    ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD"), else v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    parts = (_read_text(cpu_max) or "").split()
    if len(parts) != 2:
        parts = [_read_text(cfs + "/cpu.cfs_quota_us") or "", _read_text(cfs + "/cpu.cfs_period_us") or ""]
    if parts[0].isdigit() and parts[1].isdigit() and int(parts[1]) > 0 and int(parts[0]) > 0:
        n = max(1, min(n, int(-(-int(parts[0]) // int(parts[1])))))
    return n


def _devfreq_gpu():
    """GPU clock (MHz) of an SoC's integrated GPU from devfreq (Jetson: 57000000.gpu, 17000000.ga10b ...)."""
    root = "/sys/class/devfreq"
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return None
    for name in names:
        if not any(tag in name for tag in ("gpu", "ga10b", "gv11b", "gp10b")):
            continue
        cur = _read_text(os.path.join(root, name, "cur_freq"))
        top = _read_text(os.path.join(root, name, "max_freq"))
        if cur and cur.isdigit():
            return {"cur_mhz": int(cur) // 1000000, "max_mhz": int(top) // 1000000 if top and top.isdigit() else None}
    return None


def platform_string():
    """What platform.platform() says (Linux-6.1.0-x86_64-with-glibc2.36), read without starting a process.

    platform.platform() runs `uname -p` in a subprocess. Forking a process that holds the threads of ONNX
    Runtime, OpenVINO and the data-loader workers killed edgekd with SIGSEGV while it waited for that
    `uname` (measured: 3 of 3 one-epoch runs over 6,000 image files, core dump in os.waitpid).
    """
    u = os.uname()
    libc = "".join(platform.libc_ver())
    return "-".join(p for p in (u.sysname, u.release, u.machine) if p) + ("-with-" + libc if libc else "")


def jetson_state():
    """NVIDIA Jetson power mode (nvpmodel), GPU clock and JetPack version; empty elsewhere.

    A Jetson's latency depends on these as much as on the model: the same engine is ~2x slower in a 5 W
    mode than in MAXN, and jetson_clocks pins the clocks that DVFS otherwise lowers between runs.
    """
    if not os.path.exists("/etc/nv_tegra_release"):
        return {}
    state = {}
    status = _read_text("/var/lib/nvpmodel/status")  # "pmode:0000 fmode:..." written by nvpmodel
    if status and status.startswith("pmode:"):
        state["power_mode_id"] = status.split()[0].split(":", 1)[1]
    import subprocess

    for key, cmd in (("power_mode", ["nvpmodel", "-q"]),
                     ("jetpack", ["dpkg-query", "-W", "-f", "${Version}", "nvidia-jetpack"])):
        try:
            out = subprocess.check_output(cmd, stderr=subprocess.DEVNULL, timeout=10).decode("utf-8", "replace")
        except Exception:
            continue
        line = out.strip().splitlines()[0] if out.strip() else ""
        if key == "power_mode":
            line = line.split(":", 1)[-1].strip()  # "NV Power Mode: MAXN"
        if line:
            state[key] = line
    gpu = _devfreq_gpu()
    if gpu:
        state["gpu_mhz"] = gpu["cur_mhz"]
        state["gpu_max_mhz"] = gpu["max_mhz"]
    return state


def device_info():
    """Hardware and OS of this machine: what every measured latency must be read against."""
    cpu = cpu_info()
    info = {
        "hostname": platform.node(),
        "board": _read_text("/proc/device-tree/model"),
        "l4t": _read_text("/etc/nv_tegra_release"),
        "platform": platform_string(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu": cpu["model"],
        "cpu_features": cpu["features"],
        "cores": os.cpu_count(),
        "physical_cores": cpu["physical_cores"],
        "usable_cores": usable_cores(),
        "memory_mb": memory_mb(),
    }
    clock = cpu_clock()
    info["governor"] = clock["governor"]
    info["cpu_mhz"] = clock["cur_mhz"]
    info["cpu_max_mhz"] = clock["max_mhz"]
    info["temperature_c"] = temperatures_c()
    # Other processes competing for the cores inflate latencies (and multi-threaded runtimes most):
    # the load at measurement time lets a reader tell a busy-machine figure from a real one.
    try:
        info["load_avg"] = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        info["load_avg"] = None
    if info["l4t"]:
        # "# R32 (release), REVISION: 7.1, GCID: ..." -> keep the first line only.
        info["l4t"] = info["l4t"].splitlines()[0].lstrip("# ").strip()
    info.update(jetson_state())
    return info
# PORTABLE-END


# Distributions whose versions explain a latency besides each runtime's own (its descriptor's packages);
# looked up by metadata, so nothing heavy is imported.
BASE_PACKAGES = ("numpy", "torch", "onnx", "onnxslim")


def runtime_packages() -> tuple[str, ...]:
    from edgekd.runtimes import runtimes

    names = list(BASE_PACKAGES)
    for rt in runtimes():
        names += [p for p in rt.packages if p not in names]
    return tuple(names)


def package_versions(names=None) -> dict:
    from importlib import metadata

    names = runtime_packages() if names is None else names
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def collect_environment(*, threads: int | None = None) -> dict:
    """The report.json ``environment`` record of this machine."""
    from edgekd.version import __version__

    env = device_info()
    env["edgekd"] = __version__
    env["python"] = sys.version.split()[0]
    env.update(package_versions())
    env["threads"] = threads
    if "torch" in sys.modules:  # only if already loaded: importing torch just to ask costs seconds
        torch = sys.modules["torch"]
        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["cuda"] = torch.version.cuda
    return env


# The name the pipeline calls.
environment = collect_environment
