"""``edgekd sweep``: distil several widths and put every artifact of every width on one frontier."""

from __future__ import annotations

import click

from edgekd.cli.distill import D, _floats, _names


@click.command("sweep")
@click.option("--target", "-t", default=D.target, show_default=True, help="Device profile name or YAML file.")
@click.option("--widths", callback=_floats, default="0.25,0.5,1,2", show_default=True, help="Width multipliers to distil.")
@click.option("--out", "-o", type=click.Path(), help="Sweep folder (one run folder per width inside).")
@click.option("--data", type=click.Path(), help="IDX folder, ImageFolder tree or .npz (default: packaged MNIST).")
@click.option("--teacher", type=click.Path(), help="Teacher weights (.safetensors); default: train once and cache.")
@click.option("--budget-ms", type=float, help="Latency budget drawn on the plots (default: the target's).")
@click.option("--epochs", type=int, help="Distillation epochs per width.")
@click.option("--seed", type=int, default=D.seed, show_default=True)
@click.option("--device", default=D.device, show_default=True)
@click.option("--loss", default=D.loss, show_default=True)
@click.option("--formats", callback=_names, help="Export formats (default as in distill).")
@click.option("--bench-seconds", type=float, default=D.bench_seconds, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace existing width folders.")
@click.option("--no-progress", is_flag=True)
def command(widths, no_progress, **kw):
    """Distil every width in --widths for TARGET and benchmark every artifact: the accuracy-latency
    frontier across widths and formats, in one report."""
    from edgekd.pipeline import DistillOptions, sweep

    sweep(DistillOptions(progress=not no_progress, **kw), widths)
