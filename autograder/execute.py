"""nbgrader's Execute, made to survive a kernel that ignores its interrupt or dies.

nbgrader interrupts a cell at its timeout. A cell that ignores the interrupt (``signal.signal
(SIGINT, SIG_IGN)``, a C loop) keeps the kernel busy: nbclient then raises ``CellTimeoutError``
and nbgrader's whole autograde fails, losing every cell of the notebook. Here that cell gets
the timeout error, the kernel is killed, and every later code cell gets a one-line "not run"
error: the notebook is still saved, so the cells before it keep their outputs (points are
decided by :mod:`autograder.judge` anyway, outside the kernel).
"""
from __future__ import annotations

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from traitlets import Unicode
from nbclient.util import run_sync
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute


def _error(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue,
                        traceback=[f"{ename}: {evalue}"])


class GuardedExecute(Execute):
    """:class:`nbgrader.preprocessors.Execute` that never lets one cell stop the notebook."""

    _stopped: str | None = None
    workdir = Unicode("", help="the kernel's working folder (default: the notebook's own folder)").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        # The kernel works in a folder of its own, never in the folder nbgrader writes the graded
        # notebook to: a symlink planted there by student code would otherwise be followed by
        # nbgrader (as the grader's user) when it saves the result.
        self._stopped = None
        if self.workdir:
            resources = dict(resources or {})
            resources["metadata"] = dict(resources.get("metadata") or {}, path=self.workdir)
        return super().preprocess(nb, resources, km)

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        if self._stopped is not None:
            cell.outputs = [_error("NotRun", self._stopped)]
            return cell, resources
        try:
            return super().preprocess_cell(cell, resources, index)
        except (CellTimeoutError, DeadKernelError, TimeoutError, RuntimeError) as exc:
            died = isinstance(exc, DeadKernelError)
            cell.outputs.append(_error(type(exc).__name__, "the kernel died in this cell" if died else
                                       "no reply after the time limit and the interrupt; the kernel was stopped"))
            self._stopped = f"not run: the kernel was stopped in cell {index}"
            self._kill_kernel()
            return cell, resources

    def _kill_kernel(self) -> None:
        try:
            run_sync(self.km.shutdown_kernel)(now=True)
        except Exception:  # noqa: BLE001 - already dead is fine; the sandbox cleanup kills the rest
            pass
