"""Sample grading inputs for the instructor's own checks: a tiny assignment and submission folders.

The tiny lab (:func:`tiny_notebook`) is an nbgrader source notebook with two graded functions, their
test cells (hidden checks included) and a written question, and no torch import, so a kernel runs it
in about a second: the grading tests and ``bench.grading`` grade it to measure the grader rather
than a lab's training. A perfect submission of any source notebook is
:func:`autograder.judge.reference_nb`. Instructor-side code: it is not part of the student bundle.
"""
from __future__ import annotations

import json
from pathlib import Path

from autograder import notebook as nbu
from labkit.files import write_text

TINY_LAB = "tiny_lab"


def _meta(**kw) -> dict:
    base = {"schema_version": 3, "locked": False, "solution": False, "grade": False}
    base.update(kw)
    return {"nbgrader": base}


def _cell(kind: str, source: str, **meta) -> dict:
    cell = {"cell_type": kind, "metadata": _meta(**meta) if meta else {}, "source": source}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def tiny_notebook() -> dict:
    """An nbgrader source notebook: setup, two graded functions with tests, one written question.

    No torch import, so a kernel runs it in about a second.
    """
    cells = [
        _cell("markdown", "# Tiny lab\nA self-made assignment for testing the grader."),
        _cell("code", "import math\nimport sys\nSCALE = 1\nprint('setup done')",
              grade_id="setup", locked=True),
        _cell("markdown", "Write `add(a, b)`."),
        _cell("code", "def add(a, b):\n    # ─── YOUR CODE ───\n    ### BEGIN SOLUTION\n"
                      "    return (a + b) * SCALE\n    ### END SOLUTION", grade_id="add", solution=True),
        _cell("code", "assert add(1, 2) == 3\n### BEGIN HIDDEN TESTS\ndef hidden_checks(rec):\n"
                      "    rec.check('add(1, 2)', lambda: add(1, 2))\n    rec.check('add(-40, 2)', lambda: add(-40, 2))\n"
                      "### END HIDDEN TESTS\nprint('add ok')",
              grade_id="test_add", grade=True, locked=True, points=1),
        _cell("markdown", "Write `mean(xs)`."),
        _cell("code", "def mean(xs):\n    # ─── YOUR CODE ───\n    ### BEGIN SOLUTION\n"
                      "    return math.fsum(xs) / len(xs)\n    ### END SOLUTION", grade_id="mean", solution=True),
        _cell("code", "assert mean([1, 2, 3]) == 2\n### BEGIN HIDDEN TESTS\ndef hidden_checks(rec):\n"
                      "    rec.check('mean([1, 2, 3])', lambda: mean([1, 2, 3]))\n"
                      "    rec.check('mean([0.5, 0.25])', lambda: mean([0.5, 0.25]))\n"
                      "### END HIDDEN TESTS\nprint('mean ok')",
              grade_id="test_mean", grade=True, locked=True, points=2),
        _cell("markdown", "Why is the mean useful?\n\n### BEGIN SOLUTION\nIt summarises a sample.\n"
                          "### END SOLUTION", grade_id="q_why", solution=True, grade=True, points=1),
    ]
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                        "name": "python3"},
                                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def write_tiny_source(notebooks: Path) -> Path:
    """Write ``notebooks/tiny_lab/tiny_lab.ipynb`` and return the notebooks folder."""
    nbu.write_json_atomic(notebooks / TINY_LAB / f"{TINY_LAB}.ipynb", tiny_notebook())
    return notebooks


def write_submission(root: Path, student: str, lab: str, nb: dict | str | None,
                     filename: str | None = None, timestamp: str | None = None) -> Path:
    """``root/<student>/<lab>/<filename>``; ``nb`` may be a dict, raw text, or None (empty folder)."""
    folder = root / student / lab
    folder.mkdir(parents=True, exist_ok=True)
    if nb is not None:
        write_text(folder / (filename or f"{lab}.ipynb"), nb if isinstance(nb, str) else json.dumps(nb, indent=1))
    if timestamp:
        write_text(folder / "timestamp.txt", timestamp + "\n")
    return folder
