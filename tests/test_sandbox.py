"""The bubblewrap sandbox (:mod:`autograder.sandbox`) against a root-savvy student.

Each integration test runs a small probe script (written into ``tmp_path``, bound read-only)
through :func:`autograder.sandbox.run_sandboxed`; the probe writes what it saw as JSON into its
working folder and the test reads it back. They are skipped, with the reason, where
:func:`autograder.sandbox.sandbox_check` says the sandbox cannot run. The unit tests at the top
need no bubblewrap.
"""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from autograder import limits as lim
from autograder import sandbox as sb
from autograder import sandbox_spec as ss
from autograder.limits import Limits
from autograder.sandbox_spec import GiB, SandboxSpec

REPO = Path(sb.__file__).resolve().parents[1]
MiB = 1024 ** 2


def _job_name() -> str:
    return f"job-test-{os.getpid()}-{os.urandom(4).hex()}"


def _marker() -> str:
    """A number no other process has in its command line (``sleep <marker>`` is a valid sleep)."""
    return f"{random.randint(5000, 9999)}.{random.randint(100000, 999999)}"


def _pgrep(marker: str) -> list[str]:
    r = subprocess.run(["pgrep", "-a", "-f", marker.replace(".", r"\.")], capture_output=True, text=True)
    return [line for line in r.stdout.splitlines() if line.strip()]


