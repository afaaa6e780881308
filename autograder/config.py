"""The nbgrader configuration used for release and grading (one place, as a traitlets Config).

``autograder/nbgrader_config.py`` loads the same settings for people who run the nbgrader
command line by hand inside a course folder built by ``python -m autograder release``.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

from traitlets import Float
from traitlets.config import Config

COURSE_ID = "efficient-dl"
# Smoke-profile notebooks run in seconds; these leave room for a slow, busy grading machine.
CELL_TIMEOUT_S = 60
TEST_CELL_TIMEOUT_S = 20
# Harmless stderr lines a grading kernel may print (torch / matplotlib / tqdm / ipykernel
# noise). nbgrader scores a test cell 0 on any stderr, so these are removed first. A test
# cell that prints anything else on stderr still fails, as nbgrader intends.
IGNORE_STDERR = (
    r"(?:UserWarning|DeprecationWarning|FutureWarning|RuntimeWarning|ResourceWarning|"
    r"warnings\.warn\(|it/s\]|s/it\]|\d+%\|)"
)
MAX_OUTPUT_LINES = 200


def timeout_for(cell, limit: int = CELL_TIMEOUT_S) -> int:
    """Per-cell wall-clock limit (seconds): graded test cells get less than other cells."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    if isinstance(meta, dict) and meta.get("grade") and not meta.get("solution"):
        return min(TEST_CELL_TIMEOUT_S, limit)
    return limit


try:  # nbgrader is an instructor dependency; this module is importable without it
    from nbgrader.plugins import LateSubmissionPlugin as _LateBase
except ImportError:  # pragma: no cover
    _LateBase = object  # type: ignore[misc,assignment]


class PerDayPenalty(_LateBase):  # type: ignore[misc,valid-type]
    """Late penalty: ``per_day`` × raw score for every started day late (capped at the score).

    ``per_day=0.1`` takes 10 % of the notebook's raw score per started 24 h after the deadline.
    """

    per_day = Float(0.0, help="fraction of the raw score deducted per started day late").tag(config=True)

    def late_submission_penalty(self, student_id: str, score: float, total_seconds_late: float) -> float | None:
        if total_seconds_late <= 0 or self.per_day <= 0:
            return None
        days = math.ceil(total_seconds_late / 86400.0)
        return round(min(score, score * self.per_day * days), 6)


def make_config(root: Path, db_url: str | None = None, kernel_name: str | None = None,
                late_penalty_per_day: float = 0.0, ipc_dir: Path | None = None,
                cell_timeout: int = CELL_TIMEOUT_S) -> Config:
    """nbgrader Config for a course folder at ``root``.

    ``ipc_dir``: use jupyter_client's ``ipc`` transport with sockets and connection file there
    (needed by the sandboxed kernel, :mod:`autograder.sandbox`).
    ``db_url`` defaults to ``sqlite:///<root>/gradebook.db``; any SQLAlchemy URL
    (e.g. ``postgresql://user@host/db``) is passed through to ``CourseDirectory.db_url``.
    """
    c = Config()
    c.CourseDirectory.root = str(Path(root).resolve())
    c.CourseDirectory.course_id = COURSE_ID
    c.CourseDirectory.db_url = db_url or f"sqlite:///{Path(root).resolve() / 'gradebook.db'}"
    c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "artifacts"]
    c.CourseDirectory.max_file_size = 200_000  # kB; smoke checkpoints are small, keep them
    c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
    c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
    c.Execute.timeout = cell_timeout
    c.Execute.timeout_func = functools.partial(timeout_for, limit=cell_timeout)
    c.Execute.interrupt_on_timeout = True
    c.Execute.startup_timeout = 120
    if kernel_name:
        c.Execute.kernel_name = kernel_name
    if ipc_dir is not None:
        # A kernel in its own network namespace is reachable only through Unix sockets. Both
        # paths must be absolute: the kernel's cwd differs from the grader's.
        c.KernelManager.transport = "ipc"
        c.KernelManager.ip = str(Path(ipc_dir) / "kernel")
        c.KernelManager.connection_file = str(Path(ipc_dir) / "kernel.json")
    c.IgnorePattern.enabled = True
    c.IgnorePattern.pattern = IGNORE_STDERR
    c.OverwriteCells.add_missing_cells = True
    c.LimitOutput.max_lines = MAX_OUTPUT_LINES
    c.LimitOutput.max_traceback = 60
    c.Autograde.create_student = True
    c.AssignLatePenalties.plugin_class = PerDayPenalty
    c.PerDayPenalty.per_day = float(late_penalty_per_day)
    return c
