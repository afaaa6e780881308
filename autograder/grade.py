"""Grade a class: collect submissions, autograde each (student, lab) in its own process, merge.

Why one process and one gradebook per (student, lab): nbgrader has no parallel autograde,
and several processes writing one SQLite file lock each other. Each job gets a private
course folder (``<work>/jobs/<k>/``: the lab's source files, the one submission, a copy of
the master gradebook) and a sandboxed kernel (:mod:`autograder.sandbox`). The parent reads
the job's result JSON and writes deterministic CSVs, so a crash, a timeout or a broken file
in one submission is that submission's row, never the run's.

Submission layouts accepted by :func:`collect`:

* a folder ``<student_id>/<lab_id>/<lab_id>.ipynb`` (optional ``timestamp.txt`` beside the
  notebook, nbgrader's format, e.g. ``2025-03-01 12:00:00 UTC``);
* a zip of that folder (a single top-level folder around it is fine);
* a flat LMS zip (Moodle / Canvas downloads) whose file names carry the student id, matched by
  :data:`FLAT_PATTERN`: ``<anything>_<student_id>_<anything>_<lab_id>[-<n>].ipynb`` (Canvas:
  ``name_12345_67890_lab1_early_stopping_transfer.ipynb``) or Moodle's folder-per-submission
  ``<Full Name>_<student_id>_assignsubmission_file_/<lab_id>.ipynb``.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autograder import notebook as nbu

STUDENT_ID = re.compile(r"^[A-Za-z0-9_.@+\-]+$")
# Flat LMS zip: the student id is the token after the first "_" (Canvas: name_<id>_<subid>_file).
FLAT_PATTERN = re.compile(r"^(?P<name>[^_/]+)_(?P<student>[A-Za-z0-9.@+\-]+)_(?P<rest>.*)$")
GRADES_COLUMNS = ["assignment", "duedate", "timestamp", "student_id", "last_name", "first_name", "email",
                  "raw_score", "late_submission_penalty", "score", "max_score", "status", "problems"]
CELL_COLUMNS = ["student_id", "assignment", "notebook", "grade_id", "score", "max_score"]
JOB_TIMEOUT_S = 600


class GradingError(RuntimeError):
    """Bad input for the whole run (not one submission); the message says how to fix it."""


@dataclass
class Job:
    """One (student, lab) to grade. ``notebook`` is None when there is nothing gradable."""

    student: str
    lab: str
    notebook: str | None = None
    timestamp: str | None = None
    problems: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------- collecting

def _extract_zip(zpath: Path, dest: Path, labs: list[str]) -> Path:
    """Extract ``zpath`` into ``dest`` safely (no absolute paths or ``..``); returns the root."""
    with zipfile.ZipFile(zpath) as zf:
        for info in zf.infolist():
            parts = Path(info.filename).parts
            if info.filename.startswith("/") or ".." in parts or "__MACOSX" in parts:
                continue
            target = dest.joinpath(*parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    entries = [p for p in dest.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and not any(
            (entries[0] / lab).is_dir() for lab in [*labs, *nbu.LAB_IDS]) and not _looks_flat(dest):
        # a single wrapping folder around <student>/<lab>/... (not a single student's folder)
        inner = entries[0]
        if any(p.is_dir() for p in inner.iterdir()):
            return inner
    return dest


def _looks_flat(root: Path) -> bool:
    files = [p for p in root.iterdir() if p.is_file() and p.suffix == ".ipynb"]
    return bool(files)


def _lab_of_name(name: str, labs: list[str]) -> str | None:
    for lab in sorted(labs, key=len, reverse=True):
        if lab in name:
            return lab
    return None


def _flat_to_tree(root: Path, labs: list[str], dest: Path) -> Path:
    """Rebuild ``<student>/<lab>/<lab>.ipynb`` from a flat LMS layout under ``root``."""
    for path in sorted(root.rglob("*.ipynb")):
        rel = path.relative_to(root)
        m = FLAT_PATTERN.match(rel.parts[0])
        lab = _lab_of_name(path.name, labs)
        if m is None or lab is None:
            print(f"warning: skipped {rel}: the name does not match <name>_<student_id>_..._<lab_id>.ipynb")
            continue
        target = dest / m.group("student") / lab / f"{lab}.ipynb"
        if target.exists():
            print(f"warning: {m.group('student')} submitted {lab} twice; keeping {rel}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return dest


def collect(submissions: Path, labs: list[str], work: Path, only_lab: str | None = None) -> list[Job]:
    """The jobs of a submissions folder or zip (see the module docstring), sorted by student, lab."""
    submissions = Path(submissions)
    if not submissions.exists():
        raise GradingError(f"{submissions} does not exist; pass a folder <student>/<lab>/<lab>.ipynb or an LMS zip")
    root = submissions
    if submissions.is_file():
        if not zipfile.is_zipfile(submissions):
            raise GradingError(f"{submissions} is neither a folder nor a zip file")
        root = _extract_zip(submissions, work / "input", labs)
    if _looks_flat(root) or (root.is_dir() and any("assignsubmission" in p.name for p in root.iterdir())):
        root = _flat_to_tree(root, labs, work / "input-tree")

    wanted = [only_lab] if only_lab else None
    jobs: list[Job] = []
    students = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    submitted_labs = {lab.name for s in students for lab in s.iterdir() if lab.is_dir()}
    class_labs = wanted or [lab for lab in labs if lab in submitted_labs] or labs
    for sdir in students:
        student = sdir.name
        if not STUDENT_ID.match(student):
            print(f"warning: skipped folder {sdir.name!r}: not a valid student id")
            continue
        extra = sorted(p.name for p in sdir.iterdir() if p.is_dir() and p.name not in labs)
        for lab in class_labs:
            job = Job(student=student, lab=lab)
            for name in extra:
                job.problems.append(f"ignored folder {name!r}: not a lab of this course")
            ldir = sdir / lab
            nbs = sorted(ldir.glob("*.ipynb")) if ldir.is_dir() else []
            expected = ldir / f"{lab}.ipynb"
            if expected.is_file():
                job.notebook = str(expected)
            elif len(nbs) == 1:
                job.notebook = str(nbs[0])
                job.problems.append(f"notebook named {nbs[0].name!r}, expected '{lab}.ipynb'; graded it anyway")
            elif len(nbs) > 1:
                job.problems.append(f"no {lab}.ipynb and several other notebooks ({', '.join(p.name for p in nbs)})")
            else:
                job.problems.append("nothing submitted")
            ts = ldir / "timestamp.txt"
            if ts.is_file():
                job.timestamp = ts.read_text(encoding="utf-8", errors="replace").strip() or None
            if job.notebook is not None:
                problem = check_notebook(Path(job.notebook), lab)
                if problem:
                    job.problems.append(problem)
                    if problem.startswith("unreadable"):
                        job.notebook = None
            jobs.append(job)
    return jobs


def check_notebook(path: Path, lab: str) -> str | None:
    """A one-line problem with a submitted notebook, or None. 'unreadable…' means it cannot be graded."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
            return "unreadable notebook: no 'cells' list (not a Jupyter notebook)"
        import nbformat

        nbformat.reads(json.dumps(nb), as_version=4)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"unreadable notebook: malformed JSON ({exc.__class__.__name__}: {str(exc)[:80]})"
    except Exception as exc:  # noqa: BLE001 - any nbformat failure is this submission's problem
        return f"unreadable notebook: {exc.__class__.__name__}: {str(exc)[:80]}"
    ids = {nbu.grade_id(c) for c in nb["cells"]} - {None}
    # Another lab's notebook: its title cell names its own lab id (nbgrader grades it anyway: 0 points).
    text = json.dumps(nb["cells"][:3])
    others = [other for other in nbu.LAB_IDS if other != lab and other in text and lab not in text]
    if not ids:
        return "the notebook has no nbgrader cells (was it created from the released version?)"
    if others:
        return f"the notebook looks like {others[0]}, not {lab}"
    return None


