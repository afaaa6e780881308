"""Grade a class: collect → one sandboxed job per (student, lab) → judge → report.

The pipeline (:func:`grade`):

1. :mod:`autograder.collect` turns a folder or an LMS zip into jobs (bad input becomes a job's
   problem line, never an exception for the class);
2. each job runs in its own worker process (forked by an :mod:`autograder.launcher` that imported
   the grading code once, else ``python -m autograder.worker TICKET``) through
   :mod:`autograder.job`: nbgrader executes the notebook in the sandbox, the hidden checks run
   in a second sandbox, the judge scores them against the reference;
3. finished results are kept in ``<out>/.state/`` keyed by a hash of the submission and the
   grading settings, so a killed run, started again, skips what it finished;
4. :mod:`autograder.report` writes ``grades.csv``, ``cell_scores.csv`` and the summary.

Submissions are copied only into a private work folder outside ``--out`` (deleted at the end);
``--out`` receives results, feedback HTML and the resume state, never a submission.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from autograder import capstone, report
from autograder import notebook as nbu
from autograder.collect import Job, collect
from autograder.errors import GradingError
from autograder.job import lab_cells, make_ticket, remove_tree
from autograder.launcher import LauncherDied, LauncherPool, die_with_parent
from autograder.logs import cap_lines, last_line
from autograder.submission import load_notebook, notebook_grade_ids

JOB_TIMEOUT_S = 600
STATE = ".state"
WORK_PREFIX = "autograder-work-"


@functools.lru_cache(maxsize=None)
def _source_ids(course: Path, lab: str) -> set[str]:
    return {c["grade_id"] for c in lab_cells(course, lab)} | set(nbu.graded_names(
        nbu.read_nb(course / "source" / lab / f"{lab}.ipynb")))


def mark_foreign(job: Job, course: Path, course_labs: list[str]) -> None:
    """Mark a notebook none of whose graded cells belong to its lab as not gradable (in place)."""
    if job.notebook is None:
        return
    try:
        ids = notebook_grade_ids(load_notebook(Path(job.notebook))) - {"setup"}
    except (OSError, ValueError):
        return
    if not ids or ids & _source_ids(course, job.lab):
        return
    best = max(course_labs, key=lambda lab: len(ids & _source_ids(course, lab)))
    other = best if ids & _source_ids(course, best) else "a different notebook"
    job.problems = [p for p in job.problems if not p.startswith("the notebook looks like")]
    job.problems.append(f"the notebook looks like {other}, not {job.lab}: none of its graded cells belong "
                        f"to {job.lab}; not graded")
    job.notebook = None


def _set_deadline(course: Path, labs: list[str], deadline: str, work: Path) -> Path:
    """A copy of the master gradebook in ``work`` with ``deadline`` as every lab's due date."""
    from nbgrader.api import Gradebook
    from nbgrader.utils import parse_utc

    try:
        due = parse_utc(deadline)
    except (ValueError, OverflowError):
        raise GradingError(f"--deadline {deadline!r} is not a date; use ISO format, e.g. 2025-03-01T23:59:00+01:00") from None
    shutil.copyfile(course / "gradebook.db", work / "gradebook.db")
    with Gradebook(f"sqlite:///{work / 'gradebook.db'}") as gb:
        for lab in labs:
            gb.update_or_create_assignment(lab, duedate=due)
    return work / "gradebook.db"


def _job_key(job: Job, course: Path, options: dict) -> str:
    """A hash of everything a job's result depends on: submission, timestamp, lab, settings."""
    h = hashlib.sha256()
    h.update(Path(job.notebook).read_bytes())
    for part in (job.student, job.lab, job.timestamp or "", json.dumps(options, sort_keys=True),
                 json.dumps(job.problems)):
        h.update(part.encode())
    for f in (course / "judge" / f"{job.lab}.json", course / "source" / job.lab / f"{job.lab}.ipynb",
              capstone.folder(course, job.lab) / "config.json"):
        h.update(f.read_bytes() if f.is_file() else b"")
    if job.model:  # the capstone's model: a new model.pt is graded again
        h.update(b"model" + _file_digest(Path(job.model)))
    return h.hexdigest()


