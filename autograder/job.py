"""One grading job: a (student, lab) submission through nbgrader, the sandbox and the judge.

``python -m autograder.worker TICKET`` runs :func:`run_ticket` in a fresh process (started by
:func:`autograder.grade.grade`), so a crash or a memory blow-up of the grading machinery stays in
it. The steps, each under its own error handling so that a failure is this job's problem line:

1. **prepare**: a private course folder ``<work>/jobs/<k>/`` (the lab's source files without
   notebooks, the sanitised submission, a copy of the gradebook), created only now and deleted
   at the end, so a job's files exist only while it runs;
2. **execute**: nbgrader ``autograde`` with the hidden-test regions removed before execution
   (they never reach the student's kernel) and the kernel in the sandbox (:mod:`autograder.sandbox`);
3. **probe**: the hidden checks over the student's solution cells, in a second sandbox
   (:mod:`autograder.probe`);
4. **judge**: the records against the reference's (:mod:`autograder.judge`); the judge's
   points replace nbgrader's for every autograded test cell in the job's gradebook;
5. **model** (the capstone only): the submitted ``model.pt`` evaluated on the hidden test half in
   a third sandbox (:mod:`autograder.capstone`); its points replace the model cell's;
6. **feedback**: the verdicts shown under each test cell, hidden tests scrubbed, HTML sanitised.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from autograder import capstone
from autograder import notebook as nbu
from autograder.collect import Job
from autograder.logs import cap_lines, error_line, last_line
from labkit.files import write_text
from autograder.submission import load_notebook, sanitize_notebook

KERNEL_NAME = "ag-sandbox"
PROBE_TIMEOUT_S = 300
DISK_BYTES = 512 * 1024 ** 2  # each sandbox's writable folder (a tmpfs, see scratch())

_CLONE_NEWNS, _MS_NOSUID, _MS_NODEV, _MS_REC, _MS_PRIVATE = 0x20000, 2, 4, 16384, 1 << 18


def private_mounts() -> bool:
    """Give this worker process a mount namespace of its own (call it first, single-threaded).

    The size-capped folders of :func:`scratch` are then mounted there only: nobody else sees
    them, and they vanish with the worker, however deep or large a sandbox made them.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if os.geteuid() != 0 or libc.unshare(_CLONE_NEWNS) != 0:
        return False
    return libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) == 0


def scratch(path: Path, size: int) -> None:
    """Create ``path`` as a tmpfs of ``size`` bytes when this worker has private mounts, else a folder.

    A sandbox's writable folder lives there, so filling the disk stops at ``size`` (ENOSPC) and
    the pages count against the sandbox's memory cap too.
    """
    import ctypes

    path.mkdir(parents=True, exist_ok=True)
    if not _PRIVATE_MOUNTS:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"agscratch", str(path).encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                  f"size={int(size)},mode=0755".encode()) != 0:
        raise OSError(ctypes.get_errno(), f"cannot mount a tmpfs on {path}")


_PRIVATE_MOUNTS = False


def lab_cells(course: Path, lab: str) -> list[dict]:
    """Graded cells of ``lab`` in notebook order: ``{notebook, grade_id, max_score, auto}``."""
    nb = nbu.read_nb(course / "source" / lab / f"{lab}.ipynb")
    out = []
    for cell in nb["cells"]:
        meta = nbu.nbgrader_meta(cell)
        if meta.get("grade"):
            out.append({"notebook": lab, "grade_id": meta["grade_id"], "max_score": nbu.points(cell),
                        "auto": cell.get("cell_type") == "code"})
    return out


# ---------------------------------------------------------------------------- prepare

