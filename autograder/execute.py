"""nbgrader's Execute, made to survive a kernel that ignores its interrupt or dies.

nbgrader interrupts a cell at its timeout. A cell that ignores the interrupt (``signal.signal
(SIGINT, SIG_IGN)``, a C loop) keeps the kernel busy: nbclient then raises ``CellTimeoutError``
and nbgrader's whole autograde fails, losing every cell of the notebook. Here that cell gets
the timeout error, the kernel is killed, and every later code cell gets a one-line "not run"
error: the notebook is still saved, so the cells before it keep their outputs (points are
decided by :mod:`autograder.judge` anyway, outside the kernel).

It also bounds what the kernel can make this process hold. The sandbox caps the kernel's memory,
but every output message the kernel sends is kept by nbclient in *this* (trusted, uncapped)
process while the cell runs; the byte caps of :mod:`autograder.output_caps` only apply after the
notebook ran. A cell re-sending one 10 MB string in a loop costs the kernel nothing and grew this
process to 4 GB in 20 s. So the bytes of output are counted as they arrive; past
``max_output_bytes`` for the notebook, the kernel is killed at once, what it had already sent is
read and dropped, the cell gets a one-line ``OutputLimit`` error, and the later cells are not run,
as after a timed-out cell.

A single message is only counted once it has been received whole, though: one ``display`` of a
300 MB string made this process hold 970 MB (the frame, then the decoded JSON). So ZeroMQ itself
refuses any message frame larger than the cap (``MAXMSGSIZE`` on every socket of the kernel
client): it drops the frame and the connection, which then reconnects. A monitor on the client's
sockets sees the disconnect, and the cell gets the same ``OutputLimit`` error and stop.
"""
from __future__ import annotations

from typing import Any

import zmq
from jupyter_client.manager import AsyncKernelManager
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from traitlets import Integer, Unicode
from nbclient.util import run_sync
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute


def _error(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue,
                        traceback=[f"{ename}: {evalue}"])


OUTPUT_LIMIT = "OutputLimit"  # the ename of the error a cell gets when the notebook's output passed the cap
# Messages that carry no output: always handled (``status: idle`` ends the cell).
_CONTROL = frozenset({"status", "execute_input"})


def message_bytes(msg: dict[str, Any]) -> int:
    """Bytes of text and binary data in a kernel message's content and buffers (an upper bound of what
    storing it costs in characters; JSON punctuation ignored)."""
    total = sum(len(b) for b in msg.get("buffers") or ())
    stack: list[Any] = [msg.get("content")]
    while stack:
        v = stack.pop()
        if isinstance(v, (str, bytes, bytearray, memoryview)):
            total += len(v)
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
        else:
            total += 8  # numbers, booleans, None
    return total


class CappedKernelManager(AsyncKernelManager):
    """A kernel manager whose clients refuse any message frame over ``max_message_bytes`` (0: no cap)."""

    max_message_bytes = Integer(0, help="ZeroMQ's MAXMSGSIZE for every socket of the client").tag(config=True)

    def client(self, **kwargs: Any):
        kc = super().client(**kwargs)
        if self.max_message_bytes > 0:
            # a default of the client's own context: its sockets do not exist yet (start_channels makes them)
            kc.context.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        return kc