# ------------------------------------------------------------------------------- one job

def _source_ids(course: Path, lab: str) -> set[str]:
    nb = nbu.read_nb(course / "source" / lab / f"{lab}.ipynb")
    return {g for g in map(nbu.grade_id, nb["cells"]) if g and g != "setup"}


def _check_foreign(job: Job, course: Path, course_labs: list[str]) -> None:
    """Mark a notebook none of whose graded cells belong to its lab as not gradable (in place).

    nbgrader would re-add every missing cell and then fail on the foreign ones; a notebook of
    another lab can score nothing here anyway.
    """
    if job.notebook is None:
        return
    ids = {g for g in map(nbu.grade_id, nbu.read_nb(Path(job.notebook))["cells"]) if g and g != "setup"}
    if not ids or ids & _source_ids(course, job.lab):
        return
    best = max(course_labs, key=lambda lab: len(ids & _source_ids(course, lab)))
    other = best if ids & _source_ids(course, best) else "a different notebook"
    job.problems = [p for p in job.problems if not p.startswith("the notebook looks like")]
    job.problems.append(f"the notebook looks like {other}, not {job.lab}: none of its graded cells belong "
                        f"to {job.lab}; not graded")
    job.notebook = None


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


def prepare_job(job: Job, k: int, course: Path, work: Path, config: dict, gradebook: Path | None = None) -> Path:
    """Create ``<work>/jobs/<k>/`` with the job's private course folder; returns the job dir."""
    jdir = work / "jobs" / f"{k:05d}"
    if jdir.exists():
        shutil.rmtree(jdir)
    croot = jdir / "course"
    src = course / "source" / job.lab
    # Only the lab's extra files (checkpoints): the kernel never needs the source notebook.
    shutil.copytree(src, croot / "source" / job.lab,
                    ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints", "__pycache__"))
    sub = croot / "submitted" / job.student / job.lab
    sub.mkdir(parents=True)
    nb = nbu.read_nb(Path(job.notebook))
    dups = deduplicate_ids(nb)
    if dups:
        job.problems.append(f"duplicated grade_id {', '.join(dups)}: later copies treated as plain cells")
    nbu.write_json_atomic(sub / f"{job.lab}.ipynb", nb)
    if job.timestamp:
        (sub / "timestamp.txt").write_text(job.timestamp + "\n")
    shutil.copyfile(gradebook or course / "gradebook.db", jdir / "gradebook.db")
    spec = dict(config, job=asdict(job), k=k, job_dir=str(jdir))
    nbu.write_json_atomic(jdir / "job.json", spec)
    return jdir


def deduplicate_ids(nb: dict) -> list[str]:
    """Make later cells with an already-seen ``grade_id`` plain cells (in place); returns those ids.

    nbgrader 0.9.6's own DeduplicateIds leaves ``metadata.nbgrader = {}``, which then makes
    ``OverwriteCells(add_missing_cells=True)`` fail with ``KeyError: 'grade_id'``.
    """
    seen: set[str] = set()
    dups: list[str] = []
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {})
        gid = (meta.get("nbgrader") or {}).get("grade_id")
        if "nbgrader" in meta and not gid:
            del meta["nbgrader"]  # same KeyError otherwise
        elif gid in seen:
            del meta["nbgrader"]
            dups.append(gid)
        elif gid:
            seen.add(gid)
    return sorted(set(dups))


