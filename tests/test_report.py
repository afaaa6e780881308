"""autograder.report: grades.csv stays one row per (student, lab), inert in a spreadsheet, and bounded."""
from __future__ import annotations

import csv

from autograder import report

CELLS = {"lab": [{"grade_id": "t1", "notebook": "lab", "max_score": 1.0}]}


def _result(student: str, problems: list[str]) -> dict:
    return {"student": student, "lab": "lab", "graded": True, "cells": {"t1": {"score": 1.0, "needs_manual": False}},
            "raw_score": 1.0, "problems": problems}


def test_control_characters_never_start_a_row_or_a_formula(tmp_path):
    """A bare CR is a row break to a spreadsheet and Python's csv module leaves it unquoted (red-team
    pass, 2026-12-07: the id ``x\\r=1+1`` gave a row starting with a live ``=1+1``)."""
    ids = ["x\r=1+1", "y\x1b[2J", "\t=2+2", "=HYPERLINK(1)", "Zoë O'Brien, Jr", "-0.5"]
    rows = report.write_outputs({(s, "lab"): _result(s, ["cell 3:\rlate\x07"]) for s in ids}, CELLS, tmp_path)
    text = (tmp_path / "grades.csv").read_text()
    assert "\r" not in text and "\x1b" not in text and "\x07" not in text
    parsed = list(csv.reader(text.splitlines()))
    assert len(parsed) == 1 + len(ids)
    assert sorted(r[3] for r in parsed[1:]) == sorted(["x?=1+1", "y?[2J", "?=2+2", "'=HYPERLINK(1)",
                                                       "Zoë O'Brien, Jr", "-0.5"])
    assert all(not cell.startswith(("=", "+", "@")) or cell == "" for row in parsed[1:] for cell in row)
    assert {r[-1] for r in parsed[1:]} == {"cell 3:?late?"}
    table = report.summary_table(rows)
    assert "\r" not in table and "\x1b" not in table and len(table.splitlines()) == 1 + len(ids)


def test_problem_lines_are_capped_per_row(tmp_path):
    many = [f"cell {k}: not a JSON object, dropped" for k in range(5000)] + ["x" * 10_000]
    report.write_outputs({("s", "lab"): _result("s", many)}, CELLS, tmp_path)
    (row,) = list(csv.DictReader((tmp_path / "grades.csv").read_text().splitlines()))
    lines = row["problems"].split("; ")
    assert len(lines) == 21 and lines[-1] == "... and 4981 more problem lines"
    assert len(row["problems"]) < 2_000
