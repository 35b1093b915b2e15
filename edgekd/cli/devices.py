"""`edgekd devices add/list/remove/check`: the user's own devices, reached over SSH."""

from __future__ import annotations

import json
import sys

import click


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 140)


@click.group("devices")
def command() -> None:
    """Devices to measure on over SSH (a Jetson or a Raspberry Pi on your desk).

    Stored in the user config folder (EDGEKD_CONFIG_DIR overrides). SSH uses your ~/.ssh/config,
    agent, keys and known_hosts (EDGEKD_SSH_CONFIG names another config file); host keys are always
    checked. Then: `edgekd bench RUN_DIR --device NAME`, `edgekd calibrate --target T --device NAME`,
    `edgekd distill --target T --device NAME`.
    """


@command.command("add")
@click.argument("name")
@click.option("--ssh", "ssh", required=True, help="user@host[:port]; host may be an alias from ~/.ssh/config.")
@click.option("--target", "-t", required=True, help="What the device is: a target name (see `edgekd targets`) or a profile .yaml.")
@click.option("--python", "python", default="python3", show_default=True,
              help="Python on the device (>= 3.6, with numpy and the runtime): a name on its PATH or a path.")
@click.option("--workdir", default=None, help="Folder on the device for temporary work folders (default: $TMPDIR or /tmp).")
@click.option("--replace", is_flag=True, help="Replace a device of the same name.")
def add(name, ssh, target, python, workdir, replace) -> None:
    """Register device NAME (nothing is sent to it; `edgekd devices check NAME` tries it)."""
    from edgekd.devices.store import add_device, store_path

    device = add_device(name, ssh, target, python=python, workdir=workdir, replace=replace)
    click.echo(f"added {device.name}: {device.ssh}, target {device.target}, python {device.python} ({store_path()})")
    click.echo(f"try it: edgekd devices check {device.name}")


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(as_json) -> None:
    """List the registered devices."""
    from rich.table import Table

    from edgekd.devices.store import list_devices, store_path

    devices = list_devices()
    if as_json:
        click.echo(json.dumps([d.to_dict() for d in devices], indent=2))
        return
    if not devices:
        click.echo("no devices yet; add one: edgekd devices add NAME --ssh user@host --target T")
        return
    table = Table(title=f"devices ({store_path()})")
    for col in ("name", "ssh", "target", "python", "workdir"):
        table.add_column(col)
    for d in devices:
        table.add_row(d.name, d.ssh, d.target, d.python, d.workdir or "-")
    _console().print(table)


@command.command("remove")
@click.argument("name")
@click.option("--forget", is_flag=True, help="Also delete the device's measurement history (cache).")
def remove(name, forget) -> None:
    """Unregister device NAME (calibrations fitted from it stay)."""
    from edgekd.devices import history
    from edgekd.devices.store import remove_device

    remove_device(name)
    if forget:
        history.forget(name)
    click.echo(f"removed {name}" + (" and its measurement history" if forget else ""))


@command.command("check")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print what the device reported as JSON.")
def check(name, as_json) -> None:
    """Connect to NAME and show what it can run: Python, runtimes, CPU/GPU, OS, Jetson model and state.

    Exits 2 when the device cannot measure its target's runtime (the line says what to install).
    """
    from edgekd.devices.remote import check as check_device
    from edgekd.devices.remote import readiness
    from edgekd.devices.store import get_device
    from edgekd.hardware.targets import load_target

    device = get_device(name)
    target = load_target(device.target)
    info, timings = check_device(device)
    method, problem = readiness(device, info, target.runtime)
    if as_json:
        click.echo(json.dumps({"device": device.to_dict(), "info": info, "timings_s": timings,
                               "ready": problem is None, "method": method}, indent=2))
    else:
        _print_check(device, target, info, timings)
    if problem:
        raise problem
    if as_json:
        return
    how = f"trtexec ({info['trtexec']['path']})" if method == "trtexec" else "the edgekd runner"
    click.echo(f"ready: {target.name}'s {target.runtime} runs on {device.name} through {how}")


def _module(info: dict, spec: str) -> str:
    """One needed module (``a|b``: any of them) as the device reported it."""
    names = spec.split("|")
    found = [(n, info.get("modules", {}).get(n) or {}) for n in names]
    ok = next(((n, m) for n, m in found if m.get("ok")), None)
    if ok is None:
        return f"{' or '.join(names)} missing ({found[0][1].get('error', 'not importable')})"
    name, m = ok
    extra = m.get("providers") or m.get("devices")
    return f"{name} {m.get('version') or ''}".strip() + (f" [{', '.join(extra)}]" if extra else "")


def _runtime_rows(info: dict) -> list[tuple[str, str]]:
    """One row per runtime edgekd can drive on a device: its modules (and tool) as found there."""
    from edgekd.runtimes import RUNTIMES

    rows = []
    for name, rt in RUNTIMES.items():
        if not (rt.device_modules or rt.device_tool):
            continue
        parts = [_module(info, spec) for spec in rt.device_modules]
        if rt.device_tool:
            tool = info.get(rt.device_tool)
            parts.append(f"{rt.device_tool} {tool['path']} ({tool.get('version') or 'version unknown'})" if tool
                         else f"{rt.device_tool} not found")
        rows.append((name, "; ".join(parts)))
    return rows


def _print_check(device, target, info: dict, timings: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{device.name} ({device.ssh}), target {target.name}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    rows = [
        ("reachable", f"yes: connected in {timings.get('connect', 0):.2f} s, round trip {timings['round_trip_ms']:.0f} ms"),
        ("python", f"{info.get('python')} ({info.get('python_executable')})"),
        ("numpy", _module(info, "numpy")),
        *_runtime_rows(info),
        ("cpu", f"{info.get('cpu')} ({info.get('cores')} cores, {info.get('machine')})"),
        ("memory", f"{info.get('memory_mb')} MB" if info.get("memory_mb") else "?"),
        ("gpu", ", ".join(info.get("gpus") or []) or ("integrated (Jetson)" if info.get("l4t") else "none found")),
        ("os", info.get("os") or info.get("platform")),
    ]
    for key, label in (("board", "board"), ("l4t", "L4T"), ("jetpack", "JetPack"), ("power_mode", "power mode")):
        if info.get(key):
            rows.append((label, str(info[key])))
    if info.get("gpu_mhz"):
        rows.append(("gpu clock", f"{info['gpu_mhz']} MHz (max {info.get('gpu_max_mhz')})"))
    if info.get("cpu_mhz"):
        rows.append(("cpu clock", f"{info['cpu_mhz']} MHz (max {info.get('cpu_max_mhz')}, governor {info.get('governor')})"))
    if info.get("temperature_c"):
        rows.append(("temperature", ", ".join(f"{k} {v:g} C" for k, v in info["temperature_c"].items())))
    for key, value in rows:
        table.add_row(key, str(value))
    _console().print(table)
