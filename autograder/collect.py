"""Collect submissions into grading jobs, treating every byte of the input as hostile.

:func:`collect` turns a submissions folder or zip into one :class:`Job` per (student, lab).
Layouts:

* a folder ``<student_id>/<lab_id>/<lab_id>.ipynb`` (optional ``timestamp.txt`` beside the
  notebook, nbgrader's format, e.g. ``2025-03-01 12:00:00 UTC``, and the capstone's ``model.pt``);
* a zip of that folder (one wrapping folder around it is fine);
* a flat LMS download (zip or folder), read by :mod:`autograder.lms`:

  - Canvas: ``<display name>_[LATE_]<student id>_<submission id>_<original file name>``
    (:data:`~autograder.lms.CANVAS_PATTERN`). The display name may hold underscores and digits,
    so the id is the first numeric ``<id>_<submission id>`` pair after it; a name that can also
    be split into a different id is ambiguous and skipped with a warning (else a display name
    such as ``zed_99999_1`` would file the notebook under student 99999);
  - Moodle: ``<Full Name>_<participant id>_assignsubmission_file_/<file>``
    (:data:`~autograder.lms.MOODLE_PATTERN`).

  The lab comes from the original file name only. Two files for one (student, lab): the latest
  is graded (by Canvas submission id, else the zip member's date, else name order).

What a hostile input gets:

* symlinks (on disk or as zip members) are never followed: the job gets ``symlink … rejected``;
* zips are checked against :class:`~autograder.archive.ZipLimits` before extraction and the
  bytes are counted while extracting; a breach raises :class:`~autograder.errors.GradingError`
  (the whole input is suspect); absolute, ``..`` and ``__MACOSX`` members are skipped;
* notebooks over :data:`~autograder.submission.MAX_NOTEBOOK_BYTES` are not read; broken JSON /
  structure makes the job ``unreadable notebook: …``; malformed cells are cleaned by
  :func:`~autograder.submission.sanitize_notebook`;
* every student id gets a job; ids that could escape a folder are refused (no notebook) and
  every job carries a :attr:`Job.safe_id` for folder names and nbgrader.

Problems of one submission never raise out of :func:`collect`: they become its job's problem lines.
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
import unicodedata
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from autograder import notebook as nbu
from autograder.archive import ZipLimits, extract_zip
from autograder.capstone import MODEL_FILE
from autograder.errors import GradingError
from autograder.folders import JUNK, printable, refused_entry, scan
from autograder.lms import Slot, flat_slots, is_flat
from autograder.submission import check_notebook, read_timestamp

# Ids used as they are for folders and nbgrader; "__" is kept for the hashed form (no collisions).
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+\-]{0,63}$")


@dataclass
class Job:
    """One (student, lab) to grade. ``notebook`` is None when there is nothing gradable.

    ``student`` is the id as submitted (for the CSVs); ``safe_id`` is the ASCII, filename-safe,
    unique form of it for job folders and nbgrader (see :func:`safe_student_id`).
    """

    student: str
    lab: str
    notebook: str | None = None
    timestamp: str | None = None
    problems: list[str] = field(default_factory=list)
    safe_id: str = ""
    model: str | None = None  # ``model.pt`` beside the notebook (the capstone's submitted model)

    def __post_init__(self) -> None:
        if not self.safe_id:
            self.safe_id = safe_student_id(self.student)


# ------------------------------------------------------------------------------- student ids

def id_refusal(student: str) -> str | None:
    """Why ``student`` cannot be used as an id (it could name another folder), or None."""
    if not student:
        return "it is empty"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in student):
        return "the folder name is not valid UTF-8"
    if "/" in student or "\\" in student or ".." in student:
        return "contains a path separator or '..'"
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in student):
        return "contains a NUL or control character"
    if student.startswith("."):
        return "starts with '.'"
    return None


def safe_student_id(student: str, digits: int = 8) -> str:
    """``student`` itself when it is a plain ASCII name, else ``<slug>__<sha256 prefix>``.

    Stable (a function of the id alone) and unique: plain ids never contain ``__``.
    """
    if SAFE_ID.match(student) and ".." not in student and "__" not in student:
        return student
    ascii_ = unicodedata.normalize("NFKD", student).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", ascii_).strip("-")[:40] or "student"
    digest = hashlib.sha256(student.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{slug}__{digest[:digits]}"


def _new_job(student: str, lab: str) -> tuple[Job, bool]:
    """A job for ``student``; the flag is False when the id is refused (the job gets no notebook)."""
    job = Job(student=printable(student), lab=lab)
    reason = id_refusal(student)
    if reason:
        job.problems.append(f"student id {job.student!r} refused: {reason}")
    return job, reason is None


def _assign_safe_ids(jobs: list[Job]) -> None:
    """Give every student one safe id; a (32-bit) hash collision gets the full hash."""
    ids = {s: safe_student_id(s) for s in {j.student for j in jobs}}
    taken = Counter(ids.values())
    for s, sid in ids.items():
        if taken[sid] > 1:
            ids[s] = safe_student_id(s, digits=64)
    for job in jobs:
        job.safe_id = ids[job.student]


# ------------------------------------------------------------------------------- jobs of either layout

def _check_job(job: Job) -> None:
    """Run :func:`check_notebook` on the job's notebook; an ungradable one is dropped."""
    try:
        problem = check_notebook(Path(job.notebook), job.lab)
    except Exception as exc:  # noqa: BLE001 - one bad file is this job's problem, not the class's
        problem = f"unreadable notebook: {exc.__class__.__name__}: {str(exc)[:80]}"
    if problem:
        job.problems.append(problem)
        if problem.startswith(("unreadable", "symlink")):
            job.notebook = None


