"""Benchmark model files on this machine with each runtime and batch size asked for, into report rows."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from edgekd.errors import EdgeKDError, first_line
from edgekd.modelfile import check_shape, image_shape, precision, size_bytes
from edgekd.runtimes import RUNTIMES, format_of_file, model_suffixes, readers_of

HOST_SOURCE = "measured:host"
MAX_BATCH = 65536


@dataclass
class BenchOptions:
    runtimes: list[str] | None = None      # None: each file's own runtime
    batches: list[int] = field(default_factory=lambda: [1])
    threads: int | None = None
    seconds: float = 1.0                   # time budget per (file, runtime, batch)
    warmup: int = 10
    input_shape: tuple[int, ...] | None = None   # (C, H, W); None: from the report or the model file
    accuracy: bool = True                  # evaluate rows added for another runtime on the run's test split

    def check(self) -> "BenchOptions":
        if not self.batches or min(self.batches) < 1 or max(self.batches) > MAX_BATCH:
            raise EdgeKDError(f"batch sizes must be 1 to {MAX_BATCH}, got {self.batches}", "pass --batch such as 1,8")
        if self.threads is not None and not 1 <= self.threads <= 4096:
            raise EdgeKDError(f"--threads must be 1 to 4096, got {self.threads}", "pass --threads 1 or more")
        if not 0 < self.seconds <= 3600:
            raise EdgeKDError(f"--seconds must be > 0 and at most 3600, got {self.seconds}", "pass --seconds such as 1.0")
        if not 0 <= self.warmup <= 100_000:
            raise EdgeKDError(f"--warmup must be 0 to 100000 runs, got {self.warmup}", "pass --warmup such as 10")
        if self.input_shape is not None:
            check_shape((max(self.batches), *self.input_shape), "largest --batch x --input-shape")
        if self.runtimes:
            for name in self.runtimes:
                RUNTIMES.get(name)  # one-line error with a suggestion for a typo
        return self


def measure_file(path: Path, runtime: str, batches: list[int], input_shape: tuple[int, ...],
                 opts: BenchOptions) -> tuple[list[dict], dict]:
    """Latency of ``path`` under ``runtime`` for each batch size: ([{batch, latency_ms, ...}], versions)."""
    from edgekd.bench.measure import measure_runner
    from edgekd.bench.runners import load_runner

    runner = load_runner(path, threads=opts.threads, runtime=runtime)
    out = []
    rng = np.random.default_rng(0)
    for batch in batches:
        check_shape((batch, *input_shape), "batch x --input-shape")  # a one-line error, not a MemoryError
        if runner.max_batch is not None and batch > runner.max_batch:
            out.append({"batch": batch, "status": "skipped",
                        "reason": f"{path.name} accepts batches up to {runner.max_batch}; it runs batch {batch} "
                                  f"in pieces, which is not batch-{batch} latency"})
            continue
        try:
            _check_fits(path, (batch, *input_shape))
        except EdgeKDError as err:
            out.append({"batch": batch, "status": "failed", "reason": str(err)})
            continue
        x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
        try:
            stats, method = measure_runner(runner, x, warmup=opts.warmup, time_budget_s=opts.seconds)
        except Exception as err:  # e.g. a fixed-batch IR given another batch: that batch fails, not the file
            out.append({"batch": batch, "status": "failed", "reason": first_line(err, 300)})
            continue
        out.append({"batch": batch, "status": "ok", "threads": opts.threads,
                    "latency_ms": {"p50": stats.p50, "p90": stats.p90, "p99": stats.p99, "mean": stats.mean},
                    "throughput": stats.throughput, "runs": stats.runs, "method": method})
    return out, runner.versions()


def _check_fits(path: Path, shape: tuple[int, ...]) -> None:
    """An ONNX model whose activations at ``shape`` would not fit in free memory is refused, not run."""
    if path.suffix.lower() != ".onnx":
        return
    from edgekd.hardware.graph import graph_cost
    from edgekd.hardware.measure import check_fits_in_memory

    try:
        cost = graph_cost(path, input_shape=shape)
    except EdgeKDError:
        return  # a shape the graph does not take: the runtime says so when it runs
    check_fits_in_memory(cost, f"batch {shape[0]} of {path.name}")


def _apply_host(row: dict, m: dict, target_is_host: bool) -> None:
    row["latency_ms"] = {k: round(v, 6) for k, v in m["latency_ms"].items()}
    row["latency_source"] = HOST_SOURCE
    row["throughput"] = m["throughput"]
    row.setdefault("extra", {})["latency_method"] = m.get("method")
    if target_is_host:
        row["target_latency_ms"] = dict(row["latency_ms"])
        row["target_latency_source"] = HOST_SOURCE


class _TestSplit:
    """The run's test images, loaded once and only if a new runtime row needs its accuracy."""

    def __init__(self, report: dict):
        self.report = report
        self._loaded = None
        self.error: str | None = None

    def get(self):
        if self._loaded is None and self.error is None:
            try:
                from edgekd.data import load_data_like

                data = self.report.get("data") or {}
                splits = load_data_like(data)  # the run's splits and preprocessing, not today's defaults
                want = (data.get("splits") or {}).get("test", {}).get("sha256")
                if want and splits.test.sha256() != want:
                    raise EdgeKDError("the run's test data changed since the run (sha256 differs)")
                self._loaded = (splits.normalized("test"), splits.labels("test"))
            except Exception as err:  # accuracy is a bonus here; latency rows stand without it
                self.error = first_line(err, 300)
        return self._loaded


