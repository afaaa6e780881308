"""No visible giveaways: nothing the student version shows may pass a graded name's hidden checks.

For every lab, the student version's visible code is everything outside the solution and the
hidden-test regions (as ``python -m autograder release`` cuts them): the stubs of the graded
names with their docstrings, the visible self-checks of the test cells, the experiment cells,
and the markdown. Every function or class defined there is tried in place of every graded name
it could stand in for (called with the graded name's arguments, by name when its parameters
have the graded name's names, else by position), and every expression quoted in a visible
docstring or markdown cell (``code`` spans) that uses a graded function's parameters is tried as
that function's body. Each candidate runs the graded name's hidden checks through the probe and
the judge, exactly as grading does; a candidate that gets every point of that graded name is a
giveaway. ``test_judge.py`` checks the other direction (the reference passes, mistakes fail).

The visible namespace holds the setup cell, the visible imports, definitions and call-free
assignments (constants); experiment state (data, trained models) is not built, so a helper that
only works on that state is not a standalone implementation and fails here, as it should.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import grading_fixtures as gf
from autograder import judge as J
from autograder import notebook as nbu

LABS = [lab for lab in nbu.available_labs() if lab in nbu.LAB_IDS]
STUB = "raise NotImplementedError()"

# Defined in the probe's namespace in place of a graded name: calls ``candidate`` with the graded
# name's arguments (its defaults applied), by name when the candidate's required parameters all
# carry the graded name's parameter names, otherwise by position.
ADAPTER = '''
def _giveaway_adapter(candidate, graded):
    import inspect
    sig = inspect.signature(graded)
    try:
        cparams = list(inspect.signature(candidate).parameters.values())
    except (TypeError, ValueError):
        cparams = None

    def call(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        if cparams is None:
            return candidate(*values.values())
        named = [p.name for p in cparams if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        required = [p.name for p in cparams if p.default is p.empty and p.name in named]
        if required and all(n in values for n in required):
            return candidate(**{n: values[n] for n in named if n in values})
        positional = [p for p in cparams if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        n = len(values) if any(p.kind == p.VAR_POSITIONAL for p in cparams) else len(positional)
        return candidate(*list(values.values())[:n])
    return call
'''


# ---------------------------------------------------------------------------- the visible code

def visible_cells(src: dict) -> list[tuple[str, str, str | None]]:
    """``[(cell type, visible text, grade_id)]`` of the student version: solution regions replaced
    by the stub, hidden regions removed, the setup cell left out (the probe runs it first anyway)."""
    out = []
    for cell in src["cells"]:
        text = nbu.cell_source(cell)
        if cell.get("cell_type") == "code":
            if nbu.grade_id(cell) == "setup":
                continue
            text = nbu.strip_region(text, nbu.BEGIN_SOLUTION, nbu.END_SOLUTION, STUB)
            text = nbu.strip_region(text, nbu.BEGIN_HIDDEN, nbu.END_HIDDEN, None)
        out.append((cell.get("cell_type", ""), text, nbu.grade_id(cell)))
    return out


def _has_call(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) for n in ast.walk(node))


def _params(node: ast.AST) -> tuple[int, int] | None:
    """``(required, total)`` positional parameters of a def, or of a class's ``__init__`` (no self)."""
    if isinstance(node, ast.ClassDef):
        init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        if init is None:
            return None
        req, total = _params(init)
        return max(req - 1, 0), total - 1
    args = node.args
    total = len(args.posonlyargs) + len(args.args)
    return total - len(args.defaults), total


def _source(text: str, node: ast.AST) -> str:
    if getattr(node, "decorator_list", None):
        return ast.unparse(node)  # get_source_segment would drop the decorators
    return ast.get_source_segment(text, node, padded=False) or ast.unparse(node)