def _no_leftovers(marker: str, wait: float = 2.0) -> list[str]:
    deadline = time.monotonic() + wait
    while (left := _pgrep(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


PROBE = r'''
import ctypes, json, os, socket, subprocess, sys, time

mode, args = sys.argv[1], json.loads(sys.argv[2])
out = {"mode": mode}
libc = ctypes.CDLL(None, use_errno=True)


def attempt(fn):
    try:
        return {"ok": True, "value": fn()}
    except BaseException as e:
        return {"ok": False, "error": type(e).__name__, "errno": getattr(e, "errno", None), "msg": str(e)}


def libc_call(name, *a):
    if getattr(libc, name)(*a) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return 0


def write(path):
    with open(path, "w") as f:
        f.write("x")
    return path


def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return line.split()[1]


if mode == "identity":
    out.update(uid=os.getuid(), gid=os.getgid(), euid=os.geteuid(), groups=os.getgroups(),
               cap_eff=status("CapEff"), cap_prm=status("CapPrm"), no_new_privs=status("NoNewPrivs"),
               pid=os.getpid(), proc_pids=sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
               uid_map=open("/proc/self/uid_map").read().split(), hostname=socket.gethostname())
    out["kill_grader"] = attempt(lambda: os.kill(args["test_pid"], 0))
    out["setuid0"] = attempt(lambda: os.setuid(0))
    out["unshare_user"] = attempt(lambda: libc_call("unshare", 0x10000000))  # CLONE_NEWUSER
    out["unshare_mount"] = attempt(lambda: libc_call("unshare", 0x00020000))  # CLONE_NEWNS
    out["mount_tmpfs"] = attempt(lambda: libc_call("mount", b"x", b"/tmp", b"tmpfs", 0, None))
    out["umount_proc"] = attempt(lambda: libc_call("umount2", b"/proc", 2))  # MNT_DETACH
    out["chroot"] = attempt(lambda: os.chroot("/tmp"))
elif mode == "network":
    out["internet"] = attempt(lambda: socket.create_connection(("1.1.1.1", 53), timeout=2).close())
    out["grader_tcp"] = attempt(lambda: socket.create_connection(("127.0.0.1", args["port"]), timeout=2).close())

    def unix(path):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect(path)
        s.close()

    out["grader_unix"] = attempt(lambda: unix(args["unix_path"]))
    out["grader_abstract"] = attempt(lambda: unix("\0" + args["abstract"]))
    out["interfaces"] = [name for _, name in socket.if_nameindex()]
elif mode == "files":
    venv, labkit, repo = args["venv"], args["labkit"], args["repo"]
    out["repo_listing"] = sorted(os.listdir(repo))
    out["outside_visible"] = os.path.exists(args["outside"])
    out["outside_dir_visible"] = os.path.exists(os.path.dirname(args["outside"]))
    out["root_listing"] = sorted(os.listdir("/root")) if os.path.isdir("/root") else None
    out["write_venv"] = attempt(lambda: write(os.path.join(venv, "planted.txt")))
    out["write_labkit"] = attempt(lambda: write(os.path.join(labkit, "planted.py")))
    out["write_ro_extra"] = attempt(lambda: write(os.path.join(args["ro_dir"], "planted.txt")))
    out["write_etc"] = attempt(lambda: write("/etc/planted"))
    out["write_cwd"] = attempt(lambda: write(os.path.join(os.getcwd(), "made-inside.txt")))
    out["write_tmp"] = attempt(lambda: write("/tmp/made-inside.txt"))
    out["overwrite_given"] = attempt(lambda: write("given.txt"))
    out["remove_given"] = attempt(lambda: os.remove("given.txt"))
    out["remove_own"] = attempt(lambda: os.remove(write("own.txt")))
    out["host_tmp_marker_visible"] = os.path.exists(args["host_tmp_marker"])
    out["tmp_listing"] = sorted(os.listdir("/tmp"))
    out["read_shadow"] = attempt(lambda: open("/etc/shadow").read(10))
    out["setuid_file"] = attempt(lambda: os.chmod(write("suid"), 0o4755))
    out["cwd"] = os.getcwd()
elif mode == "env":
    out["env"] = dict(os.environ)
elif mode == "memory":
    code = ("import sys, time; b = b'x' * (400 << 20); open(sys.argv[1], 'w').write('held'); "
            "time.sleep(4); open(sys.argv[1], 'w').write('done')")
    kids = [subprocess.Popen([sys.executable, "-c", code, f"child-{i}"]) for i in range(3)]
    out["returncodes"] = [k.wait() for k in kids]
    out["done"] = [os.path.exists(f"child-{i}") and open(f"child-{i}").read() == "done" for i in range(3)]
elif mode in ("pids", "hang"):
    marker = args["marker"]
    # Escape attempts first: a new session, a double fork, nohup (all orphaned inside).
    subprocess.Popen(["setsid", "sh", "-c", f"sleep {marker} & sleep {marker} &"], start_new_session=True).wait()
    subprocess.Popen(["nohup", "sleep", marker], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)

    def alive():  # processes with the marker in their command line, seen from inside (1 is bwrap)
        n = 0
        for p in os.listdir("/proc"):
            try:
                if p.isdigit() and int(p) not in (1, os.getpid()):
                    n += marker.encode() in open(f"/proc/{p}/cmdline", "rb").read()
            except OSError:
                pass
        return n

    time.sleep(0.3)
    out["escapees"] = alive()
    if mode == "hang":
        with open("out.json", "w") as f:
            json.dump(out, f)
        time.sleep(1000)
    kids, error = [], None
    for _ in range(100):
        try:
            kids.append(subprocess.Popen(["sleep", marker]))
        except OSError as e:
            error = {"error": type(e).__name__, "errno": e.errno}
            break
    time.sleep(0.5)  # let the last children finish exec (before that their command line is python's)
    out.update(started=len(kids), error=error, alive_at_exit=alive())
with open("out.json", "w") as f:
    json.dump(out, f)
'''


class Probe:
    """The probe script and a fresh working folder per run."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        (self.bin / "probe.py").write_text(PROBE)
        self.runs = 0

    def spec(self, **kw) -> SandboxSpec:
        self.runs += 1
        cwd = self.tmp / f"cwd{self.runs}"
        cwd.mkdir()
        (cwd / "given.txt").write_text("from the grader")  # root's file in the sandbox's folder
        kw.setdefault("ro", [str(self.bin)])
        return SandboxSpec(name=_job_name(), cwd=str(cwd), **kw)

    def run(self, mode: str, args: dict | None = None, timeout: float = 60,
            **kw) -> tuple[dict | None, int | None, bool, str]:
        spec = self.spec(**kw)
        log = self.tmp / f"log{self.runs}.txt"
        cmd = [sb.python_exe(), str(self.bin / "probe.py"), mode, json.dumps(args or {})]
        rc, timed_out = sb.run_sandboxed(spec, cmd, timeout, log)
        out_file = Path(spec.cwd) / "out.json"
        out = json.loads(out_file.read_text()) if out_file.exists() else None
        self.last_spec = spec
        return out, rc, timed_out, log.read_text(errors="replace")


@pytest.fixture
def probe(tmp_path: Path, bwrap_ok) -> Probe:
    return Probe(tmp_path)


# ---------------------------------------------------------------------------- unit tests (no bwrap)

def _pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv[:-2]) if a == flag]


def test_bwrap_argv_flags_and_binds(tmp_path: Path) -> None:
    cwd, run, data = tmp_path / "cwd", tmp_path / "run", tmp_path / "data"
    for d in (cwd, run, data):
        d.mkdir()
    spec = SandboxSpec(name="job-1", cwd=str(cwd), rw=[str(run)], ro=[str(data)], env={})
    argv = ss.bwrap_argv(spec, ["python", "runner.py"])
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
                 "--clearenv"):
        assert flag in argv
    text = " ".join(argv)
    for seq in ("--uid 65534", "--gid 65534", "--cap-drop ALL", "--proc /proc", "--dev /dev", "--tmpfs /tmp",
                f"--dir {ss.HOME}", f"--chdir {cwd} -- python runner.py"):
        assert seq in text, seq
    assert argv[-3:] == ["--", "python", "runner.py"]
    ro, rw = _pairs(argv, "--ro-bind"), _pairs(argv, "--bind")
    assert (str(data), str(data)) in ro
    for p in ss.default_ro():
        assert (p, p) in ro
    assert ss.labkit_dir() == str(REPO / "labkit")
    assert os.path.realpath(sys.base_prefix) in [d for _, d in ro]
    assert set(rw) == {(str(cwd), str(cwd)), (str(run), str(run))}
    for src, dest in ro + rw:  # never the repository root, its notebooks or .git
        assert Path(dest) != REPO and not ss.inside(str(REPO), dest)
        for hidden in ("notebooks", ".git", "autograder"):
            assert not ss.inside(dest, str(REPO / hidden))
    first_tmp_bind = min(i for i, a in enumerate(argv) if a.startswith(str(tmp_path)))
    assert argv.index("/tmp") < first_tmp_bind  # the private /tmp comes before binds below it
    staged = ss.bwrap_argv(spec, ["true"], {str(cwd): "/tmp/ag-7"})
    assert ("/tmp/ag-7", str(cwd)) in _pairs(staged, "--bind")


def test_check_spec_refuses_dangerous_binds(tmp_path: Path) -> None:
    ok = tmp_path / "cwd"
    ok.mkdir()
    ss.check_spec(SandboxSpec(name="job-1", cwd=str(ok)))
    bad = [dict(cwd=str(REPO)), dict(cwd=str(ok), ro=[str(REPO)]), dict(cwd=str(ok), ro=[str(REPO / "notebooks")]),
           dict(cwd=str(ok), ro=["/work"] if REPO.parent == Path("/work") else [str(REPO.parent)]),
           dict(cwd=str(ok), rw=["/usr/lib"]), dict(cwd="/tmp"), dict(cwd=sys.prefix),
           dict(cwd="relative/path"), dict(cwd=str(tmp_path / "missing"))]
    for kw in bad:
        with pytest.raises(ValueError):
            ss.check_spec(SandboxSpec(name="job-1", **kw))
    with pytest.raises(ValueError):
        ss.check_spec(SandboxSpec(name="../escape", cwd=str(ok)))


def test_environment_is_an_allow_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    monkeypatch.delenv("MPLBACKEND", raising=False)
    spec = SandboxSpec(name="job-1", cwd=str(tmp_path), env={"PROBE_SEED": "7"})
    env = ss.sandbox_env(spec)
    base = {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "MPLCONFIGDIR"}
    copied = {k for k in ss.PASS_ENV if k in os.environ}
    assert set(env) == base | copied | {"PROBE_SEED"}
    assert env["PATH"] == f"{sys.prefix}/bin:/usr/bin:/bin" and env["HOME"] == "/tmp/home"
    assert env["OMP_NUM_THREADS"] == "1" and env["NBGRADER_EXECUTION"] == "autograde"
    assert "SECRET_TOKEN" not in env
    argv = ss.bwrap_argv(spec, ["true"])
    assert dict(_pairs(argv, "--setenv")) == env
    assert argv.index("--clearenv") < argv.index("--setenv")


def test_spec_round_trip(tmp_path: Path) -> None:
    spec = SandboxSpec(name="job-00003-abc", cwd="/x/y", rw=["/x/run"], ro=["/data"], env={"A": "1"},
                       mem_bytes=3 * GiB, max_pids=64, cpu_seconds=60, fsize_bytes=GiB // 2)
    path = spec.write(tmp_path / "s" / "spec.json")
    assert SandboxSpec.read(path) == spec
    assert sorted(p.name for p in path.parent.iterdir()) == ["spec.json"]  # no temporary left
    path.write_text(json.dumps({"name": "x", "cwd": "/x", "hide": []}))
    with pytest.raises(ValueError):
        SandboxSpec.read(path)


def test_limits_describe_wording() -> None:
    spec = SandboxSpec(name="-", cwd="/", rw=[], ro=[], env={})
    line = Limits("cgroup v1").describe(spec)
    assert line.startswith("sandbox: bubblewrap, uid 65534, no capabilities")
    assert "memory 2.0 GiB and 256 processes per sandbox (cgroup v1)" in line
    assert "memory 2.0 GiB and 256 processes per sandbox (cgroup v2)" in Limits("cgroup v2").describe(spec)
    fallback = Limits("rlimits").describe(spec)
    assert "RLIMIT_DATA" in fallback and "per process" in fallback and "\n" not in fallback
    assert Limits.detect().kind in ("cgroup v2", "cgroup v1", "rlimits")
    assert Limits.detect() is Limits.detect()  # chosen once per process
    assert Limits("rlimits").kill("job-none") == 0


def test_cgroup_v2_files_on_a_fake_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The v2 code path (this machine has v1): which files enter() and kill() write, on plain folders."""
    monkeypatch.setattr(lim, "CGROUP_ROOT", tmp_path)
    parent = tmp_path / "autograder"
    parent.mkdir()
    limits = Limits("cgroup v2", {"": parent}, {"": tmp_path})
    spec = SandboxSpec(name="job-v2", cwd="/x", mem_bytes=700 * MiB, max_pids=32)
    pid = os.fork()
    if pid == 0:  # enter() also sets rlimits: only in a child
        try:
            limits.enter(spec)
            os._exit(0)
        except BaseException:
            os._exit(1)
    assert os.waitpid(pid, 0)[1] == 0
    group = parent / "job-v2"
    assert (group / "memory.max").read_text() == str(700 * MiB)
    assert (group / "pids.max").read_text() == "32" and (group / "memory.swap.max").read_text() == "0"
    assert (group / "cgroup.procs").read_text() == str(pid)
    assert limits.groups("job-v2") == [group]
    (group / "cgroup.procs").write_text("")
    (group / "cgroup.kill").write_text("")
    assert limits.kill("job-v2") == 0
    assert (group / "cgroup.kill").read_text() == "1" and (group / "pids.max").read_text() == "0"
    assert limits.kill("job-missing") == 0


def test_launcher_argv_and_kernelspec(tmp_path: Path) -> None:
    spec_path = tmp_path / "kernel-sandbox.json"
    assert sb.launcher_argv(spec_path, ["a", "b"]) == [sb.python_exe(), "-m", "autograder.sandbox", str(spec_path),
                                                       "--", "a", "b"]
    folder = sb.write_kernelspec(tmp_path / "jupyter" / "kernels", "ag-sandbox", spec_path)
    ks = json.loads((folder / "kernel.json").read_text())
    assert ks["argv"] == sb.launcher_argv(spec_path, [sb.python_exe(), "-m", "ipykernel_launcher", "-f",
                                                      "{connection_file}"])
    assert ks["interrupt_mode"] == "message" and ks["language"] == "python"


def test_sandbox_check_says_why_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    check = sb.sandbox_check.__wrapped__  # the uncached function
    monkeypatch.setattr(sb, "bwrap_path", lambda: None)
    assert check() == ("bubblewrap is not installed: apt-get install bubblewrap, or pass --no-sandbox for "
                       "trusted submissions")
    monkeypatch.setattr(sb, "bwrap_path", lambda: "/usr/bin/bwrap")
    for log, words in [("bwrap: Unknown option --disable-userns", "too old"),
                       ("bwrap: No permission to create new namespace, likely because the kernel does not allow "
                        "non-privileged user namespaces.", "user namespaces"),
                       ("something else broke", "does not work here")]:
        def fake_run(spec, command, timeout, log_path, log=log):
            Path(log_path).write_text(log + "\n")
            return 1, False
        monkeypatch.setattr(sb, "run_sandboxed", fake_run)
        line = check()
        assert words in line and "--no-sandbox" in line and "\n" not in line, line


@pytest.mark.skipif(os.geteuid() != 0, reason="the launcher changes ownership and cgroups only as root")
def test_launcher_failure_leaves_nothing(tmp_path: Path) -> None:
    """exec of bwrap fails: one line on stderr, exit 126, cgroup gone, ownership and modes restored."""
    cwd, run = tmp_path / "cwd", tmp_path / "run"
    cwd.mkdir()
    run.mkdir(mode=0o700)
    conn = run / "kernel.json"
    conn.write_text("{}")
    conn.chmod(0o600)
    spec = SandboxSpec(name=_job_name(), cwd=str(cwd), rw=[str(run)])
    spec_path = spec.write(tmp_path / "spec.json")
    before = {p: (p.stat().st_uid, p.stat().st_gid, p.stat().st_mode) for p in (cwd, run, conn)}
    code = ("import sys, autograder.sandbox as s; s.bwrap_path = lambda: '/nonexistent/bwrap'; "
            "s.launch(sys.argv[1:])")
    r = subprocess.run([sys.executable, "-c", code, str(spec_path), "--", "python", "-f", str(conn)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == sb.LAUNCHER_FAILED
    assert len(r.stderr.strip().splitlines()) == 1 and "/nonexistent/bwrap" in r.stderr
    assert {p: (p.stat().st_uid, p.stat().st_gid, p.stat().st_mode) for p in (cwd, run, conn)} == before
    assert not any(g.exists() for g in Limits.detect().groups(spec.name))
    bad = SandboxSpec(name="job-x", cwd=str(cwd), ro=[str(REPO)]).write(tmp_path / "bad.json")
    r = subprocess.run(sb.launcher_argv(bad, ["true"]), capture_output=True, text=True, timeout=60)
    assert r.returncode == sb.LAUNCHER_FAILED and "repository" in r.stderr
    inside = spec.write(cwd / "spec.json")  # a spec the sandbox could edit is refused
    r = subprocess.run(sb.launcher_argv(inside, ["true"]), capture_output=True, text=True, timeout=60)
    assert r.returncode == sb.LAUNCHER_FAILED and "can write" in r.stderr


# ---------------------------------------------------------------------------- inside the sandbox

def test_identity_capabilities_and_pid_namespace(probe: Probe) -> None:
    out, rc, _, log = probe.run("identity", {"test_pid": os.getpid()})
    assert rc == 0 and out, log
    assert (out["uid"], out["gid"], out["euid"], out["groups"]) == (65534, 65534, 65534, [])
    assert int(out["cap_eff"], 16) == 0 and int(out["cap_prm"], 16) == 0 and out["no_new_privs"] == "1"
    assert out["pid"] < 10 and len(out["proc_pids"]) <= 4 and max(out["proc_pids"]) < 10, out["proc_pids"]
    assert os.getpid() not in out["proc_pids"]
    assert out["kill_grader"]["error"] == "ProcessLookupError"
    assert not out["setuid0"]["ok"] and out["setuid0"]["errno"] in (1, 22)  # EPERM, or EINVAL: 0 is unmapped
    assert not out["unshare_user"]["ok"] and out["unshare_user"]["errno"] in (1, 28)  # --disable-userns (ENOSPC)
    for key in ("unshare_mount", "mount_tmpfs", "umount_proc", "chroot"):
        assert not out[key]["ok"] and out[key]["errno"] == 1, (key, out[key])  # EPERM
    assert out["hostname"] == "sandbox"


def test_network_is_loopback_only(probe: Probe, tmp_path: Path) -> None:
    tcp = socket.create_server(("127.0.0.1", 0))
    unix_path = f"/tmp/agsbx-test-{os.urandom(4).hex()}.sock"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(unix_path)
    unix.listen()
    abstract = f"agsbx-test-{os.urandom(4).hex()}"
    abst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abst.bind("\0" + abstract)
    abst.listen()
    try:
        out, rc, _, log = probe.run("network", {"port": tcp.getsockname()[1], "unix_path": unix_path,
                                                "abstract": abstract})
    finally:
        tcp.close(), unix.close(), abst.close()
        os.unlink(unix_path)
    assert rc == 0 and out, log
    assert not out["internet"]["ok"], out["internet"]
    assert not out["grader_tcp"]["ok"], out["grader_tcp"]
    assert out["grader_unix"]["error"] == "FileNotFoundError"  # private /tmp
    assert not out["grader_abstract"]["ok"]  # abstract sockets belong to the network namespace
    assert out["interfaces"] == ["lo"]


def test_files_only_the_binds(probe: Probe, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("outside") / "secret.txt"
    outside.write_text("solution")
    host_marker = Path(f"/tmp/agsbx-marker-{os.urandom(4).hex()}")
    host_marker.write_text("host")
    labkit = ss.labkit_dir()
    try:
        out, rc, _, log = probe.run("files", {"venv": sys.prefix, "labkit": labkit, "repo": str(REPO),
                                              "outside": str(outside), "ro_dir": str(probe.bin),
                                              "host_tmp_marker": str(host_marker)})
    finally:
        host_marker.unlink()
    assert rc == 0 and out, log
    assert set(out["repo_listing"]) <= {"labkit", ".venv"}, out["repo_listing"]
    assert "labkit" in out["repo_listing"]
    assert not out["outside_visible"] and not out["outside_dir_visible"]
    assert out["root_listing"] in (None, [], [".pyenv"]), out["root_listing"]  # the Python prefix's path only
    for key in ("write_venv", "write_labkit", "write_ro_extra", "write_etc"):
        assert not out[key]["ok"] and out[key]["error"] in ("OSError", "PermissionError"), (key, out[key])
    assert out["write_cwd"]["ok"] and out["write_tmp"]["ok"] and out["remove_own"]["ok"]
    assert not out["overwrite_given"]["ok"] and not out["remove_given"]["ok"]  # sticky folder, root's file
    assert (Path(probe.last_spec.cwd) / "given.txt").read_text() == "from the grader"
    assert Path(probe.last_spec.cwd).stat().st_uid == os.getuid()  # still the grader's folder
    assert not out["host_tmp_marker_visible"] and "made-inside.txt" in out["tmp_listing"]
    assert not Path("/tmp/made-inside.txt").exists()
    assert not out["read_shadow"]["ok"]
    assert out["cwd"] == probe.last_spec.cwd
    host_uid = 65534 if os.geteuid() == 0 else os.getuid()  # run by root: host nobody, never host root
    made = Path(probe.last_spec.cwd) / "made-inside.txt"
    assert made.read_text() == "x" and made.stat().st_uid == host_uid
    assert (Path(probe.last_spec.cwd) / "suid").stat().st_uid == host_uid  # a set-uid file, but not root's
    assert not (Path(sys.prefix) / "planted.txt").exists() and not (Path(labkit) / "planted.py").exists()


def test_environment_inside(probe: Probe, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out, rc, _, log = probe.run("env", env={"PROBE_SEED": "7"})
    assert rc == 0 and out, log
    env = out["env"]
    assert "SECRET_TOKEN" not in env and not any("JUPYTER" in k for k in env)
    expected = ss.sandbox_env(probe.last_spec)
    assert {k: v for k, v in env.items() if k != "PWD"} == expected  # bwrap sets PWD to the working folder
    assert env.get("PWD", probe.last_spec.cwd) == probe.last_spec.cwd
    assert env["OMP_NUM_THREADS"] == "1" and env["PROBE_SEED"] == "7"


@pytest.mark.slow
def test_memory_cap_is_per_sandbox(probe: Probe) -> None:
    if not Limits.detect().kind.startswith("cgroup"):
        pytest.skip(f"no cgroup here ({Limits.detect().kind}): memory is capped per process only")
    out, rc, timed_out, log = probe.run("memory", mem_bytes=700 * MiB, timeout=120)
    assert not timed_out, log
    if out is None:  # the OOM killer chose the probe itself: the sandbox is dead, fine
        assert rc != 0
    else:
        assert not all(out["done"]), out  # three times 400 MB never fit into 700 MiB together
        assert any(code == -9 for code in out["returncodes"]), out  # killed by the OOM killer
    assert not any(g.exists() for g in Limits.detect().groups(probe.last_spec.name))


@pytest.mark.slow
def test_process_cap_and_no_leftovers(probe: Probe) -> None:
    marker = _marker()
    out, rc, timed_out, log = probe.run("pids", {"marker": marker}, max_pids=32, timeout=120)
    assert rc == 0 and out and not timed_out, log
    assert out["started"] < 32 and out["error"] == {"error": "BlockingIOError", "errno": 11}, out
    assert out["escapees"] == 3 and out["alive_at_exit"] == out["started"] + 3, out  # all running at exit
    assert _no_leftovers(marker, wait=0 if Limits.detect().kind.startswith("cgroup") else 2) == []
    assert not any(g.exists() for g in Limits.detect().groups(probe.last_spec.name))


@pytest.mark.slow
def test_timeout_kills_everything(probe: Probe) -> None:
    marker = _marker()
    t0 = time.monotonic()
    out, rc, timed_out, log = probe.run("hang", {"marker": marker}, timeout=3)
    assert (rc, timed_out) == (None, True) and out and out["escapees"] == 3, (out, log)
    assert time.monotonic() - t0 < 20
    assert _no_leftovers(marker, wait=0 if Limits.detect().kind.startswith("cgroup") else 2) == []
    assert not any(g.exists() for g in Limits.detect().groups(probe.last_spec.name))


@pytest.mark.slow
def test_kernel_over_ipc(tmp_path: Path, bwrap_ok, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real ipykernel through the kernelspec: ipc transport, uid 65534, message interrupt, clean shutdown."""
    from jupyter_client import KernelManager

    cwd, run_dir, jupyter = tmp_path / "cwd", tmp_path / "run", tmp_path / "jupyter"
    cwd.mkdir()
    run_dir.mkdir()
    spec = SandboxSpec(name=_job_name(), cwd=str(cwd), rw=[str(run_dir)], ro=[], env={})
    spec_path = spec.write(tmp_path / "kernel-sandbox.json")
    sb.write_kernelspec(jupyter / "kernels", "ag-sandbox-test", spec_path)
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
    km = KernelManager(kernel_name="ag-sandbox-test")
    km.transport = "ipc"
    km.ip = str(run_dir / "kernel")
    km.connection_file = str(run_dir / "kernel.json")
    km.start_kernel(cwd=str(cwd))
    kc = km.client()
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=120)
        chunks: list[str] = []

        def hook(msg: dict) -> None:
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                chunks.append(msg["content"]["text"])

        reply = kc.execute_interactive("import os; print(os.getuid())", timeout=60, output_hook=hook)
        assert reply["content"]["status"] == "ok" and "".join(chunks).strip() == "65534", (reply, chunks)
        msg_id = kc.execute("while True: pass")
        time.sleep(1.0)
        km.interrupt_kernel()  # interrupt_mode "message": over the control channel
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "the interrupt did not stop the loop"
            msg = kc.get_shell_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id:
                break
        assert msg["content"]["status"] == "error" and msg["content"]["ename"] == "KeyboardInterrupt", msg["content"]
        for _ in range(5):  # ipykernel aborts requests that arrive just after an error: try again
            chunks.clear()
            reply = kc.execute_interactive("print(6 * 7)", timeout=60, output_hook=hook)
            if reply["content"]["status"] != "aborted":
                break
            time.sleep(0.5)
        assert "".join(chunks).strip() == "42", (reply["content"], chunks)  # still alive after the interrupt
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
        left = Limits.detect().kill(spec.name)
    assert not km.is_alive()
    assert left == 0  # nothing was left in the sandbox's group
    assert not any(g.exists() for g in Limits.detect().groups(spec.name))
    assert _no_leftovers(str(run_dir)) == []