def bench_run(run_dir: str | Path, opts: BenchOptions) -> dict:
    """Re-measure every artifact of a run on this machine; rows for other runtimes are added.

    The artifact's own runtime at batch 1 refreshes its ``latency_ms`` (source measured:host); other
    batch sizes go to ``extra.host_measurements``; another runtime on the same file becomes a row of its
    own named ``<artifact>@<runtime>``, with its accuracy measured on the run's test split. A failure is
    recorded in its row and never stops the others. Each measurement is told as an event.
    """
    from edgekd.bench.env import collect_environment
    from edgekd.fsutil import run_lock
    from edgekd.report import load_report, write_reports

    opts.check()
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    with run_lock(run_dir):
        report = load_report(run_dir)
        target = report.get("target") or {}
        ctx = _RunBench(report, run_dir, opts, bool(target.get("measured")) or target.get("name") == "host",
                        opts.input_shape or tuple((report.get("data") or {}).get("input_shape") or ()) or None)
        added: list[dict] = []
        for art in list(report["artifacts"]):
            if art.get("status") != "ok" or not art.get("path") or "@" in art["name"]:
                continue
            path = run_dir / art["path"]
            own = art.get("runtime") or (readers_of(path) or [None])[0]
            for runtime in opts.runtimes or [own]:
                if runtime not in readers_of(path) and runtime != own:
                    continue
                row = art if runtime == own else _runtime_row(report, art, runtime)
                if ctx.measure(row, path, runtime, runtime == own) and row not in report["artifacts"] + added:
                    added.append(row)
        report["artifacts"].extend(added)
        _rechoose_recommendation(report)
        report["environment"] = collect_environment(threads=opts.threads)
        report.setdefault("config", {})["bench"] = {**asdict(opts), "runtimes": opts.runtimes,
                                                    "when": datetime.now().astimezone().isoformat(timespec="seconds")}
        report.setdefault("timings_s", {})["bench"] = round(time.perf_counter() - t0, 2)
        write_reports(run_dir, report)
    return report


