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


def first_line(err: BaseException | str, limit: int = 160) -> str:
    """The first non-empty line of an error's text (its type name when it has none), cut to ``limit``."""
    text = str(err).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not line and isinstance(err, BaseException):
        line = type(err).__name__
    return line[:limit]
