"""Start grading workers by forking a process that has already imported the grading code.

Every submission is graded in a process of its own (``python -m autograder.worker TICKET``), so
that a crash, a hang or a memory blow-up of the grading machinery stays with that submission. A
fresh interpreter pays the imports of nbgrader, nbconvert, nbclient and SQLAlchemy again each
time: about 1.2 s of a tiny notebook's 4.5 s of grading on this course's 2-core machine.

A *launcher* (``python -m autograder.launcher``) imports all that once, then forks one child
per ticket. The child is exactly what the worker process was: a process of its own, in its own
session (so the whole group can be killed), killed with its launcher (which is killed with the
grader), with its output in the ticket's log, running :func:`autograder.job.run_ticket`. Each
child starts from the launcher's pristine state, so nothing carries over from one submission to
the next. The launcher never runs a job itself and starts no thread (a fork only copies the
calling thread; it checks, and refuses to serve otherwise).

Protocol, one JSON object per line: the grader writes ``{"ticket": PATH, "log": PATH}`` on the
launcher's stdin; the launcher answers ``{"pid": N}`` once the child runs, then
``{"pid": N, "returncode": R}`` when it has exited (R negative: killed by signal -R). One job at
a time per launcher; :class:`LauncherPool` keeps one launcher per grading thread. If a launcher
cannot start or dies, :func:`autograder.grade._run_worker` falls back to a fresh process.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from queue import Empty, Queue

# The grading code the children run; imported before the first fork.
PRELOAD = ("autograder.worker", "autograder.job", "autograder.execute", "autograder.feedback",
           "autograder.output_caps", "autograder.judge", "autograder.config", "autograder.sandbox",
           "autograder.limits", "nbgrader.apps", "nbgrader.preprocessors", "nbgrader.api",
           "nbconvert.preprocessors", "nbclient", "jupyter_client")
TARGET = "autograder.job:run_ticket"


class LauncherDied(RuntimeError):
    """The launcher exited or broke the protocol; ``pid`` is its child's, if one had started."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux ``PR_SET_PDEATHSIG``)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


# ---------------------------------------------------------------------------- the launcher process

def _child(target, ticket: str, log: str, protocol_fds: tuple[int, int], launcher: int) -> None:
    """In the forked child: become the worker process for ``ticket``; never returns."""
    rc = 1
    try:
        os.setsid()
        die_with_parent()
        if os.getppid() != launcher:  # the launcher died before the line above took effect
            os._exit(1)
        for fd in protocol_fds:
            os.close(fd)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        result = target(ticket)
        rc = result if isinstance(result, int) else 0
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported in the log, like an uncaught error in a fresh process
        traceback.print_exc()
        rc = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(rc)


def serve(target_name: str = TARGET) -> int:
    """The launcher's main loop (``python -m autograder.launcher [MODULE:FUNCTION]``)."""
    # keep the protocol on private descriptors: nothing imported or printed can write into it
    proto_in, proto_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    writer = os.fdopen(proto_out, "w", buffering=1)
    for name in PRELOAD:
        importlib.import_module(name)
    module, _, func = target_name.partition(":")
    target = getattr(importlib.import_module(module), func)
    if threading.active_count() != 1:
        writer.write(json.dumps({"error": f"{threading.active_count()} threads after the imports; cannot fork"}) + "\n")
        return 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the grader decides when the launcher goes (EOF or its death)
    writer.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in os.fdopen(proto_in, "r"):
        cmd = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(target, cmd["ticket"], cmd["log"], (proto_in, proto_out), os.getppid())
        writer.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        writer.write(json.dumps({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)}) + "\n")
    return 0


# ---------------------------------------------------------------------------- the grader's side

class Launcher:
    """One launcher process and the pipe to it (used by one grading thread at a time)."""

    def __init__(self, env: dict, log: Path, target: str = TARGET, start_timeout: float = 120.0) -> None:
        with open(log, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "autograder.launcher", target],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env,
                                         start_new_session=True, preexec_fn=die_with_parent)
        self._buf = b""
        hello = self._message(time.monotonic() + start_timeout)
        if hello is None or "ready" not in hello:
            self.close()
            raise LauncherDied(f"the launcher did not start: {hello.get('error') if hello else 'no answer'}")

    def _message(self, deadline: float) -> dict | None:
        """The next line from the launcher as a dict; None at the deadline; LauncherDied at EOF."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise LauncherDied("the launcher exited")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            raise LauncherDied(f"the launcher sent {line[:80]!r}") from None

    def run(self, ticket: Path, log: Path, timeout: float) -> int | None:
        """Run ``ticket`` in a forked child: its exit code, or None if it ran past ``timeout`` s (then its
        process group is killed). Raises :class:`LauncherDied` if the launcher goes away."""
        try:
            self.proc.stdin.write((json.dumps({"ticket": str(ticket), "log": str(log)}) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise LauncherDied("the launcher exited") from None
        started = self._message(time.monotonic() + 60)
        if started is None or "pid" not in started:
            raise LauncherDied("the launcher did not start the job")
        pid = started["pid"]
        try:
            done = self._message(time.monotonic() + timeout)
            if done is None:  # too long: kill the job's whole session, then collect its exit
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                done = self._message(time.monotonic() + 60)
                if done is None:
                    raise LauncherDied("the launcher did not report a killed job", pid)
                return None
            return int(done["returncode"])
        except LauncherDied as exc:
            exc.pid = pid
            raise

    def kill(self) -> None:
        """SIGKILL the launcher (its running child dies with it) and reap it."""
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.close()

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


class LauncherPool:
    """Up to ``size`` launchers, started on first use, each lent to one grading thread at a time.

    After a launcher fails to start, the pool lends none (every job then runs in a fresh process)."""

    def __init__(self, size: int, env: dict, log_dir: Path, target: str = TARGET) -> None:
        self.size, self.env, self.log_dir, self.target = size, env, log_dir, target
        self._idle: Queue[Launcher] = Queue()
        self._live = 0
        self._made = 0
        self._lock = threading.Lock()
        self.disabled = False
        self.lost = 0  # launchers that died under a job

    def acquire(self) -> Launcher | None:
        """An idle launcher, a new one while fewer than ``size`` live, else the next one released;
        None once a launcher could not start."""
        while True:
            with self._lock:
                if self.disabled:
                    return None
                try:
                    return self._idle.get_nowait()
                except Empty:
                    pass
                if self._live < self.size:
                    self._live += 1
                    self._made += 1
                    n = self._made
                    break
            try:  # all lent: wait for one to come back (or to die, which frees a place)
                return self._idle.get(timeout=0.5)
            except Empty:
                continue
        try:
            return Launcher(self.env, self.log_dir / f"launcher-{n}.log", self.target)
        except (LauncherDied, OSError):
            with self._lock:
                self._live -= 1
                self.disabled = True
            return None

    def release(self, launcher: Launcher, alive: bool = True) -> None:
        if alive:
            self._idle.put(launcher)
            return
        launcher.kill()  # a broken launcher may still have a child: SIGKILL takes it along (PR_SET_PDEATHSIG)
        with self._lock:
            self._live -= 1
            self.lost += 1

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except Empty:
                return


if __name__ == "__main__":
    sys.exit(serve(*sys.argv[1:2]))