class _RunBench:
    """What measuring one row of a run needs: the report, options, input shape and the test split."""

    def __init__(self, report: dict, run_dir: Path, opts: BenchOptions, target_is_host: bool, shape):
        self.report, self.run_dir, self.opts = report, run_dir, opts
        self.target_is_host, self.shape = target_is_host, shape
        self.test = _TestSplit(report)

    def measure(self, row: dict, path: Path, runtime: str, is_own: bool) -> bool:
        """Measure ``row`` (``path`` under ``runtime``) in place; True when it is a new row to add."""
        try:
            file_shape = self.shape or image_shape(path)
            if file_shape is None:
                raise EdgeKDError(f"cannot tell the input shape of {path.name}", "pass --input-shape C,H,W")
            results, versions = measure_file(path, runtime, self.opts.batches, file_shape, self.opts)
        except Exception as err:  # one format's failure is its row's, not the command's
            # An old host figure would now sit beside another machine's environment: drop it.
            row.update(status="failed", reason=f"{runtime} on this machine: {first_line(err, 300)}",
                       latency_ms=None, latency_source=None)
            _drop_stale_figures(row, path)
            _tell(row, runtime, None, first_line(err, 300))
            return not is_own
        if not isinstance(row.get("extra"), dict):
            row["extra"] = {}
        row["extra"]["host_measurements"] = [m for m in results if m["batch"] != 1 or m["status"] != "ok"]
        row["extra"]["host_runtime_versions"] = versions
        first = next((m for m in results if m["batch"] == 1 and m["status"] == "ok"), None)
        if first is not None:
            _apply_host(row, first, self.target_is_host)
        if not is_own:
            row.update(status="ok", reason=None)
            if self.opts.accuracy:
                self._accuracy(row, path, runtime)
        for m in results:
            _tell(row, runtime, m, None)
        return not is_own

    def _accuracy(self, row: dict, path: Path, runtime: str) -> None:
        from edgekd.bench.evaluate import accuracy_of
        from edgekd.bench.runners import load_runner

        data = self.test.get()
        if data is None:
            row["accuracy"] = None
            row["extra"]["accuracy_note"] = f"not measured: {self.test.error}"
            return
        runner = load_runner(path, threads=self.opts.threads, runtime=runtime)
        row["accuracy"] = accuracy_of(runner.run, *data)
        ref = next((a.get("accuracy") for a in self.report["artifacts"]
                    if a.get("role", "student") == row.get("role", "student")
                    and a.get("format") == "pytorch" and a.get("status") == "ok"), None)
        if ref is not None and row.get("role", "student") == "student":
            row["accuracy_drop"] = round(ref - row["accuracy"], 6)


def _drop_stale_figures(row: dict, path: Path) -> None:
    """A file that is not what the run measured (truncated, replaced, deleted) keeps none of its old figures."""
    now = size_bytes(path, strict=False) if path.is_file() else 0
    if row.get("size_bytes") is None or now == row.get("size_bytes"):
        return
    row["reason"] += f" (the file changed since the run: {now:,} bytes, was {row['size_bytes']:,})"
    row.update(size_bytes=now, accuracy=None, accuracy_drop=None, parity=None, target_latency_ms=None,
               target_latency_source=None)


def _rechoose_recommendation(report: dict) -> None:
    """The recommended artifact must still be ok: if bench failed it, pick again among the run's own rows."""
    from types import SimpleNamespace

    from edgekd.bench.evaluate import recommend

    rec = report.get("recommended") or {}
    rows = [a for a in report["artifacts"] if "@" not in a.get("name", "")]  # runtime variants were never candidates
    current = next((a for a in rows if a.get("name") == rec.get("name") and a.get("role", "student") == "student"), None)
    if not rec or (current is not None and current.get("status") == "ok"):
        return
    target = report.get("target") or {}
    if not target.get("runtime"):
        report["recommended"] = None
        return
    target = SimpleNamespace(**{"precisions": [target.get("precision")], **target})
    config = report.get("config") or {}
    # config.json is a RunConfig (export.max_drop); runs written before it kept the option at the top.
    max_drop = (config.get("export") or {}).get("max_drop", config.get("max_drop", 0.01))
    report["recommended"] = recommend(rows, target, max_drop if isinstance(max_drop, (int, float)) else 0.01)


def _runtime_row(report: dict, art: dict, runtime: str) -> dict:
    """The row for ``art`` run by another runtime: existing (re-bench) or a fresh copy without figures."""
    name = f"{art['name']}@{runtime}"
    for other in report["artifacts"]:
        if other["name"] == name and other.get("role") == art.get("role") and other.get("run") == art.get("run"):
            return other
    row = copy.deepcopy(art)
    row.update(name=name, runtime=runtime, accuracy=None, accuracy_drop=None, parity=None, latency_ms=None,
               latency_source=None, extra={"source_artifact": art["name"]})
    # The target prediction is for the artifact's own runtime on the device; it does not carry over.
    row["target_latency_ms"] = None
    row["target_latency_source"] = None
    return row


