"""Gate outputs: the rich table, JUnit XML, GitHub Actions annotations and the job summary."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from edgekd.errors import EdgeKDError

if TYPE_CHECKING:
    from edgekd.gate import GateResult


def gate_renderables(result: GateResult) -> list:
    """The gate's rich table and its summary line, for a front end to print."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="edgekd gate", show_lines=False)
    for column in ("check", "artifact", "value", "budget", "result", "source"):
        table.add_column(column, overflow="fold", no_wrap=column in ("result",))
    for r in result.results:
        verdict = (Text("skip", style="dim") if r.skipped else Text("pass", style="green") if r.passed
                   else Text("FAIL", style="bold red"))
        table.add_row(r.check, r.artifact, r.value_text, r.budget_text, verdict, r.source)
    summary = Text(result.summary(), style="green" if result.passed else "bold red")
    if result.config:
        summary.append(f" (budgets from {result.config})")
    return [table, summary]


def junit_xml(result: GateResult) -> bytes:
    """JUnit XML: one test suite, one test case per check, a <failure> for each exceeded budget."""
    import xml.etree.ElementTree as ET

    suites = ET.Element("testsuites", name="edgekd gate", tests=str(len(result.results)),
                        failures=str(len(result.failures)), errors="0")
    suite = ET.SubElement(suites, "testsuite", name="edgekd gate", tests=str(len(result.results)),
                          failures=str(len(result.failures)), errors="0", skipped=str(len(result.skipped)))
    for r in result.results:
        case = ET.SubElement(suite, "testcase", classname=f"edgekd.gate.{r.artifact}", name=r.check,
                             file=r.origin)
        ET.SubElement(case, "system-out").text = f"{r.value_text} (budget {r.budget_text}; {r.source})"
        if r.skipped:
            ET.SubElement(case, "skipped", message=r.message)
        elif not r.passed:
            failure = ET.SubElement(case, "failure", message=r.message, type="BudgetExceeded")
            failure.text = r.message
    ET.indent(suites)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True) + b"\n"


def check_writable(path: str | os.PathLike, what: str = "JUnit XML") -> Path:
    """Fail before the gate runs (and measures for a while) if its output cannot be written."""
    from edgekd.fsutil import writable_folder

    path = Path(path)
    if path.is_dir():
        raise EdgeKDError(f"cannot write {what} to {path}: it is a folder", "pass a path in a writable folder")
    try:  # a real probe file: root passes os.access for /proc and read-only mounts
        writable_folder(path.parent, f"the folder for {what}")
    except EdgeKDError as err:
        raise EdgeKDError(f"cannot write {what} to {path}: {err.message}", "pass a path in a writable folder") from None
    return path


def write_junit(result: GateResult, path: str | os.PathLike) -> Path:
    from edgekd.fsutil import atomic_write_bytes

    try:
        return atomic_write_bytes(path, junit_xml(result))
    except OSError as err:
        raise EdgeKDError(f"cannot write JUnit XML to {path}: {err.strerror or err}",
                          "pass a --junit path in a writable folder") from None


def _escape_data(text: str) -> str:
    # GitHub workflow command escaping (actions/toolkit: escapeData / escapeProperty).
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(result: GateResult) -> list[str]:
    return [f"::error title={_escape_property(f'edgekd gate: {r.check} of {r.artifact}')}::{_escape_data(r.message)}"
            for r in result.failures]


def markdown_table(result: GateResult) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["### edgekd gate", "", f"**{result.summary()}**", "",
             "| check | artifact | value | budget | result | source |", "|---|---|---|---|---|---|"]
    for r in result.results:
        verdict = "⏭️ skip" if r.skipped else "✅ pass" if r.passed else "❌ FAIL"
        lines.append("| " + " | ".join(cell(c) for c in (r.check, r.artifact, r.value_text, r.budget_text,
                                                         verdict, r.source)) + " |")
    return "\n".join(lines) + "\n\n"


def report_to_github(result: GateResult, echo=print, environ=None) -> None:
    """Under GitHub Actions: ``::error`` annotations for failures and a table in the job summary."""
    environ = os.environ if environ is None else environ
    if environ.get("GITHUB_ACTIONS") != "true":
        return
    for line in github_annotations(result):
        echo(line)
    summary = environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        # The runner owns this file and other steps append to it too, so append, never replace.
        # The summary is a courtesy: a runner that cannot take it must not turn the verdict (exit 0 or 1)
        # into an error, so the failure is a warning annotation and the gate's exit code stands.
        try:
            with open(summary, "a", encoding="utf-8") as fh:
                fh.write(markdown_table(result))
        except OSError as err:
            echo(f"::warning title=edgekd gate::{_escape_data(f'cannot append the table to GITHUB_STEP_SUMMARY {summary}: {err.strerror or err}')}")
