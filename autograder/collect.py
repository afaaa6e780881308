"""Collect submissions into grading jobs, treating every byte of the input as hostile.

:func:`collect` turns a submissions folder or zip into one :class:`Job` per (student, lab).
Layouts:

* a folder ``<student_id>/<lab_id>/<lab_id>.ipynb`` (optional ``timestamp.txt`` beside the
  notebook, nbgrader's format, e.g. ``2025-03-01 12:00:00 UTC``);
* a zip of that folder (one wrapping folder around it is fine);
* a flat LMS download (zip or folder):

  - Canvas: ``<display name>_[LATE_]<student id>_<submission id>_<original file name>``
    (:data:`CANVAS_PATTERN`). The display name may hold underscores and digits, so the id is the
    first numeric ``<id>_<submission id>`` pair after it; a name that can also be split into a
    different id is ambiguous and skipped with a warning (else a display name such as
    ``zed_99999_1`` would file the notebook under student 99999);
  - Moodle: ``<Full Name>_<participant id>_assignsubmission_file_/<file>`` (:data:`MOODLE_PATTERN`).

  The lab comes from the original file name only. Two files for one (student, lab): the latest
  is graded (by Canvas submission id, else the zip member's date, else name order).

What a hostile input gets:

* symlinks (on disk or as zip members) are never followed: the job gets ``symlink … rejected``;
* zips are checked against :class:`ZipLimits` before extraction and the bytes are counted
  while extracting; a breach raises :class:`GradingError` (the whole input is suspect);
  absolute, ``..`` and ``__MACOSX`` members are skipped;
* notebooks over :data:`MAX_NOTEBOOK_BYTES` are not read; broken JSON / structure makes the
  job ``unreadable notebook: …``; malformed cells are cleaned by :func:`sanitize_notebook`;
* every student id gets a job; ids that could escape a folder are refused (no notebook) and
  every job carries a :attr:`Job.safe_id` for folder names and nbgrader.

Problems of one submission never raise out of :func:`collect`: they become its job's problem lines.
"""
from __future__ import annotations

import calendar
import copy
import errno
import hashlib
import json
import os
import re
import stat
import tempfile
import unicodedata
import zipfile
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable, Iterator

from autograder import notebook as nbu

MiB = 1024 ** 2
MAX_ZIP_TOTAL_BYTES = 512 * MiB
MAX_ZIP_MEMBER_BYTES = 64 * MiB
MAX_ZIP_RATIO = 100
MAX_ZIP_MEMBERS = 10_000
# A member this small cannot hurt whatever its ratio (a 100 kB notebook of spaces is 1000:1).
ZIP_RATIO_MIN_BYTES = 1 * MiB
MAX_NOTEBOOK_BYTES = 32 * MiB
MAX_TIMESTAMP_BYTES = 256
CHUNK = 1 * MiB

# Canvas: the shortest display name followed by a numeric id and submission id. parse_canvas_name
# tries every split (its first one is this pattern's match) to notice names that read two ways.
CANVAS_PATTERN = re.compile(r"^(?P<name>.+?)_(?:LATE_)?(?P<student>\d+)_(?P<sub>\d+)_(?P<file>.+)$")
_CANVAS_TAIL = re.compile(r"(?:LATE_)?(?P<student>\d+)_(?P<sub>\d+)_(?P<file>.+)")
# Names without a numeric id (test exports, older kits): a display name without "_", then the id.
CANVAS_ALNUM_PATTERN = re.compile(
    r"^(?P<name>[^_]+)_(?:LATE_)?(?P<student>[A-Za-z0-9.@+\-]+)_(?P<sub>\d+)_(?P<file>.+)$")
MOODLE_PATTERN = re.compile(r"^(?P<name>.+)_(?P<student>\d+)_assignsubmission_file_?$")
# Ids used as they are for folders and nbgrader; "__" is kept for the hashed form (no collisions).
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+\-]{0,63}$")
CELL_TYPES = ("code", "markdown", "raw")
# Folders that are never students (OS and editor litter); other dot-folders get a refused row.
JUNK = frozenset({"__MACOSX", ".DS_Store", ".ipynb_checkpoints", ".git", ".svn", "__pycache__", "Thumbs.db"})
_CELL_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_LIMIT_HINT = ("to grade it anyway, unzip it with a tool you trust and pass the folder, "
               "or pass limits=ZipLimits(...) to collect()")


class GradingError(RuntimeError):
    """Bad input for the whole run (not one submission); the message says how to fix it."""


class NotebookError(ValueError):
    """A submitted notebook that cannot be graded; the message is the job's problem line."""


class AmbiguousName(ValueError):
    """An LMS file name that splits into more than one student id."""


