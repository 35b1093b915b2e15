"""``edgekd distill``: the whole job, from teacher to a measured, exported student.

Its options are generated from :class:`edgekd.config.RunConfig` (one click option per field, its help
and default from the field), so an option is added in one place: the config.
"""

from __future__ import annotations

from dataclasses import fields

import click

from edgekd.config import SECTIONS, RunConfig, field_default

# Flags of the command line that are not options of a run.
CLI_ONLY = ("config", "print_config", "train_device")


def _walk():
    """(parameter name, config path, owner class, field) for every RunConfig option."""
    for f in fields(RunConfig):
        if f.name in SECTIONS:
            for g in fields(SECTIONS[f.name]):
                yield f"{f.name}__{g.name}", f"{f.name}.{g.name}", SECTIONS[f.name], g
        else:
            yield f.name, f.name, RunConfig, f


def _option(param: str, owner, f, default_override=None) -> click.Option:
    meta = f.metadata
    flags = meta.get("flag", f"--{f.name.replace('_', '-')}").split("/")
    default = field_default(owner, f.name) if default_override is None else default_override
    kind = str(f.type)
    kw = dict(help=meta.get("help", ""), hidden=meta.get("hidden", False))
    if meta.get("negate"):
        return click.Option(flags + [param], is_flag=True, default=False, **{**kw, "help": meta["flag_help"]})
    if "bool" in kind and "None" in kind:
        name = flags[0][2:]
        return click.Option([f"--{name}/--no-{name}", param], default=None, **kw)
    if "bool" in kind:
        return click.Option(flags + [param], is_flag=True, default=False, **kw)
    if meta.get("multiple"):
        return click.Option(flags + [param], multiple=True, type=click.Path(), **kw)
    ctype = (click.Choice(meta["choices"]) if meta.get("choices") else int if kind.startswith("int")
             else float if kind.startswith("float") else str)
    if isinstance(default, (list, tuple)):
        default = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
    elif isinstance(default, float) and meta.get("scale"):
        default = default * meta["scale"]
    # Only values typed on the command line override a --config file (given_options reads their source).
    return click.Option(flags + [param], type=ctype, default=default, show_default=default is not None, **kw)


def config_options(include=None, defaults: dict | None = None):
    """A decorator adding RunConfig's options (those whose paths are in ``include``, else all) to a command."""
    def decorate(fn):
        for param, path, owner, f in reversed(list(_walk())):
            if include is None or path in include:
                if not hasattr(fn, "__click_params__"):
                    fn.__click_params__ = []
                fn.__click_params__.append(_option(param, owner, f, (defaults or {}).get(path)))
        return fn
    return decorate


def given_options(ctx: click.Context, kw: dict) -> dict:
    """{config path: value} for the options typed on the command line (not defaults)."""
    from click.core import ParameterSource

    out = {}
    for param, path, owner, f in _walk():
        if param not in kw or ctx.get_parameter_source(param) not in (ParameterSource.COMMANDLINE,
                                                                       ParameterSource.ENVIRONMENT):
            continue
        value = kw[param]
        if f.metadata.get("negate"):
            value = not value
        elif f.metadata.get("multiple"):
            value = list(value) if len(value) > 1 else (value[0] if value else None)
        elif f.metadata.get("scale") and value is not None:
            value = value / f.metadata["scale"]
        out[path] = value
    return out


def resolve_config(ctx: click.Context, kw: dict) -> RunConfig:
    """The run's config: its saved config.json on --resume, else --config FILE, else the defaults; then the
    flags typed on the command line."""
    from pathlib import Path

    given = given_options(ctx, kw)
    out = given.get("out")
    if given.get("resume") and out and (Path(out) / "config.json").is_file():
        cfg = RunConfig.load(Path(out) / "config.json")
        cfg.overwrite = False
    elif kw.get("config"):
        cfg = RunConfig.load(kw["config"])
    else:
        cfg = RunConfig()
    for path, value in given.items():
        cfg.set(path, value, where="command line")
    return cfg


def _is_compute(name: str) -> bool:
    return name in ("auto", "cpu", "cuda") or name.startswith("cuda:")


def split_device(cfg: RunConfig, train_device: str | None) -> None:
    """--device is where to train (auto/cpu/cuda) or, any other name, a device to measure on."""
    from edgekd.errors import EdgeKDError

    device, remote = cfg.device.train, cfg.device.remote
    if _is_compute(device):
        if train_device is not None:
            raise EdgeKDError("--train-device goes with --device NAME (a measuring device)",
                              f"use --device {train_device} alone to choose where to train")
        return
    if remote is not None and remote != device:
        raise EdgeKDError(f"--device {device} and --remote-device {remote} name two devices", "give one")
    from edgekd.devices.store import get_device

    try:
        get_device(device)
    except EdgeKDError as err:
        raise EdgeKDError(f"--device {device!r} is neither where to train (auto, cpu, cuda[:N]) nor a device to measure "
                          f"on: {err.message}", err.hint) from None
    cfg.device.train, cfg.device.remote = train_device or "auto", device


@click.command("distill")
@config_options()
@click.option("--train-device", default=None, help="Where to train when --device names a measuring device (auto, cpu, cuda).")
@click.option("--config", "config", type=click.Path(), help="Read the options from this YAML/JSON file (as --print-config writes it); flags override it.")
@click.option("--print-config", is_flag=True, help="Write the resolved options as YAML to stdout and exit.")
@click.pass_context
def command(ctx, **kw):
    """Pick the widest student that fits TARGET's latency budget, distil, export, measure, report."""
    from edgekd.cli.render import make_console, rendering
    from edgekd.pipeline import distill

    cfg = resolve_config(ctx, kw)
    split_device(cfg, kw["train_device"])
    if kw["print_config"]:
        cfg.validate()
        click.echo(cfg.to_yaml(), nl=False)
        return
    console = make_console()
    with rendering(console, progress=cfg.progress):
        report = distill(cfg)
    show_report(console, report)


def show_report(console, report: dict) -> None:
    """The finished run's tables and where its files are."""
    from edgekd.cli.render import print_report

    print_report(console, report, selection=False)
    seconds = report.get("timings_s") or {}
    out = (report.get("config") or {}).get("out")
    console.print(f"[bold green]Done in {seconds.get('total', 0):.1f} s.[/] Run folder: {out}  "
                  f"({', '.join(report.get('files') or [])})")
    console.print("  stage timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
