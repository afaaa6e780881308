"""The grading sandbox: bubblewrap, as an unprivileged user, inside a cgroup.

Student code (a notebook's kernel, the hidden-check runner) runs as

    grader (root) ──▶ ``python -m autograder.sandbox SPEC -- CMD...`` (the *launcher*, root)
                          │ 1. cgroup for this job: memory and process count of *all* its processes
                          │ 2. rlimits: CPU seconds, file size, no core dumps
                          │ 3. private mount namespace: stage every bind source (see below)
                          │ 4. drop to uid/gid 65534 (nobody), then exec
                          ▼
                      ``bwrap ... -- CMD`` (host uid 65534, no capabilities)
                          ▼
                      CMD: uid 65534, CapEff 0, NoNewPrivs, own PID/network/IPC/UTS/user
                      namespaces (loopback only, new user namespaces disabled), its own ``/tmp``,
                      and only these paths: system dirs, the Python prefix, the venv and the
                      ``labkit`` package read-only; its working folder and ``spec.rw`` read-write.

Why each piece:

* **bwrap as nobody, not as root.** Run by root, bwrap maps the sandbox's uid 65534 to host
  uid 0 (``/proc/self/uid_map`` reads ``65534 0 1``): without capabilities, but still the *owner*
  of every root-owned file. Checked here: such a sandbox reads ``/etc/shadow`` (mode 0640, owner
  root) and can leave a set-uid-root executable in its writable folder for anybody on the host
  to run. The launcher therefore drops to host uid 65534 before it execs bwrap; bwrap then maps
  65534 to 65534 (an unprivileged user namespace, as flatpak uses it).
* **Staged bind sources.** bwrap resolves every bind source with ``realpath()`` *as the
  unprivileged user* (also for ``--bind-fd``), so a Python under ``/root/.pyenv`` (``/root`` is
  0700) could not be bound. The launcher, still root, opens each source, enters a private mount
  namespace (nothing propagates to the host; it vanishes with the sandbox) and bind-mounts the
  sources under a tmpfs on ``/tmp``; bwrap binds from there.
* **Writable folders.** The working folder and ``spec.rw`` folders (the folders themselves, not
  their contents) become mode 1777 and stay root's (see :meth:`_Launch.give`); a file named on
  the command line inside them that the sandbox could not read (jupyter_client writes the
  kernel's connection file 0600) gets group 65534 and group-read. Treat everything the sandbox
  left there as hostile (symlinks, FIFOs, hard links): never follow links there as root.
* **Only the ``labkit`` package folder is bound, never the repository root**: the repository
  holds the instructor's ``notebooks/`` (the solutions) and ``.git``. labkit is installed
  editable, so ``import labkit`` inside needs exactly that folder.
* **Memory is a cgroup limit, not ``RLIMIT_AS``**: the CUDA build of torch reserves far more
  address space than it uses, so ``RLIMIT_AS`` breaks ``import torch``; ``RLIMIT_DATA`` is per
  process (three processes get three times the memory). A cgroup counts real use (tmpfs files
  included) of all processes together; when it is exhausted the kernel's OOM killer kills the
  largest process in the group (for a kernel: the kernel itself, which jupyter_client then
  reports as dead). Without a usable cgroup, ``RLIMIT_DATA``/``RLIMIT_NPROC`` are the fallback
  (per process / per host user).
* **The cgroup also bounds processes** (``pids.max`` counts threads) and is how leftovers are
  found and killed: :meth:`Limits.kill` kills every process in it. The PID namespace already
  ends everything inside when its first process ends, and ``--die-with-parent`` ends the sandbox
  when its parent dies; the cgroup is the third line.
* **Kernels use the ipc transport** (Unix sockets in a runtime folder bound read-write): a
  kernel in its own network namespace cannot be reached over TCP.
* **Kernels use ``interrupt_mode: message``**: jupyter_client would send SIGINT to the process it
  started, which is bwrap; bwrap does not forward it. With ``message`` the interrupt travels on
  the control channel and the kernel signals itself.

What the sandbox sees and its bwrap command line: :mod:`autograder.sandbox_spec`; cgroups and
rlimits: :mod:`autograder.limits`. This module is the launcher run before every kernel (stdlib
only, no nbgrader, no torch; so are those two) and :func:`run_sandboxed` for the grader.
"""
from __future__ import annotations

