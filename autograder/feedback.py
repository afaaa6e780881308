"""Student feedback: output limits, hidden-test scrubbing, the judge's verdicts, safe HTML.

The last line of defence between a submission and the feedback page that students and staff
open in a browser. Hidden tests never run in the student's kernel (a separate judge decides
the points), so the autograded notebook should hold no hidden code; this module still

* caps outputs in **bytes** (:class:`LimitOutputBytes`; nbgrader's ``LimitOutput`` counts
  lines only, so one 100 MB line went straight into the feedback),
* removes hidden-test regions and scrubs every cell's outputs of markers and secret lines
  (:func:`strip_hidden_tests`, :func:`scrub_outputs`),
* shows the judge's verdict under each graded cell (:func:`add_verdicts`),
* renders without active content (:func:`feedback_config` for nbconvert, then
  :func:`sanitize_feedback_file` over the written page).

Wiring, in order: ``LimitOutputBytes`` in ``Autograde.autograde_preprocessors`` (after
``LimitOutput``, before ``SaveAutoGrades``); after autograding ``strip_hidden_tests(path,
secrets, verdicts)``; ``feedback_config(c)`` on the Config given to ``generate_feedback``;
``sanitize_feedback_file(html)`` on the page it wrote.
"""
from __future__ import annotations

import html as _html
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import PreformattedString
from nbconvert.filters import strip_files_prefix
from nbformat.notebooknode import NotebookNode, from_dict
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Integer
from traitlets.config import Config

from autograder import notebook as nbu

KiB = 1024
MiB = 1024 * KiB
MIN_SECRET_LEN = 12
MAX_VERDICT_MESSAGE = 4 * KiB
# error outputs keep their exception name and message (short) even when the traceback goes
MAX_ENAME = 256
MAX_EVALUE = 1 * KiB
# One HTML fragment (a markdown cell, an HTML output, a highlighted code cell) bigger than this
# is not parsed (bs4 needs ~3 s and ~180 MB per MiB of dense tags) but replaced by a note.
MAX_FRAGMENT_BYTES = 4 * MiB
# Content-Security-Policy of every feedback page: no script, no remote fetch, no form, no
# <base>. A second layer under the sanitizer: if markup ever slipped through, it cannot run.
FEEDBACK_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; font-src data:; "
                "base-uri 'none'; form-action 'none'")

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_ANSI_TAIL = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*)?$")  # an escape cut in half
_TAG = re.compile(r"<[^>]*>")


# ------------------------------------------------------------------------------ byte limits