@dataclass(frozen=True)
class ZipLimits:
    """Limits on a submissions zip; the defaults are the module constants."""

    max_total_bytes: int = MAX_ZIP_TOTAL_BYTES
    max_member_bytes: int = MAX_ZIP_MEMBER_BYTES
    max_ratio: float = MAX_ZIP_RATIO
    max_members: int = MAX_ZIP_MEMBERS
    ratio_min_bytes: int = ZIP_RATIO_MIN_BYTES


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


def _printable(name: str) -> str:
    """A file name as a str that can be written as UTF-8 (undecodable bytes become ``\\xNN``)."""
    try:
        raw = name.encode("utf-8", "surrogateescape")  # how os.scandir decoded the bytes
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def _new_job(student: str, lab: str) -> tuple[Job, bool]:
    """A job for ``student``; the flag is False when the id is refused (the job gets no notebook)."""
    job = Job(student=_printable(student), lab=lab)
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


# ------------------------------------------------------------------------------- reading files

def _read_capped(path: Path, max_bytes: int) -> bytes:
    """The bytes of regular file ``path``, never through a symlink; NotebookError past ``max_bytes``."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)  # O_NONBLOCK: a FIFO must not hang the grader
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotebookError(f"symlink {Path(path).name!r} rejected") from None
        raise NotebookError(f"unreadable notebook: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotebookError("unreadable notebook: not a regular file")
        if st.st_size > max_bytes:
            raise NotebookError(f"unreadable notebook: the file is {st.st_size / MiB:.1f} MiB, over the "
                                f"{max_bytes / MiB:g} MiB limit; not read")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew after fstat
        raise NotebookError(f"unreadable notebook: over the {max_bytes / MiB:g} MiB limit; not read")
    return data


def load_notebook(path: Path, max_bytes: int = MAX_NOTEBOOK_BYTES) -> dict:
    """A submitted notebook as plain JSON (no symlink, size-capped); NotebookError says why not."""
    data = _read_capped(Path(path), max_bytes)
    try:
        nb = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError and too-long ints are ValueErrors
        raise NotebookError(f"unreadable notebook: malformed JSON ({exc.__class__.__name__}: "
                            f"{str(exc)[:80]})") from None
    except RecursionError:
        raise NotebookError("unreadable notebook: malformed JSON (nested too deeply)") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise NotebookError("unreadable notebook: no 'cells' list (not a Jupyter notebook)")
    if nb.get("nbformat") != 4:
        raise NotebookError(f"unreadable notebook: nbformat {str(nb.get('nbformat'))[:20]!r} is not "
                            "supported (Jupyter notebooks are version 4)")
    return nb


def _read_timestamp(path: Path) -> str | None:
    """The first line of ``timestamp.txt`` (capped, never through a symlink), or None."""
    try:
        text = _read_capped(path, MAX_TIMESTAMP_BYTES).decode("utf-8", errors="replace").strip()
    except NotebookError:
        return None
    return text.splitlines()[0].strip() if text else None


# ------------------------------------------------------------------------------- tolerant metadata

def nbgrader_meta(cell: object) -> dict:
    """A cell's ``metadata.nbgrader`` when it is a dict, else ``{}`` (never assumes the shape)."""
    meta = cell.get("metadata") if isinstance(cell, dict) else None
    nbg = meta.get("nbgrader") if isinstance(meta, dict) else None
    return nbg if isinstance(nbg, dict) else {}


def grade_id(cell: object) -> str | None:
    """A cell's nbgrader ``grade_id`` when it is a non-empty string, else None."""
    gid = nbgrader_meta(cell).get("grade_id")
    return gid if isinstance(gid, str) and gid else None


def notebook_grade_ids(nb: object) -> set[str]:
    """Every well-formed ``grade_id`` in ``nb`` (any JSON value)."""
    cells = nb.get("cells") if isinstance(nb, dict) else None
    return {g for g in map(grade_id, cells if isinstance(cells, list) else []) if g}


# ------------------------------------------------------------------------------- sanitising

def _source_text(src: object) -> str | None:
    """A cell source as one string (str or list of str), None when it is neither."""
    if isinstance(src, str):
        return src
    if isinstance(src, list) and all(isinstance(s, str) for s in src):
        return "".join(src)
    return None


_MIME = re.compile(r"^[A-Za-z0-9]+/.+$")


def _valid_attachments(att: object) -> bool:
    """nbformat's shape: ``{name: {"type/subtype": str | [str]}}`` (JSON bundles are not kept)."""
    return isinstance(att, dict) and all(
        isinstance(k, str) and isinstance(v, dict) and v and all(
            isinstance(m, str) and _MIME.match(m) and m != "application/json" and _source_text(d) is not None
            for m, d in v.items()) for k, v in att.items())


