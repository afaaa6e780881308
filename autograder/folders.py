"""Listing a submissions folder without following a symlink: entries, their kinds, refusal lines.

Every entry is a ``dir``, ``file``, ``link``, ``other`` (FIFO, socket, device) or ``rejected``
(a zip member that was not extracted, see :func:`autograder.archive.extract_zip`); only
``dir`` and ``file`` are ever read, the others become a problem line (:func:`refused_entry`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

# Folders that are never students (OS and editor litter); other dot-folders get a refused row.
JUNK = frozenset({"__MACOSX", ".DS_Store", ".ipynb_checkpoints", ".git", ".svn", "__pycache__", "Thumbs.db"})


def printable(name: str) -> str:
    """A file name as a str that can be written as UTF-8 (undecodable bytes become ``\\xNN``)."""
    try:
        raw = name.encode("utf-8", "surrogateescape")  # how os.scandir decoded the bytes
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def scan(folder: Path, rejected: dict[Path, str]) -> dict[str, str]:
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


def refused_entry(path: Path, kind: str, root: Path, rejected: dict[Path, str]) -> str:
    """The problem line of an entry that is not read (symlink, special file, rejected member)."""
    if kind == "rejected":
        return rejected[path]
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        rel = str(path)
    rel = printable(rel)
    return f"symlink {rel!r} rejected" if kind == "link" else f"{rel!r} is not a regular file; not read"


def walk(folder: Path, rejected: dict[Path, str], max_depth: int = 16) -> Iterator[tuple[str, Path, str]]:
    """``(relative name, path, kind)`` of every non-folder entry under ``folder``, no symlink followed."""
    stack = [(folder, "", 0)]
    while stack:
        here, rel, depth = stack.pop()
        for name, kind in scan(here, rejected).items():
            if kind == "dir" and depth < max_depth:
                stack.append((here / name, f"{rel}{name}/", depth + 1))
            elif kind != "dir":
                yield f"{rel}{name}", here / name, kind
