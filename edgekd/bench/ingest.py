"""Merge on-device timings (the runner's JSON) into a run's report.json as measured:<device> target latencies."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from edgekd.bench.device_runner import RESULTS_FORMAT, RESULTS_VERSION
from edgekd.errors import EdgeKDError
from edgekd.fsutil import file_sha256, read_json, run_lock
from edgekd.report import load_report, write_reports
from edgekd.limits import MAX_LATENCY_MS, is_latency_ms

_RESULT_FIX = "pass the JSON written by the script from `edgekd runner` (python3 edgekd_runner.py ... --out results.json)"


@dataclass
class IngestSummary:
    device: str
    matched: list[tuple[str, str]] = field(default_factory=list)     # (result model file, artifact name)
    unmatched: list[str] = field(default_factory=list)               # measured files no artifact matches
    failed: list[tuple[str, str]] = field(default_factory=list)      # (model file, reason) from the device
    paths: dict = field(default_factory=dict)


def load_device_results(path: str | Path) -> dict:
    """Read and check a runner results file; one-line EdgeKDError if it is not one."""
    path = Path(path)
    doc = read_json(path, "results file", _RESULT_FIX)
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list) or not isinstance(doc.get("device"), dict):
        raise EdgeKDError(f"{path} has no 'device' object and 'results' list", _RESULT_FIX)
    if doc.get("format", RESULTS_FORMAT) != RESULTS_FORMAT or doc.get("format_version", RESULTS_VERSION) != RESULTS_VERSION:
        raise EdgeKDError(
            f"{path} is {doc.get('format')} version {doc.get('format_version')}, this edgekd reads "
            f"{RESULTS_FORMAT} version {RESULTS_VERSION}", "regenerate the runner with this edgekd's `edgekd runner`")
    name = doc["device"].get("name")
    if name is not None and not _is_label(name):
        raise EdgeKDError(f"{path}: device.name {name!r} is not a device name", "rerun the runner with --device-name NAME")
    for i, row in enumerate(doc["results"]):
        if not isinstance(row, dict) or not isinstance(row.get("model"), str) or not row["model"].strip():
            raise EdgeKDError(f"{path}: results[{i}] has no 'model' file name", _RESULT_FIX)
        _check_result_row(row, f"{path}: results[{i}] ({row['model']})")
    return doc


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_label(name) -> bool:
    """A name for a latency source label (measured:<name>): printable text on one line."""
    return isinstance(name, str) and 0 < len(name.strip()) <= 200 and name.isprintable()


def _check_result_row(row: dict, where: str) -> None:
    """One result of the runner: what ingest puts in the report must be a real measurement."""
    status = row.get("status", "ok")
    if status not in ("ok", "failed", "skipped"):
        raise EdgeKDError(f"{where} has status {status!r}", "expected ok, failed or skipped")
    sha = row.get("sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
        raise EdgeKDError(f"{where}: sha256 {sha!r} is not a SHA-256 digest", _RESULT_FIX)
    for key in ("batch", "runs"):
        value = row.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise EdgeKDError(f"{where}: {key} {value!r} is not a whole number >= 1", _RESULT_FIX)
    if status != "ok":
        return
    lat = row.get("latency_ms")
    if not isinstance(lat, dict) or "p50" not in lat:
        raise EdgeKDError(f"{where} has no latency_ms.p50", _RESULT_FIX)
    for key in ("p50", "p90", "p99", "mean"):
        # A call that was timed took some time: 0 ms is a broken clock or an edited file, not a measurement.
        if key in lat and lat[key] is not None and not is_latency_ms(lat[key], zero=False):
            raise EdgeKDError(f"{where}: latency_ms.{key} = {lat[key]!r} is not a latency in ms "
                              f"(a finite number > 0, at most a day: {MAX_LATENCY_MS:.0f})", _RESULT_FIX)


def _artifact_index(run_dir: Path, report: dict) -> tuple[dict, dict]:
    """sha256 -> artifact and file name -> artifact, for the report's artifacts that have files."""
    by_hash, by_name = {}, {}
    for art in report["artifacts"]:
        if art.get("status") != "ok" or not art.get("path"):
            continue
        file = Path(art["path"])
        file = file if file.is_absolute() else run_dir / file
        by_name.setdefault(file.name, art)
        if file.is_file():
            by_hash.setdefault(file_sha256(file), art)
    return by_hash, by_name


def _record_contradiction(doc: dict, target: str | None, device_target: str | None) -> str | None:
    """The device the results say they came from, when that is known to be another target than the run's.

    A results file names its device twice (the runner's ``--device-name`` as ``target`` and ``device.name``);
    a name that is a shipped target or a registered device of another target contradicts a run for ``target``.
    """
    if not target:
        return None
    from edgekd.devices.store import registered_targets
    from edgekd.hardware.targets import target_names

    registered = registered_targets()
    for label in (doc.get("target"), doc["device"].get("name")):
        if not _is_label(label) or label in (target, device_target):
            continue
        if label in target_names() and device_target is None:
            return label
        if label in registered and _target_name(registered[label]) not in (target, device_target):
            return f"{label} (a {_target_name(registered[label])})"
    return None


def _target_name(target: str) -> str:
    """A registered device's target (a shipped name, or the path of a profile file) as the name runs record."""
    if not target.endswith((".yaml", ".yml")):
        return target
    from edgekd.hardware.targets import load_target

    try:
        return load_target(target).name
    except EdgeKDError:  # a profile moved or broken since: its file name is all there is to go on
        return Path(target).stem