def _clean_meta(meta: dict, where: str, problems: list[str]) -> dict:
    """The cell metadata worth keeping: tags and a well-formed nbgrader dict (others are dropped)."""
    out: dict = {}
    tags = meta.get("tags")
    if isinstance(tags, list) and all(isinstance(t, str) and t and "," not in t for t in tags) \
            and len(set(tags)) == len(tags):  # nbformat: unique, non-empty, no comma
        out["tags"] = list(tags)
    if "nbgrader" not in meta:
        return out
    nbg = meta["nbgrader"]
    if not isinstance(nbg, dict):
        problems.append(f"{where}: malformed nbgrader metadata ({type(nbg).__name__}): treated as a plain cell")
    elif isinstance(nbg.get("grade_id"), str) and nbg["grade_id"]:
        out["nbgrader"] = copy.deepcopy(nbg)
    elif nbg:  # {} is what nbgrader's own DeduplicateIds leaves behind: nothing to report
        problems.append(f"{where}: malformed nbgrader metadata (grade_id "
                        f"{type(nbg.get('grade_id')).__name__}): treated as a plain cell")
    return out


def _clean_cell(cell: object, k: int, problems: list[str]) -> dict | None:
    """A schema-valid copy of cell number ``k`` (outputs cleared), or None to drop it."""
    where = f"cell {k + 1}"
    if not isinstance(cell, dict):
        problems.append(f"{where}: not a JSON object; dropped")
        return None
    ctype = cell.get("cell_type")
    if ctype not in CELL_TYPES:
        problems.append(f"{where}: cell type {str(ctype)[:30]!r} is not code, markdown or raw; dropped")
        return None
    meta = cell.get("metadata", {})
    if not isinstance(meta, dict):
        problems.append(f"{where}: metadata is not an object; dropped")
        meta = {}
    text = _source_text(cell.get("source", ""))
    if text is None:
        problems.append(f"{where}: source is not text; emptied")
        text = ""
    out = {"cell_type": ctype, "id": cell.get("id"), "metadata": _clean_meta(meta, where, problems),
           "source": text}
    if ctype == "code":  # nbgrader clears outputs before running anyway; stale ones may be malformed
        out.update(execution_count=None, outputs=[])
    elif "attachments" in cell and _valid_attachments(cell["attachments"]):
        out["attachments"] = copy.deepcopy(cell["attachments"])
    elif "attachments" in cell:
        problems.append(f"{where}: malformed attachments dropped")
    return out


def _set_cell_type(cell: dict, ctype: str) -> None:
    """Turn ``cell`` into a ``ctype`` cell in place (keys as nbformat wants them)."""
    cell["cell_type"] = ctype
    for key in ("outputs", "execution_count", *(("attachments",) if ctype == "code" else ())):
        cell.pop(key, None)
    if ctype == "code":
        cell.update(execution_count=None, outputs=[])


def _fix_cell_ids(cells: list[dict]) -> None:
    """Give every cell a valid, unique nbformat 4.5 id (the student's own when it is one)."""
    seen: set[str] = set()
    for k, cell in enumerate(cells):
        cid = cell.get("id")
        if not (isinstance(cid, str) and _CELL_ID.match(cid)) or cid in seen:
            cid = f"cell-{k}"
            while cid in seen:
                cid += "x"
        cell["id"] = cid
        seen.add(cid)


def _clean_nb_meta(meta: object) -> dict:
    """The notebook metadata nbgrader uses (kernelspec, language_info), when well-formed."""
    meta = meta if isinstance(meta, dict) else {}
    out: dict = {}
    ks = meta.get("kernelspec")
    if isinstance(ks, dict) and isinstance(ks.get("name"), str) and isinstance(ks.get("display_name"), str):
        out["kernelspec"] = {k: ks[k] for k in ("name", "display_name", "language") if isinstance(ks.get(k), str)}
    li = meta.get("language_info")
    if isinstance(li, dict) and isinstance(li.get("name"), str):
        out["language_info"] = {"name": li["name"]}
    return out


def clean_structure(nb: object) -> tuple[dict, list[str]]:
    """A copy of ``nb`` that nbformat 4.5 validates, plus one problem line per fix.

    Cells that are not code/markdown/raw are dropped, metadata keeps only tags and well-formed
    nbgrader dicts, sources become strings, code outputs are cleared. Grade ids are not checked
    against the course here (:func:`sanitize_notebook` does).
    """
    problems: list[str] = []
    cells = nb.get("cells") if isinstance(nb, dict) else None
    if not isinstance(cells, list):
        problems.append("no 'cells' list; graded as an empty notebook")
        cells = []
    clean = [c for c in (_clean_cell(cell, k, problems) for k, cell in enumerate(cells)) if c is not None]
    _fix_cell_ids(clean)
    out = {"cells": clean, "metadata": _clean_nb_meta(nb.get("metadata") if isinstance(nb, dict) else None),
           "nbformat": 4, "nbformat_minor": 5}
    return out, problems


