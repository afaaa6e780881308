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

cgroup groups: v2 ``/sys/fs/cgroup/autograder/<name>``; v1 ``<controller>/<the grader's own group
for that controller>/autograder/<name>`` (nested under the grader's group, so a limit on the
grader, e.g. its container or service, still applies; when the grader runs in the root group
this is the controller root).

This module is also the launcher run before every kernel: stdlib only, no nbgrader, no torch.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import NoReturn

GiB = 1024 ** 3
MiB = 1024 ** 2
SANDBOX_UID = 65534
SANDBOX_GID = 65534
#: System folders bound read-only (symlinks such as a merged-usr ``/bin -> usr/bin`` are recreated as symlinks).
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/bin", "/etc")
#: Launcher variables copied into the sandbox when set (everything else is dropped).
PASS_ENV = ("NBGRADER_EXECUTION", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MPLBACKEND", "PYTHONWARNINGS",
            "TQDM_DISABLE", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED")
HOME = "/tmp/home"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "autograder"
LAUNCHER_FAILED = 126
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")
_STAGE = "/tmp"  # the launcher's private tmpfs for staged bind sources (never the sandbox's /tmp)


@dataclass
class SandboxSpec:
    """What one sandbox may see and use; written as JSON for the launcher.

    ``name``: job id, names the cgroup (letters, digits, ``_.-``). ``cwd``: absolute working folder,
    bound read-write. ``rw``: more folders bound read-write at the same path (a kernel's runtime
    folder with its ipc sockets and connection file). ``ro``: extra read-only binds at the same path
    (the defaults, :func:`default_ro`, are added automatically). ``env``: extra variables on top of
    the allow-list (:func:`sandbox_env`). ``mem_bytes``/``max_pids``: the whole sandbox, via cgroup
    (``max_pids`` counts threads). ``cpu_seconds``: RLIMIT_CPU per process, a backstop for a
    sandbox that outlives its grader. ``fsize_bytes``: RLIMIT_FSIZE, also the size of each tmpfs.
    """

    name: str
    cwd: str
    rw: list[str] = field(default_factory=list)
    ro: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    mem_bytes: int = 2 * GiB
    max_pids: int = 256
    cpu_seconds: int = 900
    fsize_bytes: int = 1 * GiB

    def write(self, path: str | os.PathLike) -> Path:
        """Write the spec as JSON atomically (temp file + rename); returns the path.

        Keep it outside ``cwd`` and ``rw`` (the launcher refuses a spec the sandbox could edit).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(asdict(self), f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> "SandboxSpec":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) - known:
            raise ValueError(f"{path}: not a sandbox spec (unknown keys {sorted(set(data) - known)})")
        spec = cls(**data)
        if not (isinstance(spec.rw, list) and isinstance(spec.ro, list) and isinstance(spec.env, dict)):
            raise ValueError(f"{path}: rw and ro must be lists, env a mapping")
        return spec


# ---------------------------------------------------------------------------- what the sandbox sees

@functools.lru_cache(maxsize=1)
def labkit_dir() -> str | None:
    """The ``labkit`` package folder, found without importing labkit (and torch)."""
    try:
        spec = importlib.util.find_spec("labkit")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.realpath(list(spec.submodule_search_locations)[0])


def python_exe() -> str:
    """This interpreter's path, normalised but not resolved (the venv's ``bin/python`` link selects the venv).

    ``sys.executable`` may hold ``..`` through a folder the sandbox does not have.
    """
    return os.path.normpath(os.path.abspath(sys.executable))


def venv_dir() -> str:
    """``sys.prefix``: the venv whose ``bin/python`` runs inside."""
    return os.path.abspath(sys.prefix)


def default_ro() -> list[str]:
    """Read-only binds added to every sandbox besides :data:`SYSTEM_DIRS`.

    The Python prefix (``sys.base_prefix`` resolved: the venv's ``bin/python`` is a symlink into
    it), the venv (``sys.prefix``, also resolved when that differs) and the labkit package folder.
    """
    paths = [os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix),
             venv_dir(), os.path.realpath(venv_dir())]
    if labkit_dir():
        paths.append(labkit_dir())
    return _dedupe(paths)


def sandbox_env(spec: SandboxSpec, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment inside: an allow-list, a few copied variables, then ``spec.env``.

    (bwrap adds ``PWD``, the working folder, itself.)
    """
    environ = os.environ if environ is None else environ
    env = {"PATH": f"{venv_dir()}/bin:/usr/bin:/bin", "HOME": HOME, "TMPDIR": "/tmp",
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "MPLCONFIGDIR": "/tmp/mpl"}
    env.update({k: environ[k] for k in PASS_ENV if k in environ})
    env.update({str(k): str(v) for k, v in spec.env.items()})
    return env


