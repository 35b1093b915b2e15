"""Run reports: report.json (the contract every command reads), report.md, report.html and the terminal tables."""

from edgekd.report.output import HTML_NAME, MARKDOWN_NAME, merge_reports, run_labels, write_reports
from edgekd.report.schema import REPORT_NAME, SCHEMA_VERSION, load_report, new_report, validate_report


def report_renderables(report: dict, width: int = 160, *, selection: bool = True) -> list:
    """The report as rich renderables for a front end to print (rich is imported only when asked)."""
    from edgekd.report.terminal import report_renderables as _renderables

    return _renderables(report, width, selection=selection)


def render_markdown(report: dict) -> str:
    from edgekd.report.markdown import render_markdown as _render

    return _render(report)


def render_html(report: dict) -> str:
    from edgekd.report.html import render_html as _render

    return _render(report)


__all__ = [
    "SCHEMA_VERSION", "REPORT_NAME", "MARKDOWN_NAME", "HTML_NAME", "load_report", "validate_report", "new_report",
    "write_reports", "merge_reports", "run_labels", "report_renderables", "render_markdown", "render_html",
]