import ctypes
import functools
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from autograder.limits import Limits
from autograder.sandbox_spec import (SANDBOX_GID, SANDBOX_UID, SYSTEM_DIRS, SandboxSpec, binds, bwrap_argv, bwrap_path,
                                     check_spec, dedupe, inside)

LAUNCHER_FAILED = 126
_STAGE = "/tmp"  # the launcher's private tmpfs for staged bind sources (never the sandbox's /tmp)


# ---------------------------------------------------------------------------- starting the launcher

def python_exe() -> str:
    """This interpreter's path, normalised but not resolved (the venv's ``bin/python`` link selects the venv).

    ``sys.executable`` may hold ``..`` through a folder the sandbox does not have.
    """
    return os.path.normpath(os.path.abspath(sys.executable))


def launcher_argv(spec_path: str | os.PathLike, command: list[str]) -> list[str]:
    """``[python, -m, autograder.sandbox, SPEC, --, *command]``: what the grader (or a kernelspec) runs."""
    return [python_exe(), "-m", "autograder.sandbox", str(spec_path), "--", *command]


def write_kernelspec(kernels_dir: Path, name: str, spec_path: Path) -> Path:
    """Write ``kernels_dir/<name>/kernel.json``: an ipykernel started through the launcher.

    ``kernels_dir`` must be ``<a folder on JUPYTER_PATH>/kernels``. The kernel manager must use
    the ``ipc`` transport with its sockets and connection file in a folder of ``spec.rw``.
    ``interrupt_mode`` is ``message``: a SIGINT to the process jupyter_client started would reach
    bwrap, not the kernel.
    """
    argv = launcher_argv(spec_path, [python_exe(), "-m", "ipykernel_launcher", "-f", "{connection_file}"])
    folder = Path(kernels_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"argv": argv, "display_name": f"Python 3 (sandboxed, {name})", "language": "python",
                       "interrupt_mode": "message", "metadata": {"debugger": False}}, indent=1)
    # its own temp-file write: this module stays stdlib-only (the kernel launcher imports it)
    fd, tmp = tempfile.mkstemp(prefix=".kernel.json.", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, folder / "kernel.json")
    return folder


# ---------------------------------------------------------------------------- running

@functools.lru_cache(maxsize=1)
def sandbox_check() -> str | None:
    """None when the sandbox works here (one real run, cached); else one line: why, and what to do."""
    if bwrap_path() is None:
        return "bubblewrap is not installed: apt-get install bubblewrap, or pass --no-sandbox for trusted submissions"
    if not sys.platform.startswith("linux"):
        return "the sandbox needs Linux (bubblewrap): pass --no-sandbox for trusted submissions"
    with tempfile.TemporaryDirectory(prefix="agsbx-check-") as d:
        cwd = Path(d) / "cwd"
        cwd.mkdir()
        spec = SandboxSpec(name=f"check-{os.getpid()}-{os.urandom(3).hex()}", cwd=str(cwd))
        code = f"import os, sys; sys.exit(0 if os.getuid() == {SANDBOX_UID} else 3)"
        try:
            rc, timed_out = run_sandboxed(spec, [python_exe(), "-c", code], 120, Path(d) / "log")
            log = (Path(d) / "log").read_text(errors="replace").strip()
        except Exception as e:  # noqa: BLE001 - any failure is the answer
            rc, timed_out, log = None, False, f"{type(e).__name__}: {e}"
    if rc == 0:
        return None
    line = log.splitlines()[-1] if log else f"exit status {rc}"
    hint = "or pass --no-sandbox for trusted submissions"
    if timed_out:
        return f"the sandbox did not start within 120 s: {hint}"
    if "Unknown option" in log or "unrecognized option" in log:
        return f"bubblewrap is too old ({line}); 0.8 or newer is needed: upgrade bubblewrap, {hint}"
    if re.search(r"namespace|uid map|setting up uid|Operation not permitted", log):
        return (f"bubblewrap cannot create namespaces here ({line}): allow unprivileged user namespaces "
                f"(sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone, "
                f"kernel.apparmor_restrict_unprivileged_userns), {hint}")
    return f"the sandbox does not work here ({line}): {hint}"


