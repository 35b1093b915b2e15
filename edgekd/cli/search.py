"""`edgekd search`: the student (width x depth x image size) to train within latency and memory budgets,
chosen by the same code and rule `edgekd distill` uses, without training anything."""

from __future__ import annotations

import json
import math
import sys

import click

from edgekd.errors import EdgeKDError


def _numbers(text: str | None, what: str, kind=float):
    """'0.5,1,2' -> [0.5, 1.0, 2.0] (``kind=int`` for depths and resolutions); finite numbers only."""
    if not text:
        return None
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        example = "0.5,1,2" if kind is float else "1,2,3"
        raise EdgeKDError(f"cannot read {what} {text!r}", f"write {what} as a comma-separated list, e.g. {example}")
    return values


@click.command("search")
@click.option("--target", "-t", required=True, help="Target name (see `edgekd targets`) or a profile .yaml path.")
@click.option("--budget-ms", type=float, help="Latency budget (default: the target's).")
@click.option("--memory-mb", type=float, help="Memory budget for weights + peak activations (default: the device's memory).")
@click.option("--student", "--arch", "arch", default="cnn", show_default=True,
              help="Student family (cnn, mobilenet_v3_small, efficientnet_b0, ...), timm:NAME or FILE.py:factory.")
@click.option("--widths", help="Comma-separated width multipliers (default: the family's).")
@click.option("--depths", help="Comma-separated depth multipliers (default: the family's; 1 for families without one).")
@click.option("--image-sizes", "--resolutions", "resolutions", help="Comma-separated input sizes in pixels (default: the input's own).")
@click.option("--input", "input_shape", default=None,
              help="Input shape CxHxW of the data (default: the family's, 1x28x28 for cnn/mlp, else 3x224x224).")
@click.option("--num-classes", default=10, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--safe", is_flag=True, help="Judge each candidate by the upper end of its latency interval.")
@click.option("--json", "as_json", is_flag=True, help="Print every candidate as JSON (width, image_size, params, flops, predicted_ms, fits).")
def command(target, budget_ms, memory_mb, arch, widths, depths, resolutions, input_shape, num_classes, safe, as_json):
    """Search width, depth and image size; print the Pareto front and the candidate distill would train."""
    from edgekd.hardware import search
    from edgekd.modelfile import parse_shape
    from edgekd.models import family_traits

    default_input = "x".join(map(str, family_traits(arch).default_input))
    shape = parse_shape(input_shape or default_input, "--input")
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[0] != 1):
        raise EdgeKDError(f"--input {input_shape} is not an image shape", "write it as CxHxW, e.g. --input 1x28x28")
    depth_list = _numbers(depths, "--depths")
    res = _numbers(resolutions, "--image-sizes", int)
    sel = search(arch, target=target, budget_ms=budget_ms, num_classes=num_classes, input_shape=shape[-3:],
                 widths=_numbers(widths, "--widths"), depths=depth_list,
                 resolutions=res, memory_mb=memory_mb, progress=not as_json, safe=safe)
    if as_json:
        click.echo(json.dumps(sel.to_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    judged = ", judged by the interval's upper end" if sel.safe else ""
    table = Table(title=f"{arch}: Pareto front on {sel.target} ({sel.latency_source}), budget {sel.budget_ms:g} ms{judged}, "
                        f"memory {sel.memory_budget_mb:g} MB")
    for col in ("width", "depth", "res", "params", "MFLOPs", "ms", "interval ms", "memory MB", "fits"):
        table.add_column(col, justify="right")
    native = shape[-1]
    for c in sel.pareto:
        mark = "chosen" if c is sel.chosen else ("yes" if c.fits else "no")
        interval = f"{c.predicted_low_ms:.4f}-{c.predicted_high_ms:.4f}" if c.predicted_high_ms is not None else "-"
        table.add_row(f"{c.width:g}", f"{c.depth:g}", str(c.image_size or native), f"{c.params:,}", f"{c.flops / 1e6:.2f}",
                      f"{c.predicted_ms:.4f}", interval, f"{c.memory_mb:.3f}", mark)
    console.print(table)
    c = sel.chosen
    upper = f", up to {c.predicted_high_ms:.4f} ms" if c.predicted_high_ms is not None else ""
    console.print(f"chosen: width {c.width:g}, depth {c.depth:g}, image size {c.image_size or native}: {c.params:,} params, "
                  f"{c.predicted_ms:.4f} ms{upper} ({sum(x.fits for x in sel.candidates)} of {len(sel.candidates)} "
                  f"candidates fit; rule: {sel.to_dict()['rule']})")
