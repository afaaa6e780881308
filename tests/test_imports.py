"""Who may import whom, read from the source with ``ast`` (nothing is imported or run).

The rule (ARCHITECTURE.md, top):

* ``labkit`` (what students install) imports none of ``autograder``, ``data_scripts``, ``bench``;
* ``autograder`` never imports ``bench``;
* nothing outside ``tests/`` (packages, notebooks) imports ``tests`` or one of its modules
  (``grading_fixtures``, ``browser_helpers``, ...).

Every import statement counts, at any depth (inside functions too), and so do
``importlib.import_module("...")`` / ``__import__("...")`` calls with a literal name.

And the other way round: every ``labkit`` name a notebook uses (``from labkit.train import fit``,
``train.fit`` after ``from labkit import train``, ``labkit.train.fit``) exists where the notebook
looks for it, so that moving code between labkit modules never needs a notebook edit.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("labkit", "autograder", "bench", "data_scripts")
TEST_MODULES = frozenset({"tests"} | {p.stem for p in (REPO / "tests").glob("*.py")})
FORBIDDEN: dict[str, frozenset[str]] = {
    "labkit": frozenset({"autograder", "data_scripts", "bench"}) | TEST_MODULES,
    "autograder": frozenset({"bench"}) | TEST_MODULES,
    "bench": TEST_MODULES,
    "data_scripts": TEST_MODULES,
    "notebooks": TEST_MODULES,
}


def imported(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """``(line, top-level module)`` of every import in ``tree``; relative imports resolve to ``package``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, package if node.level else (node.module or "").split(".")[0]))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            found.append((node.lineno, node.args[0].value.split(".")[0]))
    return sorted(found)


def notebook_code(path: Path) -> str:
    """The code cells of a notebook as one module (IPython magics and shell lines left out)."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    lines = []
    for cell in cells:
        if cell.get("cell_type") == "code":
            src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            lines += [ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    return "\n".join(lines)


def sources(repo: Path, part: str) -> list[tuple[Path, str]]:
    """``(file, python source)`` of every module of package ``part`` (notebooks: every notebook)."""
    if part == "notebooks":
        return [(p, notebook_code(p)) for p in sorted((repo / "notebooks").rglob("*.ipynb"))
                if ".ipynb_checkpoints" not in p.parts]
    return [(p, p.read_text(encoding="utf-8")) for p in sorted((repo / part).rglob("*.py"))
            if "__pycache__" not in p.parts]


def violations(repo: Path, part: str, forbidden: frozenset[str]) -> list[str]:
    out = []
    for path, text in sources(repo, part):
        for line, module in imported(ast.parse(text, filename=str(path)), part):
            if module in forbidden:
                out.append(f"{path.relative_to(repo)}:{line} imports {module}")
    return out


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_import_boundaries(part):
    assert sources(REPO, part), f"no source found for {part}: the rule would check nothing"
    assert violations(REPO, part, FORBIDDEN[part]) == []


def test_the_checker_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / "labkit"
    pkg.mkdir()
    (pkg / "a.py").write_text("import os\nimport bench.pruning\n"
                              "def f():\n    from autograder import notebook\n    from . import b\n"
                              "import importlib\nimportlib.import_module('data_scripts.fixtures')\n"
                              "__import__('grading_fixtures')\n", encoding="utf-8")
    assert violations(tmp_path, "labkit", FORBIDDEN["labkit"]) == [
        "labkit/a.py:2 imports bench", "labkit/a.py:4 imports autograder",
        "labkit/a.py:7 imports data_scripts", "labkit/a.py:8 imports grading_fixtures"]
    nb = tmp_path / "notebooks" / "lab" / "lab.ipynb"
    nb.parent.mkdir(parents=True)
    nb.write_text(json.dumps({"cells": [{"cell_type": "code", "source": ["%matplotlib inline\n", "import tests.x"]},
                                        {"cell_type": "markdown", "source": "import tests"}]}), encoding="utf-8")
    assert violations(tmp_path, "notebooks", FORBIDDEN["notebooks"]) == ["notebooks/lab/lab.ipynb:1 imports tests"]


def labkit_names(tree: ast.AST) -> set[tuple[str, str]]:
    """``(labkit module, name)`` for every labkit name ``tree`` uses: ``from labkit.M import X``,
    ``M.X`` after ``from labkit import M``, ``labkit.M.X`` after ``import labkit.M``
    (``("", X)`` for ``from labkit import X`` when X is not a module)."""
    aliases: dict[str, str] = {}  # local name -> labkit module
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "labkit":
            sub = node.module.partition(".")[2]
            for alias in node.names:
                if not sub and importlib.util.find_spec(f"labkit.{alias.name}") is not None:
                    aliases[alias.asname or alias.name] = alias.name
                else:
                    found.add((sub, alias.name))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in aliases:
            found.add((aliases[node.value.id], node.attr))
        elif (isinstance(node.value, ast.Attribute) and isinstance(node.value.value, ast.Name)
              and node.value.value.id == "labkit"):
            found.add((node.value.attr, node.attr))
    return found


def test_every_labkit_name_the_notebooks_use_exists():
    missing = []
    for path, text in sources(REPO, "notebooks"):
        for module, name in sorted(labkit_names(ast.parse(text, filename=str(path)))):
            if not hasattr(importlib.import_module(f"labkit.{module}" if module else "labkit"), name):
                missing.append(f"{path.relative_to(REPO)}: labkit{'.' + module if module else ''}.{name}")
    assert missing == []


def test_labkit_names_sees_every_way_a_notebook_reaches_labkit():
    code = ("from labkit import train as T, setup_notebook\nT.fit\nimport labkit.models\n"
            "labkit.models.VGG\nfrom labkit.data import Loader\nx = T.nope")
    assert labkit_names(ast.parse(code)) == {("train", "fit"), ("train", "nope"), ("models", "VGG"),
                                             ("data", "Loader"), ("", "setup_notebook")}