def _class_labs(found: Iterable[str], labs: list[str], only_lab: str | None) -> list[str]:
    """Labs every student gets a row for: ``only_lab``, else those anyone submitted, else all."""
    found = set(found)
    return [only_lab] if only_lab else ([lab for lab in labs if lab in found] or list(labs))


# ------------------------------------------------------------------------------- folder layout

def _fill_lab(job: Job, sdir: Path, kind: str | None, root: Path, rejected: dict[Path, str]) -> None:
    """Fill ``job`` from ``<student>/<lab>/`` (``kind``: that entry's kind, None when absent)."""
    lab = job.lab
    ldir = sdir / lab
    if kind in ("link", "rejected", "other"):
        job.problems.append(refused_entry(ldir, kind, root, rejected))
        return
    entries = scan(ldir, rejected) if kind == "dir" else {}
    bad = {n: refused_entry(ldir / n, k, root, rejected) for n, k in entries.items()
           if k in ("link", "rejected", "other")}
    job.problems += bad.values()
    nbs = [n for n, k in entries.items() if k == "file" and n.endswith(".ipynb") and not n.startswith(".")]
    if f"{lab}.ipynb" in nbs:
        job.notebook = str(ldir / f"{lab}.ipynb")
    elif len(nbs) == 1:
        job.notebook = str(ldir / nbs[0])
        job.problems.append(f"notebook named {nbs[0]!r}, expected '{lab}.ipynb'; graded it anyway")
    elif len(nbs) > 1:
        job.problems.append(f"no {lab}.ipynb and several other notebooks ({', '.join(nbs)})")
    elif not any(n.endswith(".ipynb") for n in bad):
        job.problems.append("nothing submitted")
    if entries.get("timestamp.txt") == "file":
        job.timestamp = read_timestamp(ldir / "timestamp.txt")
    if entries.get(MODEL_FILE) == "file":
        job.model = str(ldir / MODEL_FILE)
    if job.notebook is not None:
        _check_job(job)


def _student_jobs(root: Path, name: str, kind: str, class_labs: list[str], labs: list[str],
                  rejected: dict[Path, str]) -> list[Job]:
    """The jobs of student folder ``root/name``; any failure is those jobs' problem line."""
    made = [_new_job(name, lab) for lab in class_labs]
    jobs = [job for job, _ in made]
    if not all(ok for _, ok in made):
        return jobs
    sdir = root / name
    try:
        if kind != "dir":
            for job in jobs:
                job.problems.append(refused_entry(sdir, kind, root, rejected))
            return jobs
        entries = scan(sdir, rejected)
        notes = [f"ignored folder {n!r}: not a lab of this course" for n, k in entries.items()
                 if k == "dir" and n not in labs and n not in JUNK]
        notes += [refused_entry(sdir / n, k, root, rejected) for n, k in entries.items()
                  if k in ("link", "rejected") and n not in class_labs]
        for job in jobs:
            job.problems += notes
            _fill_lab(job, sdir, entries.get(job.lab), root, rejected)
    except Exception as exc:  # noqa: BLE001 - one student's folder never stops the class
        for job in jobs:
            job.notebook = None
            job.problems.append(f"could not read the submission: {exc.__class__.__name__}: {str(exc)[:80]}")
    return jobs


def _tree_jobs(root: Path, labs: list[str], only_lab: str | None, rejected: dict[Path, str]) -> list[Job]:
    """Jobs of the layout ``<student>/<lab>/<lab>.ipynb``: every student folder gets every class lab."""
    students = {n: k for n, k in scan(root, rejected).items()
                if k in ("dir", "link", "rejected") and n not in JUNK}
    found: set[str] = set()
    for name, kind in students.items():
        if kind == "dir" and id_refusal(name) is None:
            try:
                found |= {n for n, k in scan(root / name, rejected).items() if k in ("dir", "link", "rejected")}
            except OSError:
                pass  # reported by _student_jobs
    class_labs = _class_labs(found, labs, only_lab)
    return [job for name, kind in students.items()
            for job in _student_jobs(root, name, kind, class_labs, labs, rejected)]