def run_job_inprocess(jdir: Path) -> dict:
    """Autograde the one submission of job dir ``jdir`` (called in the worker process)."""
    import logging

    from nbgrader.api import Gradebook
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    from autograder.config import make_config
    from autograder.sandbox import SandboxSpec, write_kernelspec

    spec = json.loads((jdir / "job.json").read_text())
    job = Job(**spec["job"])
    croot = jdir / "course"
    db_url = f"sqlite:///{jdir / 'gradebook.db'}"
    run_dir = jdir / "run"
    run_dir.mkdir(exist_ok=True)
    os.environ["JUPYTER_RUNTIME_DIR"] = str(run_dir)
    kernel_name = None
    if spec.get("sandbox", True):
        hide = [str(Path(p)) for p in spec.get("hide", [])]
        sspec = SandboxSpec(hide=hide, keep=[str(run_dir)], mem_bytes=int(spec["mem_bytes"]),
                            cpu_seconds=int(spec.get("cpu_seconds", JOB_TIMEOUT_S)),
                            namespaces=bool(spec.get("namespaces", True)))
        sspec.write(jdir / "sandbox.json")
        kdir = jdir / "jupyter"
        write_kernelspec(kdir / "kernels", "ag-sandbox", jdir / "sandbox.json", sspec.namespaces)
        os.environ["JUPYTER_PATH"] = str(kdir)
        kernel_name = "ag-sandbox"
    config = make_config(croot, db_url=db_url, kernel_name=kernel_name,
                         late_penalty_per_day=float(spec.get("late_penalty_per_day", 0.0)),
                         ipc_dir=run_dir if kernel_name is not None else None)
    coursedir = CourseDirectory(config=config)
    api = NbGraderAPI(coursedir=coursedir, config=config)
    api.log.setLevel(logging.ERROR)
    t0 = time.perf_counter()
    res = api.autograde(job.lab, job.student)
    result: dict[str, Any] = {"student": job.student, "lab": job.lab, "problems": list(job.problems),
                              "seconds": 0.0, "cells": {}, "graded": False}
    if not res.get("success"):
        result["problems"].append("autograde failed: " + _error_line(res.get("log") or "", res.get("error") or ""))
        (jdir / "nbgrader.log").write_text(str(res.get("log")) + "\n" + str(res.get("error")))
        return result
    result["seconds"] = time.perf_counter() - t0
    with Gradebook(db_url, config.CourseDirectory.course_id) as gb:
        sub = gb.find_submission(job.lab, job.student)
        for snb in sub.notebooks:
            for g in snb.grades:
                result["cells"][g.name] = {"score": g.score if (g.auto_score is not None or g.manual_score is not None)
                                           else None, "max_score": g.max_score,
                                           "needs_manual": bool(g.needs_manual_grade)}
        result.update(graded=True, raw_score=sub.score, max_score=sub.max_score,
                      late_submission_penalty=sub.late_submission_penalty or 0.0,
                      timestamp=str(sub.timestamp) if sub.timestamp else "",
                      duedate=str(sub.duedate) if sub.duedate else "")
    # Feedback without hidden tests: strip them from the autograded copy, then render.
    agnb = croot / "autograded" / job.student / job.lab / f"{job.lab}.ipynb"
    strip_hidden_tests(agnb)
    fres = api.generate_feedback(job.lab, job.student)
    html = croot / "feedback" / job.student / job.lab / f"{job.lab}.html"
    if fres.get("success") and html.is_file():
        result["feedback"] = str(html)
    else:
        result["problems"].append("feedback failed: " + _last_line(fres.get("error") or ""))
    return result


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_hidden_tests(path: Path) -> None:
    """Remove hidden tests from notebook ``path`` (in place), sources *and* outputs.

    Each hidden region becomes one comment line. Outputs are scrubbed too: an IPython
    traceback quotes the lines around the failing one, which can be hidden-test lines.
    """
    nb = nbu.read_nb(path)
    for cell in nb["cells"]:
        src = nbu.cell_source(cell)
        if nbu.BEGIN_HIDDEN not in src:
            continue
        secret = [ln for ln in nbu.hidden_test_lines({"cells": [cell]}) if len(ln) >= 4]
        cell["source"] = nbu.strip_region(src, nbu.BEGIN_HIDDEN, nbu.END_HIDDEN, nbu.HIDDEN_REPLACEMENT)

        def clean(text: str) -> str:
            keep = []
            for line in text.splitlines(keepends=True):
                plain = _ANSI.sub("", line)
                if any(m in plain for m in nbu.LEAK_MARKERS) or any(s in plain for s in secret):
                    continue
                keep.append(line)
            return "".join(keep)

        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                out["traceback"] = [clean(t) for t in out.get("traceback", [])]
            elif out.get("output_type") == "stream":
                out["text"] = clean("".join(out["text"]) if isinstance(out.get("text"), list) else out.get("text", ""))
            elif "data" in out:
                for mime, value in list(out["data"].items()):
                    if mime.startswith("text/"):
                        out["data"][mime] = clean("".join(value) if isinstance(value, list) else value)
    nbu.write_json_atomic(path, nb)


