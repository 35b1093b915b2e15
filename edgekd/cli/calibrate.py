"""`edgekd calibrate`: fit a target's latency coefficients from on-device measurements."""

from __future__ import annotations

import json
import sys

import click


@click.command("calibrate")
@click.option("--target", "-t", required=True, help="Target name (see `edgekd targets`) or a profile .yaml path.")
@click.option("--measurements", "-m", type=click.Path(dir_okay=False),
              help="JSON written by the on-device runner ({device, results: [{model, input_shape, latency_ms: {p50}}]}), "
                   "or a published table in the targets/measurements/*.yaml format.")
@click.option("--device", default=None,
              help="Instead of --measurements: time probe networks on this device (`edgekd devices add`) over SSH.")
@click.option("--count", default=40, show_default=True, type=click.IntRange(0, 1000),
              help="With --device: probe networks to time (0: fit from what was measured there before).")
@click.option("--seconds", default=1.0, show_default=True, type=float, help="With --device: timing budget per probe.")
@click.option("--timeout", type=float, default=None, help="With --device: seconds the measurement may take there.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), help="Which measured precision to fit (default: the one measured).")
@click.option("--dry-run", is_flag=True, help="Fit and print, but do not save the calibration.")
@click.option("--json", "as_json", is_flag=True, help="Print the fit as JSON.")
def command(target, measurements, device, count, seconds, timeout, precision, dry_run, as_json):
    """Fit the per-kernel latency model of TARGET to latencies measured on the device.

    The ONNX files named in the measurements are costed with the target runtime's fusions; the
    coefficients are fitted by non-negative least squares (anchored to the datasheet when the
    measurements are few) and saved beside the shipped profile, which is never overwritten.
    """
    from rich.console import Console

    from edgekd.cli.profile import print_fit
    from edgekd.errors import EdgeKDError
    from edgekd.hardware.calibration import calibrate_from_measurements

    if (measurements is None) == (device is None):
        raise EdgeKDError("pass either --measurements FILE.json or --device NAME",
                          "--device times probe networks on a device added with `edgekd devices add`")
    if device is not None:
        return _calibrate_on_device(target, device, count=count, seconds=seconds, timeout=timeout,
                                    precision=precision, dry_run=dry_run, as_json=as_json)
    result = calibrate_from_measurements(target, measurements, precision=precision, save=not dry_run)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    print_fit(Console(width=None if sys.stdout.isatty() else 140), result)


def _calibrate_on_device(target, device, *, count, seconds, timeout, precision, dry_run, as_json) -> None:
    from rich.console import Console

    from edgekd.cli.profile import print_fit
    from edgekd.devices.calibrate import calibrate_on_device
    from edgekd.devices.remote import MeasureOptions
    from edgekd.errors import EdgeKDError

    if dry_run:
        raise EdgeKDError("--dry-run does not go with --device", "the device's timings are kept either way; drop --dry-run")
    cal = calibrate_on_device(target, device, count=count, precision=precision, progress=not as_json,
                              options=MeasureOptions(seconds=seconds, warmup=10, timeout_s=timeout))
    if as_json:
        click.echo(json.dumps({**cal.result.to_dict(), "errors": cal.errors,
                               "transfer": cal.run.transfer_record() if cal.run else None}, indent=2))
        return
    console = Console(width=None if sys.stdout.isatty() else 140)
    print_fit(console, cal.result)
    before, after = cal.errors.get("before"), cal.errors.get("after")
    if before and after:
        console.print(f"prediction error on the {before['n']} probes just timed on {device}: median "
                      f"{before['median_abs_pct_err']:.1f}% ({before['calibration']}) -> {after['median_abs_pct_err']:.1f}% "
                      f"({after['calibration']})", highlight=False)
    if cal.run:
        run = cal.run
        console.print(f"SSH: {run.wall_s:.1f} s in all, {run.overhead_s():.2f} s of it not measuring "
                      f"({run.overhead_s() / max(1, len(run.files)):.3f} s per probe), {run.sent_bytes / 1e6:.2f} MB sent",
                      highlight=False)