def _source_cells(source_nb: dict) -> list[tuple[str, str, dict]]:
    """``[(grade_id, cell_type, nbgrader metadata)]`` of the course's notebook, in its order."""
    cells = source_nb.get("cells") if isinstance(source_nb, dict) else None
    out = []
    for cell in cells if isinstance(cells, list) else []:
        gid = grade_id(cell)
        if gid and cell.get("cell_type") in CELL_TYPES and gid not in {g for g, _, _ in out}:
            out.append((gid, cell["cell_type"], nbgrader_meta(cell)))
    return out


def _is_locked(meta: dict) -> bool:
    """nbgrader's rule: solution cells are editable, grade cells locked, others as marked."""
    return not meta.get("solution") and bool(meta.get("grade") or meta.get("locked"))


def _apply_grade_ids(cells: list[dict], source: list[tuple[str, str, dict]]) -> list[str]:
    """Unknown / repeated grade ids become plain cells; known ones get the course's metadata."""
    known = {gid: (ctype, meta) for gid, ctype, meta in source}
    seen: set[str] = set()
    unknown: list[str] = []
    dups: list[str] = []
    problems: list[str] = []
    for cell in cells:
        gid = grade_id(cell)
        if gid is None:
            continue
        if gid not in known or gid in seen:
            del cell["metadata"]["nbgrader"]
            (dups if gid in known else unknown).append(gid)
            continue
        seen.add(gid)
        ctype, meta = known[gid]
        # The course decides points and cell roles, never the submission.
        cell["metadata"]["nbgrader"] = copy.deepcopy(meta)
        if cell["cell_type"] != ctype:
            problems.append(f"cell {gid!r} was changed from {ctype} to {cell['cell_type']}: changed back")
            _set_cell_type(cell, ctype)
    problems[:0] = [f"unknown grade_id {gid!r}: treated as a plain cell" for gid in dict.fromkeys(unknown)]
    if dups:
        problems.append(f"duplicated grade_id {', '.join(sorted(set(dups)))}: later copies treated as plain cells")
    return problems


def _restore_missing(cells: list[dict], source: list[tuple[str, str, dict]]) -> list[str]:
    """Put an empty cell back for every course cell the submission lacks (in place).

    nbgrader's ``add_missing_cells`` re-adds only grade cells, after the previous *submitted*
    grade/solution cell, and raises ``KeyError`` when that one is missing too (a student who
    deleted a function and its test lost the whole notebook). With a placeholder for every cell
    nbgrader finds nothing missing: ``OverwriteCells`` refills locked ones (tests, setup) from
    the gradebook; answer cells stay empty, so only their own points are lost.
    """
    problems = []
    for i, (gid, ctype, meta) in enumerate(source):
        at = {grade_id(c): k for k, c in enumerate(cells)}
        if gid in at:
            continue
        prev = [at[g] for g, _, _ in source[:i] if g in at]
        cell = {"cell_type": ctype, "id": f"restored-{len(cells)}", "metadata": {"nbgrader": copy.deepcopy(meta)},
                "source": ""}
        _set_cell_type(cell, ctype)
        cells.insert(prev[-1] + 1 if prev else 0, cell)
        how = "with the course's content" if _is_locked(meta) else "empty"
        problems.append(f"missing cell {gid!r} put back {how}")
    return problems


def sanitize_notebook(nb: dict, source_nb: dict) -> tuple[dict, list[str]]:
    """A copy of submission ``nb`` that nbgrader can grade, plus one problem line per fix.

    ``source_nb`` is the course's notebook of the lab (only its nbgrader metadata is used, never
    its sources). Rules: malformed cells / metadata are cleaned (:func:`clean_structure`); a
    ``grade_id`` the course does not have becomes a plain cell; later copies of a ``grade_id``
    become plain cells; known ids get the course's nbgrader metadata; course cells the
    submission lacks are put back empty (:func:`_restore_missing`). Extra plain cells are fine.
    The result validates against nbformat 4.5 and is safe for ``OverwriteCells(add_missing_cells=True)``.
    """
    clean, problems = clean_structure(nb)
    source = _source_cells(source_nb)
    problems += _apply_grade_ids(clean["cells"], source)
    problems += _restore_missing(clean["cells"], source)
    _fix_cell_ids(clean["cells"])
    return clean, problems


def deduplicate_ids(nb: dict) -> list[str]:
    """Make later cells with an already-seen ``grade_id`` plain cells (in place); returns those ids.

    Kept for callers of the old API; :func:`sanitize_notebook` does this and more. Malformed
    nbgrader metadata is removed too (nbgrader would raise ``KeyError: 'grade_id'``).
    """
    seen: set[str] = set()
    dups: list[str] = []
    for cell in nb.get("cells", []) if isinstance(nb, dict) else []:
        meta = cell.get("metadata") if isinstance(cell, dict) else None
        if not isinstance(meta, dict) or "nbgrader" not in meta:
            continue
        gid = grade_id(cell)
        if gid is None or gid in seen:
            del meta["nbgrader"]
            dups += [gid] if gid else []
        else:
            seen.add(gid)
    return sorted(set(dups))