def human_bytes(n: int) -> str:
    """``65536`` -> ``'64 KiB'``, ``2097152`` -> ``'2 MiB'``, else ``'1,234 bytes'``."""
    for unit, size in (("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n:,} bytes"


def utf8_len(text: str) -> int:
    """Length of ``text`` in UTF-8 bytes (lone surrogates count as 3, as surrogatepass writes them)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def cut_utf8(text: str, limit: int, tail: bool = False) -> str:
    """The first (``tail``: last) at most ``limit`` UTF-8 bytes of ``text``, never half a character."""
    if limit <= 0:
        return ""
    part = text[-limit:] if tail else text[:limit]  # at most `limit` characters: >= the bytes needed
    data = part.encode("utf-8", "surrogatepass")
    if len(data) > limit:
        data = data[-limit:] if tail else data[:limit]
    out = data.decode("utf-8", "ignore")  # drops the partial character at the cut (and lone surrogates)
    return out if tail else _ANSI_TAIL.sub("", out)


def _text(value: Any) -> str:
    """nbformat multiline text (a string or a list of strings) as one string."""
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return value if isinstance(value, str) else str(value)


def _value_bytes(value: Any) -> int:
    if isinstance(value, (str, list)):
        return utf8_len(_text(value))
    return utf8_len(json.dumps(value, ensure_ascii=False, default=str)) if value else 0


def output_bytes(out: dict) -> int:
    """Bytes an output puts into the notebook and the feedback page (text, traceback, data, metadata)."""
    kind = out.get("output_type")
    if kind == "stream":
        return utf8_len(_text(out.get("text", "")))
    if kind == "error":
        return (sum(utf8_len(_text(t)) for t in out.get("traceback", []))
                + utf8_len(str(out.get("ename", ""))) + utf8_len(str(out.get("evalue", ""))))
    data = out.get("data") or {}
    return sum(_value_bytes(v) for v in data.values()) + _value_bytes(out.get("metadata"))


def _grade_relevant(out: dict) -> bool:
    """Outputs that nbgrader's ``determine_grade`` looks at (the first one decides)."""
    kind = out.get("output_type")
    return kind in ("error", "execute_result") or (kind == "stream" and out.get("name") == "stderr")


def _numeric(text: str) -> str | None:
    """``text`` stripped, when it is a number (nbgrader's partial credit), else None."""
    s = text.strip()
    if len(s) > 64:
        return None
    try:
        float(s)
    except ValueError:
        return None
    return s


def _fit_lines(lines: list[str], budget: int) -> tuple[list[str], int]:
    """Head and tail of ``lines`` within ``budget`` bytes (the tail, where the exception is,
    gets at most half); returns them and the index where lines were cut out."""
    if sum(utf8_len(line) for line in lines) <= budget:
        return lines, len(lines)
    tail: list[str] = []
    room, partial = max(budget, 0) // 2, 0
    for line in reversed(lines):
        n = utf8_len(line)
        if n > room:
            if room > 0:  # the end of this line; the head may still take its start
                tail.append(cut_utf8(line, room, tail=True))
                partial = 1
            break
        tail.append(line)
        room -= n
    head: list[str] = []
    room = max(budget, 0) - sum(utf8_len(line) for line in tail)
    for line in lines[:len(lines) - len(tail) + partial]:
        n = utf8_len(line)
        if n > room:
            if room > 0:
                head.append(cut_utf8(line, room))
            break
        head.append(line)
        room -= n
    return head + tail[::-1], len(head)


def _fit_data(out: dict, left: int) -> tuple[dict, list[str]]:
    """A display_data / execute_result within ``left`` bytes, and what was dropped or cut."""
    data = dict(out.get("data") or {})
    meta = out.get("metadata") or {}
    lost: list[str] = []
    plain = _text(data.pop("text/plain")) if "text/plain" in data else None
    number = None
    if out.get("output_type") == "execute_result" and plain is not None:
        number = _numeric(plain)  # a partial grade: kept whole, whatever the budget
        plain = number if number is not None else plain
    room = left - (utf8_len(plain) if plain is not None else 0)
    kept: dict[str, Any] = {}
    for mime, value in sorted(data.items(), key=lambda kv: _value_bytes(kv[1])):
        n = _value_bytes(value)
        if n <= room:
            kept[mime] = value
            room -= n
        else:
            lost.append(f"… {mime} output dropped ({n:,} bytes)")
    if number is None and plain is not None and utf8_len(plain) > left:
        plain = cut_utf8(plain, max(left, 0))
        lost.append("… text/plain output cut")
    if out.get("output_type") == "execute_result" and not (plain or "").strip():
        plain = "…"  # nbgrader's partial-credit check raises on a missing or empty text/plain
    if plain is not None:
        kept["text/plain"] = plain
    new = dict(out, data=kept)
    if _value_bytes(meta) > KiB:
        new["metadata"] = {}
        lost.append(f"… output metadata dropped ({_value_bytes(meta):,} bytes)")
    return new, lost


def _fit_output(out: dict, left: int) -> tuple[dict, bool, int | None, list[str]]:
    """``out`` cut to ``left`` bytes: (output, was cut, traceback note index, dropped-data lines)."""
    kind = out.get("output_type")
    if kind == "stream":
        text = _text(out.get("text", ""))
        if utf8_len(text) <= left:
            return out, False, None, []
        return dict(out, text=cut_utf8(text, left)), True, None, []
    if kind == "error":
        ename, evalue = str(out.get("ename", "")), str(out.get("evalue", ""))
        tb = [_text(t) for t in out.get("traceback", [])]
        if output_bytes(out) <= left:
            return out, False, None, []
        ename, evalue = cut_utf8(ename, MAX_ENAME), cut_utf8(evalue, MAX_EVALUE)
        lines = [ln for entry in tb for ln in entry.split("\n")]  # renders the same: one entry a line
        tb, at = _fit_lines(lines, left - utf8_len(ename) - utf8_len(evalue))
        return dict(out, ename=ename, evalue=evalue, traceback=tb), True, at, []
    if output_bytes(out) <= left:
        return out, False, None, []
    new, lost = _fit_data(out, left)
    return new, True, None, lost


def _with_note(out: dict, note: str, tb_at: int | None, lost: list[str]) -> list[dict]:
    """``out`` carrying ``note`` as its last line (tracebacks: at the cut; results: a stdout stream after)."""
    kind = out.get("output_type")
    if kind == "stream":
        text = out["text"]
        return [dict(out, text=text + ("" if not text or text.endswith("\n") else "\n") + note + "\n")]
    if kind == "error":
        tb = list(out["traceback"])
        tb.insert(len(tb) if tb_at is None else tb_at, note)
        return [dict(out, traceback=tb)]
    lines = "\n".join([*lost, note])
    if kind == "execute_result":  # never touch a result's text/plain: it may be a partial grade
        return [out, {"output_type": "stream", "name": "stdout", "text": lines + "\n"}]
    data = dict(out["data"])
    plain = data.get("text/plain", "")
    data["text/plain"] = plain + ("\n" if plain else "") + lines
    return [dict(out, data=data)]


def fit_outputs(outputs: list[dict], budget: int, note: str) -> list[dict]:
    """``outputs`` within ``budget`` bytes (plus one ``note`` line where they were cut).

    Outputs after the cut are dropped, except the cell's first grade-relevant output (an
    error, a stderr stream or an ``execute_result``), kept in minimal form, so nbgrader's
    ``determine_grade`` gives the cell the same score as before.
    """
    new: list[dict] = []
    left, noted, relevant = budget, False, False
    for out in outputs:
        if noted and left <= 0:
            if _grade_relevant(out) and not relevant:
                new.append(_fit_output(out, 0)[0])
                relevant = True
            continue
        fitted, cut, tb_at, lost = _fit_output(out, left)
        relevant = relevant or _grade_relevant(out)
        if cut and not noted:
            new.extend(_with_note(fitted, note, tb_at, lost))
            noted = True
            left = 0
        else:
            new.append(fitted)
            left -= output_bytes(fitted)
    if not noted:
        new.append({"output_type": "stream", "name": "stdout", "text": note + "\n"})
    return new


class LimitOutputBytes(NbGraderPreprocessor):
    """Cap every code cell's outputs in bytes, and the notebook's outputs in total.

    nbgrader's ``LimitOutput`` counts lines; one line can be 100 MB. This one keeps at most
    ``max_bytes`` of each cell's outputs (stream text, text/plain, tracebacks: cut UTF-8-safely,
    with a last line ``… output truncated: N bytes over the 64 KiB limit``; images and other
    rich data over the cap are dropped), and once the notebook's outputs pass
    ``max_total_bytes`` every further cell's outputs become one short line. Grades do not
    change: see :func:`fit_outputs`. Goes after ``Execute``/``IgnorePattern``/``LimitOutput``
    and before ``SaveAutoGrades`` in ``Autograde.autograde_preprocessors``.
    """

    max_bytes = Integer(64 * KiB, help="maximum bytes of output per code cell (-1: no limit)").tag(config=True)
    max_total_bytes = Integer(2 * MiB, help="maximum bytes of output per notebook (-1: no limit)").tag(config=True)

    _total = 0

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        self._total = 0
        return super().preprocess(nb, resources)

    def preprocess_cell(self, cell: NotebookNode, resources: dict, index: int) -> tuple[NotebookNode, dict]:
        if cell.get("cell_type") != "code" or not cell.get("outputs"):
            return cell, resources
        cap = self.max_bytes if self.max_bytes >= 0 else float("inf")
        left = self.max_total_bytes - self._total if self.max_total_bytes >= 0 else float("inf")
        size = sum(output_bytes(o) for o in cell.outputs)
        if left <= 0:
            note = f"… output omitted: this notebook's outputs exceed the {human_bytes(self.max_total_bytes)} limit"
            cell.outputs = [from_dict(o) for o in fit_outputs(cell.outputs, 0, note)]
        elif size > min(cap, left):
            note = (f"… output truncated: {size - cap:,} bytes over the {human_bytes(self.max_bytes)} limit"
                    if size > cap else "… output truncated: this notebook's outputs reached the "
                                       f"{human_bytes(self.max_total_bytes)} limit")
            cell.outputs = [from_dict(o) for o in fit_outputs(cell.outputs, int(min(cap, left)), note)]
        self._total += sum(output_bytes(o) for o in cell.outputs)
        return cell, resources


def autograde_preprocessors() -> list[type]:
    """nbgrader 0.9.6's ``Autograde.autograde_preprocessors`` with :class:`LimitOutputBytes` added.

    After ``IgnorePattern`` (it must see stderr whole: a cut line may no longer match) and
    ``LimitOutput`` (fewer lines, less to measure); before ``SaveAutoGrades`` (which scores
    from these outputs; :func:`fit_outputs` keeps that score) and before the notebook is written.
    """
    from nbconvert.preprocessors import ClearMetadataPreprocessor
    from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, Execute, IgnorePattern,
                                        LimitOutput, SaveAutoGrades)

    return [Execute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput, LimitOutputBytes,
            SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]


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
        out["text"], removed = _scrub_text(_text(out.get("text", "")), secrets)
    elif kind == "error":
        out["evalue"], removed = _scrub_text(str(out.get("evalue", "")), secrets)
        tb = []
        for entry in out.get("traceback", []):
            clean, n = _scrub_text(_text(entry), secrets)
            removed += n
            if clean or not n:
                tb.append(clean)
        out["traceback"] = tb
    data = out.get("data") or {}
    for mime in list(data):
        value = data[mime]
        if isinstance(value, (str, list)) and (mime.startswith("text/") or mime.endswith(("+xml", "javascript"))):
            data[mime], n = _scrub_text(_text(value), secrets, markup=mime in ("text/html", "image/svg+xml"))
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
    markers, of ``secret_lines`` (e.g. :func:`autograder.notebook.hidden_only_lines` of the
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


# ------------------------------------------------------------------------------ safe HTML

# Removed with everything inside: scripts, embedded documents and plugins, elements whose
# content browsers parse as raw text (a parser differential there is how sanitizers fall),
# document-level redirects, and SVG animation (it can set an href to javascript:).
_DROP = frozenset("""script noscript template iframe frame frameset object embed applet param
    base link xmp noembed noframes plaintext portal fencedframe animate animatemotion
    animatetransform set handler listener""".split())
_UNWRAP = frozenset({"form"})  # the tag goes, its content stays
_URL_ATTRS = frozenset("""href src xlink:href action formaction data codebase background poster
    cite longdesc lowsrc dynsrc ping manifest icon archive classid profile srcset""".split())
_DROP_ATTRS = frozenset({"srcdoc", "xml:base", "http-equiv"})
_BAD_VALUE = ("javascript:", "vbscript:", "livescript:", "mocha:", "data:text/html")
_BAD_CSS = re.compile(r"javascript:|vbscript:|expression\(|-moz-binding|behavior:|@import")
_DATA_IMAGE = re.compile(r"data:image/(?:png|jpe?g|gif|webp|bmp|svg\+xml)[;,]")
_TAG_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
_ATTR_NAME = re.compile(r"^[a-z_][a-z0-9_.:-]*$")
_SQUASH = re.compile(r"[\x00-\x20\x7f]+")


def _url_ok(tag: str, attr: str, value: str) -> bool:
    """A squashed, lower-case URL: relative, http(s), mailto; data:image only as an image source."""
    parts = value.split(",") if attr == "srcset" else [value]
    for part in parts:
        scheme = re.match(r"([a-z][a-z0-9+.\-]*):", part)
        if scheme is None or scheme.group(1) in ("http", "https", "mailto"):
            continue
        if scheme.group(1) == "data" and tag in ("img", "image", "source") and _DATA_IMAGE.match(part):
            continue
        return False
    return True


def _clean_attrs(tag: Tag) -> None:
    for name in list(tag.attrs):
        value = tag.attrs[name]
        value = " ".join(value) if isinstance(value, list) else str(value)
        lname = name.lower()
        squashed = _SQUASH.sub("", value).lower()
        if (not _ATTR_NAME.match(lname) or lname.startswith("on") or lname in _DROP_ATTRS
                or any(bad in squashed for bad in _BAD_VALUE)
                or (lname in _URL_ATTRS and not _url_ok(tag.name.lower(), lname, squashed))
                or (lname == "style" and _BAD_CSS.search(squashed))):
            del tag.attrs[name]


def clean_css(css: str) -> str:
    """A stylesheet that cannot end its ``<style>`` element or run script (``<`` becomes ``\\3c``)."""
    css = css.replace("<", "\\3c ")
    css = re.sub(r"(?i)(java|vb)script\s*:", "blocked:", css)
    css = re.sub(r"(?i)expression\s*\(", "blocked(", css)
    return re.sub(r"(?i)-moz-binding|behavior\s*:|@import", "blocked", css)


def _clean_tree(root: Tag) -> None:
    """Remove active content below ``root`` (in place, iteratively: student HTML may nest deeply)."""
    stack: list[Tag] = [root]
    unwrap: list[Tag] = []
    while stack:
        node = stack.pop()
        for child in list(node.children):
            if isinstance(child, PreformattedString):  # comments, CDATA, <!...>, <?...?>: parsed unlike browsers
                child.extract()
            elif isinstance(child, NavigableString):
                if node.name == "style":
                    child.replace_with(NavigableString(clean_css(str(child))))
            elif isinstance(child, Tag):
                name = child.name.lower()
                if name in _DROP or not _TAG_NAME.match(name) or (name == "meta" and child.has_attr("http-equiv")):
                    child.decompose()
                    continue
                _clean_attrs(child)
                if name in _UNWRAP:
                    unwrap.append(child)
                stack.append(child)
    for tag in unwrap:
        tag.unwrap()


def _is_page(html: str) -> bool:
    return re.match(r"\s*(?:<!doctype|<html)", html[:1000], re.I) is not None


def _sanitize(html: str, note: str | None = None, page: bool | None = None) -> str:
    """:func:`sanitize_html`, with ``note`` (plain text) put at the top of the body.

    ``page``: a whole document (doctype, CSP) or a fragment; None: decided from the start of ``html``.
    """
    soup = BeautifulSoup(html, "html.parser")
    _clean_tree(soup)
    if note:
        div = soup.new_tag("div", attrs={"class": "alert alert-warning", "role": "alert"})
        div.string = note
        (soup.body or soup).insert(0, div)
    if not (_is_page(html) if page is None else page):
        return str(soup)
    csp = soup.new_tag("meta", attrs={"http-equiv": "Content-Security-Policy", "content": FEEDBACK_CSP})
    if soup.head is None and soup.html is not None:
        soup.html.insert(0, soup.new_tag("head"))
    (soup.head or soup).insert(0, csp)
    return "<!DOCTYPE html>\n" + str(soup).lstrip()


def sanitize_html(html: str | bytes) -> str:
    """``html`` (a whole page or a fragment) without active content.

    Removed: ``<script>`` (nbconvert's MathJax, require.js, jQuery and mermaid loaders too:
    feedback must work offline), ``on*=`` handlers, ``javascript:``/``vbscript:`` and
    non-image ``data:`` URLs, ``<iframe>``/``<object>``/``<embed>``/``<applet>``, ``<form>``
    (its content stays), ``<meta http-equiv>``, ``<base>``, ``<link>``, SVG animation,
    comments/CDATA/processing instructions, raw-text elements (``<xmp>``, ``<noscript>``…).
    ``<style>`` stays (nbconvert's CSS) with ``<`` escaped. A page also gets a
    ``Content-Security-Policy`` meta (:data:`FEEDBACK_CSP`) and a plain ``<!DOCTYPE html>``.
    The tree is re-serialized, so what the browser parses is this module's markup, not the
    student's.
    """
    if isinstance(html, bytes):
        html = html.decode("utf-8", "replace")
    return _sanitize(str(html))


def sanitize_fragment(html: Any) -> str:
    """Jinja filter replacing nbconvert's ``clean_html`` (HTML outputs, markdown, SVG, code).

    A fragment over :data:`MAX_FRAGMENT_BYTES` becomes a one-line note instead.
    """
    text = html.decode("utf-8", "replace") if isinstance(html, bytes) else str(html)
    size = utf8_len(text)
    if size > MAX_FRAGMENT_BYTES:
        return (f'<p class="alert alert-warning">… not shown: {size:,} bytes of HTML, over the '
                f"{human_bytes(MAX_FRAGMENT_BYTES)} limit</p>")
    return _sanitize(text, page=False)  # a whole document shown as an output stays a fragment


def sanitize_markdown_html(html: Any) -> str:
    """Jinja filter replacing ``strip_files_prefix``: nbgrader's feedback template renders
    markdown cells and comments as ``markdown2html | strip_files_prefix`` with no ``clean_html``."""
    return sanitize_fragment(strip_files_prefix(str(html)))


def feedback_config(c: Config) -> None:
    """Set the nbconvert/nbgrader options for safe feedback on ``c`` (in place).

    ``HTMLExporter.sanitize_html`` makes nbconvert's templates pass HTML/markdown outputs
    through ``clean_html`` and drop JavaScript and widget outputs. nbconvert's own
    ``clean_html`` (bleach, tiny allow-list, unknown tags *escaped*) shows ``<p>``, ``<h1>``,
    ``<th>``, ``<img>`` as literal text, so it is replaced by :func:`sanitize_fragment`; and
    nbgrader's feedback template never calls ``clean_html`` on markdown cells, so its
    ``strip_files_prefix`` step sanitizes too. :func:`sanitize_feedback_file` still runs over
    the whole page. ``LimitOutputBytes`` also runs when rendering (notebooks autograded
    before it existed).
    """
    from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
    from nbgrader.preprocessors import GetGrades

    c.HTMLExporter.sanitize_html = True
    c.HTMLExporter.skip_svg_encoding = False  # SVG as <img src=data:...>: no script runs in an image
    c.HTMLExporter.filters.update({"clean_html": "autograder.feedback.sanitize_fragment",
                                   "strip_files_prefix": "autograder.feedback.sanitize_markdown_html"})
    c.GenerateFeedback.preprocessors = [GetGrades, CSSHTMLHeaderPreprocessor, LimitOutputBytes]


def sanitize_feedback_file(path: Path, max_bytes: int = 8 * MiB) -> None:
    """Sanitize the feedback page ``path`` in place (atomically) and cap it at ``max_bytes``.

    A longer page is cut (then re-parsed, so no tag is left half open) and gets a note at
    the top saying how long it was.
    """
    path = Path(path)
    raw = path.read_bytes()
    limit = max_bytes
    for _ in range(4):
        note = None
        if len(raw) > limit:
            note = (f"This feedback page was cut to {human_bytes(max_bytes)} (it was {len(raw):,} bytes): "
                    "the end of the notebook is missing. Keep printed output short.")
        out = _sanitize(raw[:limit].decode("utf-8", "replace"), note)
        size = utf8_len(out)
        if size <= max_bytes:
            nbu.write_text_atomic(path, out)
            return
        limit = max(0, min(limit, len(raw)) * max_bytes // size - 4 * KiB)
    note = f"This feedback page was {len(raw):,} bytes, over the {human_bytes(max_bytes)} limit, and is not shown."
    nbu.write_text_atomic(path, _sanitize(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head>"
                                          f"<body><p>{_html.escape(note)}</p></body></html>"))