def _error_line(log: str, error: str) -> str:
    """The most telling line of a failed nbgrader run (its log holds the real exception)."""
    for text in (log, error):
        for line in reversed(str(text).splitlines()):
            if re.search(r"(Error|Exception)\b.*:", line) and "NbGraderException" not in line:
                return line.strip()[:200]
    return _last_line(error or log)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "unknown error"


def worker_main(argv: list[str]) -> int:
    """``python -m autograder.worker JOB_DIR``: grade and write ``JOB_DIR/result.json``."""
    jdir = Path(argv[0])
    try:
        result = run_job_inprocess(jdir)
    except Exception as exc:  # noqa: BLE001 - the job's failure is its own result
        spec = json.loads((jdir / "job.json").read_text())
        result = {"student": spec["job"]["student"], "lab": spec["job"]["lab"], "graded": False,
                  "cells": {}, "problems": spec["job"]["problems"] + [f"grader error: {type(exc).__name__}: {exc}"]}
    nbu.write_json_atomic(jdir / "result.json", result)
    return 0


# ------------------------------------------------------------------------------- the class

def _run_worker(jdir: Path, timeout: float, env: dict) -> dict:
    """Run one job in a fresh process; any failure becomes the job's problem."""
    spec = json.loads((jdir / "job.json").read_text())
    log = jdir / "worker.log"
    try:
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "autograder.worker", str(jdir)], stdout=fh,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                raise
    except subprocess.TimeoutExpired:
        reason = f"grading took longer than {timeout:.0f} s and was stopped"
    else:
        if (jdir / "result.json").is_file():
            return json.loads((jdir / "result.json").read_text())
        tail = log.read_text(errors="replace")[-300:] if log.exists() else ""
        reason = f"grader process exited with code {proc.returncode}: {_last_line(tail)}"
    return {"student": spec["job"]["student"], "lab": spec["job"]["lab"], "graded": False, "cells": {},
            "problems": spec["job"]["problems"] + [reason]}


