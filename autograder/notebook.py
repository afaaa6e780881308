"""Reading nbgrader source notebooks: labs, graded cells, solutions, hidden-test regions.

Instructor code that needs a graded function (release checkpoints, test fixtures,
benchmarks) takes it from the source notebook's solution cell with :func:`load_solution`
(or :func:`load_solutions`), so the reference solution exists exactly once.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from labkit.files import write_text

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"

LAB_IDS = (
    "lab1_early_stopping_transfer",
    "lab2_knowledge_distillation",
    "lab3_sparsity_training",
    "lab4_vgg_prune",
    "lab5_finetune_pruned",
    "lab6_efficient_convs",
    "lab7_quantization",
    "lab8_capstone",
)

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
BEGIN_HIDDEN = "### BEGIN HIDDEN TESTS"
END_HIDDEN = "### END HIDDEN TESTS"
HIDDEN_REPLACEMENT = "# (hidden tests are not shown in feedback)"
# Marker lines that must never reach students (the release bundle) or feedback.
LEAK_MARKERS = (BEGIN_SOLUTION, END_SOLUTION, BEGIN_HIDDEN, END_HIDDEN)


def source_path(lab: str, notebooks: Path = NOTEBOOKS) -> Path:
    """``notebooks/<lab>/<lab>.ipynb``."""
    return notebooks / lab / f"{lab}.ipynb"


def available_labs(notebooks: Path = NOTEBOOKS) -> list[str]:
    """Lab ids whose source notebook exists, in course order (unknown extra labs last, sorted)."""
    found = sorted(p.name for p in notebooks.iterdir() if (p / f"{p.name}.ipynb").is_file()) \
        if notebooks.is_dir() else []
    return [lab for lab in LAB_IDS if lab in found] + [lab for lab in found if lab not in LAB_IDS]


def read_nb(path: Path) -> dict:
    """The notebook as plain JSON (no nbformat validation: submissions may be broken)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_json_atomic(path: Path, data: Any) -> Path:
    """The autograder's one JSON writer: notebook format (1-space indent, UTF-8 kept, final newline),
    through :func:`labkit.files.write_text` (temp file + rename)."""
    return write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def cell_source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def nbgrader_meta(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def grade_id(cell: dict) -> str | None:
    return nbgrader_meta(cell).get("grade_id")


def find_cell(nb: dict, gid: str) -> dict:
    """The cell whose ``grade_id`` is ``gid``; ``KeyError`` naming the ids that exist."""
    for cell in nb["cells"]:
        if grade_id(cell) == gid:
            return cell
    ids = [grade_id(c) for c in nb["cells"] if grade_id(c)]
    raise KeyError(f"no cell with grade_id {gid!r}; the notebook has {ids}")


def graded_names(nb: dict) -> list[str]:
    """Names of solution code cells (the graded API): ``solution: true``, code, not a question."""
    names = []
    for cell in nb["cells"]:
        meta = nbgrader_meta(cell)
        if cell.get("cell_type") == "code" and meta.get("solution") and not meta.get("grade"):
            gid = meta.get("grade_id")
            if gid and gid != "setup":
                names.append(gid)
    return names


def points(cell: dict) -> float:
    return float(nbgrader_meta(cell).get("points", 0) or 0)


def strip_region(text: str, begin: str, end: str, replacement: str | None) -> str:
    """Remove every ``begin``..``end`` region (marker lines included); ``replacement`` goes in its place."""
    out, inside = [], False
    for line in text.splitlines(keepends=True):
        if begin in line:
            inside = True
            if replacement is not None:
                indent = line[: len(line) - len(line.lstrip())]
                out.append(f"{indent}{replacement}\n")
            continue
        if inside:
            if end in line:
                inside = False
            continue
        out.append(line)
    return "".join(out)


def solution_code(text: str) -> str:
    """A solution cell's source with the region markers removed (the reference implementation)."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if BEGIN_SOLUTION not in line and END_SOLUTION not in line)


def load_solution(lab: str, name: str, notebooks: Path = NOTEBOOKS,
                  namespace: dict | None = None) -> Any:
    """The reference implementation of graded ``name`` of ``lab``, from the source notebook.

    Runs the notebook's ``setup`` cell source (imports) and the solution cell in a fresh
    namespace, then returns ``namespace[name]``.
    """
    nb = read_nb(source_path(lab, notebooks))
    ns: dict = {"__name__": f"solution_{lab}"} if namespace is None else namespace
    setup = next((c for c in nb["cells"] if grade_id(c) == "setup"), None)
    if setup is not None:
        # The setup cell calls setup_notebook(), which prints the profile line: not wanted here.
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(cell_source(setup), f"<{lab}:setup>", "exec"), ns)  # noqa: S102 - instructor code
    code = solution_code(cell_source(find_cell(nb, name)))
    exec(compile(code, f"<{lab}:{name}>", "exec"), ns)  # noqa: S102 - instructor code
    if name not in ns:
        raise KeyError(f"{lab}: the solution cell {name!r} does not define {name!r}")
    return ns[name]


def load_solutions(lab: str, names: list[str], notebooks: Path = NOTEBOOKS) -> SimpleNamespace:
    """The reference implementations of the graded ``names`` of ``lab`` as one namespace
    (``ns.global_bn_threshold(...)``), each from its solution cell (:func:`load_solution`)."""
    return SimpleNamespace(**{name: load_solution(lab, name, notebooks) for name in names})


def region_lines(nb: dict, begin: str, end: str) -> list[str]:
    """Every non-blank line (stripped) between the markers ``begin`` and ``end`` in ``nb``."""
    lines = []
    for cell in nb["cells"]:
        inside = False
        for line in cell_source(cell).splitlines():
            if begin in line:
                inside = True
            elif end in line:
                inside = False
            elif inside and line.strip():
                lines.append(line.strip())
    return lines


def hidden_test_lines(nb: dict) -> list[str]:
    """Every non-blank line inside a hidden-test region of ``nb`` (stripped), for leak checks."""
    return region_lines(nb, BEGIN_HIDDEN, END_HIDDEN)
