"""`edgekd bench (RUN_DIR | MODEL_FILE...)`: measure latency on this machine per runtime and batch size."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from edgekd.errors import EdgeKDError


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EdgeKDError(f"{what} must be comma-separated integers, got {text!r}", f"pass e.g. {what} 1,8") from None
    return values


@click.command("bench")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--runtimes", default=None,
              help="Runtimes to use, comma-separated (e.g. onnxruntime,openvino); default: each file's own.")
@click.option("--batch", "batches", default="1", show_default=True, help="Batch sizes, comma-separated (e.g. 1,8).")
@click.option("--threads", type=int, default=None, help="CPU threads per runtime (default: the runtime's).")
@click.option("--seconds", type=float, default=1.0, show_default=True, help="Time budget per measurement.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed runs before timing.")
@click.option("--input-shape", default=None, help="C,H,W when it cannot be read from the run or the model.")
@click.option("--no-accuracy", is_flag=True, help="Do not evaluate rows added for another runtime.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for the report when benchmarking bare model files (default: edgekd-runs/bench-<time>).")
@click.option("--overwrite", is_flag=True, help="Write the report into an --out folder that already holds files.")
@click.option("--device", "device", default=None,
              help="Measure on this device (`edgekd devices add`) over SSH instead of here; results are ingested as measured:NAME.")
@click.option("--timeout", type=float, default=None, help="With --device: seconds the measurement may take there (default: from the file count).")
def command(paths, runtimes, batches, threads, seconds, warmup, input_shape, no_accuracy, out, overwrite, device, timeout) -> None:
    """Measure RUN_DIR's artifacts (updating its report) or bare MODEL_FILEs (a new report).

    Each file is timed with its own runtime, or each of --runtimes that reads it, at each --batch size:
    warm-up, then per-call timings for --seconds; p50/p90/p99 and throughput. A failure is recorded in
    its row and never stops the others.
    """
    if device is not None:
        return _bench_on_device(paths, device, seconds=seconds, warmup=warmup, threads=threads, timeout=timeout)
    if timeout is not None:
        raise EdgeKDError("--timeout goes with --device", "add --device NAME, or drop --timeout")
    from edgekd.bench.host import BenchOptions, bench_files, bench_run
    from edgekd.cli.render import make_console, print_report, rendering

    from edgekd.modelfile import parse_shape

    shape = parse_shape(input_shape, "--input-shape") if input_shape else None
    if shape is not None and len(shape) != 3:
        raise EdgeKDError(f"--input-shape must be C,H,W, got {input_shape}", "pass e.g. --input-shape 1,28,28")
    opts = BenchOptions(runtimes=[r.strip() for r in runtimes.split(",") if r.strip()] if runtimes else None,
                        batches=_int_list(batches, "--batch"), threads=threads, seconds=seconds, warmup=warmup,
                        input_shape=shape, accuracy=not no_accuracy)
    console = make_console()
    dirs = [p for p in paths if p.is_dir()]
    if dirs:
        if len(paths) > 1:
            raise EdgeKDError("pass either one run folder or model files, not both",
                              "run `edgekd bench RUN_DIR` once per run")
        if out is not None:
            raise EdgeKDError("--out is for model files: `edgekd bench RUN_DIR` updates the run's own report",
                              "drop --out, or copy the run folder first")
        with rendering(console):
            report = bench_run(dirs[0], opts)
        where = dirs[0]
    else:
        where = out or Path("edgekd-runs") / f"bench-{datetime.now():%Y%m%d-%H%M%S}"
        with rendering(console):
            report = bench_files(list(paths), where, opts, overwrite=overwrite)
    print_report(console, report, selection=False)
    console.print(f"[green]wrote[/green] {where}/report.json, report.md, report.html", highlight=False)
    from edgekd.errors import refuse_if_nothing_worked

    refuse_if_nothing_worked(report["artifacts"], "measurement", f"see the reasons in {where}/report.md")


def _bench_on_device(paths, device, *, seconds, warmup, threads, timeout) -> None:
    from edgekd.cli.render import make_console, rendering
    from edgekd.devices.bench import bench_on_device
    from edgekd.devices.remote import MeasureOptions

    if len(paths) != 1 or not paths[0].is_dir():
        raise EdgeKDError("--device measures a run folder", "pass one RUN_DIR written by `edgekd distill` or `edgekd bench`")
    console = make_console()
    options = MeasureOptions(seconds=seconds, warmup=warmup, threads=threads, timeout_s=timeout)
    with rendering(console):
        result = bench_on_device(paths[0], device, options=options)
    for name, why in result.skipped:
        console.print(f"  not sent: {name}: {why}", highlight=False)
    for model, artifact in result.ingest.matched:
        row = next(r for r in result.run.results["results"] if r.get("model") == model and r.get("status") == "ok")
        console.print(f"  measured:{result.device}  {artifact:16s} p50 {row['latency_ms']['p50']:.4f} ms  "
                      f"p90 {row['latency_ms']['p90']:.4f} ms  ({row.get('runs')} runs, {row.get('runtime')})", highlight=False)
    for model, reason in result.ingest.failed:
        console.print(f"  [red]failed on {result.device}[/]: {model}: {reason}", highlight=False)
    run = result.run
    console.print(f"  SSH: {run.wall_s:.2f} s in all, {run.overhead_s():.2f} s of it not measuring "
                  f"({run.overhead_s() / max(1, len(run.files)):.2f} s per artifact), {run.sent_bytes / 1e6:.2f} MB sent"
                  + (f", {run.retries} retried" if run.retries else ""), highlight=False)
    console.print(f"[green]updated[/green] {paths[0]}/report.json, report.md, report.html "
                  f"(device results: {result.results_path})", highlight=False)
