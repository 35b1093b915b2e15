"""`edgekd bench (RUN_DIR | MODEL_FILE...)`: measure latency on this machine per runtime and batch size."""

from __future__ import annotations

import sys
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
def command(paths, runtimes, batches, threads, seconds, warmup, input_shape, no_accuracy, out) -> None:
    """Measure RUN_DIR's artifacts (updating its report) or bare MODEL_FILEs (a new report).

    Each file is timed with its own runtime, or each of --runtimes that reads it, at each --batch size:
    warm-up, then per-call timings for --seconds; p50/p90/p99 and throughput. A failure is recorded in
    its row and never stops the others.
    """
    from rich.console import Console

    from edgekd.bench.host import BenchOptions, bench_files, bench_run
    from edgekd.report import render_terminal

    from edgekd.modelfile import parse_shape

    shape = parse_shape(input_shape, "--input-shape") if input_shape else None
    if shape is not None and len(shape) != 3:
        raise EdgeKDError(f"--input-shape must be C,H,W, got {input_shape}", "pass e.g. --input-shape 1,28,28")
    opts = BenchOptions(runtimes=[r.strip() for r in runtimes.split(",") if r.strip()] if runtimes else None,
                        batches=_int_list(batches, "--batch"), threads=threads, seconds=seconds, warmup=warmup,
                        input_shape=shape, accuracy=not no_accuracy)
    console = Console(width=None if sys.stdout.isatty() else 160)
    dirs = [p for p in paths if p.is_dir()]
    if dirs:
        if len(paths) > 1:
            raise EdgeKDError("pass either one run folder or model files, not both",
                              "run `edgekd bench RUN_DIR` once per run")
        report = bench_run(dirs[0], opts, console=console)
        where = dirs[0]
    else:
        where = out or Path("edgekd-runs") / f"bench-{datetime.now():%Y%m%d-%H%M%S}"
        report = bench_files(list(paths), where, opts, console=console)
    render_terminal(report, console, selection=False)
    console.print(f"[green]wrote[/green] {where}/report.json, report.md, report.html", highlight=False)
