"""Student feedback: output limits, hidden-test scrubbing, the judge's verdicts, safe HTML.

The last line of defence between a submission and the feedback page that students and staff
open in a browser. Hidden tests never run in the student's kernel (a separate judge decides
the points), so the autograded notebook should hold no hidden code; feedback still

* caps outputs in **bytes** (:class:`~autograder.output_caps.LimitOutputBytes`; nbgrader's
  ``LimitOutput`` counts lines only, so one 100 MB line went straight into the feedback),
* removes hidden-test regions and scrubs every cell's outputs of markers and secret lines
  (:func:`strip_hidden_tests`, :func:`scrub_outputs`),
* shows the judge's verdict under each graded cell (:func:`add_verdicts`),
* renders without active content (:func:`feedback_config` for nbconvert, then
  :func:`~autograder.html_safety.sanitize_feedback_file` over the written page).

Wiring, in order: ``LimitOutputBytes`` in ``Autograde.autograde_preprocessors`` (after
``LimitOutput``, before ``SaveAutoGrades``); after autograding ``strip_hidden_tests(path,
secrets, verdicts)``; ``feedback_config(c)`` on the Config given to ``generate_feedback``;
``sanitize_feedback_file(html)`` on the page it wrote.
"""
from __future__ import annotations

import html as _html
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from nbformat.notebooknode import NotebookNode, from_dict
from traitlets.config import Config

from autograder import notebook as nbu
from autograder.output_caps import KiB, LimitOutputBytes, multiline_text

MIN_SECRET_LEN = 12
MAX_VERDICT_MESSAGE = 4 * KiB

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_TAG = re.compile(r"<[^>]*>")


# ------------------------------------------------------------------------------ hidden tests

def _secrets(secret_lines: Iterable[str], min_len: int) -> list[str]:
    return sorted({s.strip() for s in secret_lines if len(s.strip()) >= min_len}, key=lambda s: (-len(s), s))


def _leaks(line: str, secrets: list[str], markup: bool) -> bool:
    """Whether ``line`` holds a marker or a secret (ANSI stripped; ``markup``: also tags stripped, unescaped)."""
    views = [_ANSI.sub("", line)]
    if markup:
        views.append(_html.unescape(_TAG.sub("", views[0])))
    return any(m in v for v in views for m in nbu.LEAK_MARKERS) or any(s in v for v in views for s in secrets)


def _scrub_text(text: str, secrets: list[str], markup: bool = False) -> tuple[str, int]:
    keep, removed = [], 0
    for line in text.splitlines(keepends=True):
        if _leaks(line, secrets, markup):
            removed += 1
        else:
            keep.append(line)
    return "".join(keep), removed


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _scrub_output(out: dict, secrets: list[str]) -> int:
    """Scrub one output in place; returns the lines (or structured values) removed."""
    kind, removed = out.get("output_type"), 0
    if kind == "stream":
        out["text"], removed = _scrub_text(multiline_text(out.get("text", "")), secrets)
    elif kind == "error":
        out["evalue"], removed = _scrub_text(str(out.get("evalue", "")), secrets)
        tb = []
        for entry in out.get("traceback", []):
            clean, n = _scrub_text(multiline_text(entry), secrets)
            removed += n
            if clean or not n:
                tb.append(clean)
        out["traceback"] = tb
    data = out.get("data") or {}
    for mime in list(data):
        value = data[mime]
        if isinstance(value, (str, list)) and (mime.startswith("text/") or mime.endswith(("+xml", "javascript"))):
            data[mime], n = _scrub_text(multiline_text(value), secrets, markup=mime in ("text/html", "image/svg+xml"))
            removed += n
        elif isinstance(value, (dict, list)) and any(_leaks(s, secrets, True) for s in _strings(value)):
            del data[mime]
            removed += 1
    return removed


def scrub_outputs(nb: dict, secret_lines: Iterable[str], min_len: int = MIN_SECRET_LEN) -> int:
    """Remove output lines holding a leak marker or a secret line, in every cell (in place).

    Secret lines shorter than ``min_len`` characters are ignored (``pass``, ``return x`` also
    occur in honest output). ANSI escapes are stripped before matching; ``text/html`` and SVG
    lines are also matched with tags removed and entities unescaped. A JSON-valued output
    (``application/json``) that holds a leak is dropped whole. Returns the number removed.
    """
    secrets = _secrets(secret_lines, min_len)
    removed = 0
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) or []:
            removed += _scrub_output(out, secrets)
    return removed


def _strip_sources(nb: dict) -> None:
    """Hidden regions become one comment line; stray marker lines go (in place)."""
    for cell in nb.get("cells", []):
        src = nbu.cell_source(cell)
        if not any(m in src for m in nbu.LEAK_MARKERS):
            continue
        src = nbu.strip_region(src, nbu.BEGIN_HIDDEN, nbu.END_HIDDEN, nbu.HIDDEN_REPLACEMENT)
        cell["source"] = "".join(ln for ln in src.splitlines(keepends=True)
                                 if not any(m in ln for m in nbu.LEAK_MARKERS))


