"""`edgekd ingest RESULTS.json RUN_DIR`: merge on-device timings into a run's report as measured:<device>."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("ingest")
@click.argument("results", type=click.Path(path_type=Path))
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--device", default=None,
              help="Device name for the latency source label (default: the --device-name given to the runner).")
@click.option("--force", is_flag=True,
              help="Ingest results whose own device record names another target than the run's.")
def command(results: Path, run_dir: Path, device: str | None, force: bool) -> None:
    """Merge RESULTS.json (from the `edgekd runner` script) into RUN_DIR's report and rebuild it."""
    from edgekd.bench.ingest import ingest_results

    summary = ingest_results(results, run_dir, device=device, force=force)
    for model, artifact in summary.matched:
        click.echo(f"measured:{summary.device}  {model} -> {artifact}")
    for model in summary.unmatched:
        click.echo(f"not in this run: {model}")
    for model, reason in summary.failed:
        click.echo(f"failed on the device: {model}: {reason}")
    click.echo(f"updated {', '.join(str(p) for p in summary.paths.values())}")