def prepare(job: Job, jdir: Path, course: Path, gradebook: Path) -> Path:
    """Create the job's private course folder in ``jdir``; returns the submitted notebook's path."""
    if jdir.exists():
        shutil.rmtree(jdir)
    croot = jdir / "course"
    # Only the lab's extra files (checkpoints): the kernel never needs the source notebook.
    shutil.copytree(course / "source" / job.lab, croot / "source" / job.lab,
                    ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints", "__pycache__"))
    sub = croot / "submitted" / job.safe_id / job.lab
    sub.mkdir(parents=True)
    source_nb = nbu.read_nb(course / "source" / job.lab / f"{job.lab}.ipynb")
    nb, problems = sanitize_notebook(load_notebook(Path(job.notebook)), source_nb)
    job.problems.extend(problems)
    path = sub / f"{job.lab}.ipynb"
    nbu.write_json_atomic(path, nb)
    if job.timestamp:
        (sub / "timestamp.txt").write_text(job.timestamp + "\n")
    shutil.copyfile(gradebook, jdir / "gradebook.db")
    return path


# ---------------------------------------------------------------------------- execute

def _sandbox_spec(name: str, cwd: Path, rw: list[Path], ticket: dict):
    from autograder.sandbox_spec import GiB, SandboxSpec

    return SandboxSpec(name=name, cwd=str(cwd), rw=[str(p) for p in rw], ro=[], env={},
                       mem_bytes=int(ticket.get("mem_bytes") or 2 * GiB),
                       cpu_seconds=int(ticket.get("job_timeout", 600)))


def _nbgrader_config(jdir: Path, ticket: dict, kernel_name: str | None, run_dir: Path | None):
    from nbgrader.preprocessors import (CheckCellMetadata, ClearHiddenTests, ClearOutput,
                                        DeduplicateIds, IgnorePattern, LimitOutput, OverwriteCells,
                                        OverwriteKernelspec, SaveAutoGrades)
    from nbconvert.preprocessors import ClearMetadataPreprocessor

    from autograder.config import CELL_TIMEOUT_S, make_config
    from autograder.execute import GuardedExecute
    from autograder.feedback import feedback_config
    from autograder.output_caps import LimitOutputBytes

    config = make_config(jdir / "course", db_url=f"sqlite:///{jdir / 'gradebook.db'}", kernel_name=kernel_name,
                         late_penalty_per_day=float(ticket.get("late_penalty_per_day", 0.0)), ipc_dir=run_dir,
                         cell_timeout=int(ticket.get("cell_timeout") or CELL_TIMEOUT_S))
    # Hidden tests are cut out after OverwriteCells restored the test cells and before anything
    # runs: the student's kernel never holds them (the judge runs them elsewhere).
    config.Autograde.sanitize_preprocessors = [ClearOutput, DeduplicateIds, OverwriteKernelspec, OverwriteCells,
                                               ClearHiddenTests, CheckCellMetadata]
    config.Autograde.autograde_preprocessors = [GuardedExecute, IgnorePattern, ClearMetadataPreprocessor,
                                                LimitOutput, LimitOutputBytes, SaveAutoGrades,
                                                CheckCellMetadata]
    # no AssignLatePenalties: the penalty follows the judge's points, in save_scores() alone
    # A plain cell holding a copy of a test cell (a duplicated or renamed grade id) is cleared too.
    config.ClearHiddenTests.enforce_metadata = False
    feedback_config(config)
    return config


def execute(job: Job, jdir: Path, ticket: dict) -> tuple[Any, Any, str | None]:
    """nbgrader autograde in the sandboxed kernel; returns ``(api, config, problem or None)``."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    run_dir = jdir / "run"
    scratch(run_dir, 16 * 1024 ** 2)  # the kernel's ipc sockets: writable by the sandbox, so capped too
    os.environ["JUPYTER_RUNTIME_DIR"] = str(run_dir)
    kernel_name = None
    if ticket.get("sandbox", True):
        from autograder.sandbox import write_kernelspec

        # the kernel's own folder with the lab's files (checkpoints), apart from nbgrader's output
        cwd = jdir / "kernel"
        scratch(cwd, int(ticket.get("disk_bytes") or DISK_BYTES))
        shutil.copytree(jdir / "course" / "source" / job.lab, cwd, dirs_exist_ok=True)
        spec = _sandbox_spec(ticket["sandbox_name"] + "-k", cwd, [run_dir], ticket)
        spec.write(jdir / "kernel-sandbox.json")
        write_kernelspec(jdir / "jupyter" / "kernels", KERNEL_NAME, jdir / "kernel-sandbox.json")
        os.environ["JUPYTER_PATH"] = str(jdir / "jupyter")
        kernel_name = KERNEL_NAME
    config = _nbgrader_config(jdir, ticket, kernel_name, run_dir if kernel_name else None)
    if kernel_name:
        config.GuardedExecute.workdir = str(jdir / "kernel")
    api = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)
    api.log.setLevel(logging.ERROR)
    try:
        res = api.autograde(job.lab, job.safe_id)
    finally:
        if kernel_name:
            from autograder.limits import Limits

            Limits.detect().kill(ticket["sandbox_name"] + "-k")
    if res.get("success"):
        return api, config, _flood_problem(jdir / "course" / "autograded" / job.safe_id / job.lab / f"{job.lab}.ipynb")
    (jdir / "nbgrader.log").write_text(str(res.get("log")) + "\n" + str(res.get("error")))
    return api, config, "running the notebook failed: " + error_line(res.get("log") or "", res.get("error") or "")


def _flood_problem(graded: Path) -> str | None:
    """The problem line when :class:`autograder.execute.GuardedExecute` cut the notebook's output (its
    ``OutputLimit`` error in a cell), else None. A student can only fake it against their own row."""
    from autograder.execute import OUTPUT_LIMIT

    try:
        nb = nbu.read_nb(graded)
    except (OSError, ValueError):
        return None
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) if isinstance(cell, dict) else []:
            if isinstance(out, dict) and out.get("output_type") == "error" and out.get("ename") == OUTPUT_LIMIT:
                return "the notebook sent too much output: the rest was dropped and its kernel stopped"
    return None


# ---------------------------------------------------------------------------- probe and judge

def probe(job: Job, jdir: Path, submitted: Path, source_nb: dict, ticket: dict) -> tuple[dict, str | None]:
    """Run the hidden checks over the student's solution cells in a fresh sandbox; their records."""
    from autograder import judge

    pdir = jdir / "probe"
    scratch(pdir, int(ticket.get("disk_bytes") or DISK_BYTES))
    from autograder.config import CELL_TIMEOUT_S, TEST_CELL_TIMEOUT_S

    limit = int(ticket.get("cell_timeout") or CELL_TIMEOUT_S)
    spec = judge.probe_spec(source_nb, nbu.read_nb(submitted), test_timeout=min(TEST_CELL_TIMEOUT_S, limit),
                            cell_timeout=limit)
    nbu.write_json_atomic(pdir / "spec.json", spec)
    shutil.copyfile(judge.PROBE_SCRIPT, pdir / "probe.py")
    os.chmod(pdir, 0o777)  # the sandbox's user writes its record here
    # the record gets a small folder of its own: filling the working folder cannot stop it being written
    rdir = pdir / "record"
    scratch(rdir, 64 * 1024 ** 2)
    cmd = [sys.executable, str(pdir / "probe.py"), str(pdir / "spec.json"), str(rdir / "out.jsonl")]
    timeout = float(ticket.get("probe_timeout", PROBE_TIMEOUT_S))
    rc, timed_out = run_contained(ticket, "-p", pdir, [rdir], cmd, judge.probe_env(), timeout, jdir / "probe.log")
    records = judge.read_records(rdir / "out.jsonl")
    problem = None
    if timed_out:
        problem = f"the hidden checks took longer than {timeout:.0f} s in all and were stopped"
    elif not records and rc != 0:
        problem = f"the hidden checks could not run (exit code {rc})"
    return records, problem


