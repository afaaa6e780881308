"""Outputs capped in bytes, UTF-8-safely, without changing a cell's grade.

nbgrader's ``LimitOutput`` counts lines only, so one 100 MB line went straight into the
feedback. :class:`LimitOutputBytes` caps each code cell's outputs and the notebook's total
(:func:`fit_outputs` keeps the first grade-relevant output, so nbgrader scores the cell as
before); :func:`autograde_preprocessors` is nbgrader's autograde chain with it in place.
"""
from __future__ import annotations

import json
import re
from typing import Any

from nbformat.notebooknode import NotebookNode, from_dict
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Integer

KiB = 1024
MiB = 1024 * KiB
# error outputs keep their exception name and message (short) even when the traceback goes
MAX_ENAME = 256
MAX_EVALUE = 1 * KiB

_ANSI_TAIL = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*)?$")  # an escape cut in half


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


def multiline_text(value: Any) -> str:
    """nbformat multiline text (a string or a list of strings) as one string."""
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return value if isinstance(value, str) else str(value)


def _value_bytes(value: Any) -> int:
    if isinstance(value, (str, list)):
        return utf8_len(multiline_text(value))
    return utf8_len(json.dumps(value, ensure_ascii=False, default=str)) if value else 0


def output_bytes(out: dict) -> int:
    """Bytes an output puts into the notebook and the feedback page (text, traceback, data, metadata)."""
    kind = out.get("output_type")
    if kind == "stream":
        return utf8_len(multiline_text(out.get("text", "")))
    if kind == "error":
        return (sum(utf8_len(multiline_text(t)) for t in out.get("traceback", []))
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
    plain = multiline_text(data.pop("text/plain")) if "text/plain" in data else None
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
        text = multiline_text(out.get("text", ""))
        if utf8_len(text) <= left:
            return out, False, None, []
        return dict(out, text=cut_utf8(text, left)), True, None, []
    if kind == "error":
        ename, evalue = str(out.get("ename", "")), str(out.get("evalue", ""))
        tb = [multiline_text(t) for t in out.get("traceback", [])]
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
