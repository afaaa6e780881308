"""Run a notebook top to bottom with nbclient under a profile (release checkpoints, demo, bench.lessons)."""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path

from autograder.logs import error_line


# Every kernel nbclient and nbgrader start logs this once at start-up (ipykernel's
# IPKernelApp.init_sockets, when the transport is tcp and no CurveZMQ key is set) to the stderr it
# inherited from us: a dozen identical lines between ours (demo, release, bench.lessons). The kernels only ever listen
# on localhost here.
KERNEL_TCP_WARNING = b"Kernel is running over TCP without encryption"


@contextlib.contextmanager
def without_kernel_tcp_warning() -> Iterator[None]:
    """Drop :data:`KERNEL_TCP_WARNING` lines from everything written to this process's stderr
    (file descriptor 2, so child processes such as kernels included); pass every other line on."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    out = os.dup(saved)
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with open(read_end, "rb", buffering=0) as src, open(out, "wb", buffering=0) as dst:
            for line in src:
                if KERNEL_TCP_WARNING not in line:
                    dst.write(line)

    thread = threading.Thread(target=pump, name="kernel-warning-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # our copy of the pipe closes: the pump ends once the children's copies do
        os.close(saved)
        thread.join(timeout=2)


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


