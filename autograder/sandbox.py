"""A sandboxed Jupyter kernel for grading untrusted notebooks.

How it works (Linux, run as root or with user namespaces):

* The kernelspec's argv is ``unshare -n -m -- python -m autograder.sandbox SPEC -f {connection_file}``.
  ``unshare -n`` gives the kernel an empty network namespace (only a down loopback: every
  connection fails with "Network is unreachable"); ``-m`` a private mount namespace.
* Because the kernel cannot be reached over TCP from outside its network namespace, the
  kernel manager uses jupyter_client's ``ipc`` transport (Unix sockets in the job's runtime
  folder), see :func:`autograder.config.make_config`.
* This module, as the kernel's launcher, then (1) mounts a tmpfs over every hidden path
  (the grading work folder with the gradebook, the source notebooks, other students'
  submissions, the instructor's course folder, the output folder), (2) bind-mounts back
  only the folders the kernel needs (its own working folder and its runtime folder), using
  file descriptors opened *before* hiding so the re-mount is not resolved through the
  hidden path, (3) sets resource limits: ``RLIMIT_DATA`` (memory: heap and private
  mappings; ``RLIMIT_AS`` would also count the CUDA build of torch's reserved address space),
  ``RLIMIT_CPU`` (a backstop for a kernel that outlives its grader) and ``RLIMIT_FSIZE``,
  and (4) ``exec``s ``python -m ipykernel_launcher``.
* When ``unshare`` is not permitted (unprivileged container, no user namespaces) the
  grader warns once and uses the same launcher without namespaces: resource limits still
  apply, network and file hiding do not. Production grading should then run the whole
  grader in a container (see ``autograder/README.md``).

This module is imported by the kernel launcher, so it must stay light (no nbgrader, no torch).
"""
from __future__ import annotations

import ctypes
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

GiB = 1024 ** 3


@dataclass
class SandboxSpec:
    """What one grading kernel may see and use.

    ``hide``: folders replaced by an empty tmpfs (absolute paths; missing ones skipped).
    ``keep``: folders inside hidden ones that are mounted back (the kernel's cwd, its runtime dir).
    ``mem_bytes``: RLIMIT_DATA in bytes (0 = no limit). ``cpu_seconds``: RLIMIT_CPU (0 = none).
    ``fsize_bytes``: largest file the kernel may write (0 = no limit).
    ``namespaces``: whether the launcher runs inside ``unshare -n -m`` (mounts allowed).
    """

    hide: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    mem_bytes: int = 2 * GiB
    cpu_seconds: int = 900
    fsize_bytes: int = 1 * GiB
    namespaces: bool = True

    def write(self, path: Path) -> Path:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)
        return path


@functools.lru_cache(maxsize=1)
def namespaces_available() -> bool:
    """True when ``unshare -n -m`` works here (checked once per process)."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        r = subprocess.run([exe, "-n", "-m", "--", sys.executable, "-c", "pass"],
                           capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def write_kernelspec(kernels_dir: Path, name: str, spec_path: Path, namespaces: bool) -> Path:
    """Write ``kernels_dir/<name>/kernel.json`` launching this module with ``spec_path``.

    ``kernels_dir`` must be ``<dir on JUPYTER_PATH>/kernels``.
    """
    argv = [sys.executable, "-m", "autograder.sandbox", str(spec_path), "-f", "{connection_file}"]
    if namespaces:
        argv = [shutil.which("unshare") or "unshare", "-n", "-m", "--"] + argv
    folder = kernels_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "kernel.json.tmp"
    tmp.write_text(json.dumps({"argv": argv, "display_name": f"Python 3 (sandboxed, {name})",
                               "language": "python", "metadata": {"debugger": False}}, indent=1))
    os.replace(tmp, folder / "kernel.json")
    return folder


# ---------------------------------------------------------------- launcher (inside the kernel)

def _mount(libc, src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    if libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def apply_mounts(spec: SandboxSpec) -> None:
    """Hide ``spec.hide`` behind empty tmpfs mounts and mount ``spec.keep`` back (needs CAP_SYS_ADMIN)."""
    libc = ctypes.CDLL(None, use_errno=True)
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back to the host
    # Open the kept folders first: afterwards their paths resolve into the empty tmpfs.
    keep_fds = [(p, os.open(p, os.O_RDONLY | os.O_DIRECTORY)) for p in spec.keep if os.path.isdir(p)]
    for path in sorted(set(spec.hide), key=len):
        if os.path.isdir(path):
            _mount(libc, "agsandbox", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=755")
        elif os.path.isfile(path):
            _mount(libc, "/dev/null", path, None, MS_BIND)
    for path, fd in keep_fds:
        os.makedirs(path, exist_ok=True)
        # /proc/self/fd/N is resolved by the kernel to the already-open directory.
        _mount(libc, f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)


def apply_limits(spec: SandboxSpec) -> None:
    """Set the resource limits of this process (inherited by the exec'd kernel)."""
    if spec.mem_bytes:
        resource.setrlimit(resource.RLIMIT_DATA, (spec.mem_bytes, spec.mem_bytes))
    if spec.cpu_seconds:
        resource.setrlimit(resource.RLIMIT_CPU, (spec.cpu_seconds, spec.cpu_seconds + 5))
    if spec.fsize_bytes:
        resource.setrlimit(resource.RLIMIT_FSIZE, (spec.fsize_bytes, spec.fsize_bytes))


def launch(argv: list[str]) -> None:
    """``python -m autograder.sandbox SPEC -f CONNECTION_FILE``: sandbox, then exec ipykernel."""
    if len(argv) < 1:
        raise SystemExit("usage: python -m autograder.sandbox SPEC.json -f CONNECTION_FILE")
    spec = SandboxSpec(**json.loads(Path(argv[0]).read_text()))
    cwd = os.getcwd()
    if spec.namespaces:
        spec.keep = [cwd, *spec.keep]  # the kernel's working folder (the autograded submission)
        apply_mounts(spec)
        os.chdir(cwd)  # re-resolve the cwd through the new mounts
    apply_limits(spec)
    os.environ.pop("JUPYTER_PATH", None)
    os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", *argv[1:]])


if __name__ == "__main__":
    launch(sys.argv[1:])
