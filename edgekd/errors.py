"""The one exception type users see: a one-line message saying what is wrong and how to fix it."""

from __future__ import annotations


class EdgeKDError(Exception):
    """A user-facing error. The CLI prints ``str(err)`` on one line and exits non-zero.

    ``message`` says what is wrong; ``hint`` says how to fix it. ``exit_code`` lets commands such as
    ``edgekd gate`` distinguish bad usage (2) from other failures.
    """

    def __init__(self, message: str, hint: str | None = None, *, exit_code: int = 2):
        self.message = " ".join(str(message).split())
        self.hint = " ".join(str(hint).split()) if hint else None
        self.exit_code = exit_code
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


# Lines runtimes put before the cause (OpenVINO and ONNX Runtime lead with C++ source locations).
_LOCATION_PREFIXES = ("Exception from ", "Check '", "[ GENERAL_ERROR ]")


def first_line(err: BaseException | str, limit: int = 200, *, with_type: bool = False) -> str:
    """The informative first line of an error, for one-line messages and report reasons.

    Skips the source-location lines runtimes lead with, never fails on an empty message (the type name
    stands in), and cuts at ``limit`` characters. ``with_type`` prefixes the exception's type name
    (``ValueError: ...``), except for an EdgeKDError, whose message already says what went wrong.
    """
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(_LOCATION_PREFIXES)
              and not ln.endswith(".cpp") and "src/" not in ln[:40]]
    line = (useful or lines or [""])[0]
    name = type(err).__name__ if isinstance(err, BaseException) else ""
    if with_type and name and not isinstance(err, EdgeKDError):
        line = f"{name}: {line}" if line else name
    line = line or name or "unknown error"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def refuse_if_nothing_worked(rows: list[dict], what: str, hint: str) -> None:
    """Exit 1 (a failed command, not a usage error) when rows were attempted and none has status ok: a report
    whose every format or file failed must not end like a success."""
    if not rows or any(r.get("status") == "ok" for r in rows):
        return
    first = next((r for r in rows if r.get("status") == "failed"), rows[0])
    why = first.get("reason") or first.get("status") or "failed"
    raise EdgeKDError(f"every {what} failed or was skipped ({len(rows)} in all; first {first.get('name', '?')}: "
                      f"{first_line(str(why), 160)})", hint, exit_code=1)
