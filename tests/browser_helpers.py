"""Helpers for ``tests/test_browser.py``: a student bundle, a JupyterLab server, page actions.

Nothing here downloads anything: Chromium is Debian's package (found on PATH), JupyterLab and
nbgrader come from the project venv, and the browser is launched with flags that keep it off
the network (see ``CHROMIUM_ARGS`` and the "Browser tests" notes in ``/work/shared/NOTES.md``).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.files import write_text

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
LAB_ID = "lab3_sparsity_training"
GRADED_NAME = "add_bn_l1_subgradient"

# Headless Chromium must never reach the network: no background fetches, component or
# extension updates, sync, QUIC probes or first-run pages. Playwright adds its own fresh
# --user-data-dir for every launch().
CHROMIUM_ARGS = [
    "--no-sandbox",  # we run as root in CI containers
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-default-apps",
    "--disable-extensions",
]

SOLUTION_MARKERS = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n?", re.MULTILINE)


def find_chromium() -> str | None:
    """The system Chromium binary (Debian's ``chromium`` package), or None when not installed."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cell_source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def strip_solution_markers(source: str) -> str:
    """The solution cell as a student would type it: the nbgrader marker lines removed."""
    return SOLUTION_MARKERS.sub("", source).rstrip()


def grade_ids(notebook: Path) -> list[str | None]:
    """The nbgrader ``grade_id`` of every cell of ``notebook`` in order (None for plain cells)."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    return [c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in nb["cells"]]


def load_cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text(encoding="utf-8"))["cells"]


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for subprocesses: the venv's bin first (nbgrader runs ``alembic`` by name)."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------- student bundle

def release_cli_supports_lab_selection() -> bool:
    """True once ``python -m autograder release`` exists and can release one lab only."""
    main = REPO / "autograder" / "__main__.py"
    if not main.is_file():
        return False
    proc = subprocess.run([sys.executable, "-m", "autograder", "release", "--help"], cwd=REPO,
                          env=tool_env(), capture_output=True, text=True, timeout=60)
    return proc.returncode == 0 and "--labs" in proc.stdout


def build_bundle(out: Path, log: Path, notebooks: Path | None = None) -> Path:
    """Release lab3 into a student bundle under ``out``; returns the bundle folder.

    Runs the autograder's release (course folder, nbgrader ``generate_assignment``, bundle with
    README, ``labkit``, ``pyproject.toml``) in a subprocess so that nbgrader's global logging
    and config stay out of pytest. Only lab3 is released: the other labs would first run labs 3
    and 4 to build their checkpoints, minutes that this test does not need.
    ``notebooks`` replaces the repo's ``notebooks/`` folder (default: the repo's).
    """
    course = out / "course"
    if notebooks is None and release_cli_supports_lab_selection():
        run_logged([sys.executable, "-m", "autograder", "release", "--out", str(out),
                    "--course-dir", str(course), "--labs", LAB_ID], log, cwd=REPO,
                   what="python -m autograder release")
    else:
        script = ("import sys; from pathlib import Path; from autograder.release import release; "
                  "release(Path(sys.argv[1]), Path(sys.argv[2]), labs=[sys.argv[3]], "
                  "notebooks=Path(sys.argv[4]))")
        run_logged([sys.executable, "-c", script, str(out), str(course), LAB_ID,
                    str(notebooks or REPO / "notebooks")], log, cwd=REPO, what="autograder.release.release")
    bundle = out / "student-bundle"
    if not bundle.is_dir():
        raise FileNotFoundError(f"the release wrote no {bundle}; log {log}")
    return bundle


def run_logged(cmd: list[str], log: Path, cwd: Path, what: str, timeout: float = 120,
               env: dict[str, str] | None = None) -> str:
    """Run ``cmd``; append its output to ``log``; raise with the log's tail when it fails."""
    proc = subprocess.run(cmd, cwd=cwd, env=env or tool_env(), capture_output=True, text=True,
                          timeout=timeout)
    out = f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n"
    with log.open("a", encoding="utf-8") as f:
        f.write(out)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}); log {log}:\n{out[-3000:]}")
    return proc.stdout


def readme_install_commands(readme: Path) -> list[str]:
    """The install commands (pip / conda / venv) a README shows, fenced, indented or inline."""
    text = readme.read_text(encoding="utf-8")
    # inline code spans, then lines of code blocks (lines holding inline spans are prose)
    snippets = re.findall(r"`([^`\n]+)`", text) + [ln for ln in text.splitlines() if "`" not in ln]
    commands = []
    for snippet in snippets:
        for part in snippet.split("&&"):
            part = part.strip().removeprefix("$ ").strip()
            if re.match(r"(python[\d.]* -m (pip|venv)|pip|conda|mamba|uv) ", part) and part not in commands:
                commands.append(part)
    return commands


