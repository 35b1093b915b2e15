"""`edgekd search`: the largest student (width x depth x resolution) within latency and memory budgets."""

from __future__ import annotations

import json
import sys

import click

from edgekd.errors import EdgeKDError


def _floats(text: str | None, what: str):
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise EdgeKDError(f"cannot read {what} {text!r}", f"write {what} as a comma-separated list, e.g. 0.5,1,2") from None


@click.command("search")
@click.option("--target", "-t", required=True, help="Target name (see `edgekd targets`) or a profile .yaml path.")
@click.option("--budget-ms", type=float, help="Latency budget (default: the target's).")
@click.option("--memory-mb", type=float, help="Memory budget for weights + peak activations (default: the device's memory).")
@click.option("--arch", default="cnn", show_default=True, help="Student family.")
@click.option("--widths", help="Comma-separated width multipliers (default: 0.25,...,3).")
@click.option("--depths", default="1,2,3", show_default=True, help="Comma-separated depths.")
@click.option("--resolutions", help="Comma-separated input resolutions (default: the data's own).")
@click.option("--input", "input_shape", default="1x28x28", show_default=True, help="Input shape CxHxW of the data.")
@click.option("--num-classes", default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the search as JSON.")
def command(target, budget_ms, memory_mb, arch, widths, depths, resolutions, input_shape, num_classes, as_json):
    """Search width, depth and input resolution; print the Pareto front and the largest candidate that fits."""
    from edgekd.hardware import search
    from edgekd.modelfile import parse_shape

    shape = parse_shape(input_shape, "--input")
    depth_list = [int(d) for d in (_floats(depths, "--depths") or [1])]
    res = _floats(resolutions, "--resolutions")
    sel = search(arch, target=target, budget_ms=budget_ms, num_classes=num_classes, input_shape=shape[-3:],
                 widths=_floats(widths, "--widths"), depths=depth_list,
                 resolutions=[int(r) for r in res] if res else None, memory_mb=memory_mb, progress=not as_json)
    if as_json:
        click.echo(json.dumps(sel.to_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    table = Table(title=f"Pareto front on {sel.target} ({sel.latency_source}), budget {sel.budget_ms:g} ms, "
                        f"memory {sel.memory_budget_mb:g} MB")
    for col in ("width", "depth", "res", "params", "MFLOPs", "ms", "memory MB", "fits"):
        table.add_column(col, justify="right")
    native = shape[-1]
    for c in sel.pareto:
        mark = "chosen" if c is sel.chosen else ("yes" if c.fits else "no")
        table.add_row(f"{c.width:g}", str(c.depth), str(c.resolution or native), f"{c.params:,}", f"{c.flops / 1e6:.2f}",
                      f"{c.predicted_ms:.4f}", f"{c.memory_mb:.3f}", mark)
    console.print(table)
    c = sel.chosen
    console.print(f"chosen: width {c.width:g}, depth {c.depth}, resolution {c.resolution or native}: {c.params:,} params, "
                  f"{c.predicted_ms:.4f} ms ({sum(x.fits for x in sel.candidates)} of {len(sel.candidates)} candidates fit)")
