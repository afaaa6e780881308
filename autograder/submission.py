"""One submitted notebook, read and cleaned as hostile input.

* :func:`load_notebook` reads it (never through a symlink, at most :data:`MAX_NOTEBOOK_BYTES`,
  a FIFO never hangs) and :func:`read_timestamp` the ``timestamp.txt`` beside it;
* :func:`nbgrader_meta`, :func:`grade_id` and :func:`notebook_grade_ids` read nbgrader
  metadata without assuming its shape;
* :func:`clean_structure` and :func:`sanitize_notebook` turn it into a notebook that nbformat
  validates and nbgrader can grade, one problem line per fix (:func:`deduplicate_ids`: the old API);
* :func:`check_notebook` says in one line why it cannot be graded, or what looks wrong.

Problems raise :class:`NotebookError` (its message is the job's problem line) or come back as lines.
"""
from __future__ import annotations

import copy
import errno
import json
import os
import re
import stat
from pathlib import Path

from autograder import notebook as nbu
from autograder.logs import ProblemLines

MiB = 1024 ** 2
MAX_NOTEBOOK_BYTES = 32 * MiB
MAX_TIMESTAMP_BYTES = 256
CELL_TYPES = ("code", "markdown", "raw")
_CELL_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


class NotebookError(ValueError):
    """A submitted notebook that cannot be graded; the message is the job's problem line."""


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


def read_timestamp(path: Path) -> str | None:
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
    problems = ProblemLines(keep=10)  # a million junk cells: ten lines and a count, not a million lines
    cells = nb.get("cells") if isinstance(nb, dict) else None
    if not isinstance(cells, list):
        problems.append("no 'cells' list; graded as an empty notebook")
        cells = []
    clean = [c for c in (_clean_cell(cell, k, problems) for k, cell in enumerate(cells)) if c is not None]
    _fix_cell_ids(clean)
    out = {"cells": clean, "metadata": _clean_nb_meta(nb.get("metadata") if isinstance(nb, dict) else None),
           "nbformat": 4, "nbformat_minor": 5}
    return out, problems.lines()


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
