"""Run reports: report.json (the contract every command reads), report.md, report.html and the terminal table."""

from edgekd.report.output import HTML_NAME, MARKDOWN_NAME, merge_reports, run_labels, write_reports
from edgekd.report.schema import REPORT_NAME, SCHEMA_VERSION, load_report, new_report, validate_report


def render_terminal(report: dict, console=None, *, selection: bool = True) -> None:
    """Print the report as rich tables (rich is imported only when a table is printed)."""
    from edgekd.report.terminal import render_terminal as _render

    _render(report, console, selection=selection)


def render_markdown(report: dict) -> str:
    from edgekd.report.markdown import render_markdown as _render

    return _render(report)


def render_html(report: dict) -> str:
    from edgekd.report.html import render_html as _render

    return _render(report)


__all__ = [
    "SCHEMA_VERSION", "REPORT_NAME", "MARKDOWN_NAME", "HTML_NAME", "load_report", "validate_report", "new_report",
    "write_reports", "merge_reports", "run_labels", "render_terminal", "render_markdown", "render_html",
]

from edgekd.apicall import callable_package  # noqa: E402  (edgekd.report(...) is the API's report)

callable_package(__name__, "report")
