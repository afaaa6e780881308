"""The graded-API table in notebooks/README.md and the source notebooks must agree.

Every name in the table has exactly one solution cell whose grade_id is the name and at
least one autograded test cell whose grade_id starts with ``test_<name>``; every solution
cell of a notebook is in the table (or is a written question); labkit holds no graded name.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from autograder.capstone import MODEL_CELLS
from autograder.notebook import LAB_IDS

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def contract() -> dict[str, list[str]]:
    """lab id -> graded names, parsed from the table in notebooks/README.md."""
    rows: dict[str, list[str]] = {}
    text = (NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    section = text.split("## The graded API", 1)[1]
    for line in section.splitlines():
        m = re.match(r"\|\s*(lab\d_\w+)\s*\|\s*(\w+)\s*\|\s*(class|function)\s*\|", line)
        if m:
            rows.setdefault(m.group(1), []).append(m.group(2))
    return rows


def nbgrader_cells(lab_id: str) -> list[dict]:
    nb = json.loads((NOTEBOOKS / lab_id / f"{lab_id}.ipynb").read_text(encoding="utf-8"))
    return [c for c in nb["cells"] if "nbgrader" in c.get("metadata", {})]


def test_table_covers_every_lab():
    table = contract()
    assert sorted(table) == sorted(LAB_IDS)
    assert sum(len(v) for v in table.values()) == 30


@pytest.mark.parametrize("lab_id", LAB_IDS)
def test_notebook_matches_contract(lab_id):
    names = contract()[lab_id]
    cells = nbgrader_cells(lab_id)
    solution_ids = [c["metadata"]["nbgrader"]["grade_id"] for c in cells
                    if c["metadata"]["nbgrader"].get("solution") and c["cell_type"] == "code"]
    test_ids = [c["metadata"]["nbgrader"]["grade_id"] for c in cells
                if c["metadata"]["nbgrader"].get("grade") and not c["metadata"]["nbgrader"].get("solution")]
    for name in names:
        assert solution_ids.count(name) == 1, f"{lab_id}: {name} needs exactly one solution cell with grade_id {name!r}"
        src = "".join(next(c for c in cells if c["metadata"]["nbgrader"]["grade_id"] == name)["source"])
        assert re.search(rf"^(def|class)\s+{name}\b", src, re.M), f"{lab_id}: cell {name} does not define {name}"
        assert "### BEGIN SOLUTION" in src and "### END SOLUTION" in src
        assert any(t.startswith(f"test_{name}") for t in test_ids), f"{lab_id}: no test_{name}* cell"
    extra = set(solution_ids) - set(names)
    assert not extra, f"{lab_id}: solution cells not in the contract table: {sorted(extra)}"
    # each test cell belongs to exactly one graded name (the capstone's model cell is scored from model.pt)
    for t in test_ids:
        if MODEL_CELLS.get(lab_id) == t:
            continue
        owners = [n for n in names if t.startswith(f"test_{n}")]
        assert len(owners) >= 1, f"{lab_id}: test cell {t} belongs to no graded name"


def test_labkit_defines_no_graded_name():
    graded = {n for names in contract().values() for n in names}
    for path in (REPO / "labkit").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert not defined & graded, f"{path.name} defines graded names {sorted(defined & graded)}"
