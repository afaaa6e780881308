"""Static checks of the source notebooks (executing them is nbval's job, see the Makefile).

Committed without outputs, kernelspec python3, valid nbgrader metadata (schema 3, allowed keys,
unique grade ids), a locked setup cell first, hidden tests in every test cell, written questions.
That the reference solutions run clean, without an error or a stderr line (what nbgrader's Validate
button checks), is asserted on their graded feedback in tests/test_autograder_e2e.py; nbval runs
every source notebook top to bottom.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from autograder.capstone import MODEL_CELLS
from autograder.notebook import LAB_IDS
from tests.test_contract import NOTEBOOKS

ALLOWED_KEYS = {"grade", "grade_id", "locked", "points", "schema_version", "solution", "task"}


def load(lab_id: str) -> dict:
    return json.loads((NOTEBOOKS / lab_id / f"{lab_id}.ipynb").read_text(encoding="utf-8"))


@pytest.mark.parametrize("lab_id", LAB_IDS)
def test_committed_clean(lab_id):
    nb = load(lab_id)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{lab_id}: a code cell was committed with outputs"
            assert cell.get("execution_count") is None


@pytest.mark.parametrize("lab_id", LAB_IDS)
def test_nbgrader_metadata(lab_id):
    nb = load(lab_id)
    ids = []
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader")
        if meta is None:
            continue
        assert set(meta) <= ALLOWED_KEYS, f"{lab_id}: extra nbgrader keys {set(meta) - ALLOWED_KEYS}"
        assert meta.get("schema_version") == 3
        assert re.fullmatch(r"[a-zA-Z0-9_\-]+", meta["grade_id"])
        if meta.get("grade"):
            assert meta.get("points", 0) > 0, f"{lab_id}: grade cell {meta['grade_id']} has no points"
        ids.append(meta["grade_id"])
    assert len(ids) == len(set(ids)), f"{lab_id}: duplicated grade_ids"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    setup = code[0]["metadata"].get("nbgrader", {})
    assert setup.get("grade_id") == "setup" and setup.get("locked"), f"{lab_id}: first code cell must be the locked setup cell"
    assert "setup_notebook()" in "".join(code[0]["source"])


@pytest.mark.parametrize("lab_id", LAB_IDS)
def test_test_cells_and_questions(lab_id):
    nb = load(lab_id)
    tests, questions = 0, 0
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        src = "".join(cell["source"])
        if meta.get("grade") and not meta.get("solution") and cell["cell_type"] == "code":
            tests += 1
            assert meta.get("locked"), f"{lab_id}: test cell {meta['grade_id']} is not locked"
            if MODEL_CELLS.get(lab_id) == meta["grade_id"]:  # scored from model.pt: no check may run in it
                assert "### BEGIN HIDDEN TESTS" not in src and "assert" not in src, src
                continue
            assert "restore_comparators()" in src, f"{lab_id}: {meta['grade_id']} must call restore_comparators() first"
            assert "### BEGIN HIDDEN TESTS" in src and "### END HIDDEN TESTS" in src, \
                f"{lab_id}: {meta['grade_id']} has no hidden tests"
        if meta.get("grade") and meta.get("solution") and cell["cell_type"] == "markdown":
            questions += 1
            assert meta["grade_id"].startswith("q_")
    assert tests >= 2 and questions >= 2, f"{lab_id}: {tests} test cells, {questions} written questions"
