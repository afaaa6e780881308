"""The one line of a long log or exception text that says what went wrong (for problem columns)."""
from __future__ import annotations

import re

_EXCEPTION_LINE = re.compile(r"(Error|Exception)\b.*:")


def error_line(log: str, error: str = "") -> str:
    """The most telling line of a failed run: the last ``SomeError: message`` line of ``log``,
    then of ``error`` (nbgrader's own ``NbGraderException`` wrapper skipped), else
    :func:`last_line` of ``error`` or ``log``. At most 200 characters."""
    for text in (log, error):
        for line in reversed(str(text).splitlines()):
            if _EXCEPTION_LINE.search(line) and "NbGraderException" not in line:
                return line.strip()[:200]
    return last_line(error or log)


def last_line(text: str) -> str:
    """The last non-blank line of ``text`` (≤ 200 characters), or "unknown error"."""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "unknown error"


def printable_line(text: object, limit: int = 300) -> str:
    """``text`` on one line of printable characters (others, line breaks and terminal escapes
    included, become '?'), at most ``limit`` long: safe in a terminal, a CSV cell and a spreadsheet."""
    return "".join(c if c.isprintable() else "?" for c in str(text)[:limit])


class ProblemLines(list):
    """A list of problem lines that keeps the first ``keep`` and only counts the rest.

    A notebook of four million junk cells would otherwise give four million lines, held by the
    grading processes and written into ``grades.csv`` (167 MB measured; red-team pass, 2026-12-07).
    """

    def __init__(self, keep: int = 10) -> None:
        super().__init__()
        self.keep, self.more = keep, 0

    def append(self, line: str) -> None:  # type: ignore[override]
        if len(self) < self.keep:
            super().append(line)
        else:
            self.more += 1

    def lines(self) -> list[str]:
        return list(self) + ([f"... and {self.more} more like these"] if self.more else [])


def cap_lines(lines: list[str], keep: int = 20, limit: int = 300) -> list[str]:
    """The first ``keep`` distinct lines, each at most ``limit`` characters, then one line counting the rest."""
    distinct = list(dict.fromkeys(str(x)[:limit] for x in lines))
    more = len(distinct) - keep
    return distinct[:keep] + ([f"... and {more} more problem lines"] if more > 0 else [])