class GuardedExecute(Execute):
    """:class:`nbgrader.preprocessors.Execute` that never lets one cell stop the notebook, and never lets the
    kernel's output grow this process beyond ``max_output_bytes``."""

    _stopped: str | None = None
    _received: int = 0
    _flooded_cell: int | None = None
    workdir = Unicode("", help="the kernel's working folder (default: the notebook's own folder)").tag(config=True)
    max_output_bytes = Integer(64 * 1024 ** 2, help="bytes of output the whole notebook may send while it runs; "
                               "past them the kernel is killed and what it sent is dropped").tag(config=True)

    _monitors: list | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # nbgrader's Execute passes AsyncKernelManager itself unless told otherwise
        kwargs.setdefault("kernel_manager_class", CappedKernelManager)
        super().__init__(*args, **kwargs)

    def create_kernel_manager(self):
        km = super().create_kernel_manager()
        if isinstance(km, CappedKernelManager):
            # a frame larger than the whole notebook's allowance could only be dropped once received
            km.max_message_bytes = self.max_output_bytes + 2 ** 20
        return km

    def preprocess(self, nb, resources=None, km=None):
        # The kernel works in a folder of its own, never in the folder nbgrader writes the graded
        # notebook to: a symlink planted there by student code would otherwise be followed by
        # nbgrader (as the grader's user) when it saves the result.
        self._stopped = None
        self._received, self._flooded_cell = 0, None
        self._monitors = None
        if self.workdir:
            resources = dict(resources or {})
            resources["metadata"] = dict(resources.get("metadata") or {}, path=self.workdir)
        try:
            return super().preprocess(nb, resources, km)
        finally:
            self._close_monitors()

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        if self._stopped is not None:
            cell.outputs = [_error("NotRun", self._stopped)]
            return cell, resources
        self._watch_connections()
        try:
            cell, resources = super().preprocess_cell(cell, resources, index)
            self._stop_if_flooded(cell, index)
            return cell, resources
        except (CellTimeoutError, DeadKernelError, TimeoutError, RuntimeError) as exc:
            died = isinstance(exc, DeadKernelError)
            # killed for its output (process_message), or a dropped frame took the cell's end with it and
            # nbclient timed out waiting: the flood's error, not the timeout's (a death is only a death)
            if self._stop_if_flooded(cell, index, check_dropped=not died):
                return cell, resources
            cell.outputs.append(_error(type(exc).__name__, "the kernel died in this cell" if died else
                                       "no reply after the time limit and the interrupt; the kernel was stopped"))
            self._stop(f"not run: the kernel was stopped in cell {index}")
            return cell, resources

    def process_message(self, msg: dict[str, Any], cell: NotebookNode, cell_index: int) -> NotebookNode | None:
        """nbclient's handling of one kernel message, with the output it stores counted and capped."""
        if msg.get("msg_type") in _CONTROL:
            return super().process_message(msg, cell, cell_index)
        if self._flooded_cell is None:
            self._received += message_bytes(msg)
            if self._received <= self.max_output_bytes:
                return super().process_message(msg, cell, cell_index)
            self._flood(cell, cell_index)
            self._kill_now()
        return None  # read and dropped: past the cap nothing more is stored

    def _stop_if_flooded(self, cell: NotebookNode, index: int, check_dropped: bool = True) -> bool:
        """Stop the kernel if this cell flooded (counted here, or a frame dropped by ZeroMQ); True if so."""
        if self._flooded_cell is None and check_dropped and self._connection_dropped():
            self._flood(cell, index, dropped=True)
        if self._flooded_cell != index:
            return False
        self._stop(f"not run: the kernel was stopped in cell {index} (too much output)")
        return True

    def _kill_now(self) -> None:
        """SIGKILL the kernel's process at once (the sandbox's bwrap; its inside dies with it): a kernel left
        running until the cell ends keeps sending, and what ZeroMQ queued for this process (up to a
        thousand messages) would be held here however fast the rest is dropped."""
        proc = getattr(getattr(self.km, "provisioner", None), "process", None)
        if proc is not None:
            try:
                proc.kill()
            except (OSError, AttributeError):
                pass

    def _flood(self, cell: NotebookNode, index: int, dropped: bool = False) -> None:
        self._flooded_cell = index
        mib = self.max_output_bytes // 1024 ** 2
        why = (f"the kernel sent a message larger than {mib} MiB (or broke its connection); it was dropped and the "
               "kernel stopped after this cell") if dropped else (
               f"this notebook sent more than {mib} MiB of output; the kernel was stopped here and the rest "
               "dropped")
        # first in the cell: the byte caps applied later keep a cell's first error whatever else they cut
        cell.outputs.insert(0, _error(OUTPUT_LIMIT, why))

    def _watch_connections(self) -> None:
        """Monitor the client's iopub and shell sockets for a disconnect (ZeroMQ drops a connection that
        carried a frame over ``MAXMSGSIZE``); started once the client exists, before the first cell runs."""
        if self._monitors is not None or self.kc is None:
            return
        self._monitors = []
        for channel in (self.kc.iopub_channel, self.kc.shell_channel):
            sock = getattr(channel, "socket", None)
            if sock is not None:
                self._monitors.append((sock, sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)))

    def _connection_dropped(self) -> bool:
        for _, monitor in self._monitors or ():
            try:
                if monitor.get(zmq.EVENTS) & zmq.POLLIN:
                    return True
            except zmq.ZMQError:  # the client's context is already gone: nothing more to learn
                pass
        return False

    def _close_monitors(self) -> None:
        for sock, monitor in self._monitors or ():
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
            try:
                monitor.close(linger=0)
            except zmq.ZMQError:
                pass
        self._monitors = None

    def _stop(self, why: str) -> None:
        self._stopped = why
        self._kill_kernel()

    def _kill_kernel(self) -> None:
        try:
            run_sync(self.km.shutdown_kernel)(now=True)
        except Exception:  # noqa: BLE001 - already dead is fine; the sandbox cleanup kills the rest
            pass
