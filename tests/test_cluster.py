"""Grading on a real Dask cluster: a ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1.

A small class of the tiny lab (reference, blank, two mutants, late, an odd id, malformed JSON) is
graded locally and through the cluster: exact per-cell scores and byte-identical CSVs. Then one
worker is killed while the command-line run grades the class, and nothing is lost. The processes
are started here, on free ports, and stopped by their process group id, also when a test fails.
"""
from __future__ import annotations

import ast
import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import grading_fixtures as gf
from autograder import grade as G
from autograder import notebook as nbu
from autograder.errors import GradingError
from autograder.job import lab_cells
from autograder.release import build_course

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DEADLINE = "2025-03-01T12:00:00+00:00"
PENALTY = 0.1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return dict(os.environ, PATH=str(VENV_BIN) + os.pathsep + os.environ.get("PATH", ""))


def _start(cmd: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """End a process we started, and its group (its own session), by its id."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"dask scheduler exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"dask scheduler did not listen on {port} within {timeout} s")


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """``{"address", "workers": {name: Popen}}``: a scheduler and two single-thread workers."""
    from distributed import Client

    root = tmp_path_factory.mktemp("dask")
    procs: list[subprocess.Popen] = []
    try:
        port = _free_port()
        address = f"tcp://127.0.0.1:{port}"
        procs.append(_start([str(VENV_BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                             "--no-dashboard"], root / "scheduler.log", root))
        _wait_port(port, procs[0], root / "scheduler.log")
        workers = {}
        for name in ("w1", "w2"):
            (root / name).mkdir()
            workers[name] = _start([str(VENV_BIN / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "1",
                                    "--host", "127.0.0.1", "--worker-port", str(_free_port()),
                                    "--nanny-port", str(_free_port()), "--name", name, "--no-dashboard",
                                    "--local-directory", str(root / name)], root / f"{name}.log", root)
            procs.append(workers[name])
        with Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=120)
            names = {w["name"]: a for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
        yield {"address": address, "workers": workers, "addresses": names, "root": root}
    finally:
        for proc in reversed(procs):
            _stop(proc)


@pytest.fixture(scope="module")
def tiny_class(tmp_path_factory):
    """The course, the submissions, the expected cases and a local run's output."""
    os.environ["PATH"] = str(VENV_BIN) + os.pathsep + os.environ.get("PATH", "")
    root = tmp_path_factory.mktemp("cluster-class")
    notebooks = gf.write_tiny_source(root / "notebooks")
    course = build_course(root / "course", [gf.TINY_LAB], notebooks, log=lambda m: None)
    source = nbu.read_nb(course / "source" / gf.TINY_LAB / f"{gf.TINY_LAB}.ipynb")
    release = nbu.read_nb(course / "release" / gf.TINY_LAB / f"{gf.TINY_LAB}.ipynb")
    ref = gf.reference(source)
    cases = {
        "reference": gf.Case(ref),
        "blank": gf.Case(release, zero=("*",)),
        "mutant_add": gf.Case(gf.replace_solution(ref, "add", "def add(a, b):\n    return a - b"), zero=("test_add",)),
        "mutant_mean": gf.Case(gf.replace_solution(ref, "mean", "def mean(xs):\n    return sum(xs) // len(xs)"),
                               zero=("test_mean",)),
        "late": gf.Case(ref, timestamp="2025-03-02 13:00:00 UTC"),
        "Zoë O'Brien": gf.Case(ref),
        "malformed": gf.Case("{not json", zero=("*",), graded=False, problem="malformed JSON"),
    }
    subs = root / "subs"
    for student, case in cases.items():
        gf.write_submission(subs, student, gf.TINY_LAB, case.nb, case.filename, case.timestamp)
    t0 = time.perf_counter()
    G.grade(subs, root / "local", course, workers=2, deadline=DEADLINE, late_penalty_per_day=PENALTY,
            quiet=True, progress=False)
    print(f"\ncluster tests: local run of {len(cases)} submissions on 2 workers {time.perf_counter() - t0:.1f} s")
    return {"root": root, "course": course, "subs": subs, "cases": cases, "local": root / "local"}


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _assert_exact_and_identical(tiny_class, out: Path) -> None:
    cells = lab_cells(tiny_class["course"], gf.TINY_LAB)
    got = {(r["student_id"], r["grade_id"]): r["score"] for r in _rows(out / "cell_scores.csv")}
    wrong = [(student, gid, got.get((student, gid)), want) for student, case in tiny_class["cases"].items()
             for gid, want in gf.expected_scores(case, cells).items()
             if got.get((student, gid)) in (None, "") or float(got[(student, gid)]) != want]
    assert wrong == []
    grades = {r["student_id"]: r for r in _rows(out / "grades.csv")}
    assert float(grades["late"]["late_submission_penalty"]) == pytest.approx(0.6)
    for student, case in tiny_class["cases"].items():
        assert case.problem in grades[student]["problems"], (student, grades[student]["problems"])
        assert grades[student]["status"].startswith("graded") == case.graded, student
    for name in ("grades.csv", "cell_scores.csv"):
        assert (out / name).read_bytes() == (tiny_class["local"] / name).read_bytes(), name
    feedback = sorted(p.relative_to(out) for p in (out / "feedback").rglob("*.html"))
    assert feedback == sorted(p.relative_to(tiny_class["local"]) for p in (tiny_class["local"] / "feedback").rglob("*.html"))
    assert len(feedback) == sum(case.graded for case in tiny_class["cases"].values())


def _graded_by(out: Path) -> dict[str, str]:
    """job -> the worker address cluster.log names for it."""
    lines = (out / "cluster.log").read_text().splitlines()
    return {m[1]: m[2] for m in (re.search(r" (\S+): graded by (tcp://\S+)", ln) for ln in lines) if m}


def test_cluster_grades_exactly_like_a_local_run(dask_cluster, tiny_class, tmp_path):
    out = tmp_path / "out"
    t0 = time.perf_counter()
    G.grade(tiny_class["subs"], out, tiny_class["course"], deadline=DEADLINE, late_penalty_per_day=PENALTY,
            quiet=True, progress=False, scheduler=dask_cluster["address"], work_dir=tmp_path / "shared")
    print(f"\ncluster tests: Dask run (2 workers) {time.perf_counter() - t0:.1f} s")
    _assert_exact_and_identical(tiny_class, out)
    by = _graded_by(out)
    assert len(by) == 6 and set(by.values()) == set(dask_cluster["addresses"].values())  # both workers graded
    assert not list(out.rglob("*.ipynb")) and len(list(out.glob(".state/*/*.json"))) == 6
    assert not list((tmp_path / "shared").iterdir()), "the work folder was left on the shared storage"
    log_before = (out / "cluster.log").read_text()
    G.grade(tiny_class["subs"], out, tiny_class["course"], deadline=DEADLINE, late_penalty_per_day=PENALTY,
            quiet=True, progress=False, scheduler=dask_cluster["address"], work_dir=tmp_path / "shared")
    assert (out / "cluster.log").read_text() == log_before  # everything resumed from .state, nothing sent
    _assert_exact_and_identical(tiny_class, out)


def test_a_worker_that_cannot_see_the_work_folder_is_named_in_one_line(dask_cluster):
    from autograder import cluster

    client = cluster.connect(dask_cluster["address"])
    try:
        with pytest.raises(GradingError) as err:
            cluster.check_workers(client, {"/nonexistent/ag-probe": "0" * 64}, sandbox=False)
    finally:
        client.close()
    message = str(err.value)
    assert "\n" not in message and re.search(r"^Dask worker tcp://127\.0\.0\.1:\d+ cannot read /nonexistent/ag-probe",
                                             message) and "every Dask worker sees" in message


def test_an_unreachable_scheduler_is_one_line(tiny_class, tmp_path, monkeypatch):
    from autograder import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 2)
    address = f"tcp://127.0.0.1:{_free_port()}"
    with pytest.raises(GradingError, match=f"cannot reach the Dask scheduler at {address}"):
        G.grade(tiny_class["subs"], tmp_path / "out", tiny_class["course"], quiet=True, progress=False,
                scheduler=address)