def visible_statements(src: dict) -> tuple[list[str], dict[str, ast.AST], list[tuple[str, ast.AST, str]]]:
    """What the student version shows, for the probe: ``(statements, stubs, definitions)``.

    ``statements`` (run in the namespace, in notebook order): imports, definitions and call-free
    assignments (constants), except a graded name defined outside its own solution cell;
    ``stubs``: each graded name's definition in its own solution cell; ``definitions``: every
    other visible function or class as ``(name, node, source)``, that redefinition included.
    """
    graded = set(nbu.graded_names(src))
    stmts, stubs, defs = [], {}, []
    for kind, text, gid in visible_cells(src):
        if kind != "code":
            continue
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue  # magics or shell lines: nothing to define
        for node in tree.body:
            is_def = isinstance(node, (ast.FunctionDef, ast.ClassDef))
            if is_def and node.name in graded and node.name == gid:
                stubs[node.name] = node
            elif is_def:
                defs.append((node.name, node, _source(text, node)))
                if node.name in graded:
                    continue  # only tried as a candidate: the namespace keeps the stub
            keep = is_def or isinstance(node, (ast.Import, ast.ImportFrom)) or \
                isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and not _has_call(node.value)
            if keep:
                stmts.append(_source(text, node))
    return stmts, stubs, defs


def quoted_expressions(src: dict) -> list[str]:
    """Python expressions quoted as code (``x`` or ``x``) in visible docstrings and markdown."""
    texts = [text for kind, text, _ in visible_cells(src) if kind == "markdown"]
    _, stubs, defs = visible_statements(src)
    for node in [*stubs.values(), *(node for _, node, _ in defs)]:
        for sub in ast.walk(node):
            if isinstance(sub, (ast.FunctionDef, ast.ClassDef)):
                texts.append(ast.get_docstring(sub) or "")
    found = []
    for text in texts:
        for m in re.finditer(r"``(.+?)``|`([^`\n]+?)`", text, flags=re.S):
            expr = (m.group(1) or m.group(2)).strip()
            try:
                tree = ast.parse(expr, mode="eval")
            except SyntaxError:
                continue
            if not isinstance(tree.body, (ast.Name, ast.Constant)) and expr not in found:
                found.append(expr)
    return found


def _loaded_names(expr: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name)}


# ---------------------------------------------------------------------------- candidates and the judge

def candidates(src: dict) -> list[tuple[str, str, str]]:
    """``[(graded name, what is tried, the code that defines the graded name as it)]``."""
    _, stubs, defs = visible_statements(src)
    out = []
    for name in nbu.graded_names(src):
        stub = stubs.get(name)
        if stub is None:
            continue
        shape = _params(stub)
        for cand, node, source in defs:
            cshape = _params(node)
            if cshape is not None and (cshape[1] == 0 or shape is not None and cshape[0] > shape[1]):
                continue  # takes no argument, or needs more than the graded name gets
            code = (f"_giveaway_graded = {name}\n{source}\n_giveaway_candidate = {cand}\n{ADAPTER}\n"
                    f"{name} = _giveaway_adapter(_giveaway_candidate, _giveaway_graded)\n")
            out.append((name, f"visible {cand}", code))
        if isinstance(stub, ast.FunctionDef):
            params = {a.arg for a in stub.args.posonlyargs + stub.args.args + stub.args.kwonlyargs}
            for expr in quoted_expressions(src):
                if _loaded_names(expr) & params and name not in _loaded_names(expr):  # not a call of itself
                    body = f"def {name}({ast.unparse(stub.args)}):\n    return ({expr})\n"
                    out.append((name, f"quoted expression `{expr}`", body))
    return out


def find_giveaways(src: dict, workdir: Path, timeout: float = 10.0) -> list[str]:
    """``"<graded name> <- <candidate>"`` for every visible candidate that passes all of that
    graded name's hidden checks (judged against the reference's record)."""
    stmts, _, _ = visible_statements(src)
    tests = J.autograded_tests(src)
    cands = candidates(src)
    specs = [J.probe_spec(src, J.reference_nb(src))]
    for name, _, code in cands:
        own = {nbu.grade_id(c) for c in gf.test_cells(src, name)}
        specs.append({"setup": J.setup_source(src),
                      "solutions": [[f"visible {i}", s] for i, s in enumerate(stmts)] + [[name, code]],
                      "tests": [[gid, hidden] for gid, hidden in tests if gid in own],
                      "test_timeout": timeout, "cell_timeout": timeout})
    records, _ = J.run_probes(specs, workdir)
    expected = records[0]
    assert expected and not any(r["error"] for r in expected.values()), "the reference must pass its own checks"
    found = []
    for (name, what, _), spec, recs in zip(cands, specs[1:], records[1:]):
        own = [gid for gid, _ in spec["tests"]]
        if own and all(J.judge_record(recs.get(gid), expected[gid])[0] for gid in own):
            found.append(f"{name} <- {what}")
    return found


