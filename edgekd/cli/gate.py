"""``edgekd gate``: fail a CI build whose model is too big, too slow or too inaccurate."""

from __future__ import annotations

import click

from edgekd.errors import EdgeKDError


@click.command("gate")
@click.argument("inputs", nargs=-1, type=click.Path(path_type=str), metavar="(RUN_DIR | REPORT.json | MODEL_FILE...)")
@click.option("--max-size-mb", type=float, help="Largest shipped size in MB (1 MB = 10^6 bytes; ONNX external data and OpenVINO .bin included).")
@click.option("--max-params", type=int, help="Most parameters.")
@click.option("--max-latency-ms", type=float, help="Largest latency in ms on --target.")
@click.option("--target", "-t", help="Device whose latency is gated: 'host' (measured here) or a profile name "
                                     "(default: the report's target; host for model files).")
@click.option("--latency-stat", type=click.Choice(["p50", "p90", "p99", "mean"]), help="Latency statistic to gate (default p50).")
@click.option("--min-accuracy", type=float, help="Lowest test accuracy, a fraction (0.98 = 98%).")
@click.option("--max-accuracy-drop", type=float, help="Largest accuracy drop vs the FP32 student, a fraction (0.01 = 1 point).")
@click.option("--baseline", type=click.Path(path_type=str), help="Previous report.json or run folder to compare with.")
@click.option("--max-growth", type=float, help="Percent size/latency may grow vs --baseline (default 5).")
@click.option("--max-accuracy-fall", type=float, help="Fraction accuracy may fall vs --baseline (default 0).")
@click.option("--artifact", "artifacts", multiple=True, help="Gate only this report artifact (repeatable; 'recommended' = the "
                                                             "report's pick). Default: every exported student artifact with status ok "
                                                             "(not the PyTorch baselines).")
@click.option("--input-shape", help="N,C,H,W for timing a model file with dynamic dimensions.")
@click.option("--junit", "junit", type=click.Path(dir_okay=False, path_type=str), help="Write JUnit XML here (one test case per check).")
@click.option("--config", type=click.Path(dir_okay=False, path_type=str), help="pyproject.toml with [tool.edgekd.gate] (default: the nearest one above the cwd).")
@click.option("--no-config", is_flag=True, help="Ignore pyproject.toml budgets.")
@click.pass_context
def command(ctx, inputs, junit, config, no_config, **budget_values):
    """Check models against size, parameter, latency and accuracy budgets; exit 1 if any is exceeded.

    Budgets come from [tool.edgekd.gate] in pyproject.toml, overridden by the options. Exit codes:
    0 all checks pass, 1 a budget is exceeded, 2 bad usage or unreadable input.
    """
    from edgekd.cli.render import make_console
    from edgekd.gate import check_writable, gate, gate_renderables, parse_shape, report_to_github, resolve_budgets, write_junit

    try:
        if budget_values["input_shape"] is not None:
            budget_values["input_shape"] = parse_shape(budget_values["input_shape"])
        if config and no_config:
            raise EdgeKDError("--config and --no-config contradict each other", "pass one of them")
        budgets, pyproject = resolve_budgets(budget_values, config=config, use_config=not no_config)
        if junit:
            check_writable(junit)
        result = gate(list(inputs), budgets, config=pyproject)
        console = make_console()
        for renderable in gate_renderables(result):
            console.print(renderable, highlight=False)
        if junit:
            write_junit(result, junit)
        report_to_github(result, echo=click.echo)
    except EdgeKDError as err:
        if ctx.find_root().command.name != "gate":
            raise  # under `edgekd`, its main() prints the one-line error (and honours --debug)
        # Run on its own (python -c "...command()"): same one line and exit code, no traceback.
        click.echo(f"edgekd: error: {err}", err=True)
        ctx.exit(err.exit_code)
    ctx.exit(result.exit_code)