def strip_hidden_tests(path: Path, secret_lines: Iterable[str] = (),
                       verdicts: dict[str, dict] | None = None) -> int:
    """Remove hidden tests from notebook ``path`` (in place): sources of every cell, outputs of every cell.

    Each hidden region becomes one comment line. Every cell's outputs are scrubbed of leak
    markers, of ``secret_lines`` (e.g. the hidden-test lines (`autograder.notebook.hidden_test_lines`) of the
    source notebook) and of the hidden lines found in ``path`` itself: an IPython traceback
    quotes the lines around the failing one, and a hidden test can print through any cell.
    ``verdicts`` (see :func:`add_verdicts`) are added after the scrub, secrets redacted.
    Returns the number of output lines removed.
    """
    nb = nbu.read_nb(path)
    secrets = [*secret_lines, *nbu.hidden_test_lines(nb)]
    _strip_sources(nb)
    removed = scrub_outputs(nb, secrets)
    if verdicts:
        add_verdicts(nb, verdicts, secret_lines=secrets)
    nbu.write_json_atomic(path, nb)
    return removed


# ------------------------------------------------------------------------------ verdicts

def _points(x: Any) -> str:
    return f"{round(float(x), 2):g}"


def verdict_text(verdict: dict, secret_lines: Iterable[str] = ()) -> str:
    """``Grader: 2 / 2 points — all 14 hidden checks passed`` (one line, plus the message's other lines)."""
    got, most = float(verdict.get("points", 0) or 0), float(verdict.get("max_points", 0) or 0)
    message = str(verdict.get("message") or "").strip()
    if len(message) > MAX_VERDICT_MESSAGE:
        message = message[:MAX_VERDICT_MESSAGE] + " …"
    for secret in [*nbu.LEAK_MARKERS, *_secrets(secret_lines, MIN_SECRET_LEN)]:
        message = message.replace(secret, "(hidden)")
    if got < most and message and not message.lower().startswith("hidden check"):
        message = f"hidden check failed: {message}"
    elif got < most and not message:
        message = "hidden check failed"
    head = f"Grader: {_points(got)} / {_points(most)} points"
    return f"{head} — {message}\n" if message else head + "\n"


def add_verdicts(nb: dict, verdicts: dict[str, dict], secret_lines: Iterable[str] = ()) -> dict:
    """Show the judge's decision under each graded code cell (in place; returns ``nb``).

    ``verdicts`` maps a cell's nbgrader ``grade_id`` to ``{"points", "max_points", "message"}``;
    each such code cell gets one stdout ``stream`` output after its own outputs, e.g.
    ``Grader: 0 / 3 points — hidden check failed: <message>``. Messages are plain text
    (nbconvert escapes streams); markers and ``secret_lines`` in them become ``(hidden)``.
    Verdicts for grade ids the notebook lacks are ignored.
    """
    for cell in nb.get("cells", []):
        gid = nbu.grade_id(cell)
        if cell.get("cell_type") != "code" or gid not in verdicts:
            continue
        out = {"output_type": "stream", "name": "stdout", "text": verdict_text(verdicts[gid], secret_lines)}
        outputs = cell.setdefault("outputs", [])
        outputs.append(from_dict(out) if isinstance(cell, NotebookNode) else out)
    return nb


# ------------------------------------------------------------------------------ rendering

def feedback_config(c: Config) -> None:
    """Set the nbconvert/nbgrader options for safe feedback on ``c`` (in place).

    ``HTMLExporter.sanitize_html`` makes nbconvert's templates pass HTML/markdown outputs
    through ``clean_html`` and drop JavaScript and widget outputs. nbconvert's own
    ``clean_html`` (bleach, tiny allow-list, unknown tags *escaped*) shows ``<p>``, ``<h1>``,
    ``<th>``, ``<img>`` as literal text, so it is replaced by
    :func:`~autograder.html_safety.sanitize_fragment`; and nbgrader's feedback template never
    calls ``clean_html`` on markdown cells, so its ``strip_files_prefix`` step sanitizes too.
    :func:`~autograder.html_safety.sanitize_feedback_file` still runs over the whole page.
    ``LimitOutputBytes`` also runs when rendering (notebooks autograded before it existed).
    """
    from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
    from nbgrader.preprocessors import GetGrades

    c.HTMLExporter.sanitize_html = True
    c.HTMLExporter.skip_svg_encoding = False  # SVG as <img src=data:...>: no script runs in an image
    c.HTMLExporter.filters.update({"clean_html": "autograder.html_safety.sanitize_fragment",
                                   "strip_files_prefix": "autograder.html_safety.sanitize_markdown_html"})
    c.GenerateFeedback.preprocessors = [GetGrades, CSSHTMLHeaderPreprocessor, LimitOutputBytes]
