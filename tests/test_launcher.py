"""autograder.launcher: forked workers behave like fresh processes (own pid and session, output in the
job's log, nothing carried over between jobs, killed whole at the timeout or with their launcher)."""
from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path

import pytest

from autograder import grade as G
from autograder.launcher import Launcher, LauncherDied, LauncherPool

TARGETS = textwrap.dedent('''
    import json, os, subprocess, sys, time
    from pathlib import Path

    SEEN = []

    def record(path):
        """Writes what this process looks like; a module global shows whether state carries over."""
        SEEN.append(path)
        print("hello from the job")
        Path(path).with_suffix(".result.json").write_text(json.dumps(
            {"pid": os.getpid(), "sid": os.getsid(0), "seen": len(SEEN), "ticket": path}))
        return 0

    def crash(path):
        raise ValueError("boom in " + path)

    def hang(path):
        child = subprocess.Popen(["sleep", "600"])
        Path(path).with_suffix(".child").write_text(str(child.pid))
        time.sleep(600)
''')


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    mod = tmp_path_factory.mktemp("targets")
    (mod / "lt_targets.py").write_text(TARGETS)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(mod), str(G.nbu.REPO)]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait_dead(pid: int, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_each_job_is_a_fresh_forked_process_with_its_own_session_and_log(env, tmp_path):
    launcher = Launcher(env, tmp_path / "launcher.log", target="lt_targets:record")
    try:
        seen = []
        for k in range(2):
            ticket, log = tmp_path / f"t{k}.json", tmp_path / f"t{k}.log"
            assert launcher.run(ticket, log, timeout=60) == 0
            seen.append(json.loads(ticket.with_suffix(".result.json").read_text()))
            assert log.read_text() == "hello from the job\n"
        assert seen[0]["pid"] != seen[1]["pid"] != launcher.proc.pid
        assert all(s["sid"] == s["pid"] for s in seen)  # a session of its own: its group is killable whole
        assert [s["seen"] for s in seen] == [1, 1]      # the second job did not inherit the first one's state
    finally:
        launcher.close()
    assert launcher.proc.returncode == 0


def test_a_crash_is_an_exit_code_and_a_traceback_in_the_log(env, tmp_path):
    launcher = Launcher(env, tmp_path / "launcher.log", target="lt_targets:crash")
    try:
        assert launcher.run(tmp_path / "t.json", tmp_path / "t.log", timeout=60) == 1
        assert "ValueError: boom in" in (tmp_path / "t.log").read_text()
        assert launcher.run(tmp_path / "u.json", tmp_path / "u.log", timeout=60) == 1  # still serving
    finally:
        launcher.close()


def test_past_the_timeout_the_jobs_whole_group_is_killed(env, tmp_path):
    launcher = Launcher(env, tmp_path / "launcher.log", target="lt_targets:hang")
    try:
        t0 = time.monotonic()
        assert launcher.run(tmp_path / "t.json", tmp_path / "t.log", timeout=3) is None
        assert time.monotonic() - t0 < 30
        grandchild = int((tmp_path / "t.child").read_text())
        assert _wait_dead(grandchild)  # the job's own child went with it
    finally:
        launcher.close()


def test_a_dying_launcher_takes_its_job_with_it(env, tmp_path):
    launcher = Launcher(env, tmp_path / "launcher.log", target="lt_targets:hang")
    import threading

    threading.Timer(3, lambda: os.kill(launcher.proc.pid, signal.SIGKILL)).start()
    with pytest.raises(LauncherDied) as died:
        launcher.run(tmp_path / "t.json", tmp_path / "t.log", timeout=120)
    assert died.value.pid is not None and _wait_dead(died.value.pid)  # PR_SET_PDEATHSIG
    launcher.close()


def test_the_pool_lends_at_most_size_launchers_and_replaces_a_dead_one(env, tmp_path):
    pool = LauncherPool(2, env, tmp_path, target="lt_targets:record")
    a, b = pool.acquire(), pool.acquire()
    assert a is not None and b is not None and a is not b
    pool.release(a)
    assert pool.acquire() is a
    pool.release(b, alive=False)                   # died under a job: a new one takes its place
    c = pool.acquire()
    assert c is not None and c not in (a, b) and pool.lost == 1
    assert c.run(tmp_path / "t.json", tmp_path / "t.log", timeout=60) == 0
    pool.release(a)
    pool.release(c)
    pool.close()
    assert a.proc.poll() is not None and c.proc.poll() is not None


def test_without_a_launcher_grading_falls_back_to_a_fresh_process(env, tmp_path):
    pool = LauncherPool(1, env, tmp_path, target="no_such_module:run")
    assert pool.acquire() is None and pool.disabled
    ticket = tmp_path / "00000.json"
    ticket.write_text(json.dumps({"job": {"student": "s", "lab": "l", "problems": []}, "sandbox": False}))
    result = G._run_worker(ticket, 60, dict(env, PYTHONPATH=str(G.nbu.REPO)), pool)
    # the fresh worker ran the (incomplete) ticket and failed like any worker would
    assert result["graded"] is False and result["problems"][-1].startswith("grader process exited with code 1")