def run_sandboxed(spec: SandboxSpec, command: list[str], timeout: float, log_path: Path) -> tuple[int | None, bool]:
    """Run ``command`` in the sandbox, stdout and stderr to ``log_path``; ``(returncode or None, timed_out)``.

    On timeout the sandbox is stopped (:func:`_stop`) and the job's cgroup killed; the cgroup is
    always emptied and removed at the end, so nothing started inside outlives this call.
    """
    limits = Limits.detect()
    with tempfile.TemporaryDirectory(prefix="agsbx-spec-") as d:  # root-only: the sandbox never sees it
        spec_path = spec.write(Path(d) / "sandbox.json")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(launcher_argv(spec_path, command), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
            try:
                try:
                    return proc.wait(timeout=timeout), False
                except subprocess.TimeoutExpired:
                    _stop(proc)
                    return None, True
            finally:
                if proc.poll() is None:  # interrupted (KeyboardInterrupt): do not leave it running
                    _stop(proc)
                limits.kill(spec.name)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        pass
    out = []
    for entry in os.listdir("/proc"):  # kernels without CONFIG_PROC_CHILDREN
        if entry.isdigit():
            try:
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _stop(proc: subprocess.Popen) -> None:
    """Stop a running sandbox from outside: its first process, then bwrap, then the process group.

    Killing bwrap's child (PID 1 of the sandbox's PID namespace) makes the kernel kill every
    process in the namespace; bwrap, its parent, reaps it and exits. Killing bwrap first would
    leave that child to the host's init to reap.
    """
    for child in _children(proc.pid):  # bwrap's child cannot be reaped (so its pid not reused) while bwrap lives
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


# ---------------------------------------------------------------------------- the launcher

def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _mount(libc, src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    if libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
CLONE_NEWNS = 0x00020000


class _Launch:
    """What one launcher run changed, so that a failure before the exec can undo it."""

    def __init__(self) -> None:
        self.limits: Limits | None = None
        self.name: str | None = None
        # (open descriptor, uid, gid, mode) to restore; descriptors, because the staging tmpfs
        # may cover the paths by then. They are close-on-exec: the sandbox never gets them.
        self.changed: list[tuple[int, int, int, int]] = []

    def give(self, spec: SandboxSpec, command: list[str]) -> None:
        """Let the sandbox user write into the writable folders, and read files named in ``command`` there.

        The folders become ``1777`` (sticky, world-writable) but stay root's: the sandbox can make
        files and remove its own, not the grader's; and with ``fs.protected_symlinks`` /
        ``fs.protected_regular`` (the usual defaults) root will not follow a link, or open with
        O_CREAT a file, that the sandbox planted there. A file named on the command line that the
        sandbox could not read (jupyter_client writes the connection file 0600) gets group 65534 and
        group-read. Links are never followed.
        """
        roots = []
        for p in dedupe([os.path.normpath(x) for x in [spec.cwd, *spec.rw]]):
            self._change(p, os.O_DIRECTORY, None, 0o1777)
            roots.append(os.path.realpath(p))
        for arg in command:
            if os.path.isabs(arg) and any(inside(os.path.realpath(arg), r) for r in roots):
                self._change(arg, 0, SANDBOX_GID, 0o040)

    def _change(self, path: str, flags: int, gid: int | None, mode: int) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | flags)
        except OSError:
            if flags:  # a writable folder must exist (and not be a link)
                raise
            return  # not a file we can hand over (missing, a link): leave it
        st = os.fstat(fd)
        readable = st.st_mode & 0o004 or st.st_uid == SANDBOX_UID
        if gid is not None and (readable or not stat.S_ISREG(st.st_mode)):
            os.close(fd)  # readable already, or not a regular file
            return
        self.changed.append((fd, st.st_uid, st.st_gid, st.st_mode & 0o7777))
        if gid is not None:
            os.fchown(fd, -1, gid)
            os.fchmod(fd, (st.st_mode & 0o7777) | mode)
        else:
            os.fchmod(fd, mode)

    def undo(self) -> None:
        """Restore ownership and modes; leave and remove the cgroup."""
        for fd, uid, gid, mode in reversed(self.changed):
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
            except OSError:
                pass
            finally:
                os.close(fd)
        self.changed = []
        if self.limits is not None and self.name is not None:
            try:
                self.limits.leave(self.name)
            except OSError:
                pass

    def seal(self) -> None:
        """Every descriptor but 0-2 close-on-exec: no grader descriptor (gradebook, sockets) reaches the sandbox."""
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2:
                try:
                    os.set_inheritable(fd, False)
                except OSError:
                    pass  # the listing's own descriptor, already closed


def _stage(spec: SandboxSpec) -> dict[str, str]:
    """Private mount namespace; every bind source mounted at ``/tmp/ag-<k>`` on a fresh tmpfs.

    Needs root. bwrap, running as uid 65534, can then resolve every source (see the module
    docstring). The sources are opened in the new namespace (a bind mount's source must belong
    to the caller's namespace) but before the tmpfs covers ``/tmp``.
    """
    paths = [d for d in SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)] + [p for p, _ in binds(spec)]
    libc = _libc()
    if libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS): {os.strerror(err)}")
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back to the host
    fds = {}
    try:
        for p in paths:
            fds[p] = os.open(p, os.O_PATH | os.O_CLOEXEC)
        _mount(libc, "agsandbox", _STAGE, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=1m")
        out = {}
        for k, (p, fd) in enumerate(fds.items()):
            dest = f"{_STAGE}/ag-{k}"
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.mkdir(dest, 0o755)
            else:
                os.close(os.open(dest, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
            _mount(libc, f"/proc/self/fd/{fd}", dest, None, MS_BIND | MS_REC)
            out[p] = dest
        return out
    finally:
        for fd in fds.values():
            os.close(fd)


def _fail(msg: str) -> NoReturn:
    print(f"autograder.sandbox: cannot start the sandbox: {msg}", file=sys.stderr, flush=True)
    os._exit(LAUNCHER_FAILED)


def launch(argv: list[str]) -> NoReturn:
    """``python -m autograder.sandbox SPEC -- CMD...``: limits, staging, drop to nobody, exec bwrap.

    Runs as root outside the sandbox. Any failure before (or of) the exec prints one line to
    stderr, undoes what was done (cgroup, ownership) and exits 126. Run by a user other than
    root, it skips the ownership changes, the staging and the uid switch (bwrap then maps 65534
    to that user) and most likely gets rlimits instead of a cgroup.
    """
    if len(argv) < 3 or argv[1] != "--":
        _fail("usage: python -m autograder.sandbox SPEC.json -- COMMAND...")
    state = _Launch()
    root = os.geteuid() == 0
    try:
        spec_path, command = argv[0], argv[2:]
        spec = SandboxSpec.read(spec_path)
        check_spec(spec)
        real_spec = os.path.realpath(spec_path)
        if any(inside(real_spec, os.path.realpath(p)) for p in [spec.cwd, *spec.rw]):
            raise ValueError(f"the spec {spec_path} lies in a folder the sandbox can write")
        bwrap = bwrap_path()
        if bwrap is None:
            raise FileNotFoundError("bwrap is not installed (apt-get install bubblewrap)")
        limits = Limits.detect()
        state.limits, state.name = limits, spec.name
        limits.enter(spec)
        sources: dict[str, str] = {}
        if root:
            state.give(spec, command)
            sources = _stage(spec)
        argv_b = bwrap_argv(spec, command, sources)
        argv_b[0] = bwrap
        state.seal()
        if root:
            os.setgroups([])
            os.setresgid(SANDBOX_GID, SANDBOX_GID, SANDBOX_GID)
            os.setresuid(SANDBOX_UID, SANDBOX_UID, 0)  # saved uid 0 only until the exec (which resets it)
    except BaseException as e:  # noqa: BLE001 - one line, nothing left behind
        state.undo()
        _fail(f"{type(e).__name__}: {e}")
    try:
        os.execv(bwrap, argv_b)
    except OSError as e:
        if root:
            os.setresuid(0, 0, 0)  # back to root to undo
        state.undo()
        _fail(f"exec {bwrap}: {e.strerror}")


if __name__ == "__main__":
    launch(sys.argv[1:])
