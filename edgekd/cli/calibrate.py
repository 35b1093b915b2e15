"""`edgekd calibrate`: fit a target's latency coefficients from on-device measurements."""

from __future__ import annotations

import json
import sys

import click


@click.command("calibrate")
@click.option("--target", "-t", required=True, help="Target name (see `edgekd targets`) or a profile .yaml path.")
@click.option("--measurements", "-m", required=True, type=click.Path(dir_okay=False),
              help="JSON written by the on-device runner ({device, results: [{model, input_shape, latency_ms: {p50}}]}), "
                   "or a published table in the targets/measurements/*.yaml format.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), help="Which measured precision to fit (default: the one measured).")
@click.option("--dry-run", is_flag=True, help="Fit and print, but do not save the calibration.")
@click.option("--json", "as_json", is_flag=True, help="Print the fit as JSON.")
def command(target, measurements, precision, dry_run, as_json):
    """Fit the per-kernel latency model of TARGET to latencies measured on the device.

    The ONNX files named in the measurements are costed with the target runtime's fusions; the
    coefficients are fitted by non-negative least squares (anchored to the datasheet when the
    measurements are few) and saved beside the shipped profile, which is never overwritten.
    """
    from rich.console import Console

    from edgekd.cli.profile import print_fit
    from edgekd.hardware.calibration import calibrate_from_measurements

    result = calibrate_from_measurements(target, measurements, precision=precision, save=not dry_run)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    print_fit(Console(width=None if sys.stdout.isatty() else 140), result)
