"""The class's results as files: ``grades.csv``, ``cell_scores.csv``, a summary, an outside gradebook.

Rows are sorted and numbers formatted one way, so grading the same input twice gives
byte-identical CSVs. Every student id gets a row, odd ones included (``csv`` quotes them).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from autograder.logs import cap_lines, printable_line
from labkit.files import write_text

GRADES_COLUMNS = ["assignment", "duedate", "timestamp", "student_id", "last_name", "first_name", "email",
                  "raw_score", "late_submission_penalty", "score", "max_score", "status", "problems"]
CELL_COLUMNS = ["student_id", "assignment", "notebook", "grade_id", "score", "max_score"]


def fmt(x: Any) -> str:
    """A CSV cell: '' for None, floats rounded to 6 digits, everything else ``str``."""
    if x is None:
        return ""
    if isinstance(x, float):
        return repr(round(x, 6))
    return str(x)


def write_outputs(results: dict[tuple[str, str], dict], cells_of: dict[str, list[dict]], out: Path) -> list[dict]:
    """Write ``grades.csv`` and ``cell_scores.csv`` from the job results; returns the grade rows."""
    rows, cell_rows = [], []
    for (student, lab) in sorted(results):
        r = results[(student, lab)]
        got = r.get("cells", {})
        for c in cells_of[lab]:
            g = got.get(c["grade_id"])
            score = (g["score"] if g else None) if r.get("graded") else 0.0
            cell_rows.append([student, lab, c["notebook"], c["grade_id"],
                              fmt(score if score is None else float(score)), fmt(float(c["max_score"]))])
        raw = float(r.get("raw_score", 0.0) or 0.0)
        pen = float(r.get("late_submission_penalty", 0.0) or 0.0)
        status = "graded" if r.get("graded") else "not graded"
        if r.get("graded") and any(v.get("needs_manual") for v in got.values()):
            status = "graded (manual cells pending)"
        rows.append({"assignment": lab, "duedate": r.get("duedate", ""), "timestamp": r.get("timestamp", ""),
                     "student_id": student, "last_name": "", "first_name": "", "email": "",
                     "raw_score": fmt(raw), "late_submission_penalty": fmt(pen), "score": fmt(max(0.0, raw - pen)),
                     "max_score": fmt(float(sum(c["max_score"] for c in cells_of[lab]))), "status": status,
                     "problems": "; ".join(cap_lines(r.get("problems", [])))})
    write_csv(out / "grades.csv", GRADES_COLUMNS, [[row[k] for k in GRADES_COLUMNS] for row in rows])
    write_csv(out / "cell_scores.csv", CELL_COLUMNS, cell_rows)
    return rows


def _inert(cell: Any) -> Any:
    """A cell a spreadsheet will not run as a formula: text starting with = + - @ gets a leading '.

    Numbers ("-0.6") stay numbers; a student id such as ``=HYPERLINK(...)`` becomes text (OWASP
    "CSV injection").
    """
    if isinstance(cell, str) and cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(cell)
        except ValueError:
            return "'" + cell
    return cell


def _one_line(cell: Any) -> Any:
    """Text without control characters: a bare CR is a row break to a spreadsheet, yet Python's csv
    module does not quote it (a student id ``x\r=1+1`` became a live formula on its own row)."""
    return printable_line(cell, limit=len(cell)) if isinstance(cell, str) and not cell.isprintable() else cell


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([[_inert(_one_line(c)) for c in row] for row in rows])
    write_text(path, buf.getvalue())


def merge_gradebook(results: dict[tuple[str, str], dict], db_url: str) -> None:
    """Write every graded (student, lab) into the gradebook at ``db_url`` (e.g. PostgreSQL).

    The gradebook must already hold the assignments (build the course with the same
    ``--db-url``); submissions of unknown labs are skipped with a warning.
    """
    from nbgrader.api import Gradebook, MissingEntry
    from nbgrader.utils import parse_utc

    with Gradebook(db_url) as gb:
        for (student, lab), r in sorted(results.items()):
            if not r.get("graded"):
                continue
            try:
                gb.find_assignment(lab)
            except MissingEntry:
                print(f"warning: {db_url} has no assignment {lab}; not merged (release with the same --db-url)")
                continue
            gb.update_or_create_student(student)
            ts = parse_utc(r["timestamp"]) if r.get("timestamp") else None
            sub = gb.update_or_create_submission(lab, student, timestamp=ts) if ts else \
                gb.update_or_create_submission(lab, student)
            for snb in sub.notebooks:
                snb.late_submission_penalty = r.get("late_submission_penalty") or None
                for g in snb.grades:
                    cell = r["cells"].get(g.name)
                    if cell is not None:
                        g.auto_score = cell["score"]
                        g.needs_manual_grade = cell["needs_manual"]
            gb.db.commit()


def summary_table(rows: list[dict]) -> str:
    """A plain-text table: one line per (student, lab) with score / max and problems."""
    if not rows:
        return "no submissions found"
    ids = {r["student_id"]: printable_line(r["student_id"], 80) for r in rows}  # no escapes to the terminal
    w = max(len(s) for s in [*ids.values(), "student"])
    lw = max(len(r["assignment"]) for r in rows + [{"assignment": "lab"}])
    lines = [f"{'student':<{w}}  {'lab':<{lw}}  {'score':>7} / {'max':<5}  problems"]
    for r in rows:
        lines.append(f"{ids[r['student_id']]:<{w}}  {r['assignment']:<{lw}}  {float(r['score']):7.2f} / "
                     f"{float(r['max_score']):<5.1f}  {printable_line(r['problems'], 1000) or '-'}")
    return "\n".join(lines)