# ---------------------------------------------------------------------------- the labs

@pytest.mark.parametrize("lab", LABS)
def test_no_visible_code_passes_a_graded_names_hidden_checks(lab, tmp_path):
    src = nbu.read_nb(nbu.source_path(lab))
    assert candidates(src), f"{lab}: nothing visible was tried (the extraction is broken)"
    assert find_giveaways(src, tmp_path) == []


# ---------------------------------------------------------------------------- the detector works

def _cell(kind: str, text: str, **nbgrader) -> dict:
    cell = {"cell_type": kind, "metadata": {"nbgrader": {"schema_version": 3, **nbgrader}} if nbgrader else {},
            "source": text}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


KD_SOLUTION = '''def kd_loss(student_logits, teacher_logits, labels, T, alpha):
    """Hinton et al. (2015) distillation loss: a 0-d tensor."""
    ### BEGIN SOLUTION
    hard = F.cross_entropy(student_logits, labels)
    soft = F.kl_div(F.log_softmax(student_logits / T, dim=1), F.softmax(teacher_logits / T, dim=1),
                    reduction="batchmean")
    return (1.0 - alpha) * hard + alpha * T ** 2 * soft
    ### END SOLUTION
'''

# Lab 2's self-check before issue 11: a complete kd_loss in plain sight
OLD_KD_TEST = '''def reference_kd(s, t, y, T, alpha):
    # the formula written out with explicit sums (float64)
    s, t = s.double(), t.double()
    log_ps = s / T - torch.logsumexp(s / T, dim=1, keepdim=True)
    log_pt = t / T - torch.logsumexp(t / T, dim=1, keepdim=True)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1).mean()
    ce = -(s - torch.logsumexp(s, dim=1, keepdim=True)).gather(1, y.view(-1, 1)).mean()
    return (1 - alpha) * ce + alpha * T ** 2 * kl


s = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.2]])
t = torch.tensor([[3.0, 1.0, -2.0], [-1.0, 2.0, 1.5]])
y = torch.tensor([0, 2])
assert abs(kd_loss(s, t, y, T=2.0, alpha=0.5) - reference_kd(s, t, y, 2.0, 0.5)) < 1e-5
'''
NEW_KD_TEST = '''s = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.2]])
t = torch.tensor([[3.0, 1.0, -2.0], [-1.0, 2.0, 1.5]])
y = torch.tensor([0, 2])
assert abs(kd_loss(s, t, y, T=2.0, alpha=0.5) - 0.521626) < 1e-5
'''
KD_HIDDEN = '''### BEGIN HIDDEN TESTS
def hidden_checks(rec):
    g = torch.Generator().manual_seed(0)
    S_, T_ = 3 * torch.randn(8, 10, generator=g), 3 * torch.randn(8, 10, generator=g)
    Y_ = torch.randint(0, 10, (8,), generator=g)
    for T, a in [(4.0, 0.7), (1.0, 0.9), (0.5, 1.0), (5.0, 0.0)]:
        rec.check(f"T={T}, alpha={a}", lambda: kd_loss(S_, T_, Y_, T=T, alpha=a), atol=1e-4, rtol=1e-5)
### END HIDDEN TESTS
'''