def _artifact_by_name(row: dict, by_hash: dict, by_name: dict, run_dir: Path):
    """The artifact a result row measured: by hash, else by file name when the hashes cannot disagree."""
    sha = row.get("sha256")
    art = by_hash.get(sha)
    if art is not None:
        return art
    art = by_name.get(Path(row["model"]).name)
    if art is None or not sha:
        return art
    file = Path(art["path"])
    file = file if file.is_absolute() else run_dir / file
    if file.is_file():
        raise EdgeKDError(
            f"{row['model']} was measured with sha256 {sha} but the run's {file.name} has sha256 {file_sha256(file)}: "
            "the timings are of another model",
            "copy this run's artifacts/ files to the device, run the runner again and ingest its results")
    return art


def _latency_entry(row: dict) -> dict:
    lat = row["latency_ms"]
    out = {k: lat[k] for k in ("p50", "p90", "p99", "mean") if isinstance(lat.get(k), (int, float))}
    out["runs"] = row.get("runs")
    out["batch"] = row.get("batch", 1)
    return out


def ingest_results(results_path: str | Path, run_dir: str | Path, *, device: str | None = None,
                   device_target: str | None = None, force: bool = False) -> IngestSummary:
    """Put a device's measured latencies into ``run_dir``'s report and regenerate its reports.

    Results are matched to artifacts by file hash (a renamed copy still matches), then by file name.
    The batch-1 timing becomes the artifact's ``target_latency_ms`` with source ``measured:<device>``;
    a prediction it replaces is kept as ``predicted_target_latency_ms`` so the report can show predicted
    against measured and ``edgekd calibrate`` can fit the latency model to the device. Every timing
    (all batch sizes) is kept under ``extra.device_measurements``. ``device_target``: the target profile
    of the device (a device registered with `edgekd devices add`), when its name is not the target's.
    A result whose hash differs from the artifact of its file name is refused; so is a results file whose
    own device record names another target than the run's, unless ``force``.
    """
    doc = load_device_results(results_path)
    run_dir = Path(run_dir)
    name = device or doc["device"].get("name") or "device"
    if not _is_label(name):
        raise EdgeKDError(f"--device {name!r} is not a device name", "pass the target's name, e.g. --device jetson-nano")
    with run_lock(run_dir):
        report = load_report(run_dir)
        target = (report.get("target") or {}).get("name")
        if target and name != target and device_target != target:
            raise EdgeKDError(
                f"the results are from device '{name}' but the run targets '{target}'",
                f"pass --device {target} if these timings were taken on a {target}, or ingest them into a run "
                f"for {name}")
        other = None if force else _record_contradiction(doc, target, device_target)
        if other:
            raise EdgeKDError(
                f"the results file records its device as {other} but the run targets '{target}'",
                "ingest them into a run for that device, or pass --force if they were taken on a "
                f"{target} all the same")
        by_hash, by_name = _artifact_index(run_dir, report)
        summary = IngestSummary(device=name)
        source = f"measured:{name}"
        primary: dict[int, tuple[dict, dict]] = {}
        for row in doc["results"]:
            if row.get("status", "ok") != "ok":
                summary.failed.append((row["model"], row.get("reason") or row.get("status", "failed")))
                continue
            art = _artifact_by_name(row, by_hash, by_name, run_dir)
            if art is None:
                summary.unmatched.append(row["model"])
                continue
            if not isinstance(art.get("extra"), dict):
                art["extra"] = {}
            extra = art["extra"]
            entry = {"device": name, "runtime": row.get("runtime"), "provider": row.get("provider"),
                     "runtime_version": row.get("runtime_version"), "input_shape": row.get("input_shape"),
                     "latency_ms": _latency_entry(row), "throughput": row.get("throughput"),
                     "created": doc.get("created")}
            kept = [m for m in extra.get("device_measurements", [])
                    if not (m.get("device") == name and m.get("runtime") == entry["runtime"]
                            and m.get("latency_ms", {}).get("batch") == entry["latency_ms"]["batch"])]
            extra["device_measurements"] = kept + [entry]
            summary.matched.append((row["model"], art["name"]))
            # The target latency is per image at batch 1; the artifact's own runtime wins if several ran it.
            if entry["latency_ms"]["batch"] == 1:
                best = primary.get(id(art))
                own = row.get("runtime") == art.get("runtime")
                if best is None or (own and best[1].get("runtime") != art.get("runtime")):
                    primary[id(art)] = (art, row)
        if not summary.matched:
            measured = ", ".join(sorted({r["model"] for r in doc["results"]})) or "none"
            raise EdgeKDError(
                f"none of the measured models ({measured}) is an artifact of {run_dir}",
                "run the device runner on files copied from this run's artifacts/ folder")
        for art, row in primary.values():
            previous = art.get("target_latency_source") or ""
            if previous.startswith("predicted:") and art.get("target_latency_ms"):
                art["predicted_target_latency_ms"] = art["target_latency_ms"]
                art["predicted_target_latency_source"] = previous
            lat = _latency_entry(row)
            art["target_latency_ms"] = {k: v for k, v in lat.items() if k in ("p50", "p90", "p99", "mean")}
            art["target_latency_source"] = source
        devices = report.setdefault("devices", {})
        devices[name] = {**doc["device"], "name": name, "results_file": Path(results_path).name,
                         "ingested_from": doc.get("created")}
        summary.paths = write_reports(run_dir, report)
    return summary
