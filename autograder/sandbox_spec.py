"""What one sandbox may see and use (:class:`SandboxSpec`), checked, and the bubblewrap command line for it.

Read-only: the system folders, the Python prefix, the venv and the ``labkit`` package folder
(:func:`default_ro`), never the repository root; read-write: the working folder and ``spec.rw``
(:func:`check_spec` refuses folders that would expose or hand over too much); the environment
is an allow-list (:func:`sandbox_env`). How and why the launcher runs it: :mod:`autograder.sandbox`.
Stdlib only (the kernel launcher imports it).
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

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
#: A sandbox's name, also its cgroup's.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")


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
    return dedupe(paths)


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


def dedupe(paths: list[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        if p not in out:
            out.append(p)
    return out


def inside(path: str, root: str) -> bool:
    """``path`` equals ``root`` or lies below it (both absolute, normalised)."""
    return path == root or root == "/" or path.startswith(root.rstrip("/") + "/")


def binds(spec: SandboxSpec) -> list[tuple[str, bool]]:
    """(path, writable) for every bind, parents before children."""
    rw = dedupe([os.path.normpath(p) for p in [spec.cwd, *spec.rw]])
    ro = [p for p in dedupe([os.path.normpath(p) for p in [*default_ro(), *spec.ro]]) if p not in rw]
    both = [(p, False) for p in ro] + [(p, True) for p in rw]
    return sorted(both, key=lambda b: b[0].count("/"))  # stable: same depth keeps ro before rw


def check_spec(spec: SandboxSpec) -> None:
    """Refuse a spec that would expose or hand over what it must not (raises ValueError).

    The launcher makes the writable folders (``cwd``, ``rw``) world-writable, so they must be at least
    two levels deep and neither inside nor around a system folder, the Python, the venv or labkit.
    No bind may contain the repository root, or lie in its ``notebooks/`` or ``.git``.
    """
    if not NAME_RE.match(spec.name):
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
            if inside(q, real) or inside(real, q):
                raise ValueError(f"writable sandbox folder {p} overlaps {q}")
    repo = os.path.dirname(labkit_dir()) if labkit_dir() else None
    if repo:
        for p in [spec.cwd, *spec.rw, *spec.ro]:
            real = os.path.realpath(p)
            for q in (repo, os.path.join(repo, "notebooks"), os.path.join(repo, ".git")):
                if inside(q, real) or (q != repo and inside(real, q)):
                    raise ValueError(f"sandbox path {p} would show {q} (the instructor's repository)")


def bwrap_argv(spec: SandboxSpec, command: list[str], sources: dict[str, str] | None = None) -> list[str]:
    """The full bubblewrap command line for ``command`` in ``spec``'s sandbox.

    ``sources`` maps a bind's path to where the launcher staged it (see :mod:`autograder.sandbox`);
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
    for path, writable in binds(spec):
        argv += ["--bind" if writable else "--ro-bind", sources.get(path, path), path]
    argv += ["--chdir", spec.cwd, "--", *command]
    return argv


def bwrap_path() -> str | None:
    return shutil.which("bwrap")