# ------------------------------------------------------------------------------- checking one notebook

def _validate(nb: dict) -> None:
    """nbformat's schema check; NotebookError with its first line."""
    import nbformat

    try:
        nbformat.validate(nb)
    except Exception as exc:  # noqa: BLE001 - any validator failure makes it ungradable
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise NotebookError(f"unreadable notebook: {exc.__class__.__name__}: {line[:80]}") from None


def check_notebook(path: Path, lab: str, max_bytes: int = MAX_NOTEBOOK_BYTES) -> str | None:
    """A one-line problem with a submitted notebook, or None.

    A problem starting with ``unreadable`` or ``symlink`` means it cannot be graded; the others
    ("no nbgrader cells", "looks like <lab>") are warnings. The notebook is checked as
    :func:`clean_structure` will leave it, so malformed cells do not make it unreadable.
    """
    try:
        clean, _ = clean_structure(load_notebook(Path(path), max_bytes))
        _validate(clean)
    except NotebookError as exc:
        return str(exc)
    ids = notebook_grade_ids(clean)
    # Another lab's notebook: its title cell names its own lab id (it can score nothing here).
    text = json.dumps(clean["cells"][:3])
    others = [other for other in nbu.LAB_IDS if other != lab and other in text and lab not in text]
    if not ids:
        return "the notebook has no nbgrader cells (was it created from the released version?)"
    if others:
        return f"the notebook looks like {others[0]}, not {lab}"
    return None


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


# ------------------------------------------------------------------------------- listing folders

def _scan(folder: Path, rejected: dict[Path, str]) -> dict[str, str]:
    """``{name: kind}`` of ``folder`` sorted by name, never following symlinks.

    Kinds: ``dir``, ``file``, ``link``, ``other`` (FIFO, socket, device) and ``rejected`` (a zip
    member that was not extracted: a symlink or an unreadable member; its line is in ``rejected``).
    """
    kinds: dict[str, str] = {}
    with os.scandir(folder) as it:
        for e in it:
            if e.is_symlink():
                kinds[e.name] = "link"
            elif e.is_dir(follow_symlinks=False):
                kinds[e.name] = "dir"
            else:
                kinds[e.name] = "file" if e.is_file(follow_symlinks=False) else "other"
    for p in rejected:
        if p.parent == folder:
            kinds[p.name] = "rejected"
    return dict(sorted(kinds.items()))


def _refused_entry(path: Path, kind: str, root: Path, rejected: dict[Path, str]) -> str:
    """The problem line of an entry that is not read (symlink, special file, rejected member)."""
    if kind == "rejected":
        return rejected[path]
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        rel = str(path)
    rel = _printable(rel)
    return f"symlink {rel!r} rejected" if kind == "link" else f"{rel!r} is not a regular file; not read"


def _walk(folder: Path, rejected: dict[Path, str], max_depth: int = 16) -> Iterator[tuple[str, Path, str]]:
    """``(relative name, path, kind)`` of every non-folder entry under ``folder``, no symlink followed."""
    stack = [(folder, "", 0)]
    while stack:
        here, rel, depth = stack.pop()
        for name, kind in _scan(here, rejected).items():
            if kind == "dir" and depth < max_depth:
                stack.append((here / name, f"{rel}{name}/", depth + 1))
            elif kind != "dir":
                yield f"{rel}{name}", here / name, kind


def _lab_of_name(name: str, labs: Iterable[str]) -> str | None:
    """The longest lab id contained in ``name`` (``lab1`` must not win over ``lab10``)."""
    for lab in sorted(labs, key=len, reverse=True):
        if lab in name:
            return lab
    return None


def _class_labs(found: Iterable[str], labs: list[str], only_lab: str | None) -> list[str]:
    """Labs every student gets a row for: ``only_lab``, else those anyone submitted, else all."""
    found = set(found)
    return [only_lab] if only_lab else ([lab for lab in labs if lab in found] or list(labs))


# ------------------------------------------------------------------------------- zips

def _is_zip_symlink(info: zipfile.ZipInfo) -> bool:
    return (info.external_attr >> 16) & 0o170000 == 0o120000


def _member_parts(name: str) -> tuple[str, ...] | None:
    """The path parts of a zip member, None for absolute, ``..`` and ``__MACOSX`` members."""
    if name.startswith(("/", "\\")):
        return None
    parts = PurePosixPath(name).parts
    if not parts or ".." in parts or "__MACOSX" in parts:
        return None
    return parts


def _declared_entries(zpath: Path) -> int | None:
    """The member count of the end-of-central-directory record, read before zipfile parses it all."""
    try:
        with open(zpath, "rb") as fh:
            rec = zipfile._EndRecData(fh)  # private but stable since Python 2; a guard, not a must
    except (AttributeError, OSError):
        return None
    return int(rec[zipfile._ECD_ENTRIES_TOTAL]) if rec else None


