"""`edgekd bench RUN_DIR --device NAME`: time a run's loadable artifacts on the device, ingest as measured:NAME."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgekd import events
from edgekd.devices.remote import DeviceRun, MeasureOptions, device_runtime, measure_files
from edgekd.devices.store import Device, get_device
from edgekd.errors import EdgeKDError


@dataclass
class DeviceBench:
    device: str
    run: DeviceRun
    ingest: object                  # edgekd.bench.ingest.IngestSummary
    skipped: list[tuple[str, str]]  # (artifact, why it was not sent)
    results_path: Path


def loadable_artifacts(report: dict, run_dir: Path, device: Device, target) -> tuple[list[dict], list[tuple[str, str]]]:
    """The report's artifacts the device's runtime can load (engines are built there), and why others stay."""
    from edgekd.bench.evaluate import target_precision

    rt = device_runtime(device, target.runtime)
    chosen, skipped, seen = [], [], set()
    for art in report.get("artifacts", []):
        name = art.get("name", "?")
        if art.get("status") != "ok" or not art.get("path") or "@" in name or art.get("format") == "pytorch":
            continue
        path = Path(art["path"]) if Path(art["path"]).is_absolute() else run_dir / art["path"]
        if art.get("format") not in rt.device_formats:
            skipped.append((name, f"{art.get('format')} does not load in {target.runtime} on the device"))
            continue
        if not path.is_file():
            skipped.append((name, f"{path} is missing"))
            continue
        precision = target_precision(art, target)
        if rt.builds_on_device and art.get("precision") not in ("fp32", precision):
            skipped.append((name, f"{art.get('precision')} has no fast path on {target.name} (runs as {precision})"))
            continue
        if path in seen:
            continue
        seen.add(path)
        chosen.append({**art, "_path": path, "_precision": precision})
    return chosen, skipped


def onnx_input(path: Path) -> tuple[str, list[int]] | None:
    """(input name, batch-1 shape) of an ONNX file, for trtexec --shapes; None when not static past the batch."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inp = next((i for i in model.graph.input if i.name not in inits), None)
    if inp is None:
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    if not dims or any(d is None or d <= 0 for d in dims[1:]):
        return None
    return inp.name, [1, *dims[1:]]


def bench_on_device(run_dir: str | Path, device: str | Device, *, options: MeasureOptions | None = None,
                    history_source: str | None = None) -> DeviceBench:
    """Measure ``run_dir``'s artifacts on ``device`` and merge them into its report as measured:<device>.

    The report is touched only once everything came back: a failure on the way (unreachable device,
    missing runtime, runner crash or timeout, dropped connection) leaves the run folder as it was.
    """
    from edgekd.bench.ingest import ingest_results
    from edgekd.devices import history
    from edgekd.fsutil import atomic_write_json, atomic_write_bytes
    from edgekd.hardware.targets import load_target
    from edgekd.report import load_report

    device = device if isinstance(device, Device) else get_device(device)
    run_dir = Path(run_dir)
    report = load_report(run_dir)
    target = load_target(device.target)
    run_target = (report.get("target") or {}).get("name")
    if run_target and run_target != target.name:
        raise EdgeKDError(f"{run_dir} was made for {run_target}, but device {device.name} is a {target.name}",
                          f"measure it on a {run_target} device, or register this one with --target {run_target}")
    arts, skipped = loadable_artifacts(report, run_dir, device, target)
    if not arts:
        why = "; ".join(f"{n}: {r}" for n, r in skipped[:3]) or "the run has no successful artifacts"
        raise EdgeKDError(f"no artifact of {run_dir} loads in {target.runtime} on device {device.name} ({why})",
                          "export a format the device runs (edgekd export RUN_DIR --formats onnx)")
    options = options or MeasureOptions()
    if options.threads is None and not target.measured:
        options.threads = target.threads  # the profile's conditions: what its coefficients were fitted at
    files = [a["_path"] for a in arts]
    precisions = {a["_path"]: a["_precision"] for a in arts}
    inputs = {p: i for p in files if p.suffix == ".onnx" and (i := onnx_input(p))}
    events.info(f"  measuring {len(files)} artifact(s) on {device.name} ({device.ssh}, {target.runtime})",
                device=device.name, artifacts=len(files))
    run = measure_files(device, files, runtime=target.runtime, precisions=precisions, options=options,
                        onnx_inputs=inputs)
    doc = run.results
    doc["device"]["transfer"] = run.transfer_record()
    doc["device"]["target"] = target.name
    with tempfile.TemporaryDirectory(prefix="edgekd-ingest-") as tmp:
        tmp_results = Path(tmp) / f"{device.name}.json"
        atomic_write_json(tmp_results, doc)
        summary = ingest_results(tmp_results, run_dir, device=device.name, device_target=target.name)
        results_path = atomic_write_bytes(run_dir / "device-results" / f"{device.name}.json", tmp_results.read_bytes())
    graphs = _graphs(arts, report, run_dir)
    graphs = {name: graphs[path] for name, path in run.files.items() if path in graphs}
    history.record(device.name, doc["results"], graphs, threads=options.threads,
                   source=history_source or f"bench {run_dir}", device_info=doc["device"])
    return DeviceBench(device=device.name, run=run, ingest=summary, skipped=skipped, results_path=results_path)


def _graphs(arts: list[dict], report: dict, run_dir: Path) -> dict[Path, Path]:
    """Measured file -> the FP32 ONNX graph of the same network (itself when it is one)."""
    fp32 = next((run_dir / a["path"] for a in report.get("artifacts", [])
                 if a.get("format") == "onnx" and a.get("precision") == "fp32" and a.get("status") == "ok"
                 and a.get("path") and a.get("role", "student") in ("student", "model")), None)
    out = {}
    for art in arts:
        path = art["_path"]
        if path.suffix == ".onnx" and art.get("precision") == "fp32":
            out[path] = path
        elif fp32 is not None and Path(fp32).is_file() and art.get("role", "student") == "student":
            out[path] = Path(fp32)
    return out