def _file_digest(path: Path, limit: int = 64 * 1024 ** 2) -> bytes:
    """sha256 of a file's first ``limit`` bytes and its size (a huge file is not read whole)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            h.update(f.read(limit))
        h.update(str(path.stat().st_size).encode())
    except OSError:
        h.update(b"unreadable")
    return h.digest()


def _state_path(out: Path, job: Job) -> Path:
    return out / STATE / job.safe_id / f"{job.lab}.json"


def _resumed(out: Path, job: Job, key: str) -> dict | None:
    try:
        saved = json.loads(_state_path(out, job).read_text())
    except (OSError, ValueError):
        return None
    return saved["result"] if saved.get("key") == key else None


def _run_forked(launchers: LauncherPool, ticket_path: Path, log: Path,
                timeout: float) -> tuple[int | None, str | None] | None:
    """``(exit code, problem)`` of the ticket run by a launcher's forked child; None if no launcher ran it."""
    launcher = launchers.acquire()
    if launcher is None:
        return None
    try:
        returncode = launcher.run(ticket_path, log, timeout)
    except LauncherDied as exc:
        launchers.release(launcher, alive=False)
        if exc.pid is None:
            return None  # the job never started: a fresh process runs it
        with contextlib.suppress(ProcessLookupError, PermissionError):  # it died with the launcher
            os.killpg(exc.pid, 9)
        return None, f"the grading process was lost ({exc})"
    launchers.release(launcher)
    return returncode, (f"grading took longer than {timeout:.0f} s and was stopped" if returncode is None else None)


def _run_fresh(ticket_path: Path, log: Path, timeout: float, env: dict) -> tuple[int | None, str | None]:
    """``(exit code, problem)`` of the ticket run by a fresh ``python -m autograder.worker``."""
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "autograder.worker", str(ticket_path)], stdout=fh,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=die_with_parent)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            return proc.returncode, f"grading took longer than {timeout:.0f} s and was stopped"
    return proc.returncode, None


def _run_worker(ticket_path: Path, timeout: float, env: dict, launchers: LauncherPool | None = None) -> dict:
    """Run one ticket in a process of its own (forked by a launcher of ``launchers``, else a fresh
    ``python -m autograder.worker``); any failure becomes the job's problem."""
    ticket = json.loads(ticket_path.read_text())
    log = ticket_path.with_suffix(".log")
    ran = _run_forked(launchers, ticket_path, log, timeout) if launchers is not None else None
    returncode, reason = ran if ran is not None else _run_fresh(ticket_path, log, timeout, env)
    if ticket.get("sandbox", True):
        from autograder.limits import Limits

        for suffix in ("-k", "-p"):  # whatever a killed worker left in its sandboxes
            Limits.detect().kill(ticket["sandbox_name"] + suffix)
    result_path = ticket_path.with_suffix(".result.json")
    if reason is None and result_path.is_file():
        return json.loads(result_path.read_text())
    if reason is None:
        reason = f"grader process exited with code {returncode}: {last_line(log.read_text(errors='replace')[-300:])}"
    job = ticket["job"]
    return {"student": job["student"], "lab": job["lab"], "graded": False, "cells": {},
            "problems": cap_lines(job["problems"] + [reason])}


def _worker_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONWARNINGS="ignore",
               TQDM_DISABLE="1", PYTHONDONTWRITEBYTECODE="1")
    for name in ("LABKIT_ARTIFACTS", "LABKIT_PROFILE"):
        env.pop(name, None)
    return env