def bench_files(files: list[str | Path], out_dir: str | Path, opts: BenchOptions, *,
                overwrite: bool = False) -> dict:
    """Measure model files that belong to no run: a new report in ``out_dir`` with one row per
    (file, runtime); batch sizes other than 1 under ``extra.host_measurements``.

    Every file is checked (exists, a runtime reads it, an ONNX or OpenVINO file parses) and ``out_dir``
    too (writable; a folder that holds files only with ``overwrite``) before anything is measured.
    """
    from edgekd.bench.env import collect_environment
    from edgekd.fsutil import refuse_existing_output, writable_folder
    from edgekd.modelfile import check_readable
    from edgekd.report import new_report, write_reports

    opts.check()
    paths = [Path(f) for f in files]
    for p in paths:
        if not p.is_file():
            raise EdgeKDError(f"model file {p} does not exist", f"pass model files ({', '.join(model_suffixes())})")
        if not readers_of(p):
            from edgekd.runtimes import runtime_for_file

            runtime_for_file(p)  # raises the one-line "no runtime runs ... files" error
        check_readable(p)  # a corrupt or fake .onnx / .xml is a one-line error now, not a failed row later
    refuse_existing_output(out_dir, overwrite=overwrite)
    writable_folder(out_dir)
    t0 = time.perf_counter()
    report = new_report("bench", config={"files": [str(p) for p in paths], **asdict(opts)})
    for p in paths:
        readers = readers_of(p)
        runtimes = [r for r in (opts.runtimes or readers[:1]) if r in readers]
        if not runtimes:
            report["artifacts"].append(_file_row(p, readers[0], status="skipped",
                                                 reason=f"none of {', '.join(opts.runtimes or [])} reads {p.suffix} files"))
            continue
        for runtime in runtimes:
            name = p.name if runtime == readers[0] else f"{p.name}@{runtime}"
            row = _file_row(p, runtime, name=name)
            try:
                shape = opts.input_shape or image_shape(p)
                if shape is None:
                    raise EdgeKDError(f"cannot tell the input shape of {p.name}", "pass --input-shape C,H,W")
                results, versions = measure_file(p, runtime, opts.batches, shape, opts)
                row["extra"] = {"input_shape": list(shape), "host_runtime_versions": versions,
                                "host_measurements": [m for m in results if m["batch"] != 1 or m["status"] != "ok"]}
                first = next((m for m in results if m["status"] == "ok"), None)
                if first is not None and first["batch"] == 1:
                    _apply_host(row, first, False)
                elif first is not None:
                    row["extra"]["note"] = "batch 1 not measured: the p50 column is empty, see host_measurements"
                for m in results:
                    _tell(row, runtime, m, None)
            except Exception as err:
                row.update(status="failed", reason=first_line(err, 300))
                _tell(row, runtime, None, row["reason"])
            report["artifacts"].append(row)
    report["environment"] = collect_environment(threads=opts.threads)
    report["timings_s"] = {"bench": round(time.perf_counter() - t0, 2)}
    write_reports(out_dir, report)
    return report


def _file_row(path: Path, runtime: str, *, name: str | None = None, status: str = "ok",
              reason: str | None = None) -> dict:
    return {
        "name": name or path.name, "role": "model", "format": format_of_file(path, runtime),
        "precision": precision(path) if status == "ok" else "?", "runtime": runtime,
        "path": str(path.resolve()), "size_bytes": size_bytes(path, strict=False), "status": status, "reason": reason,
        "accuracy": None, "accuracy_drop": None, "parity": None, "latency_ms": None, "latency_source": None,
        "target_latency_ms": None, "target_latency_source": None, "extra": {},
    }


def _tell(row: dict, runtime: str, m: dict | None, error: str | None) -> None:
    """One measurement (or its failure) as an ``artifact_measured`` event; the CLI prints its line."""
    from edgekd import events

    label = f"{row.get('role', '')} {row['name']}".strip()
    data = {"name": row["name"], "role": row.get("role"), "format": row.get("format"), "path": row.get("path"),
            "runtime": runtime}
    if error is not None:
        events.emit("artifact_measured", f"  {label:32s} {runtime:12s} failed: {error}", status="failed", **data)
    elif m["status"] != "ok":
        events.emit("artifact_measured", f"  {label:32s} {runtime:12s} batch {m['batch']:<3d} {m['status']}: {m['reason']}",
                    status=m["status"], batch=m["batch"], **data)
    else:
        lat = m["latency_ms"]
        events.emit("artifact_measured", f"  {label:32s} {runtime:12s} batch {m['batch']:<3d} p50 {lat['p50']:.4f} ms  "
                    f"p90 {lat['p90']:.4f} ms  {m['throughput']:,.0f} img/s", status="ok", batch=m["batch"],
                    p50_ms=lat["p50"], method=m.get("method"), **data)