def _dedupe(paths: list[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        if p not in out:
            out.append(p)
    return out


def _inside(path: str, root: str) -> bool:
    """``path`` equals ``root`` or lies below it (both absolute, normalised)."""
    return path == root or root == "/" or path.startswith(root.rstrip("/") + "/")


def _binds(spec: SandboxSpec) -> list[tuple[str, bool]]:
    """(path, writable) for every bind, parents before children."""
    rw = _dedupe([os.path.normpath(p) for p in [spec.cwd, *spec.rw]])
    ro = [p for p in _dedupe([os.path.normpath(p) for p in [*default_ro(), *spec.ro]]) if p not in rw]
    both = [(p, False) for p in ro] + [(p, True) for p in rw]
    return sorted(both, key=lambda b: b[0].count("/"))  # stable: same depth keeps ro before rw


def check_spec(spec: SandboxSpec) -> None:
    """Refuse a spec that would expose or hand over what it must not (raises ValueError).

    The launcher makes the writable folders (``cwd``, ``rw``) world-writable, so they must be at least
    two levels deep and neither inside nor around a system folder, the Python, the venv or labkit.
    No bind may contain the repository root, or lie in its ``notebooks/`` or ``.git``.
    """
    if not _NAME_RE.match(spec.name):
        raise ValueError(f"sandbox name {spec.name!r}: use letters, digits and _.- only")
    for p in [spec.cwd, *spec.rw, *spec.ro]:
        if not os.path.isabs(p):
            raise ValueError(f"sandbox path {p!r} is not absolute")
        if not os.path.exists(p):
            raise ValueError(f"sandbox path {p} does not exist")
    system = [os.path.realpath(d) for d in SYSTEM_DIRS if os.path.exists(d)] + ["/proc", "/sys", "/dev", "/boot"]
    for p in [spec.cwd, *spec.rw]:
        real = os.path.realpath(p)
        if not os.path.isdir(real):
            raise ValueError(f"writable sandbox folder {p} is not a folder")
        if real.count("/") < 2:
            raise ValueError(f"writable sandbox folder {p} is a top-level folder")
        for q in system + default_ro():
            if _inside(q, real) or _inside(real, q):
                raise ValueError(f"writable sandbox folder {p} overlaps {q}")
    repo = os.path.dirname(labkit_dir()) if labkit_dir() else None
    if repo:
        for p in [spec.cwd, *spec.rw, *spec.ro]:
            real = os.path.realpath(p)
            for q in (repo, os.path.join(repo, "notebooks"), os.path.join(repo, ".git")):
                if _inside(q, real) or (q != repo and _inside(real, q)):
                    raise ValueError(f"sandbox path {p} would show {q} (the instructor's repository)")


def bwrap_argv(spec: SandboxSpec, command: list[str], sources: dict[str, str] | None = None) -> list[str]:
    """The full bubblewrap command line for ``command`` in ``spec``'s sandbox.

    ``sources`` maps a bind's path to where the launcher staged it (see the module docstring);
    without it each bind's source is its own path.
    """
    sources = sources or {}
    size = str(max(int(spec.fsize_bytes), 16 * MiB))
    argv = [bwrap_path() or "bwrap",
            "--unshare-all", "--unshare-user", "--disable-userns",  # user, pid, net, ipc, uts, cgroup
            "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID), "--cap-drop", "ALL",
            "--die-with-parent", "--new-session",  # new session: no TIOCSTI into the grader's terminal
            "--hostname", "sandbox", "--clearenv"]
    for k, v in sandbox_env(spec).items():
        argv += ["--setenv", k, v]
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", size, "--tmpfs", "/dev/shm",
             "--perms", "1777", "--size", size, "--tmpfs", "/tmp",
             "--perms", "0700", "--dir", HOME, "--perms", "0700", "--dir", "/tmp/mpl"]
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", sources.get(d, d), d]
    for path, writable in _binds(spec):
        argv += ["--bind" if writable else "--ro-bind", sources.get(path, path), path]
    argv += ["--chdir", spec.cwd, "--", *command]
    return argv


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
    fd, tmp = tempfile.mkstemp(prefix=".kernel.json.", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, folder / "kernel.json")
    return folder


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


# ---------------------------------------------------------------------------- limits (cgroups)

def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _own_cgroups() -> dict[str, str]:
    """controller (``""`` for v2) -> this process's group path, from /proc/self/cgroup."""
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            for c in (ctrls.split(",") if ctrls else [""]):
                out[c] = path
    except OSError:
        pass
    return out


class Limits:
    """Resource limits of a sandbox: cgroup v2, cgroup v1, or rlimits; chosen once per process."""

    def __init__(self, kind: str, parents: dict[str, Path] | None = None, origins: dict[str, Path] | None = None):
        self.kind = kind  # "cgroup v2" | "cgroup v1" | "rlimits"
        self.parents = parents or {}  # controller -> the "autograder" parent group
        self.origins = origins or {}  # controller -> the group this process was in

    def __repr__(self) -> str:
        return f"Limits({self.kind!r}, {', '.join(str(p) for p in self.parents.values())})"

    @staticmethod
    def detect() -> "Limits":
        """cgroup v2 if a group with memory+pids can be made, else v1 if writable, else rlimits."""
        return _detect_limits()

    # -- the grading log
    def describe(self, spec: SandboxSpec) -> str:
        mem = f"{spec.mem_bytes / GiB:.1f} GiB"
        if self.kind.startswith("cgroup"):
            caps = f"memory {mem} and {spec.max_pids} processes per sandbox ({self.kind})"
        else:
            caps = (f"memory {mem} per process (RLIMIT_DATA) and {spec.max_pids} more processes for uid "
                    f"{SANDBOX_UID}, shared by all sandboxes (RLIMIT_NPROC): no usable cgroup")
        return (f"sandbox: bubblewrap, uid {SANDBOX_UID}, no capabilities, no network; {caps}; "
                f"CPU {spec.cpu_seconds} s and files up to {spec.fsize_bytes / GiB:.1f} GiB per process")

    # -- groups
    def groups(self, name: str) -> list[Path]:
        if not _NAME_RE.match(name):
            raise ValueError(f"sandbox name {name!r}: use letters, digits and _.- only")
        return [p / name for p in self.parents.values()]

    def enter(self, spec: SandboxSpec) -> None:
        """Put the calling process (the launcher, root) into a fresh group with the limits; rlimits.

        Always: RLIMIT_CPU (SIGXCPU, then SIGKILL 5 s later), RLIMIT_FSIZE, RLIMIT_CORE 0. Never
        RLIMIT_AS (see the module docstring).
        """
        if self.kind == "cgroup v2":
            (g,) = self.groups(spec.name)
            g.mkdir()  # FileExistsError: a job name in use is a bug, never share a group
            _write(g / "memory.max", str(int(spec.mem_bytes)))
            _try_write(g / "memory.swap.max", "0")
            _write(g / "pids.max", str(int(spec.max_pids)))
            _write(g / "cgroup.procs", str(os.getpid()))
        elif self.kind == "cgroup v1":
            mem, pids = self.groups(spec.name)
            for g in (mem, pids):
                g.mkdir()
            _write(mem / "memory.limit_in_bytes", str(int(spec.mem_bytes)))
            _try_write(mem / "memory.memsw.limit_in_bytes", str(int(spec.mem_bytes)))  # no swapping past it
            _try_write(mem / "memory.oom_control", "0")  # the OOM killer acts inside the group
            _write(pids / "pids.max", str(int(spec.max_pids)))
            for g in (mem, pids):
                _write(g / "cgroup.procs", str(os.getpid()))
        else:
            resource.setrlimit(resource.RLIMIT_DATA, (spec.mem_bytes, spec.mem_bytes))
            # RLIMIT_NPROC counts every task of the *user*: allow what that user already runs, plus max_pids.
            uid = SANDBOX_UID if os.geteuid() == 0 else os.getuid()
            nproc = _tasks_of(uid) + spec.max_pids
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        if spec.cpu_seconds:
            resource.setrlimit(resource.RLIMIT_CPU, (spec.cpu_seconds, spec.cpu_seconds + 5))
        if spec.fsize_bytes:
            resource.setrlimit(resource.RLIMIT_FSIZE, (spec.fsize_bytes, spec.fsize_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def leave(self, name: str) -> None:
        """Move the calling process back where it came from and remove the group (launcher failure path)."""
        for origin in self.origins.values():
            _try_write(origin / "cgroup.procs", str(os.getpid()))
        self.kill(name)

    def kill(self, name: str) -> int:
        """Kill every process left in ``name``'s group(s), then remove them; how many were killed.

        v2 with ``cgroup.kill``: one write kills the whole group (new forks included). Otherwise:
        ``pids.max`` 0 stops forks, then SIGKILL each process listed, until none is left. A no-op
        for rlimits. Safe to call for a group that does not exist.
        """
        groups = [g for g in self.groups(name) if g.is_dir()]
        if not groups:
            return 0
        killed: set[int] = set()
        deadline = time.monotonic() + 10.0
        for g in groups:
            _try_write(g / "pids.max", "0")
        if self.kind == "cgroup v2" and (groups[0] / "cgroup.kill").exists():
            killed.update(_procs(groups[0]))
            _try_write(groups[0] / "cgroup.kill", "1")
        while time.monotonic() < deadline:
            left = set().union(*(_procs(g) for g in groups))
            if not left:
                break
            for pid in left:
                if _kill_in_group(pid, groups):
                    killed.add(pid)
            time.sleep(0.02)
        for g in groups:
            while True:
                try:
                    g.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:  # EBUSY while the killed processes finish exiting
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
        return len(killed)


def _tasks_of(uid: int) -> int:
    """How many tasks (threads) ``uid`` runs now, as RLIMIT_NPROC counts them."""
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                pass
    return n


def _try_write(path: Path, value: str) -> bool:
    try:
        _write(path, value)
        return True
    except OSError:
        return False


def _procs(group: Path) -> set[int]:
    try:
        return {int(x) for x in (group / "cgroup.procs").read_text().split()}
    except (OSError, ValueError):
        return set()


def _kill_in_group(pid: int, groups: list[Path]) -> bool:
    """SIGKILL ``pid`` if it is still in one of ``groups`` (through a pidfd: a reused pid is never hit)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (OSError, AttributeError):
        fd = None
    try:
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return False
        tails = {f"/{g.parent.name}/{g.name}" for g in groups}
        if not any(line.endswith(t) for line in lines for t in tails):
            return False
        if fd is not None:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    finally:
        if fd is not None:
            os.close(fd)


@functools.lru_cache(maxsize=1)
def _detect_limits() -> Limits:
    own = _own_cgroups()
    if os.geteuid() == 0:
        v2 = _detect_v2(own)
        if v2 is not None:
            return v2
        v1 = _detect_v1(own)
        if v1 is not None:
            return v1
    return Limits("rlimits")


def _probe_group(parents: list[Path], files: list[str]) -> bool:
    name = f".probe-{os.getpid()}"
    made: list[Path] = []
    try:
        for p in parents:
            p.mkdir(exist_ok=True)
            (p / name).mkdir()
            made.append(p / name)
            if not all((p / name / f).exists() for f in files):
                return False
        return True
    except OSError:
        return False
    finally:
        for g in made:
            try:
                g.rmdir()
            except OSError:
                pass


def _detect_v2(own: dict[str, str]) -> Limits | None:
    if not (CGROUP_ROOT / "cgroup.controllers").exists():
        return None
    try:
        if not {"memory", "pids"} <= set((CGROUP_ROOT / "cgroup.controllers").read_text().split()):
            return None
        parent = CGROUP_ROOT / CGROUP_PARENT
        parent.mkdir(exist_ok=True)
        _try_write(CGROUP_ROOT / "cgroup.subtree_control", "+memory +pids")
        _try_write(parent / "cgroup.subtree_control", "+memory +pids")
    except OSError:
        return None
    if not _probe_group([parent], ["memory.max", "pids.max", "cgroup.procs"]):
        return None
    origin = CGROUP_ROOT / own.get("", "/").lstrip("/")
    return Limits("cgroup v2", {"": parent}, {"": origin})


def _detect_v1(own: dict[str, str]) -> Limits | None:
    parents, origins = {}, {}
    for ctrl in ("memory", "pids"):
        root = CGROUP_ROOT / ctrl
        if not (root / "cgroup.procs").exists() or not os.access(root, os.W_OK):
            return None
        origins[ctrl] = root / own.get(ctrl, "/").lstrip("/")
        parents[ctrl] = origins[ctrl] / CGROUP_PARENT
    files = {"memory": "memory.limit_in_bytes", "pids": "pids.max"}
    for ctrl, parent in parents.items():
        if not _probe_group([parent], [files[ctrl], "cgroup.procs"]):
            return None
    return Limits("cgroup v1", parents, origins)


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
        for p in _dedupe([os.path.normpath(x) for x in [spec.cwd, *spec.rw]]):
            self._change(p, os.O_DIRECTORY, None, 0o1777)
            roots.append(os.path.realpath(p))
        for arg in command:
            if os.path.isabs(arg) and any(_inside(os.path.realpath(arg), r) for r in roots):
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
    paths = [d for d in SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)] + [p for p, _ in _binds(spec)]
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
        if any(_inside(real_spec, os.path.realpath(p)) for p in [spec.cwd, *spec.rw]):
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