def _check_course(course: Path, labs: list[str] | None) -> list[str]:
    if not (course / "gradebook.db").is_file():
        raise GradingError(f"{course} has no gradebook.db; run `python -m autograder release` first")
    course_labs = sorted(p.name for p in (course / "source").iterdir() if p.is_dir())
    for lab in labs or course_labs:
        if lab not in course_labs:
            raise GradingError(f"lab {lab!r} is not in the course at {course} (has: {', '.join(course_labs)})")
        if not (course / "judge" / f"{lab}.json").is_file():
            raise GradingError(f"{course} has no judge/{lab}.json (the reference's hidden-check record); "
                               f"run `python -m autograder release` again")
    return course_labs


def _check_sandbox(sandbox: bool, scheduler: str | None, mem_bytes: int | None, quiet: bool) -> None:
    """Refuse to start where the sandbox cannot run (one line saying why); print what it caps."""
    if sandbox and scheduler:
        if not quiet:
            print("sandbox: checked on every Dask worker before grading")
    elif sandbox:
        from autograder.limits import Limits
        from autograder.sandbox import sandbox_check
        from autograder.sandbox_spec import SandboxSpec

        problem = sandbox_check()
        if problem:
            raise GradingError(problem)
        if not quiet:
            print(Limits.detect().describe(SandboxSpec(name="-", cwd="/", rw=[], ro=[], env={},
                                                       mem_bytes=int(mem_bytes or 2 * 1024 ** 3))))
    elif not quiet:
        print("warning: grading WITHOUT a sandbox (--no-sandbox): student code runs with your rights")


def untimed_warning(jobs: list[Job], deadline: str | None, late_penalty_per_day: float) -> str | None:
    """One line when a late penalty is asked for but some submissions carry no submission time (a Canvas
    or Moodle download has none; Canvas's ``LATE_`` is noted on the row by :mod:`autograder.lms`)."""
    untimed = sum(1 for j in jobs if j.notebook and not j.timestamp)
    if not (deadline and late_penalty_per_day and untimed):
        return None
    return (f"warning: {untimed} of {sum(1 for j in jobs if j.notebook)} submissions have no submission time "
            "(timestamp.txt beside the notebook): no late penalty can apply to them")


def grade(submissions: Path, out: Path, course: Path, labs: list[str] | None = None, workers: int | None = None,
          deadline: str | None = None, late_penalty_per_day: float = 0.0, db_url: str | None = None,
          sandbox: bool = True, mem_bytes: int | None = None, job_timeout: float = JOB_TIMEOUT_S,
          cell_timeout: int | None = None, progress: bool = True, quiet: bool = False,
          scheduler: str | None = None, work_dir: Path | None = None) -> list[dict]:
    """Grade every submission; write ``out/grades.csv``, ``out/cell_scores.csv``, ``out/feedback/``.

    ``course`` is a course folder built by :func:`autograder.release.build_course`. ``sandbox``:
    False grades without bubblewrap (trusted submissions only); True refuses to start where the
    sandbox cannot run, with one line saying why. ``cell_timeout``: seconds per notebook cell
    (default ``autograder.config.CELL_TIMEOUT_S``; test cells get at most 20 s). ``scheduler``: the
    address of a Dask scheduler to grade on (:mod:`autograder.cluster`) instead of ``workers``
    local processes; ``work_dir``: the folder, on storage every Dask worker sees, in which the
    run's work folder is made (default: the temporary folder). Returns the grade rows, sorted by student, lab.
    """
    out, course = Path(out).resolve(), Path(course).resolve()
    course_labs = _check_course(course, labs)
    labs = labs or course_labs
    _check_sandbox(sandbox, scheduler, mem_bytes, quiet)
    out.mkdir(parents=True, exist_ok=True)
    sweep_stale_work()
    if work_dir is not None:
        from autograder.cluster import make_work

        work = make_work(Path(work_dir))
    else:
        work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
    os.chmod(work, 0o700)
    (work / "pid").write_text(str(os.getpid()))
    try:
        jobs = [j for j in collect(Path(submissions).resolve(), labs, work, only_lab=labs[0] if len(labs) == 1
                                   else None) if j.lab in labs]
        for job in jobs:
            mark_foreign(job, course, course_labs)
        warning = untimed_warning(jobs, deadline, late_penalty_per_day)
        if warning:
            print(warning)
        gradebook = _set_deadline(course, labs, deadline, work) if deadline else course / "gradebook.db"
        options = {"sandbox": sandbox, "mem_bytes": int(mem_bytes or 2 * 1024 ** 3), "job_timeout": job_timeout,
                   "late_penalty_per_day": late_penalty_per_day, "deadline": deadline or "",
                   "cell_timeout": cell_timeout}
        results = _run_jobs(jobs, course, work, out, gradebook, options, workers, job_timeout, progress,
                            scheduler)
        rows = report.write_outputs(results, {lab: lab_cells(course, lab) for lab in labs}, out)
        capstone.write_leaderboard(results, out)
        if db_url:
            report.merge_gradebook(results, db_url)
    finally:
        if not os.environ.get("AUTOGRADER_KEEP_WORK"):  # debugging: keep the job folders
            remove_tree(work)
    if not quiet:
        print(report.summary_table(rows))
    return rows