def unmet_pins(pyproject: Path) -> list[str]:
    """Pinned dependencies of ``pyproject`` that the running environment does not satisfy."""
    import tomllib
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    deps = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    unmet = []
    for dep in deps:
        req = Requirement(dep)
        try:
            have = version(req.name)
        except PackageNotFoundError:
            unmet.append(f"{dep} (not installed)")
            continue
        if not req.specifier.contains(have, prereleases=True):
            unmet.append(f"{dep} (have {have})")
    return unmet


def find_package_root(bundle: Path, package: str = "labkit") -> Path:
    """The folder that must be on ``sys.path`` for ``import package`` to load the bundle's copy."""
    hits = sorted(p.parent.parent for p in bundle.rglob(f"{package}/__init__.py")
                  if "site-packages" not in p.parts)
    if not hits:
        raise FileNotFoundError(f"the bundle {bundle} ships no {package}/ package; the release must copy it")
    return min(hits, key=lambda p: len(p.parts))


def find_notebook(bundle: Path, lab_id: str = LAB_ID) -> Path:
    hits = sorted(bundle.rglob(f"{lab_id}.ipynb"))
    hits = [h for h in hits if ".ipynb_checkpoints" not in h.parts]
    if not hits:
        raise FileNotFoundError(f"the bundle {bundle} has no {lab_id}.ipynb")
    return hits[0]


# --------------------------------------------------------------------------- JupyterLab

@dataclass
class LabServer:
    """A running ``jupyter lab`` subprocess."""

    proc: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    token: str
    root: Path
    log: Path

    def lab_url(self, relpath: str) -> str:
        return f"{self.url}/lab/tree/{relpath}?token={self.token}"


def _jupyter_settings(config_dir: Path) -> None:
    """User settings that keep JupyterLab deterministic and offline.

    * ``windowingMode: none``: every cell stays in the DOM (no virtual scrolling), so the test
      can address cells by index.
    * no news fetch / update check, so no notification toast covers the toolbar.
    """
    user = config_dir / "lab" / "user-settings" / "@jupyterlab"
    write_text(user / "notebook-extension" / "tracker.jupyterlab-settings",
                 json.dumps({"windowingMode": "none"}))
    write_text(user / "apputils-extension" / "notification.jupyterlab-settings",
                 json.dumps({"fetchNews": "false", "checkForUpdates": False}))


