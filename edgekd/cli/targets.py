"""`edgekd targets`: list the device profiles (or show one in full)."""

from __future__ import annotations

import json
import sys

import click


@click.command("targets")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def command(name: str | None, as_json: bool) -> None:
    """List device profiles: runtime, precision, default budget, calibration. NAME shows one in full."""
    from rich.console import Console
    from rich.table import Table

    from edgekd.hardware import list_targets, load_target

    if name:
        target = load_target(name)
        if as_json:
            click.echo(json.dumps(target.to_dict(), indent=2))
            return
        console = Console(width=None if sys.stdout.isatty() else 140)
        table = Table(title=f"{target.name}: {target.description}", show_header=False)
        for key, value in target.to_dict().items():
            if key in ("name", "description"):
                continue
            if isinstance(value, dict):
                value = ", ".join(f"{k}={v}" for k, v in value.items())
            elif isinstance(value, list):
                value = "\n".join(map(str, value))
            table.add_row(key, str(value))
        console.print(table)
        return
    targets = list_targets()
    if as_json:
        click.echo(json.dumps([t.to_dict() for t in targets], indent=2))
        return
    table = Table(title="edgekd targets (a .yaml path works as --target too)")
    for col in ("name", "runtime", "precision", "fast", "budget ms", "threads", "calibration", "published measurements"):
        table.add_column(col, no_wrap=col in ("name", "runtime", "fast"))
    for t in targets:
        published = ", ".join(f"{e['n_measurements']} {e['runtime']}/{e['precision']}" for e in t.shipped) or "none"
        table.add_row(t.name, t.runtime, t.precision, ",".join(t.precisions), f"{t.budget_ms:g}",
                      str(t.conditions.get("threads", "-")), t.calibration, published)
    # Piped output (CI logs) gets a wide console so rows stay on one line.
    Console(width=None if sys.stdout.isatty() else 140).print(table)
