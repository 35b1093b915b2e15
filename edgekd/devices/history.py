"""Every latency measured on a device, with the ONNX graph it belongs to, so calibration can use all of them.

``edgekd calibrate --device`` (probe networks), ``edgekd bench --device`` (a run's artifacts) and each
round of ``edgekd distill --device`` add rows; fitting a target from a device reads them all. The file
is an ``edgekd calibrate --measurements`` file (model paths relative to it), kept with its graphs in the
user cache folder: deleting it loses history, never a calibration already saved.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path

from edgekd.errors import EdgeKDError

GRAPHS = "graphs"


def history_dir(device_name: str) -> Path:
    from edgekd.hardware.targets import cache_dir

    return cache_dir() / "devices" / device_name


def history_path(device_name: str) -> Path:
    return history_dir(device_name) / "measurements.json"


def load_rows(device_name: str) -> list[dict]:
    path = history_path(device_name)
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text(encoding="utf-8"))["results"])
    except (OSError, ValueError, KeyError, TypeError):
        raise EdgeKDError(f"the measurement history {path} is unreadable",
                          "delete it; `edgekd calibrate --device` measures again") from None


def record(device_name: str, rows: list[dict], graphs: dict[str, Path], *, threads: int | None, source: str,
           device_info: dict | None = None) -> int:
    """Add the successful batch-1 rows of one device run; ``graphs``: row "model" -> the FP32 ONNX it was built from.

    A quantized or compiled artifact is recorded against the FP32 graph of the same network, because
    that is the graph width selection costs at the target precision. The newest timing of the same
    measured file, runtime, precision and thread count replaces an older one. Returns rows added.
    """
    from edgekd.fsutil import atomic_write_bytes, atomic_write_json, file_sha256, wait_lock

    folder = history_dir(device_name)
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    with wait_lock(folder / ".lock"):
        kept = load_rows(device_name)
        added = 0
        for row in rows:
            graph = graphs.get(row.get("model", ""))
            if row.get("status") != "ok" or row.get("batch", 1) != 1 or graph is None or not Path(graph).is_file():
                continue
            digest = file_sha256(graph)
            stored = folder / GRAPHS / f"{digest[:20]}.onnx"
            if not stored.is_file():
                atomic_write_bytes(stored, _self_contained(Path(graph)))
            entry = {"model": f"{GRAPHS}/{stored.name}", "graph_sha256": digest,
                     "measured_sha256": row.get("sha256"), "measured_file": Path(row["model"]).name,
                     "runtime": row.get("runtime"), "precision": row.get("precision"), "threads": threads,
                     "input_shape": row.get("input_shape"), "latency_ms": row["latency_ms"], "status": "ok",
                     "created": created, "source": source}
            key = _key(entry)
            kept = [r for r in kept if _key(r) != key] + [entry]
            added += 1
        atomic_write_json(history_path(device_name), {
            "schema": "edgekd.measurements/1", "device": {**(device_info or {}), "name": device_name},
            "results": kept})
    return added


def _self_contained(path: Path) -> bytes:
    """The ONNX model as one file: weights kept beside it (NAME.onnx.data) are pulled inside."""
    import onnx

    model = onnx.load(str(path))  # reads external data into the tensors
    return model.SerializeToString()


def _key(row: dict) -> tuple:
    return (row.get("measured_sha256") or row.get("graph_sha256"), row.get("runtime"), row.get("precision"),
            row.get("threads"))


def calibration_file(device_name: str, *, runtime: str, precision: str, threads: int | None) -> tuple[Path, int]:
    """A measurements file of this device's rows for one runtime, precision and thread count; (path, rows)."""
    from edgekd.fsutil import atomic_write_json

    rows = [r for r in load_rows(device_name)
            if r.get("runtime") == runtime and r.get("precision") == precision and r.get("threads") == threads]
    doc = json.loads(history_path(device_name).read_text()) if history_path(device_name).is_file() else {}
    path = history_dir(device_name) / f"{device_name}.json"  # beside graphs/: model paths stay relative
    atomic_write_json(path, {"schema": "edgekd.measurements/1",
                             "device": {**doc.get("device", {}), "name": device_name, "runtime": runtime,
                                        "precision": precision},
                             "results": rows})
    return path, len(rows)


def forget(device_name: str) -> None:
    shutil.rmtree(history_dir(device_name), ignore_errors=True)
