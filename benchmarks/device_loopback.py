"""What measuring over SSH costs, and how calibrating on the device changes its predictions, on a loopback device.

The "device" is this machine behind a real sshd on 127.0.0.1 (the test suite's, tests/sshd_server.py),
its runtime this machine's ONNX Runtime on one thread, its profile the datasheet-like loopback profile
of the tests. It prints:

1. SSH overhead: seconds of a measurement that are not timing models (connect, probe, copy, fetch,
   clean up), for 1, 4 and 16 artifacts: per call and per artifact.
2. Prediction error on a held-out set (edgekd cnn students at 8 widths, probe networks of another
   seed), with the profile's datasheet coefficients and after `calibrate --device` on 40 probes.

    python benchmarks/device_loopback.py [--probes 40]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from sshd_server import SSHServer, sshd_unavailable  # noqa: E402
from test_devices import LOOPBACK_PROFILE  # noqa: E402

WIDTHS = (0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def held_out() -> list[Path]:
    from edgekd.hardware.calibration import affordable_probes
    from edgekd.hardware.graph import cached_onnx

    students = [cached_onnx("cnn", num_classes=10, input_shape=[1, 1, 28, 28], width=w, depth=1) for w in WIDTHS]
    return students + [p for _, p in affordable_probes(12, seed=7, runtime="onnxruntime", max_mflops=300)]


def errors(target, run) -> np.ndarray:
    from edgekd.hardware.latency import predict_cost, target_graph_cost

    out = []
    for row in run.results["results"]:
        path = run.local(row)
        pred = predict_cost(target_graph_cost(path, target, "fp32", row.get("input_shape")), target, "fp32")
        out.append((pred.total_ms - row["latency_ms"]["p50"]) / row["latency_ms"]["p50"] * 100)
    return np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=40)
    args = parser.parse_args()
    why = sshd_unavailable()
    if why:
        sys.exit(f"cannot start a test sshd: {why}")
    work = Path(tempfile.mkdtemp(prefix="edgekd-device-bench-"))
    os.environ["EDGEKD_CONFIG_DIR"] = str(work / "config")
    os.environ.setdefault("EDGEKD_CACHE_DIR", str(work / "cache"))
    server = SSHServer(work / "ssh").start()
    os.environ["EDGEKD_SSH_CONFIG"] = str(server.config)
    try:
        from edgekd.devices.calibrate import calibrate_on_device, reload_target
        from edgekd.devices.remote import MeasureOptions, check, measure_files
        from edgekd.devices.store import add_device
        from edgekd.hardware.targets import load_target

        profile = work / "loopback.yaml"
        profile.write_text(LOOPBACK_PROFILE)
        device = add_device("loop", server.ssh_spec(), str(profile), python=sys.executable, workdir=str(work / "remote"))
        _, timings = check(device)
        print(f"connect {timings['connect']:.3f} s, probe (all runtimes) {timings['probing']:.3f} s, "
              f"round trip {timings['round_trip_ms']:.0f} ms")
        files = held_out()
        for n in (1, 4, 16):
            run = measure_files(device, files[:n], runtime="onnxruntime", options=MeasureOptions(seconds=0.2, threads=1))
            steps = ", ".join(f"{k} {v:.2f}" for k, v in run.timings_s.items())
            print(f"{n:2d} artifact(s): {run.wall_s:.2f} s in all, overhead {run.overhead_s():.2f} s "
                  f"({run.overhead_s() / n:.3f} s per artifact; {run.sent_bytes / 1e6:.2f} MB) [{steps}]")
        opts = MeasureOptions(seconds=0.5, threads=1)
        target = load_target(str(profile))
        before = errors(target, measure_files(device, files, runtime="onnxruntime", options=opts))
        cal = calibrate_on_device(str(profile), device, count=args.probes, options=MeasureOptions(seconds=0.5))
        print(f"calibrate --device on {args.probes} probes: {cal.run.wall_s:.1f} s, overhead {cal.run.overhead_s():.2f} s; "
              f"fit median error {cal.result.fit['median_abs_pct_err']:.1f}% ({cal.result.fit.get('method')})")
        after = errors(reload_target(target), measure_files(device, files, runtime="onnxruntime", options=opts))
        for label, e in (("datasheet", before), ("calibrated", after)):
            print(f"held-out ({len(e)} networks: {len(WIDTHS)} students, {len(e) - len(WIDTHS)} probes of seed 7), "
                  f"{label}: median |error| {np.median(np.abs(e)):.1f}%, worst {np.abs(e).max():.1f}%, "
                  f"within 20% {np.mean(np.abs(e) <= 20):.2f}; students alone median {np.median(np.abs(e[:len(WIDTHS)])):.1f}%")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