def sweep_stale_work(tmp: Path | None = None) -> list[Path]:
    """Remove the work folders of grading runs that were killed (their pid is gone); returns them."""
    removed = []
    try:
        folders = list(Path(tmp or tempfile.gettempdir()).glob(WORK_PREFIX + "*"))
    except OSError:
        return removed
    for folder in folders:
        try:
            pid = int((folder / "pid").read_text())
            os.kill(pid, 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue  # not ours to judge (no pid file yet, or not readable)
        remove_tree(folder)
        removed.append(folder)
    return removed


def _run_jobs(jobs: list[Job], course: Path, work: Path, out: Path, gradebook: Path, options: dict,
              workers: int | None, job_timeout: float, progress: bool,
              scheduler: str | None = None) -> dict[tuple[str, str], dict]:
    """Results of every job: resumed from ``out/.state`` or graded now by a pool of worker processes
    (or by the Dask cluster at ``scheduler``)."""
    results: dict[tuple[str, str], dict] = {}
    todo: list[tuple[Path, Job, str]] = []
    (work / "tickets").mkdir()
    for k, job in enumerate(jobs):
        if job.notebook is None:
            results[(job.student, job.lab)] = {"student": job.student, "lab": job.lab, "graded": False,
                                               "cells": {}, "problems": job.problems}
            continue
        key = _job_key(job, course, options)
        done = _resumed(out, job, key)
        if done is not None:
            results[(job.student, job.lab)] = done
            continue
        ticket = work / "tickets" / f"{k:05d}.json"
        nbu.write_json_atomic(ticket, make_ticket(job, k, course, work, out, gradebook, options))
        todo.append((ticket, job, key))
    if scheduler:
        from autograder import cluster

        cluster.run_jobs(scheduler, todo, results, work, course, out, job_timeout, progress, options["sandbox"])
        return results
    env = _worker_env()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="grading", unit="nb", file=sys.stdout, disable=not todo)
    n_workers = max(1, int(workers or os.cpu_count() or 1))
    launchers = None if os.environ.get("AUTOGRADER_NO_LAUNCHER") or not todo else LauncherPool(n_workers, env, work)
    try:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            futures = {pool.submit(_run_worker, ticket, job_timeout + 60, env, launchers): (job, key)
                       for ticket, job, key in todo}
            for fut in as_completed(futures):
                job, key = futures[fut]
                r = fut.result()
                results[(job.student, job.lab)] = r
                nbu.write_json_atomic(_state_path(out, job), {"key": key, "result": r})
                if bar is not None:
                    bar.update(1)
    finally:
        if launchers is not None:
            launchers.close()
    if bar is not None:
        bar.close()
    return results
