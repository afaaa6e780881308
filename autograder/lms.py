"""Flat LMS downloads: whose notebook is which file, by Canvas and Moodle names.

* Canvas: ``<display name>_[LATE_]<student id>_<submission id>_<original file name>``
  (:data:`CANVAS_PATTERN`, read by :func:`parse_canvas_name`);
* Moodle: ``<Full Name>_<participant id>_assignsubmission_file_/<file>`` (:data:`MOODLE_PATTERN`).

The lab comes from the original file name only. :func:`flat_slots` gathers, for each
(student, lab), the candidate files and the problem lines; :func:`autograder.collect.collect`
makes the jobs.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from autograder.folders import JUNK, refused_entry, scan, walk

# Canvas: the shortest display name followed by a numeric id and submission id. parse_canvas_name
# tries every split (its first one is this pattern's match) to notice names that read two ways.
CANVAS_PATTERN = re.compile(r"^(?P<name>.+?)_(?:LATE_)?(?P<student>\d+)_(?P<sub>\d+)_(?P<file>.+)$")
_CANVAS_TAIL = re.compile(r"(?:LATE_)?(?P<student>\d+)_(?P<sub>\d+)_(?P<file>.+)")
# Names without a numeric id (test exports, older kits): a display name without "_", then the id.
CANVAS_ALNUM_PATTERN = re.compile(
    r"^(?P<name>[^_]+)_(?:LATE_)?(?P<student>[A-Za-z0-9.@+\-]+)_(?P<sub>\d+)_(?P<file>.+)$")
MOODLE_PATTERN = re.compile(r"^(?P<name>.+)_(?P<student>\d+)_assignsubmission_file_?$")


class AmbiguousName(ValueError):
    """An LMS file name that splits into more than one student id."""


def _lab_of_name(name: str, labs: Iterable[str]) -> str | None:
    """The longest lab id contained in ``name`` (``lab1`` must not win over ``lab10``)."""
    for lab in sorted(labs, key=len, reverse=True):
        if lab in name:
            return lab
    return None


def parse_canvas_name(name: str, labs: Iterable[str], default_lab: str | None = None) -> tuple[str, int, str] | None:
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
    if not splits or (lab := _lab_of_name(splits[0][2], labs) or default_lab) is None:
        return None
    return splits[0][0], splits[0][1], lab


@dataclass
class Slot:
    """What a flat layout holds for one (student, lab): candidate files and problem lines."""

    files: list[tuple[tuple, Path, str]] = field(default_factory=list)  # (sort key, path, shown name)
    problems: list[str] = field(default_factory=list)
    models: list[tuple[tuple, Path, str]] = field(default_factory=list)  # the capstone's model.pt files


def model_lab(file_name: str, labs: Iterable[str]) -> str | None:
    """The lab a ``.pt`` file belongs to: a lab id in its name, else the one capstone lab graded (or None)."""
    from autograder.capstone import MODEL_CELLS

    capstones = [lab for lab in labs if lab in MODEL_CELLS]
    if not file_name.endswith(".pt"):
        return None
    return _lab_of_name(file_name, capstones) or (capstones[0] if len(capstones) == 1 else None)


def _mtime(path: Path) -> int:
    try:
        return os.lstat(path).st_mtime_ns
    except OSError:
        return 0


def _add_file(slot: Slot, path: Path, shown: str, kind: str, sub: int, root: Path,
              rejected: dict[Path, str], model: bool = False) -> None:
    if kind == "file":
        (slot.models if model else slot.files).append(((sub, _mtime(path), shown), path, shown))
    else:
        slot.problems.append(refused_entry(path, kind, root, rejected))


def _add_moodle(slots: dict, notes: dict, root: Path, name: str, kind: str, labs: list[str],
                rejected: dict[Path, str]) -> None:
    """Add the notebooks of Moodle folder ``root/name`` (any depth, no symlink followed)."""
    student = MOODLE_PATTERN.match(name)["student"]
    if kind != "dir":
        notes[student].append(refused_entry(root / name, kind, root, rejected))
        return
    try:
        for rel, path, k in walk(root / name, rejected):
            if path.name.startswith("."):
                continue
            if rel.endswith(".pt") and (lab := model_lab(path.name, labs)):
                _add_file(slots[(student, lab)], path, f"{name}/{rel}", k, -1, root, rejected, model=True)
                continue
            if not rel.endswith(".ipynb"):
                continue
            lab = _lab_of_name(path.name, labs)
            if lab is None:
                print(f"warning: skipped {name}/{rel}: no lab id in the file name")
                continue
            _add_file(slots[(student, lab)], path, f"{name}/{rel}", k, -1, root, rejected)
    except Exception as exc:  # noqa: BLE001 - one folder never stops the class
        notes[student].append(f"could not read {name!r}: {exc.__class__.__name__}: {str(exc)[:80]}")


def flat_slots(root: Path, labs: list[str], rejected: dict[Path, str]) -> tuple[dict, dict]:
    """``({(student, lab): Slot}, {student: [problem]})`` of a flat Canvas / Moodle layout."""
    slots: dict[tuple[str, str], Slot] = defaultdict(Slot)
    notes: dict[str, list[str]] = defaultdict(list)
    for name, kind in scan(root, rejected).items():
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
            if f"_LATE_{student}_{sub}_" in name:  # Canvas's only sign of lateness: no time comes with it
                slots[(student, lab)].problems.append(f"Canvas marks {name} LATE")
        elif name.endswith(".pt") and kind != "dir" and model_lab(name, labs):
            try:  # the capstone's model.pt, renamed by Canvas like a notebook
                parsed = parse_canvas_name(name, [], default_lab=model_lab(name, labs))
            except AmbiguousName as exc:
                print(f"warning: skipped {name}: ambiguous LMS file name ({exc})")
                continue
            if parsed is not None:
                student, sub, lab = parsed
                _add_file(slots[(student, lab)], root / name, name, kind, sub, root, rejected, model=True)
        elif kind == "dir" and "_assignsubmission_" not in name:
            print(f"warning: skipped folder {name}: not a Moodle submission folder "
                  "(<name>_<id>_assignsubmission_file_)")
    return slots, notes


def is_flat(root: Path, rejected: dict[Path, str]) -> bool:
    """A Canvas (notebooks at the top) or Moodle (``…_assignsubmission_…`` folders) layout."""
    return any((n.endswith(".ipynb") and k != "dir") or (k != "file" and "_assignsubmission_" in n)
               for n, k in scan(root, rejected).items() if not n.startswith("."))