def run_contained(ticket: dict, suffix: str, cwd: Path, rw: list[Path], cmd: list[str], env: dict[str, str],
                  timeout: float, log_path: Path) -> tuple[int | None, bool]:
    """Run ``cmd`` in a fresh sandbox of this job (a plain child process under ``--no-sandbox``).

    ``suffix`` names the sandbox after the job's (``-p`` probe, ``-m`` model); ``rw`` are the folders it
    may write besides ``cwd``; output goes to ``log_path``. Returns ``(exit code or None, timed out)``.
    """
    if ticket.get("sandbox", True):
        from autograder.sandbox import run_sandboxed

        spec = _sandbox_spec(ticket["sandbox_name"] + suffix, cwd, rw, ticket)
        spec.env.update(env)
        return run_sandboxed(spec, cmd, timeout, log_path)
    try:
        with open(log_path, "wb") as log:
            rc = subprocess.run(cmd, cwd=cwd, env=dict(os.environ, **env), stdout=log, stderr=subprocess.STDOUT,
                                timeout=timeout).returncode
        return rc, False
    except subprocess.TimeoutExpired:
        return None, True


def save_scores(config: Any, job: Job, verdicts: dict[str, dict], per_day: float) -> None:
    """Write the judge's points into the job's gradebook (nbgrader's own scores are replaced).

    The late penalty is computed again from those points: nbgrader computed it from the
    kernel's scores, which the student's code controls (a kernel that exits early would dodge it).
    """
    from nbgrader.api import Gradebook, MissingEntry

    from autograder.config import PerDayPenalty

    with Gradebook(config.CourseDirectory.db_url, config.CourseDirectory.course_id) as gb:
        for gid, v in verdicts.items():
            try:
                grade = gb.find_grade(gid, job.lab, job.lab, job.safe_id)
            except MissingEntry:
                continue
            grade.auto_score = v["points"]
            grade.needs_manual_grade = False
        gb.db.commit()
        sub = gb.find_submission(job.lab, job.safe_id)
        late = sub.total_seconds_late or 0.0
        for snb in sub.notebooks:
            snb.late_submission_penalty = PerDayPenalty(per_day=per_day).late_submission_penalty(
                job.safe_id, snb.score, late)
        gb.db.commit()


