"""A sandbox's resource limits: a cgroup (v2, else v1) for memory and process count, rlimits otherwise.

:class:`Limits` is chosen once per process (:meth:`Limits.detect`). The launcher enters the
job's group before it drops to the sandbox user (:meth:`Limits.enter`: the cgroup limits plus
RLIMIT_CPU, RLIMIT_FSIZE and no core dumps); the grader kills whatever is left in it and
removes it (:meth:`Limits.kill`). Why a cgroup and not ``RLIMIT_AS``: :mod:`autograder.sandbox`.

cgroup groups: v2 ``/sys/fs/cgroup/autograder/<name>``; v1 ``<controller>/<the grader's own group
for that controller>/autograder/<name>`` (nested under the grader's group, so a limit on the
grader, e.g. its container or service, still applies; when the grader runs in the root group
this is the controller root).

Stdlib only (the kernel launcher imports it).
"""
from __future__ import annotations

import errno
import functools
import os
import resource
import signal
import time
from pathlib import Path

from autograder.sandbox_spec import NAME_RE, SANDBOX_UID, GiB, SandboxSpec

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "autograder"


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
        if not NAME_RE.match(name):
            raise ValueError(f"sandbox name {name!r}: use letters, digits and _.- only")
        return [p / name for p in self.parents.values()]

    def enter(self, spec: SandboxSpec) -> None:
        """Put the calling process (the launcher, root) into a fresh group with the limits; rlimits.

        Always: RLIMIT_CPU (SIGXCPU, then SIGKILL 5 s later), RLIMIT_FSIZE, RLIMIT_CORE 0. Never
        RLIMIT_AS (see :mod:`autograder.sandbox`).
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