def _too_many(zname: str, n: int, limits: ZipLimits) -> GradingError:
    return GradingError(f"{zname}: {n} members, over the limit of {limits.max_members} "
                        f"(ZipLimits.max_members); {_LIMIT_HINT}")


def _check_declared(zname: str, plan: list[tuple[zipfile.ZipInfo, Path]], limits: ZipLimits) -> None:
    """Refuse a zip whose headers already announce a bomb (sizes, ratio, member count)."""
    total = 0
    for info, _ in plan:
        if info.is_dir() or _is_zip_symlink(info):
            continue
        size = info.file_size
        if size > limits.max_member_bytes:
            raise GradingError(f"{zname}: member {info.filename!r} unpacks to {size / MiB:.1f} MiB, over the "
                               f"{limits.max_member_bytes / MiB:g} MiB per-member limit "
                               f"(ZipLimits.max_member_bytes); {_LIMIT_HINT}")
        ratio = size / max(info.compress_size, 1)
        if size > limits.ratio_min_bytes and ratio > limits.max_ratio:
            raise GradingError(f"{zname}: member {info.filename!r} is compressed {ratio:.0f}:1, over the "
                               f"{limits.max_ratio:g}:1 limit (ZipLimits.max_ratio; a zip bomb?); {_LIMIT_HINT}")
        total += size
    if total > limits.max_total_bytes:
        raise GradingError(f"{zname}: unpacks to {total / MiB:.1f} MiB in all, over the "
                           f"{limits.max_total_bytes / MiB:g} MiB limit (ZipLimits.max_total_bytes); {_LIMIT_HINT}")


def _copy_limited(src: BinaryIO, fd: int, caps: list[tuple[int, str]]) -> int:
    """Copy ``src`` to ``fd`` counting the bytes that actually come out; returns the count.

    ``caps`` is ``[(max bytes, message)]``; past the smallest, GradingError with the message of the
    first cap exceeded. Counting here, not trusting the header, stops a member that lies about its size.
    """
    limit = min(cap for cap, _ in caps)
    n = 0
    while chunk := src.read(CHUNK):
        n += len(chunk)
        if n > limit:
            raise GradingError(next(msg for cap, msg in caps if n > cap))
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
    return n


def _member_caps(zname: str, info: zipfile.ZipInfo, budget: int, limits: ZipLimits) -> list[tuple[int, str]]:
    name = info.filename
    return [(info.file_size, f"{zname}: member {name!r} unpacks to more than the {info.file_size} bytes its "
                             "header says: a corrupt or hostile zip; not graded"),
            (limits.max_member_bytes, f"{zname}: member {name!r} unpacks to over the "
                                      f"{limits.max_member_bytes / MiB:g} MiB per-member limit "
                                      f"(ZipLimits.max_member_bytes); {_LIMIT_HINT}"),
            (budget, f"{zname}: unpacks to over the {limits.max_total_bytes / MiB:g} MiB limit "
                     f"(ZipLimits.max_total_bytes); {_LIMIT_HINT}")]


def _set_mtime(target: Path, info: zipfile.ZipInfo) -> None:
    """The member's date as the file's mtime (to tell which of two files is the latest)."""
    try:
        t = calendar.timegm((*info.date_time, 0, 0, 0))
        os.utime(target, (t, t), follow_symlinks=False)
    except (ValueError, OverflowError, OSError):
        pass


# What a corrupt member raises (bad CRC, truncated deflate stream, unknown compression, ...).
_MEMBER_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, ValueError, OSError)


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, caps: list[tuple[int, str]],
                    rejected: dict[Path, str]) -> int:
    """Extract one file member to ``target`` (a new regular file); returns the bytes written.

    Symlink, encrypted, corrupt and unwritable members are recorded in ``rejected`` (their job's
    problem); limit breaches and a full disk raise GradingError.
    """
    name = info.filename
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if _is_zip_symlink(info):
            rejected[target] = f"symlink {name!r} rejected"
            return 0
        if info.flag_bits & 0x1:
            rejected[target] = f"zip member {name!r} is encrypted; not read"
            return 0
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                     0o600)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise GradingError(f"cannot extract {name!r}: {exc.strerror}") from None
        rejected[target] = f"zip member {name!r} could not be written: {exc.strerror or exc}"
        print(f"warning: {rejected[target]}")
        return 0
    try:
        with zf.open(info) as src:
            n = _copy_limited(src, fd, caps)
    except BaseException as exc:
        os.close(fd)
        target.unlink(missing_ok=True)
        if isinstance(exc, GradingError) or not isinstance(exc, _MEMBER_ERRORS):
            raise
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise GradingError(f"cannot extract {name!r}: {exc.strerror}") from None
        rejected[target] = f"zip member {name!r} unreadable: {str(exc)[:80]}"
        return 0
    os.close(fd)
    _set_mtime(target, info)
    return n


