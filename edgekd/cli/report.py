"""`edgekd report RUN_DIR...`: rebuild report.md and report.html from report.json; several runs are compared."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Where the report goes: with one run, its rebuilt reports (the run folder is left as it is); with "
                   "several, the comparison (default: the first run's compare/ folder).")
@click.option("--no-html", is_flag=True, help="Skip report.html (no matplotlib needed).")
@click.option("--quiet", is_flag=True, help="Do not print the tables.")
@click.option("--overwrite", is_flag=True, help="Replace a report in --out that `edgekd report` did not write.")
def command(run_dirs: tuple[Path, ...], out: Path | None, no_html: bool, quiet: bool, overwrite: bool) -> None:
    """Rebuild the reports of RUN_DIR (a run folder or its report.json).

    With several runs, each run's reports are rebuilt and one more report compares them all: every
    artifact of every run in one table and one accuracy-latency plot, with the frontier across runs.
    """
    from edgekd.cli.render import make_console, print_report
    from edgekd.errors import EdgeKDError
    from edgekd.fsutil import run_lock, writable_folder
    from edgekd.report import REPORT_NAME, load_report, merge_reports, run_labels, write_reports
    from edgekd.report.output import check_comparable
    from edgekd.report.schema import report_path

    console = make_console()
    folders = [report_path(p).parent for p in run_dirs]
    reports = [load_report(p) for p in run_dirs]  # all validated before anything is written
    for given, report in zip(run_dirs, reports):
        _refuse_unfinished(given, report)
    seen = {}
    for given, folder in zip(run_dirs, folders):
        if folder.resolve() in seen:
            raise EdgeKDError(f"{given} and {seen[folder.resolve()]} are the same run", "pass each run once")
        seen[folder.resolve()] = given
    if len(reports) == 1 and out is not None and out.resolve() != folders[0].resolve():
        if (out / REPORT_NAME).is_file() and not overwrite:
            raise EdgeKDError(f"--out {out} already holds a report.json", "pass --overwrite to replace it, or choose "
                                                                          "another --out")
        folders = [writable_folder(out)]  # a read-only or archived run can be reported elsewhere
    for folder in folders:
        writable_folder(folder, "run folder")
    if len(reports) > 1:
        out = out or folders[0] / "compare"
        if out.resolve() in seen:
            raise EdgeKDError(f"--out {out} is one of the runs being compared", "choose another --out")
        check_comparable(list(zip(run_labels(folders), reports)))
        previous = out / REPORT_NAME
        if previous.is_file() and not overwrite and _command_of(previous) != "compare":
            raise EdgeKDError(f"--out {out} holds a report.json that `edgekd report` did not write",
                              "pass --overwrite to replace it, or choose another --out")
        writable_folder(out)
    for folder, report in zip(folders, reports):
        with run_lock(folder):
            paths = write_reports(folder, report, html=not no_html)
        if len(reports) == 1 and not quiet:
            print_report(console, report)
        console.print(f"[green]wrote[/green] {', '.join(str(p) for k, p in paths.items() if k != 'json')}",
                      highlight=False)
    if len(reports) > 1:
        merged = merge_reports(list(zip(run_labels(folders), reports)))
        paths = write_reports(out, merged, html=not no_html)
        if not quiet:
            print_report(console, merged, selection=False)
        console.print(f"[green]wrote[/green] comparison of {len(reports)} runs: "
                      f"{', '.join(str(p) for p in paths.values())}", highlight=False)


def _refuse_unfinished(given: Path, report: dict) -> None:
    """A run that failed or was interrupted has no figures to report: say where and why it stopped (exit 1)."""
    from edgekd.errors import EdgeKDError
    from edgekd.rundir import UNFINISHED

    status = report.get("status")
    if status in UNFINISHED:
        raise EdgeKDError(f"{given}: the run {status} in stage {report.get('failed_stage') or '?'}: "
                          f"{report.get('error') or 'no error recorded'}",
                          report.get("hint") or "fix the cause and rerun the same `edgekd distill` command "
                                                "(a failed run folder is replaced)", exit_code=1)


def _command_of(report_file: Path) -> str | None:
    import json

    try:
        return json.loads(report_file.read_text(encoding="utf-8")).get("command")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