# ------------------------------------------------------------------------------- flat LMS layout

def _flat_jobs(root: Path, labs: list[str], only_lab: str | None, rejected: dict[Path, str]) -> list[Job]:
    """Jobs of a flat LMS layout: every student named anywhere gets every class lab."""
    slots, notes = flat_slots(root, labs, rejected)
    class_labs = _class_labs((lab for _, lab in slots), labs, only_lab)
    jobs = []
    for student in sorted({s for s, _ in slots} | set(notes)):
        for lab in class_labs:
            job, ok = _new_job(student, lab)
            jobs.append(job)
            if not ok:
                continue
            slot = slots.get((student, lab)) or Slot()
            job.problems += notes.get(student, []) + slot.problems
            if slot.models:  # the capstone's model.pt: the latest, like the notebook
                models = sorted(slot.models)
                job.model = str(models[-1][1])
                if len(models) > 1:
                    job.problems.append(f"{len(models)} model files for this lab; evaluated the latest ({models[-1][2]})")
            files = sorted(slot.files)
            if not files:
                if not job.problems:
                    job.problems.append("nothing submitted")
                continue
            if len(files) > 1:
                job.problems.append(f"{len(files)} files for this lab; graded the latest ({files[-1][2]})")
            job.notebook = str(files[-1][1])
            _check_job(job)
    return jobs


# ------------------------------------------------------------------------------- the class

def _holds_a_lab(folder: Path, lab_names: set[str], rejected: dict[Path, str]) -> bool:
    """Whether ``folder`` has a lab-named folder in it (it looks like a student's folder)."""
    return any(kind in ("dir", "link", "rejected") and name in lab_names
               for name, kind in scan(folder, rejected).items())


def _unwrap(dest: Path, labs: list[str], rejected: dict[Path, str]) -> Path:
    """``dest``, or the single folder wrapping everything in it (``download/<student>/<lab>/…``)."""
    entries = {n: k for n, k in scan(dest, rejected).items() if not n.startswith(".")}
    if len(entries) != 1 or is_flat(dest, rejected):
        return dest
    (name, kind), = entries.items()
    inner = dest / name
    if kind != "dir":
        return dest
    inside = scan(inner, rejected)
    lab_names = {*labs, *nbu.LAB_IDS}
    if any(inside.get(lab) in ("dir", "link", "rejected") for lab in lab_names) and not any(
            kind == "dir" and name not in lab_names and _holds_a_lab(inner / name, lab_names, rejected)
            for name, kind in inside.items()):
        # a zip of one student's folder. (A lab-named entry beside folders that hold labs themselves is a
        # student whose id is a lab's name: a red-team pass made the whole class one student "download".)
        return dest
    if is_flat(inner, rejected) or "dir" in inside.values():
        return inner
    return dest


def _open_input(submissions: Path, labs: list[str], work: Path, limits: ZipLimits) -> tuple[Path, dict[Path, str]]:
    """The root folder to read and the rejected zip members (a zip is extracted into ``work``)."""
    if not os.path.lexists(submissions):
        raise GradingError(f"{submissions} does not exist; pass a folder <student>/<lab>/<lab>.ipynb or an LMS zip")
    st = os.stat(submissions)  # the root itself may be a symlink: that is the operator's choice
    if stat.S_ISDIR(st.st_mode):
        return submissions, {}
    if not stat.S_ISREG(st.st_mode) or not zipfile.is_zipfile(submissions):
        raise GradingError(f"{submissions} is neither a folder nor a zip file")
    work.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(prefix="input-", dir=work))
    rejected = extract_zip(submissions, dest, limits)
    return _unwrap(dest, labs, rejected), rejected


def collect(submissions: Path, labs: list[str], work: Path, only_lab: str | None = None,
            limits: ZipLimits | None = None) -> list[Job]:
    """The jobs of a submissions folder or zip (see the module docstring), sorted by student, lab.

    ``labs``: the course's lab ids; ``work``: where a zip is extracted; ``only_lab``: grade just
    this lab; ``limits``: zip limits (default :class:`ZipLimits`). Raises GradingError only for
    the input as a whole (missing, not a zip, over a zip limit); a bad submission is its job's problem.
    """
    submissions = Path(submissions)
    root, rejected = _open_input(submissions, labs, Path(work), limits or ZipLimits())
    if is_flat(root, rejected):
        jobs = _flat_jobs(root, labs, only_lab, rejected)
    else:
        jobs = _tree_jobs(root, labs, only_lab, rejected)
    _assign_safe_ids(jobs)
    return sorted(jobs, key=lambda j: (j.student, j.lab))