def test_killing_a_worker_mid_run_loses_no_grade(dask_cluster, tiny_class, tmp_path):
    out = tmp_path / "out"
    console = open(tmp_path / "console.txt", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "autograder", "grade", str(tiny_class["subs"]), "--out", str(out),
                             "--course-dir", str(tiny_class["course"]), "--deadline", DEADLINE,
                             "--late-penalty-per-day", str(PENALTY), "--scheduler", dask_cluster["address"],
                             "--work-dir", str(tmp_path / "shared")],
                            cwd=REPO, env=_env(), stdout=console, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        end = time.monotonic() + 240
        while not list(out.glob(".state/*/*.json")) and time.monotonic() < end and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before a worker could be killed"
        assert len(list(out.glob(".state/*/*.json"))) < 6
        victim = dask_cluster["workers"]["w1"]
        os.killpg(victim.pid, signal.SIGKILL)  # the worker, its nanny and the grading process under it
        victim.wait(timeout=30)
        proc.wait(timeout=300)
    finally:
        _stop(proc)
        console.close()
    text = (tmp_path / "console.txt").read_text(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    _assert_exact_and_identical(tiny_class, out)
    log = (out / "cluster.log").read_text()
    by = _graded_by(out)
    assert len(by) == 6
    assert dask_cluster["addresses"]["w2"] in by.values()
    assert "(try 2)" in log, log  # the job the killed worker held was graded again elsewhere
    assert "grading on dask" in text  # tqdm counted the finished jobs
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "shared")], capture_output=True, text=True).stdout.split()
    assert left == [], "a grading process of the killed worker outlived it"