def read_scores(config: Any, job: Job, result: dict) -> None:
    """Copy the submission's per-cell scores and totals from the job's gradebook into ``result``."""
    from nbgrader.api import Gradebook

    with Gradebook(config.CourseDirectory.db_url, config.CourseDirectory.course_id) as gb:
        sub = gb.find_submission(job.lab, job.safe_id)
        for snb in sub.notebooks:
            for g in snb.grades:
                scored = g.auto_score is not None or g.manual_score is not None
                result["cells"][g.name] = {"score": g.score if scored else None, "max_score": g.max_score,
                                           "needs_manual": bool(g.needs_manual_grade)}
        result.update(graded=True, raw_score=sub.score, max_score=sub.max_score,
                      late_submission_penalty=sub.late_submission_penalty or 0.0,
                      timestamp=str(sub.timestamp) if sub.timestamp else "",
                      duedate=str(sub.duedate) if sub.duedate else "")


# ---------------------------------------------------------------------------- feedback

def feedback(api: Any, job: Job, jdir: Path, source_nb: dict, verdicts: dict[str, dict], out: Path) -> str | None:
    """Render the student's feedback HTML into ``out``; returns a problem line or None."""
    from autograder import feedback as fb
    from autograder.html_safety import sanitize_feedback_file

    agnb = jdir / "course" / "autograded" / job.safe_id / job.lab / f"{job.lab}.ipynb"
    if not agnb.is_file():
        return "no feedback: the notebook was not executed"
    fb.strip_hidden_tests(agnb, nbu.hidden_test_lines(source_nb), verdicts=verdicts)
    res = api.generate_feedback(job.lab, job.safe_id)
    html = jdir / "course" / "feedback" / job.safe_id / job.lab / f"{job.lab}.html"
    if not (res.get("success") and html.is_file()):
        return "feedback failed: " + last_line(res.get("error") or "")
    sanitize_feedback_file(html)
    write_text(out, html.read_text(encoding="utf-8"))
    return None


