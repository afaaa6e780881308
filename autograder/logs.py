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
