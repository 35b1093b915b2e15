"""`edgekd search`: the student (family x width x depth x image size x precision) to train within latency and
memory budgets, chosen by the same code and rule `edgekd distill` uses, without training anything."""

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
              help="Student family (cnn, mobilenet_v3_small, efficientnet_b0, ...), timm:NAME or FILE.py:factory; "
                   "'auto' searches every registered family, 'a,b,c' those.")
@click.option("--widths", help="Comma-separated width multipliers (default: the family's).")
@click.option("--depths", help="Comma-separated depth multipliers (default: the family's; 1 for families without one).")
@click.option("--image-sizes", "--resolutions", "resolutions", help="Comma-separated input sizes in pixels (default: the input's own).")
@click.option("--precisions", help="Comma-separated precisions to search (default: the target's; every fast one "
                                   "of the target's with several families).")
@click.option("--input", "input_shape", default=None,
              help="Input shape CxHxW of the data (default: the family's, 1x28x28 for cnn/mlp, else 3x224x224).")
@click.option("--num-classes", default=10, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--safe", is_flag=True, help="Judge each candidate by the upper end of its latency interval.")
@click.option("--json", "as_json", is_flag=True, help="Print every candidate as JSON (width, image_size, params, flops, predicted_ms, fits).")
def command(target, budget_ms, memory_mb, arch, widths, depths, resolutions, precisions, input_shape, num_classes,
            safe, as_json):
    """Search family, width, depth, image size and precision; print the Pareto front and the candidate distill
    would train."""
    import gc

    from edgekd.hardware import load_target

    load_target(target)  # an unknown target is refused before the model families (and torch) load
    from edgekd.hardware.select import select_student, student_families
    from edgekd.modelfile import parse_shape
    from edgekd.models import family_traits

    multi = arch == "auto" or "," in arch
    names = student_families(arch) if multi else [arch]
    default_input = "x".join(map(str, family_traits(names[0]).default_input if not multi else (3, 224, 224)))
    shape = parse_shape(input_shape or default_input, "--input")
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[0] != 1):
        raise EdgeKDError(f"--input {input_shape} is not an image shape", "write it as CxHxW, e.g. --input 1x28x28")
    precs = [p.strip() for p in precisions.split(",") if p.strip()] if precisions else None
    gc.freeze()   # the imports' objects are there to stay: keep the collector from rescanning them per candidate
    sel = select_student(names, target=target, budget_ms=budget_ms, num_classes=num_classes, input_shape=shape[-3:],
                         widths=_numbers(widths, "--widths"), depths=_numbers(depths, "--depths"),
                         image_sizes=_numbers(resolutions, "--image-sizes", int), precisions=precs,
                         memory_mb=memory_mb, progress=not as_json, safe=safe)
    if as_json:
        click.echo(json.dumps(sel.to_dict(), indent=2))
        return
    _print(sel, arch, shape[-1])


def _print(sel, arch: str, native: int) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)
    judged = ", judged by the interval's upper end" if sel.safe else ""
    across = len(sel.families) > 1 or len(sel.precisions) > 1
    rows = sel.front if across else sel.pareto
    what = f"{len(sel.families)} families x {'/'.join(sel.precisions)}" if across else arch
    table = Table(title=f"{what}: Pareto front on {sel.target} ({sel.latency_source}), budget {sel.budget_ms:g} ms{judged}, "
                        f"memory {sel.memory_budget_mb:g} MB")
    cols = (("family", "precision", "acc proxy") if across else ()) + \
        ("width", "depth", "res", "params", "MFLOPs", "ms", "interval ms", "memory MB", "fits")
    for col in cols:
        table.add_column(col, justify="left" if col == "family" else "right")
    for c in rows:
        mark = "chosen" if c is sel.chosen else ("yes" if c.fits else "no")
        interval = f"{c.predicted_low_ms:.4f}-{c.predicted_high_ms:.4f}" if c.predicted_high_ms is not None else "-"
        if c.extrapolated:
            interval += " extrapolated"
        lead = [c.family, c.precision, f"{c.accuracy_proxy:.1f}" if c.accuracy_proxy is not None else "-"] if across else []
        table.add_row(*lead, f"{c.width:g}", f"{c.depth:g}", str(c.image_size or native), f"{c.params:,}",
                      f"{c.flops / 1e6:.2f}", f"{c.predicted_ms:.4f}", interval, f"{c.memory_mb:.3f}", mark)
    console.print(table)
    c = sel.chosen
    upper = f", up to {c.predicted_high_ms:.4f} ms" if c.predicted_high_ms is not None else ""
    family = f"{c.family} ({c.precision}), " if across else ""
    console.print(f"chosen: {family}width {c.width:g}, depth {c.depth:g}, image size {c.image_size or native}: "
                  f"{c.params:,} params, {c.predicted_ms:.4f} ms{upper} ({sum(x.fits for x in sel.candidates)} of "
                  f"{len(sel.candidates)} candidates fit; rule: {sel.to_dict()['rule']})")
    if any(x.extrapolated for x in rows):
        console.print("extrapolated: outside what the latency model's calibration saw; its interval is widened")
