"""Reference solutions held in the source notebooks, for instructor-side code only.

Release checkpoints, benchmarks and test fixtures take a graded function from its source
notebook's solution cell (:func:`load_solution`, defined in :mod:`autograder.notebook`), so no
second copy of a solution exists anywhere.
"""
from __future__ import annotations

from pathlib import Path

from autograder.notebook import grade_id, load_solution, read_nb, solution_code

__all__ = ["cells_by_grade_id", "load_solution", "solution_code"]


def cells_by_grade_id(path: Path) -> dict[str, dict]:
    """``grade_id -> cell`` (JSON dict) of the notebook at ``path``; the first cell wins on duplicates."""
    cells: dict[str, dict] = {}
    for cell in read_nb(Path(path))["cells"]:
        gid = grade_id(cell)
        if gid and gid not in cells:
            cells[gid] = cell
    return cells
