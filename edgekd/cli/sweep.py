"""``edgekd sweep``: distil several widths and put every artifact of every width on one frontier."""

from __future__ import annotations

import click

from edgekd.cli.distill import config_options, resolve_config

# The distill options a sweep takes (the rest keep their defaults).
SWEEP_OPTIONS = ("target", "out", "data.path", "teacher.spec", "teacher.weights", "student.family", "data.image_size",
                 "bench.compare", "selection.budget_ms", "train.epochs", "seed", "device.train", "train.loss",
                 "export.formats", "bench.seconds", "overwrite", "progress", "device.threads")


@click.command("sweep")
@config_options(include=SWEEP_OPTIONS)
@click.option("--widths", default="0.25,0.5,1,2", show_default=True, help="Width multipliers to distil.")
@click.option("--config", "config", type=click.Path(), help="Read the options from this YAML/JSON file; flags override it.")
@click.pass_context
def command(ctx, widths, **kw):
    """Distil every width in --widths for TARGET and benchmark every artifact: the accuracy-latency
    frontier across widths and formats, in one report."""
    from edgekd.cli.render import make_console, print_report, rendering
    from edgekd.config import RunConfig
    from edgekd.pipeline import sweep

    cfg = resolve_config(ctx, kw)
    width_list = RunConfig().set("selection.widths", widths, where="--widths").selection.widths
    console = make_console()
    with rendering(console, progress=cfg.progress):
        merged = sweep(cfg, width_list)
    print_report(console, merged, selection=False)
    console.print(f"[bold green]Sweep of {len(width_list)} widths done.[/] Comparison: {', '.join(merged['files'])}")