def _fmt(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return repr(round(x, 6))
    return str(x)


def grade(submissions: Path, out: Path, course: Path, labs: list[str] | None = None, workers: int | None = None,
          deadline: str | None = None, late_penalty_per_day: float = 0.0, db_url: str | None = None,
          sandbox: bool = True, mem_bytes: int | None = None, job_timeout: float = JOB_TIMEOUT_S,
          extra_hide: list[Path] = (), progress: bool = True, quiet: bool = False) -> list[dict]:
    """Grade every submission; write ``out/grades.csv``, ``out/cell_scores.csv``, ``out/feedback/``.

    ``course`` is a course folder built by :func:`autograder.release.build_course`.
    ``db_url``: a gradebook into which the merged results are also written (default:
    ``sqlite:///<out>/gradebook.db``); the per-job gradebooks are private SQLite files.
    Returns the per-(student, lab) result dicts, sorted by student then lab.
    """
    from autograder.sandbox import GiB, namespaces_available

    out = Path(out).resolve()
    course = Path(course).resolve()
    if not (course / "gradebook.db").is_file():
        raise GradingError(f"{course} has no gradebook.db; run `python -m autograder release` first")
    course_labs = sorted(p.name for p in (course / "source").iterdir() if p.is_dir())
    labs = labs or course_labs
    for lab in labs:
        if lab not in course_labs:
            raise GradingError(f"lab {lab!r} is not in the course at {course} (has: {', '.join(course_labs)})")
    workers = max(1, int(workers or os.cpu_count() or 1))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".grading-", dir=out))
    try:
        jobs = collect(Path(submissions).resolve(), labs, work, only_lab=labs[0] if len(labs) == 1 else None)
        jobs = [j for j in jobs if j.lab in labs]
        for job in jobs:
            _check_foreign(job, course, course_labs)
        if deadline:
            _set_deadline(course, labs, deadline, work)
            gb_master = work / "gradebook.db"
        else:
            gb_master = course / "gradebook.db"
        namespaces = sandbox and namespaces_available()
        if sandbox and not namespaces:
            print("warning: cannot create namespaces here (unshare not permitted): grading with memory and CPU "
                  "limits only, WITHOUT network isolation or hidden instructor files; use a container for "
                  "production grading (autograder/README.md)")
        repo_nb = nbu.NOTEBOOKS
        hide = [str(work), str(course), str(out), str(Path(submissions).resolve()), str(repo_nb),
                *map(str, extra_hide)]
        config = {"sandbox": sandbox, "namespaces": namespaces, "hide": hide,
                  "mem_bytes": int(mem_bytes or 2 * GiB), "cpu_seconds": int(job_timeout),
                  "late_penalty_per_day": late_penalty_per_day}
        todo = [prepare_job(job, k, course, work, config, gradebook=gb_master)
                for k, job in enumerate(jobs) if job.notebook is not None]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg",
                   PYTHONWARNINGS="ignore", TQDM_DISABLE="1", PYTHONDONTWRITEBYTECODE="1")
        env.pop("LABKIT_ARTIFACTS", None)
        env.pop("LABKIT_PROFILE", None)
        results: dict[tuple[str, str], dict] = {}
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="grading", unit="nb", file=sys.stdout, disable=not todo)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_run_worker, jdir, job_timeout, env): jdir for jdir in todo}
            for fut in as_completed(futures):
                r = fut.result()
                results[(r["student"], r["lab"])] = r
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        for job in jobs:
            if (job.student, job.lab) not in results:
                results[(job.student, job.lab)] = {"student": job.student, "lab": job.lab, "graded": False,
                                                   "cells": {}, "problems": job.problems}
        rows = _write_outputs(results, course, out, work)
        if db_url:
            _merge_gradebook(results, db_url)
    finally:
        if not os.environ.get("AUTOGRADER_KEEP_WORK"):  # debugging: keep the job folders
            shutil.rmtree(work, ignore_errors=True)
    if not quiet:
        print(summary_table(rows))
    return rows