@contextlib.contextmanager
def jupyter_lab(root: Path, workdir: Path, pythonpath: Path, timeout: float = 60) -> Iterator[LabServer]:
    """Start JupyterLab on ``root`` (localhost, random port and token); stop it on exit.

    ``workdir`` gets the server's config / runtime folders and its log. The kernel inherits
    ``PYTHONPATH=pythonpath`` (the bundle's labkit) and ``LABKIT_PROFILE=smoke``.
    """
    port, token = free_port(), secrets.token_hex(16)
    config_dir = workdir / "jupyter_config"
    _jupyter_settings(config_dir)
    env = tool_env({
        "LABKIT_PROFILE": "smoke",
        "LABKIT_ARTIFACTS": str(workdir / "artifacts"),
        "PYTHONPATH": str(pythonpath),
        # isolate from ~/.jupyter; the venv's config (nbgrader extensions) is still read
        "JUPYTER_CONFIG_DIR": str(config_dir),
        "JUPYTER_RUNTIME_DIR": str(workdir / "jupyter_runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(workdir / "workspaces"),
    })
    # The Makefile exports MPLBACKEND=Agg; a student's kernel has none, so that ipykernel picks
    # the inline backend and figures show up as images.
    env.pop("MPLBACKEND", None)
    log = workdir / "jupyter.log"
    cmd = [str(VENV_BIN / "jupyter"), "lab", "--no-browser",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--LabApp.workspaces_dir={workdir / 'workspaces'}",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")  # CI containers run as root; the server refuses otherwise
    with log.open("w", encoding="utf-8") as logf:
        # its own process group, so stopping it also stops the kernels it started
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = LabServer(proc, f"http://127.0.0.1:{port}", token, root, log)
    try:
        _wait_ready(server, timeout)
        yield server
    finally:
        _stop(proc)


def _wait_ready(server: LabServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    status = f"{server.url}/api/status?token={server.token}"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {server.proc.returncode}; log {server.log}:\n"
                               f"{server.log.read_text(encoding='utf-8')[-3000:]}")
        try:
            with urllib.request.urlopen(status, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)  # polling a socket for readiness, not waiting on the page
    raise TimeoutError(f"jupyter lab did not answer {server.url}/api/status within {timeout:.0f} s; "
                       f"log {server.log}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


# --------------------------------------------------------------------------- screenshots

@dataclass
class Steps:
    """Numbered steps with a screenshot after each; a failing step names its screenshot.

    Use as ``with steps.step("name"): ...``. On failure the page is captured and the test fails
    with one message giving the step, the screenshot path, the server log and the cause.
    """

    page: Any  # playwright.sync_api.Page
    folder: Path
    server_log: Path | None = None
    taken: list[Path] = field(default_factory=list)
    _n: int = 0

    def shot(self, name: str) -> Path:
        self._n += 1
        path = self.folder / f"{self._n:02d}_{name}.png"
        self.page.screenshot(path=str(path), full_page=False)
        self.taken.append(path)
        return path

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - re-raised with the screenshot path
            try:
                path = str(self.shot(f"{name}_FAILED"))
            except Exception as shot_exc:  # noqa: BLE001 - the page may be gone
                path = f"(no screenshot: {shot_exc})"
            raise AssertionError(f"step {name!r} failed; screenshot {path}; jupyter log {self.server_log}\n"
                                 f"{type(exc).__name__}: {exc}") from exc
        self.shot(name)


# --------------------------------------------------------------------------- notebook page

# JavaScript run in the page. Cells are addressed by their index in the .ipynb, which is their
# index among the notebook's `.jp-Cell` widgets (windowing is off, see _jupyter_settings).
# The source comes from CodeMirror's document (its view hangs off .cm-content as `cmTile`, or
# `cmView` in older CodeMirror): the rendered .cm-line elements, the fallback, can omit lines
# that are far outside the window.
JS_CELL_SOURCE = """([i]) => {
    const cell = document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell')[i];
    const content = cell.querySelector('.jp-InputArea-editor .cm-content');
    const tile = content.cmTile || content.cmView;
    if (tile && tile.view && tile.view.state) return tile.view.state.doc.toString();
    return Array.from(content.querySelectorAll('.cm-line')).map(l => l.textContent).join('\\n');
}"""
JS_RUN_FINISHED = """() => {
    const prompts = Array.from(document.querySelectorAll(
        '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputArea-prompt')).map(p => p.textContent.trim());
    return prompts.length > 0 && !prompts.some(p => p.includes('*')) && /\\[\\d+\\]/.test(prompts[0]);
}"""

JS_BARS_DONE = """() => {
    const outs = Array.from(document.querySelectorAll(
        '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output'));
    const bars = outs.filter(o => o.querySelector('.widget-hprogress'));
    return bars.length > 0 && bars.every(o => o.innerText.includes('100%'));
}"""


class NotebookPage:
    """The student's view of one open notebook in JupyterLab (a Playwright ``Page``)."""

    def __init__(self, page: Any, notebook: Path) -> None:
        self.page = page
        self.notebook = notebook
        self.panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
        self.cells = self.panel.locator(".jp-Notebook .jp-Cell")

    def open(self, server: LabServer, timeout_ms: float = 90_000) -> None:
        """Load JupyterLab on the notebook; wait for all cells, the Validate button, an idle kernel."""
        rel = self.notebook.relative_to(server.root).as_posix()
        self.page.goto(server.lab_url(rel), timeout=timeout_ms)
        n = len(load_cells(self.notebook))
        self.page.wait_for_function(
            "([n]) => document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell').length === n",
            arg=[n], timeout=timeout_ms)
        self.validate_button().wait_for(state="visible", timeout=timeout_ms)
        self.wait_kernel_idle(timeout_ms)

    def wait_kernel_idle(self, timeout_ms: float = 60_000) -> None:
        # the status bar reads "Python 3 (ipykernel) | Idle" once the kernel is up and waiting
        self.page.locator(".jp-StatusBar-Widget", has_text="| Idle").first.wait_for(timeout=timeout_ms)

    def source(self, index: int) -> str:
        """The cell's source as the editor shows it (lines joined by newlines)."""
        return self.page.evaluate(JS_CELL_SOURCE, [index])

    def editor(self, index: int) -> Any:
        return self.cells.nth(index).locator(".jp-InputArea-editor .cm-content")

    def try_to_edit(self, index: int) -> None:
        """What a student does to change a cell: click in, type, delete, select all and type."""
        editor = self.editor(index)
        editor.scroll_into_view_if_needed()
        editor.click()
        kb = self.page.keyboard
        kb.press("Control+End")
        kb.type("\n# changed by the student")
        kb.press("Backspace")
        kb.press("Backspace")
        kb.press("Control+a")
        kb.type("pass")
        kb.press("Escape")  # back to command mode

    def try_to_delete(self, index: int) -> None:
        """Select the cell in command mode and press D, D (JupyterLab's delete-cell shortcut)."""
        self.cells.nth(index).locator(".jp-InputArea-prompt").click()
        self.page.keyboard.press("Escape")
        self.page.keyboard.press("d")
        self.page.keyboard.press("d")

    def replace_source(self, index: int, text: str) -> None:
        """Select everything in the cell's editor and put ``text`` there as typed input.

        ``insert_text`` sends the text as one input event: CodeMirror takes it verbatim,
        whereas key-by-key typing would add auto-indentation and closing brackets.
        """
        cell = self.cells.nth(index)
        if "jp-mod-rendered" in (cell.get_attribute("class") or ""):
            # a rendered markdown cell opens its editor on double-click, as for a student
            cell.locator(".jp-RenderedMarkdown").dblclick()
        editor = self.editor(index)
        editor.scroll_into_view_if_needed()
        editor.click()
        self.page.keyboard.press("Control+a")
        self.page.keyboard.insert_text(text)
        self.page.keyboard.press("Escape")

    def menu(self, menu: str, item: str) -> None:
        """Click a main-menu entry by its labels, e.g. ``menu("Run", "Run All Cells")``."""
        self.page.locator(".lm-MenuBar-item", has_text=menu).first.click()
        self.page.locator(f".lm-Menu-item:has(.lm-Menu-itemLabel:text-is('{item}'))").first.click()

    def run_all(self, timeout_ms: float = 150_000) -> None:
        """Run > Run All Cells; wait until no cell is queued or running."""
        self.menu("Run", "Run All Cells")
        self.page.wait_for_function(JS_RUN_FINISHED, timeout=timeout_ms, polling=250)
        self.wait_kernel_idle(timeout_ms)

    def prompts(self) -> list[str]:
        return [p.strip() for p in self.panel.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()]

    def output_text(self, index: int) -> str:
        return "\n".join(self.cells.nth(index).locator(".jp-OutputArea-output").all_inner_texts())

    def error_outputs(self) -> list[str]:
        """Texts of tracebacks shown in any output area (what a student would see as red)."""
        errs = self.panel.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        return [t for t in errs.all_inner_texts() if "Error" in t or "Traceback" in t]

    def progress_bars(self, timeout_ms: float = 15_000) -> list[str]:
        """Texts of the tqdm bars in the outputs, once each shows 100% (or after ``timeout_ms``).

        ``tqdm.auto`` draws an ipywidgets bar in JupyterLab ("fit: 100% ... 8/8 [...]"); widget
        views render after their output arrives, so this waits for them. Without ipywidgets it
        prints a text bar, recognised by its rate ("it/s", "batch/s").
        """
        with contextlib.suppress(Exception):  # a timeout leaves the texts to the caller's assert
            self.page.wait_for_function(JS_BARS_DONE, timeout=timeout_ms, polling=250)
        widgets = self.panel.locator(".jp-OutputArea-output:has(.widget-hprogress)")
        if widgets.count():
            widgets.last.scroll_into_view_if_needed()
            return widgets.all_inner_texts()
        texts = self.panel.locator(".jp-OutputArea-output").all_inner_texts()
        return [t for t in texts if re.search(r"\d+(\.\d+)?(it|batch)/s|s/(it|batch)", t)]

    def save(self) -> None:
        """File > Save (Ctrl+S); wait until the tab no longer shows unsaved changes."""
        self.panel.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
        self.page.keyboard.press("Escape")
        self.page.keyboard.press("Control+s")
        self.page.locator(".lm-TabBar-tab.jp-mod-current.jp-mod-dirty").wait_for(state="detached", timeout=30_000)

    def validate_button(self) -> Any:
        # the toolbar item nbgrader's lab extension adds; the class sits on the <jp-button> itself
        return self.panel.locator("jp-button.validate-button, .validate-button jp-button").first

    def validate(self, timeout_ms: float = 170_000) -> tuple[str, str]:
        """Press nbgrader's Validate; return (result class, dialog text) and close the dialog.

        The result class is ``validation-success``, ``validation-failed``, ``validation-changed``,
        ``validation-type-changed`` or ``""`` (the validator itself crashed).
        """
        self.validate_button().click()
        dialog = self.page.locator(".jp-Dialog")
        message = dialog.locator("#validation-message")
        message.wait_for(state="attached", timeout=timeout_ms)
        classes = (message.get_attribute("class") or "").split()
        kind = next((c for c in classes if c.startswith("validation-")), "")
        text = dialog.inner_text()
        return kind, text

    def close_dialog(self) -> None:
        dialog = self.page.locator(".jp-Dialog")
        dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
        dialog.wait_for(state="detached", timeout=10_000)