def _extract_zip(zpath: Path, dest: Path, limits: ZipLimits) -> dict[Path, str]:
    """Extract ``zpath`` into the new folder ``dest`` within ``limits``; returns the rejected members.

    Never creates a symlink, never writes outside ``dest``.
    """
    zname = zpath.name
    n = _declared_entries(zpath)
    if n is not None and n > limits.max_members:
        raise _too_many(zname, n, limits)
    try:
        zf = zipfile.ZipFile(zpath)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise GradingError(f"{zpath} is not a readable zip ({exc}); repack it or pass the unzipped folder") from None
    rejected: dict[Path, str] = {}
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise _too_many(zname, len(infos), limits)
        plan = [(info, dest.joinpath(*parts)) for info in infos if (parts := _member_parts(info.filename))]
        _check_declared(zname, plan, limits)
        budget = limits.max_total_bytes
        for info, target in plan:
            if info.is_dir():
                try:
                    target.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    print(f"warning: skipped zip folder {info.filename!r}: {exc.strerror or exc}")
                continue
            budget -= _extract_member(zf, info, target, _member_caps(zname, info, budget, limits), rejected)
    return rejected


def _unwrap(dest: Path, labs: list[str], rejected: dict[Path, str]) -> Path:
    """``dest``, or the single folder wrapping everything in it (``download/<student>/<lab>/…``)."""
    entries = {n: k for n, k in _scan(dest, rejected).items() if not n.startswith(".")}
    if len(entries) != 1 or _is_flat(dest, rejected):
        return dest
    (name, kind), = entries.items()
    inner = dest / name
    if kind != "dir":
        return dest
    inside = _scan(inner, rejected)
    if any(inside.get(lab) in ("dir", "link", "rejected") for lab in [*labs, *nbu.LAB_IDS]):
        return dest  # a zip of one student's folder
    if _is_flat(inner, rejected) or "dir" in inside.values():
        return inner
    return dest


# ------------------------------------------------------------------------------- folder layout