# ---------------------------------------------------------------------------- the job

def run_job(ticket: dict) -> dict:
    """Grade one ticket (see :func:`autograder.grade.grade`); returns the result dict."""
    job = Job(**ticket["job"])
    course, work = Path(ticket["course"]), Path(ticket["work"])
    jdir = work / "jobs" / ticket["key"]
    result: dict[str, Any] = {"student": job.student, "lab": job.lab, "problems": job.problems,
                              "cells": {}, "graded": False, "seconds": 0.0}
    t0 = time.perf_counter()
    try:
        submitted = prepare(job, jdir, course, Path(ticket["gradebook"]))
        source_nb = nbu.read_nb(course / "source" / job.lab / f"{job.lab}.ipynb")
        api, config, problem = execute(job, jdir, ticket)
        if problem:
            job.problems.append(problem)
        records, problem = probe(job, jdir, submitted, source_nb, ticket)
        if problem:
            job.problems.append(problem)
        from autograder import judge

        expected = json.loads((course / "judge" / f"{job.lab}.json").read_text())
        maxp = {c["grade_id"]: c["max_score"] for c in lab_cells(course, job.lab)}
        verdicts = judge.judge_cells(expected, records, maxp)
        model_cell = capstone.MODEL_CELLS.get(job.lab)
        if model_cell in maxp:  # the capstone's model cell: always scored here, never by the kernel
            row, verdict = capstone.evaluate_job(course, job.lab, job.model, jdir, ticket, maxp[model_cell])
            verdicts[model_cell] = {**verdict, "max_points": maxp[model_cell]}
            result["model"] = row
            if row["problem"]:
                job.problems.append(f"model.pt: {row['problem']}")
        save_scores(config, job, verdicts, float(ticket.get("late_penalty_per_day", 0.0)))
        read_scores(config, job, result)
        result["verdicts"] = {gid: v["message"] for gid, v in verdicts.items()}
        fb_path = Path(ticket["feedback"])
        problem = feedback(api, job, jdir, source_nb, verdicts, fb_path)
        if problem:
            job.problems.append(problem)
        else:
            result["feedback"] = str(fb_path)
    except Exception as exc:  # noqa: BLE001 - any failure is this submission's problem, never the run's
        job.problems.append(f"grader error: {type(exc).__name__}: {str(exc)[:200]}")
    finally:
        if not os.environ.get("AUTOGRADER_KEEP_WORK"):
            remove_tree(jdir)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    # this grading process's own peak memory (sandboxes excluded): bounded whatever the kernel sends
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["problems"] = cap_lines(job.problems)
    return result


def make_ticket(job: Job, k: int, course: Path, work: Path, out: Path, gradebook: Path, options: dict) -> dict:
    """What a worker needs to grade ``job`` (written as JSON; read by :func:`run_ticket`)."""
    key = f"{k:05d}"
    return dict(options, job=asdict(job), key=key, course=str(course), work=str(work), gradebook=str(gradebook),
                feedback=str(out / "feedback" / job.safe_id / job.lab / f"{job.lab}.html"),
                sandbox_name=f"ag-{key}-{uuid.uuid4().hex[:8]}")


def run_ticket(path: Path) -> int:
    """``python -m autograder.worker TICKET``: grade and write ``TICKET`` with ``.result.json``."""
    global _PRIVATE_MOUNTS
    ticket = json.loads(Path(path).read_text())
    if ticket.get("sandbox", True):
        _PRIVATE_MOUNTS = private_mounts()
    result = run_job(ticket)
    nbu.write_json_atomic(Path(path).with_suffix(".result.json"), result)
    return 0


def remove_tree(path: Path) -> None:
    """Delete a folder a sandbox may have filled: never follows links, never recurses in Python.

    ``shutil.rmtree`` recurses once per level (a 3,000-level tree raises RecursionError);
    GNU ``rm -rf`` walks iteratively and does not follow symlinks. Never raises.
    """
    try:
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError):
        pass
