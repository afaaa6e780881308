"""Run a notebook top to bottom with nbclient under a profile (release checkpoints, demo, bench.lessons)."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from autograder.logs import error_line


@contextmanager
def environ(**values: str):
    """Set environment variables for the block (the kernel nbclient starts inherits them)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class RunResult:
    """Outcome of executing one notebook: ``seconds`` of wall time, ``error`` None when it passed."""

    lab: str
    seconds: float
    error: str | None


def run_notebook(path: Path, artifacts: Path, timeout: int = 600, profile: str = "smoke",
                 workdir: Path | None = None, **env: str) -> RunResult:
    """Execute notebook ``path`` with nbclient under ``profile`` (cwd: a temp copy of its folder).

    ``env``: more environment variables for the kernel, e.g. ``LABKIT_DATASET="cifar10"``.
    """
    import nbclient
    import nbformat

    lab = Path(path).stem
    nb = nbformat.read(str(path), as_version=4)
    with tempfile.TemporaryDirectory(prefix=f"run-{lab}-") as tmp:
        cwd = Path(workdir or tmp)
        shutil.copytree(Path(path).parent, cwd, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints", "artifacts"))
        t0 = time.perf_counter()
        try:
            with environ(LABKIT_PROFILE=profile, LABKIT_ARTIFACTS=str(artifacts), MPLBACKEND="Agg",
                         PYTHONWARNINGS="ignore", **env):
                nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                        resources={"metadata": {"path": str(cwd)}}).execute()
            error = None
        except Exception as exc:  # noqa: BLE001 - reported per lab
            error = f"{type(exc).__name__}: {error_line(str(exc))}"
        return RunResult(lab, time.perf_counter() - t0, error)