def _fill_lab(job: Job, sdir: Path, kind: str | None, root: Path, rejected: dict[Path, str]) -> None:
    """Fill ``job`` from ``<student>/<lab>/`` (``kind``: that entry's kind, None when absent)."""
    lab = job.lab
    ldir = sdir / lab
    if kind in ("link", "rejected", "other"):
        job.problems.append(_refused_entry(ldir, kind, root, rejected))
        return
    entries = _scan(ldir, rejected) if kind == "dir" else {}
    bad = {n: _refused_entry(ldir / n, k, root, rejected) for n, k in entries.items()
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
        job.timestamp = _read_timestamp(ldir / "timestamp.txt")
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
                job.problems.append(_refused_entry(sdir, kind, root, rejected))
            return jobs
        entries = _scan(sdir, rejected)
        notes = [f"ignored folder {n!r}: not a lab of this course" for n, k in entries.items()
                 if k == "dir" and n not in labs and n not in JUNK]
        notes += [_refused_entry(sdir / n, k, root, rejected) for n, k in entries.items()
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
    students = {n: k for n, k in _scan(root, rejected).items()
                if k in ("dir", "link", "rejected") and n not in JUNK}
    found: set[str] = set()
    for name, kind in students.items():
        if kind == "dir" and id_refusal(name) is None:
            try:
                found |= {n for n, k in _scan(root / name, rejected).items() if k in ("dir", "link", "rejected")}
            except OSError:
                pass  # reported by _student_jobs
    class_labs = _class_labs(found, labs, only_lab)
    return [job for name, kind in students.items()
            for job in _student_jobs(root, name, kind, class_labs, labs, rejected)]


# ------------------------------------------------------------------------------- flat LMS layout

def parse_canvas_name(name: str, labs: Iterable[str]) -> tuple[str, int, str] | None:
    """``(student id, submission id, lab)`` of a Canvas file name, None when it is not one.

    The id is the first numeric ``<id>_<submission id>`` pair after the display name
    (:data:`CANVAS_PATTERN`); names without any are read with :data:`CANVAS_ALNUM_PATTERN`.
    Raises AmbiguousName when another split gives another id: a display name or original file
    name with ``_<digits>_<digits>_`` in it could otherwise put a notebook under someone else.
    """
    splits = []
    for i in (m.start() for m in re.finditer("_", name)):
        tail = _CANVAS_TAIL.fullmatch(name, i + 1) if i else None
        if tail:
            splits.append((tail["student"], int(tail["sub"]), tail["file"]))
    if not splits:
        m = CANVAS_ALNUM_PATTERN.match(name)
        splits = [(m["student"], int(m["sub"]), m["file"])] if m else []
    if len({s for s, _, _ in splits}) > 1:
        raise AmbiguousName(f"{name!r} could be student {' or '.join(dict.fromkeys(s for s, _, _ in splits))}")
    if not splits or (lab := _lab_of_name(splits[0][2], labs)) is None:
        return None
    return splits[0][0], splits[0][1], lab


@dataclass
class _Slot:
    """What a flat layout holds for one (student, lab): candidate files and problem lines."""

    files: list[tuple[tuple, Path, str]] = field(default_factory=list)  # (sort key, path, shown name)
    problems: list[str] = field(default_factory=list)


def _mtime(path: Path) -> int:
    try:
        return os.lstat(path).st_mtime_ns
    except OSError:
        return 0


def _add_file(slot: _Slot, path: Path, shown: str, kind: str, sub: int, root: Path,
              rejected: dict[Path, str]) -> None:
    if kind == "file":
        slot.files.append(((sub, _mtime(path), shown), path, shown))
    else:
        slot.problems.append(_refused_entry(path, kind, root, rejected))


def _add_moodle(slots: dict, notes: dict, root: Path, name: str, kind: str, labs: list[str],
                rejected: dict[Path, str]) -> None:
    """Add the notebooks of Moodle folder ``root/name`` (any depth, no symlink followed)."""
    student = MOODLE_PATTERN.match(name)["student"]
    if kind != "dir":
        notes[student].append(_refused_entry(root / name, kind, root, rejected))
        return
    try:
        for rel, path, k in _walk(root / name, rejected):
            if not rel.endswith(".ipynb") or path.name.startswith("."):
                continue
            lab = _lab_of_name(path.name, labs)
            if lab is None:
                print(f"warning: skipped {name}/{rel}: no lab id in the file name")
                continue
            _add_file(slots[(student, lab)], path, f"{name}/{rel}", k, -1, root, rejected)
    except Exception as exc:  # noqa: BLE001 - one folder never stops the class
        notes[student].append(f"could not read {name!r}: {exc.__class__.__name__}: {str(exc)[:80]}")


def _flat_slots(root: Path, labs: list[str], rejected: dict[Path, str]) -> tuple[dict, dict]:
    """``({(student, lab): _Slot}, {student: [problem]})`` of a flat Canvas / Moodle layout."""
    slots: dict[tuple[str, str], _Slot] = defaultdict(_Slot)
    notes: dict[str, list[str]] = defaultdict(list)
    for name, kind in _scan(root, rejected).items():
        if name.startswith(".") or name in JUNK:
            continue
        if MOODLE_PATTERN.match(name):
            _add_moodle(slots, notes, root, name, kind, labs, rejected)
        elif name.endswith(".ipynb") and kind != "dir":
            try:
                parsed = parse_canvas_name(name, labs)
            except AmbiguousName as exc:
                print(f"warning: skipped {name}: ambiguous LMS file name ({exc}); rename it to "
                      "<name>_<student_id>_<submission_id>_<lab_id>.ipynb")
                continue
            if parsed is None:
                print(f"warning: skipped {name}: the name does not match "
                      "<name>_<student_id>_<submission_id>_<lab_id>.ipynb")
                continue
            student, sub, lab = parsed
            _add_file(slots[(student, lab)], root / name, name, kind, sub, root, rejected)
        elif kind == "dir" and "_assignsubmission_" not in name:
            print(f"warning: skipped folder {name}: not a Moodle submission folder "
                  "(<name>_<id>_assignsubmission_file_)")
    return slots, notes


def _flat_jobs(root: Path, labs: list[str], only_lab: str | None, rejected: dict[Path, str]) -> list[Job]:
    """Jobs of a flat LMS layout: every student named anywhere gets every class lab."""
    slots, notes = _flat_slots(root, labs, rejected)
    class_labs = _class_labs((lab for _, lab in slots), labs, only_lab)
    jobs = []
    for student in sorted({s for s, _ in slots} | set(notes)):
        for lab in class_labs:
            job, ok = _new_job(student, lab)
            jobs.append(job)
            if not ok:
                continue
            slot = slots.get((student, lab)) or _Slot()
            job.problems += notes.get(student, []) + slot.problems
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


def _is_flat(root: Path, rejected: dict[Path, str]) -> bool:
    """A Canvas (notebooks at the top) or Moodle (``…_assignsubmission_…`` folders) layout."""
    return any((n.endswith(".ipynb") and k != "dir") or (k != "file" and "_assignsubmission_" in n)
               for n, k in _scan(root, rejected).items() if not n.startswith("."))


# ------------------------------------------------------------------------------- the class

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
    rejected = _extract_zip(submissions, dest, limits)
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
    if _is_flat(root, rejected):
        jobs = _flat_jobs(root, labs, only_lab, rejected)
    else:
        jobs = _tree_jobs(root, labs, only_lab, rejected)
    _assign_safe_ids(jobs)
    return sorted(jobs, key=lambda j: (j.student, j.lab))