def test_a_job_that_keeps_failing_is_a_problem_line_and_is_tried_again_later(dask_cluster, tiny_class, tmp_path):
    from autograder import cluster
    from autograder.collect import Job

    work, out = tmp_path / "work", tmp_path / "out"
    (work / "tickets").mkdir(parents=True)
    out.mkdir()
    job = Job(student="bob", lab=gf.TINY_LAB, notebook=str(tiny_class["subs"] / "reference" / gf.TINY_LAB /
                                                           f"{gf.TINY_LAB}.ipynb"), problems=["late"])
    ticket = work / "tickets" / "00000.json"  # no "key": every try raises KeyError
    nbu.write_json_atomic(ticket, {"job": {"notebook": job.notebook}, "feedback": str(out / "fb.html")})
    results: dict = {}
    cluster.run_jobs(dask_cluster["address"], [(ticket, job, "k")], results, work, tiny_class["course"], out,
                     job_timeout=60, progress=False, sandbox=False)
    (result,) = results.values()
    assert result["graded"] is False and result["problems"][0] == "late"
    assert re.fullmatch(r"not graded: the grading job failed on the cluster \(3 tries, last: KeyError: 'key'\); "
                        r"grade again to retry it", result["problems"][1]), result["problems"]
    assert not (out / ".state").exists()  # not kept: the next run tries it again
    assert "bob/tiny_lab: NOT graded after 3 tries" in (out / "cluster.log").read_text()


def _documented_slurm_lines() -> str:
    """The ``SLURMCluster`` block of autograder/README.md, up to the line that would submit jobs."""
    text = (REPO / "autograder" / "README.md").read_text(encoding="utf-8")
    section = text.split("## Grading on a cluster (Dask, Slurm)", 1)[1].split("\n## ", 1)[0]
    block = next(b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "SLURMCluster(" in b)
    lines = block.split("\ncluster.scale(", 1)[0]
    ast.parse(lines)
    return lines


def test_documented_slurm_cluster_writes_a_dask_worker_job_script():
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed (pip install -e '.[dev]')")
    namespace: dict = {}
    exec(compile(_documented_slurm_lines(), "autograder/README.md", "exec"), namespace)
    cluster = namespace["cluster"]
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    shared = namespace["SHARED"]
    assert f"{shared}/labkit/.venv/bin/python -m distributed.cli.dask_worker" in script, script
    assert f"cd {shared}/labkit" in script and "#SBATCH" in script and "--nthreads 8" in script, script
    assert cluster.scheduler_address.startswith("tcp://")