def _set_deadline(course: Path, labs: list[str], deadline: str, work: Path) -> None:
    """Copy the master gradebook into ``work`` with ``deadline`` as every lab's due date."""
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


def _write_outputs(results: dict, course: Path, out: Path, work: Path) -> list[dict]:
    """grades.csv, cell_scores.csv and feedback/ from the job results (sorted: byte-identical reruns)."""
    rows, cell_rows = [], []
    for (student, lab) in sorted(results):
        r = results[(student, lab)]
        cells = lab_cells(course, lab)
        max_score = sum(c["max_score"] for c in cells)
        got = r.get("cells", {})
        for c in cells:
            g = got.get(c["grade_id"])
            score = (g["score"] if g else None) if r.get("graded") else (0.0 if c["auto"] else 0.0)
            cell_rows.append([student, lab, c["notebook"], c["grade_id"], _fmt(score if score is None else float(score)),
                              _fmt(float(c["max_score"]))])
        raw = float(r.get("raw_score", 0.0) or 0.0)
        pen = float(r.get("late_submission_penalty", 0.0) or 0.0)
        status = "graded" if r.get("graded") else "not graded"
        if r.get("graded") and any(v.get("needs_manual") for v in got.values()):
            status = "graded (manual cells pending)"
        rows.append({"assignment": lab, "duedate": r.get("duedate", ""), "timestamp": r.get("timestamp", ""),
                     "student_id": student, "last_name": "", "first_name": "", "email": "",
                     "raw_score": _fmt(raw), "late_submission_penalty": _fmt(pen), "score": _fmt(raw - pen),
                     "max_score": _fmt(float(max_score)), "status": status,
                     "problems": "; ".join(dict.fromkeys(r.get("problems", [])))})
        fb = r.get("feedback")
        if fb and Path(fb).is_file():
            dest = out / "feedback" / student / lab / f"{lab}.html"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fb, dest.with_suffix(".tmp"))
            os.replace(dest.with_suffix(".tmp"), dest)
    _write_csv(out / "grades.csv", GRADES_COLUMNS, [[row[k] for k in GRADES_COLUMNS] for row in rows])
    _write_csv(out / "cell_scores.csv", CELL_COLUMNS, cell_rows)
    return rows


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    nbu.write_text_atomic(path, buf.getvalue())


def _merge_gradebook(results: dict, db_url: str) -> None:
    """Write every graded (student, lab) into the gradebook at ``db_url`` (e.g. PostgreSQL).

    The gradebook must already hold the assignments (build the course with the same
    ``--db-url``); submissions of unknown labs are skipped with a warning.
    """
    from nbgrader.api import Gradebook, MissingEntry
    from nbgrader.utils import parse_utc

    with Gradebook(db_url) as gb:
        for (student, lab), r in sorted(results.items()):
            if not r.get("graded"):
                continue
            try:
                gb.find_assignment(lab)
            except MissingEntry:
                print(f"warning: {db_url} has no assignment {lab}; not merged (release with the same --db-url)")
                continue
            gb.update_or_create_student(student)
            ts = parse_utc(r["timestamp"]) if r.get("timestamp") else None
            sub = gb.update_or_create_submission(lab, student, timestamp=ts) if ts else \
                gb.update_or_create_submission(lab, student)
            for snb in sub.notebooks:
                snb.late_submission_penalty = r.get("late_submission_penalty") or None
                for g in snb.grades:
                    cell = r["cells"].get(g.name)
                    if cell is not None:
                        g.auto_score = cell["score"]
                        g.needs_manual_grade = cell["needs_manual"]
            gb.db.commit()


def summary_table(rows: list[dict]) -> str:
    """A plain-text table: one line per (student, lab) with score / max and problems."""
    if not rows:
        return "no submissions found"
    w = max(len(r["student_id"]) for r in rows + [{"student_id": "student"}])
    lw = max(len(r["assignment"]) for r in rows + [{"assignment": "lab"}])
    lines = [f"{'student':<{w}}  {'lab':<{lw}}  {'score':>7} / {'max':<5}  problems"]
    for r in rows:
        lines.append(f"{r['student_id']:<{w}}  {r['assignment']:<{lw}}  {float(r['score']):7.2f} / "
                     f"{float(r['max_score']):<5.1f}  {r['problems'] or '-'}")
    return "\n".join(lines)
