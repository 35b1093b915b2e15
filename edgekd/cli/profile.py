"""`edgekd profile`: time probe networks on this machine and fit the host's latency coefficients."""

from __future__ import annotations

import json
import math
import sys

import click


def _positive(value: float, what: str) -> float:
    if not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{what} must be a finite number > 0, got {value}")
    return value


@click.command("profile")
@click.option("--target", "-t", default="host", show_default=True, help="A target with `measured: true` (this machine).")
@click.option("--count", default=60, show_default=True, type=click.IntRange(4, 1000), help="Probe networks to time.")
@click.option("--seed", default=0, show_default=True, help="Seed of the probe-network generator.")
@click.option("--max-mflops", default=600.0, show_default=True, callback=lambda ctx, param, v: _positive(v, "--max-mflops"),
              help="Skip probes above this many MFLOPs (keeps profiling quick).")
@click.option("--export", "export_dir", type=click.Path(file_okay=False),
              help="Instead of timing here, write the probes and a measurements.json template to DIR for the on-device runner.")
@click.option("--json", "as_json", is_flag=True, help="Print the fit as JSON.")
def command(target, count, seed, max_mflops, export_dir, as_json):
    """Measure generated networks (width, depth, kernel, resolution) with ONNX Runtime and fit the host model.

    The fit is saved as a calibration file in the user config folder, beside the shipped profile
    (which is never overwritten); later predictions for the target say "calibrated from N measurements".
    """
    from rich.console import Console

    from edgekd.hardware.calibration import export_probes, profile_host

    console = Console(width=None if sys.stdout.isatty() else 140)
    if export_dir:
        from edgekd.fsutil import writable_folder

        writable_folder(export_dir, "--export")
        manifest = export_probes(target, export_dir, count=count, seed=seed, max_mflops=max_mflops, progress=True)
        console.print(f"wrote {count} probe networks and {manifest}; time them on the device with the on-device runner, "
                      f"then run `edgekd calibrate --target {target} --measurements <its output>.json`")
        return
    from edgekd.fsutil import writable_folder
    from edgekd.hardware.targets import calibration_path

    # Minutes of timing must not end in a calibration that cannot be saved: check where it goes first.
    writable_folder(calibration_path(target).parent, "the calibration folder (EDGEKD_CONFIG_DIR)")
    result = profile_host(target, count=count, seed=seed, max_mflops=max_mflops, progress=True)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    print_fit(console, result)


def print_fit(console, result) -> None:
    """Coefficient table and fit quality, shared with `edgekd calibrate`."""
    from rich.table import Table

    table = Table(title=f"{result.target}: fitted from {result.n_measurements} measurements ({result.source})")
    for col in ("kernel class", "us per MFLOP", "us per MB", "us per kernel"):
        table.add_column(col, justify="left" if col == "kernel class" else "right")
    for cls, c in result.coefficients.classes.items():
        table.add_row(cls, f"{c['ms_per_mflop'] * 1e3:.3f}", f"{c['ms_per_mb'] * 1e3:.3f}", f"{c['ms_per_kernel'] * 1e3:.3f}")
    table.add_row("per inference", "", "", f"{result.coefficients.fixed_ms * 1e3:.3f}")
    console.print(table)
    fit = result.fit
    console.print(f"fit ({fit.get('method', 'NNLS')}) on the measured networks: median error {fit['median_abs_pct_err']:.1f}%, "
                  f"within 10%: {fit['within10']:.0%}, within 20%: {fit['within20']:.0%}")
    if "scales" in fit:
        console.print("vs datasheet: " + ", ".join(f"{k} x{v:.2f}" for k, v in fit["scales"].items()))
    if fit.get("held_out"):
        held = fit["held_out"]
        console.print(f"held out ({(fit.get('interval') or {}).get('method', 'each left out in turn')}): median error "
                      f"{held['median_abs_pct_err']:.1f}%, within 10%: {held['within10']:.0%}, within 20%: {held['within20']:.0%}")
    if fit.get("interval"):
        iv = fit["interval"]
        console.print(f"every prediction carries a {100 * iv['level']:.0f}% interval x{iv['low']:.2f} .. x{iv['high']:.2f}")
    if fit.get("parallel_fraction"):
        pf = fit["parallel_fraction"]
        console.print(f"figures on other thread counts than the profile's scaled by Amdahl's law, parallel fraction "
                      f"{pf['value']:.2f} ({pf['origin']})")
    if fit.get("skipped"):
        console.print(f"skipped {len(fit['skipped'])} rows without an ONNX graph: {', '.join(fit['skipped'][:5])}")
    if result.path:
        console.print(f"saved {result.path}")