# Lab 5's lr_milestones before issue 11: the docstring is the solution
OLD_MILESTONES = '''def lr_milestones(num_epochs, fractions=(0.5, 0.75)):
    """Epochs after which the learning rate is divided by 10.

    Returns:
        ``sorted({int(num_epochs * f) for f in fractions})`` — ascending Python ints, no duplicates.
    """
    ### BEGIN SOLUTION
    return sorted({int(num_epochs * f) for f in fractions})
    ### END SOLUTION
'''
NEW_MILESTONES = OLD_MILESTONES.replace(
    "``sorted({int(num_epochs * f) for f in fractions})`` — ascending Python ints, no duplicates.",
    "the milestone epochs as Python ints in ascending order, without duplicates.")
MILESTONES_HIDDEN = '''### BEGIN HIDDEN TESTS
def hidden_checks(rec):
    for n, fr in ((160, (0.5, 0.75)), (7, (0.5, 0.75)), (8, (0.75, 0.5)), (10, (0.5, 0.5, 0.55))):
        rec.check(f"lr_milestones({n}, {fr})", lambda: lr_milestones(n, fr))
        rec.check(f"types in lr_milestones({n}, {fr})", lambda: [type(v).__name__ for v in lr_milestones(n, fr)])
### END HIDDEN TESTS
'''


def hand_made_lab(kd_test: str, milestones: str) -> dict:
    """A two-name lab in the course's layout: setup, solution cells, test cells with hidden checks."""
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        _cell("code", "import torch\nimport torch.nn.functional as F\n", grade_id="setup", locked=True,
              solution=False, grade=False),
        _cell("markdown", "Write `kd_loss` with `F.kl_div` and `reduction=\"batchmean\"`."),
        _cell("code", KD_SOLUTION, grade_id="kd_loss", solution=True, grade=False, locked=False),
        _cell("code", kd_test + KD_HIDDEN, grade_id="test_kd_loss", solution=False, grade=True, locked=True,
              points=4),
        _cell("code", milestones, grade_id="lr_milestones", solution=True, grade=False, locked=False),
        _cell("code", "assert lr_milestones(160) == [80, 120]\n" + MILESTONES_HIDDEN, grade_id="test_lr_milestones",
              solution=False, grade=True, locked=True, points=2),
    ]}


def test_catches_lab2s_old_reference_kd_and_lab5s_old_docstring(tmp_path):
    old = hand_made_lab(OLD_KD_TEST, OLD_MILESTONES)
    assert find_giveaways(old, tmp_path / "old") == [
        "kd_loss <- visible reference_kd",
        "lr_milestones <- quoted expression `sorted({int(num_epochs * f) for f in fractions})`",
    ]
    # hard-coded expected values and a docstring that states the contract: nothing passes
    assert find_giveaways(hand_made_lab(NEW_KD_TEST, NEW_MILESTONES), tmp_path / "new") == []


def test_a_helper_with_other_parameter_names_or_fewer_parameters_is_still_tried(tmp_path):
    # by position when the names differ; a helper taking fewer arguments gets the first ones
    helper = ("def _reference(a, b, c, temperature, weight):\n"
              "    return kd_loss_formula(a, b, c, temperature, weight)\n\n\n"
              "def kd_loss_formula(s, t, y, T, alpha):\n"
              "    hard = F.cross_entropy(s, y)\n"
              "    soft = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction='batchmean')\n"
              "    return (1.0 - alpha) * hard + alpha * T ** 2 * soft\n\n\n"
              "def milestones_of(num_epochs):\n"
              "    return [int(num_epochs * 0.5), int(num_epochs * 0.75)]\n\n\n")
    found = find_giveaways(hand_made_lab(helper + NEW_KD_TEST, NEW_MILESTONES), tmp_path / "helpers")
    # milestones_of ignores the fractions: it fails the hidden cases with other fractions
    assert found == ["kd_loss <- visible _reference", "kd_loss <- visible kd_loss_formula"]
    # a graded name written out again in a visible cell (not graded there, but there to copy)
    lab = hand_made_lab(NEW_KD_TEST, NEW_MILESTONES)
    lab["cells"].append(_cell("code", "def lr_milestones(n, fractions=(0.5, 0.75)):\n"
                                      "    return sorted({int(n * f) for f in fractions})\n"))
    assert find_giveaways(lab, tmp_path / "redefined") == ["lr_milestones <- visible lr_milestones"]
