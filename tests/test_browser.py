"""The student experience of lab 3, in headless Chromium driven by Playwright.

One test walks through what a student does with the released bundle:

1. install the bundle as its README says (see ``student_bundle`` for how that is kept cheap);
2. start JupyterLab on it (nbgrader's lab extension on, ``LABKIT_PROFILE=smoke``) and open
   ``lab3_sparsity_training``;
3. try to type into, and delete, a locked test cell: nothing changes;
4. press Validate on the untouched notebook: nbgrader reports a failure;
5. type the correct ``add_bn_l1_subgradient`` into its solution cell (and lab3's other graded
   function and written answers, which Validate also needs), Run All, and see the self-check
   pass, the training progress bars reach 100 % and the plots render as images;
6. press Validate again: success.

Every step leaves a screenshot in the test's ``tmp_path``; a failing step fails with the path
of its screenshot and of the JupyterLab log. Chromium is Debian's package (no browser download)
and runs with flags that keep it off the network; without it the test is skipped.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser_helpers import (CHROMIUM_ARGS, GRADED_NAME, LAB_ID, REPO, NotebookPage, Steps,
                             build_bundle, cell_source, find_chromium, find_notebook,
                             find_package_root, jupyter_lab, load_cells, readme_install_commands,
                             strip_solution_markers, tool_env, unmet_pins)

CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH; install Debian's "
                       "package with `apt-get install -y chromium` (.ci/run does) to run the browser test"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed; pip install -e '.[dev]'")

SOURCE_NOTEBOOK = REPO / "notebooks" / LAB_ID / f"{LAB_ID}.ipynb"
TEST_ID = f"test_{GRADED_NAME}"


def _check_install(bundle: Path) -> list[str]:
    """Check the README's install route against the bundle; return its install commands.

    The route is ``pip install -e .`` (or conda with ``environment.yml``, then the same): every
    file those commands name must be in the bundle, and the bundle's pinned dependencies must
    be the ones this venv holds, so that running from this venv is what the student gets.
    """
    readme = bundle / "README.md"
    assert readme.is_file(), f"the student bundle {bundle} has no README.md telling students how to install it"
    commands = readme_install_commands(readme)
    assert any(c.startswith("pip install") for c in commands), \
        f"{readme} shows no `pip install` command; found {commands}"
    for cmd in commands:
        # `-r requirements.txt`, `-f environment.yml`, `-e .`: each must exist in the bundle
        for ref in re.findall(r"(?:-r|-f|--file|--requirement|-e|--editable)\s+(\S+)", cmd):
            target = (bundle / ref.strip("'\"").split("[")[0]).resolve()
            assert target.exists(), f"README command {cmd!r} names {ref}, which the bundle lacks"
            if target.is_dir():
                assert (target / "pyproject.toml").is_file() or (target / "setup.py").is_file(), \
                    f"README command {cmd!r} installs {ref}, which has no pyproject.toml / setup.py"
    unmet = unmet_pins(bundle / "pyproject.toml")
    assert not unmet, f"the bundle pins packages this venv does not hold, so the test would not run what students get: {unmet}"
    return commands


@pytest.fixture(scope="module")
def student_bundle(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The released bundle, installed the way its README says, cheaply.

    The README says: make a Python 3.11 venv, ``pip install -e .`` in the bundle. Doing that
    for real would copy or download a 5 GB torch install on every run. Instead the test checks
    the README's commands against the bundle and that the bundle's pins are exactly what the
    project venv holds (``_check_install``), then runs JupyterLab from the project venv with the
    bundle folder first on ``PYTHONPATH``, which is what an editable install of the bundle adds
    to ``sys.path``; a probe proves ``import labkit`` then loads the bundle's copy, not the repo's.
    """
    if not SOURCE_NOTEBOOK.is_file():
        pytest.fail(f"the lab3 source notebook {SOURCE_NOTEBOOK} is missing")
    work = tmp_path_factory.mktemp("release")
    bundle = build_bundle(work / "out", work / "release.log")
    readme_commands = _check_install(bundle)
    assert find_package_root(bundle) == bundle, f"the bundle's labkit is not at {bundle}/labkit"
    probe = subprocess.run([sys.executable, "-c", "import labkit; print(labkit.__file__)"],
                           env=tool_env({"PYTHONPATH": str(bundle)}), cwd=work,
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, f"import labkit fails with the bundle installed:\n{probe.stderr}"
    assert Path(probe.stdout.strip()).resolve().is_relative_to(bundle.resolve()), \
        f"import labkit loaded {probe.stdout.strip()}, not the bundle's copy under {bundle}"
    return {"root": bundle, "notebook": find_notebook(bundle), "readme_commands": readme_commands}


def _solutions(release_ids: list[str | None]) -> dict[str, str]:
    """grade_id -> reference solution as a student would type it, for every graded code cell.

    Taken from the source notebook's solution cells. ``add_bn_l1_subgradient`` is the one the
    student is walked through; lab3's other graded function is typed too, because Run All stops
    at its ``NotImplementedError`` and Validate needs every test to pass.
    """
    from grading_fixtures import cells_by_grade_id

    cells = cells_by_grade_id(SOURCE_NOTEBOOK)
    assert GRADED_NAME in cells, f"{SOURCE_NOTEBOOK} has no solution cell {GRADED_NAME!r}"
    wanted = [gid for gid, c in cells.items() if c["cell_type"] == "code"
              and c["metadata"]["nbgrader"].get("solution") and gid in release_ids]
    wanted.sort(key=lambda gid: (gid != GRADED_NAME, release_ids.index(gid)))
    return {gid: strip_solution_markers(cell_source(cells[gid])) for gid in wanted}


def _saved_source(notebook: Path, index: int) -> str:
    return cell_source(load_cells(notebook)[index])


def test_student_solves_lab3_in_jupyterlab(student_bundle: dict, tmp_path: Path) -> None:
    started = time.monotonic()
    root, notebook = student_bundle["root"], student_bundle["notebook"]
    release_cells = load_cells(notebook)
    nbg = [c.get("metadata", {}).get("nbgrader", {}) for c in release_cells]
    ids = [m.get("grade_id") for m in nbg]
    assert GRADED_NAME in ids and TEST_ID in ids, \
        f"{notebook.name} lacks the cells {GRADED_NAME!r} / {TEST_ID!r}; grade ids: {ids}"
    sol_i, test_i = ids.index(GRADED_NAME), ids.index(TEST_ID)
    test_meta = release_cells[test_i]["metadata"]
    assert test_meta.get("editable") is False and test_meta.get("deletable") is False, \
        f"the release test cell is not locked (metadata {test_meta}); nbgrader should set editable/deletable false"
    locked_source = cell_source(release_cells[test_i])
    solutions = _solutions(ids)

    with jupyter_lab(root, tmp_path, root) as server, \
            sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            steps = Steps(page, tmp_path, server.log)
            nb = NotebookPage(page, notebook)

            with steps.step("open_notebook"):
                nb.open(server)

            with steps.step("locked_test_cell"):
                nb.try_to_edit(test_i)
                assert nb.source(test_i) == locked_source.rstrip("\n"), \
                    "typing into the locked test cell changed it in the editor"
                n_cells = nb.cells.count()
                nb.try_to_delete(test_i)
                assert nb.cells.count() == n_cells, "pressing D, D deleted the locked test cell"
                nb.save()
                assert _saved_source(notebook, test_i) == locked_source, \
                    "the saved notebook's locked test cell differs from the release"

            with steps.step("validate_unsolved"):
                kind, text = nb.validate()
                assert kind == "validation-failed", \
                    f"Validate on the unsolved notebook gave {kind or 'an error'}, expected a failure:\n{text[:1500]}"
                assert GRADED_NAME in text, f"the failure does not name {GRADED_NAME}:\n{text[:1500]}"
            nb.close_dialog()

            with steps.step("type_solution"):
                # control for step 3: the same keystrokes do change an editable cell
                nb.try_to_edit(sol_i)
                assert nb.source(sol_i) == "pass", \
                    f"keystrokes did not reach the editable solution cell; it holds:\n{nb.source(sol_i)}"
                for gid, text in solutions.items():
                    nb.replace_source(ids.index(gid), text)
                    typed = nb.source(ids.index(gid))
                    assert typed == text.rstrip("\n"), f"the {gid} cell does not hold what was typed:\n{typed}"

            with steps.step("answer_questions"):
                # Validate also wants every written answer (markdown solution cells) filled in
                for i, (cell, meta) in enumerate(zip(release_cells, nbg)):
                    if cell["cell_type"] == "markdown" and meta.get("solution"):
                        answer = cell_source(cell).replace("YOUR ANSWER HERE", "An answer typed by the browser test.")
                        nb.replace_source(i, answer)
                        assert nb.source(i) == answer.rstrip("\n"), f"the answer cell {ids[i]} holds:\n{nb.source(i)}"

            with steps.step("run_all"):
                nb.run_all()
                prompts = nb.prompts()
                assert all(re.fullmatch(r"\[\d+\]:", p) for p in prompts), \
                    f"not every code cell ran (prompts {prompts}); errors: {nb.error_outputs()[:2]}"
                assert not nb.error_outputs(), f"a cell raised: {nb.error_outputs()[0][:1500]}"

            with steps.step("self_check_passed"):
                nb.cells.nth(test_i).scroll_into_view_if_needed()
                if "setup" in ids:  # the kernel got the profile the README tells students to set
                    setup_out = nb.output_text(ids.index("setup"))
                    assert "profile=smoke" in setup_out, f"the setup cell did not run under smoke:\n{setup_out}"
                for gid in solutions:  # passed("<name>") prints "✓ <name>: all checks passed"
                    out = "\n".join(nb.output_text(i) for i, t in enumerate(ids) if t and t.startswith(f"test_{gid}"))
                    assert f"✓ {gid}" in out, f"the self-check of {gid} did not pass; its output:\n{out}"

            with steps.step("progress_bar_finished"):
                texts = nb.progress_bars()
                assert texts, "no training progress bar in any output"
                unfinished = [t for t in texts if "100%" not in t]
                assert not unfinished, f"progress bars that did not reach 100%: {unfinished}"

            with steps.step("plots_rendered"):
                imgs = nb.panel.locator(".jp-OutputArea-output img")
                assert imgs.count() >= 1, "no plot rendered as an image"
                imgs.last.scroll_into_view_if_needed()
                sizes = [img.evaluate("i => [i.naturalWidth, i.naturalHeight]") for img in imgs.all()]
                assert all(w > 0 and h > 0 for w, h in sizes), f"an image did not load: sizes {sizes}"

            with steps.step("validate_solved"):
                kind, text = nb.validate()
                assert kind == "validation-success", \
                    f"Validate on the solved notebook gave {kind or 'an error'}:\n{text[:2000]}"
            nb.close_dialog()
            saved = _saved_source(notebook, sol_i)
            assert saved.rstrip("\n") == solutions[GRADED_NAME].rstrip("\n"), \
                f"the saved solution cell differs from what was typed:\n{saved}"
        finally:
            browser.close()
    print(f"browser test: {time.monotonic() - started:.0f} s; screenshots in {tmp_path}: "
          f"{', '.join(p.name for p in steps.taken)}")
