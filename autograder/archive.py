"""Extracting a submissions zip that may be a bomb, lie about its sizes or hold symlinks.

:func:`extract_zip` checks the zip against :class:`ZipLimits` before extracting (member count,
declared sizes, compression ratio) and counts the bytes while extracting (a member that lies
about its size gets no more than it declared); a breach raises
:class:`~autograder.errors.GradingError`, since the whole input is suspect. Absolute, ``..``
and ``__MACOSX`` members are skipped; symlink, encrypted, corrupt and unwritable members are
never written but reported, each as its job's problem line. Nothing is written outside the
destination folder and no symlink is ever created.
"""
from __future__ import annotations

import calendar
import contextlib
import errno
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from autograder.errors import GradingError

MiB = 1024 ** 2
MAX_ZIP_TOTAL_BYTES = 512 * MiB
MAX_ZIP_MEMBER_BYTES = 64 * MiB
MAX_ZIP_RATIO = 100
MAX_ZIP_MEMBERS = 10_000
# A member this small cannot hurt whatever its ratio (a 100 kB notebook of spaces is 1000:1).
ZIP_RATIO_MIN_BYTES = 1 * MiB
CHUNK = 1 * MiB
_LIMIT_HINT = ("to grade it anyway, unzip it with a tool you trust and pass the folder, "
               "or pass limits=ZipLimits(...) to collect()")


@dataclass(frozen=True)
class ZipLimits:
    """Limits on a submissions zip; the defaults are the module constants."""

    max_total_bytes: int = MAX_ZIP_TOTAL_BYTES
    max_member_bytes: int = MAX_ZIP_MEMBER_BYTES
    max_ratio: float = MAX_ZIP_RATIO
    max_members: int = MAX_ZIP_MEMBERS
    ratio_min_bytes: int = ZIP_RATIO_MIN_BYTES


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


class MemberRefused(Exception):
    """One member breaks a per-member limit: it is not extracted, and its student's row says why."""


def _check_declared(zname: str, plan: list[tuple[zipfile.ZipInfo, Path]], limits: ZipLimits,
                    rejected: dict[Path, str]) -> list[tuple[zipfile.ZipInfo, Path]]:
    """The plan without the members whose headers break a per-member limit (size, ratio), which go to
    ``rejected``: one student's oversized or bomb-like file is that student's problem, never the class's
    (red-team pass, 2026-12-07: one 65 MiB file stopped a whole Moodle download). GradingError when what
    is left announces more than the total limit."""
    total, kept = 0, []
    for info, target in plan:
        if info.is_dir() or _is_zip_symlink(info):
            kept.append((info, target))
            continue
        size = info.file_size
        ratio = size / max(info.compress_size, 1)
        if size > limits.max_member_bytes:
            rejected[target] = (f"zip member {info.filename!r} unpacks to {size / MiB:.1f} MiB, over the "
                                f"{limits.max_member_bytes / MiB:g} MiB per-file limit; not extracted")
        elif size > limits.ratio_min_bytes and ratio > limits.max_ratio:
            rejected[target] = (f"zip member {info.filename!r} is compressed {ratio:.0f}:1, over the "
                                f"{limits.max_ratio:g}:1 limit (a zip bomb?); not extracted")
        else:
            total += size
            kept.append((info, target))
            continue
        with contextlib.suppress(OSError):  # its folder exists, so the student still gets a row saying why
            target.parent.mkdir(parents=True, exist_ok=True)
    if total > limits.max_total_bytes:
        raise GradingError(f"{zname}: unpacks to {total / MiB:.1f} MiB in all, over the "
                           f"{limits.max_total_bytes / MiB:g} MiB limit (ZipLimits.max_total_bytes); {_LIMIT_HINT}")
    return kept


def _copy_limited(src: BinaryIO, fd: int, caps: list[tuple[int, str]]) -> int:
    """Copy ``src`` to ``fd`` counting the bytes that actually come out; returns the count.

    ``caps`` is ``[(max bytes, message, class-wide)]``; past the smallest, the first cap exceeded raises
    GradingError with its message if it is class-wide, else :class:`MemberRefused`. Counting here, not
    trusting the header, stops a member that lies about its size.
    """
    limit = min(cap for cap, _, _ in caps)
    n = 0
    while chunk := src.read(CHUNK):
        n += len(chunk)
        if n > limit:
            msg, whole = next((msg, whole) for cap, msg, whole in caps if n > cap)
            raise GradingError(msg) if whole else MemberRefused(msg)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
    return n


def _member_caps(zname: str, info: zipfile.ZipInfo, budget: int, limits: ZipLimits) -> list[tuple[int, str, bool]]:
    name = info.filename
    return [(info.file_size, f"zip member {name!r} unpacks to more than the {info.file_size} bytes its header "
                             "says (corrupt or hostile); not extracted", False),
            (limits.max_member_bytes, f"zip member {name!r} unpacks to over the "
                                      f"{limits.max_member_bytes / MiB:g} MiB per-file limit; not extracted", False),
            (budget, f"{zname}: unpacks to over the {limits.max_total_bytes / MiB:g} MiB limit "
                     f"(ZipLimits.max_total_bytes); {_LIMIT_HINT}", True)]


def _set_mtime(target: Path, info: zipfile.ZipInfo) -> None:
    """The member's date as the file's mtime (to tell which of two files is the latest)."""
    try:
        t = calendar.timegm((*info.date_time, 0, 0, 0))
        os.utime(target, (t, t), follow_symlinks=False)
    except (ValueError, OverflowError, OSError):
        pass


# What a corrupt member raises (bad CRC, truncated deflate stream, unknown compression, ...).
_MEMBER_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, ValueError, OSError)


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, caps: list[tuple[int, str, bool]],
                    rejected: dict[Path, str]) -> int:
    """Extract one file member to ``target`` (a new regular file); returns the bytes written.

    Symlink, encrypted, corrupt and unwritable members are recorded in ``rejected`` (their job's
    problem), and so are members over a per-member limit; the total limit and a full disk raise GradingError.
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
        if isinstance(exc, MemberRefused):
            rejected[target] = str(exc)
            return 0
        if isinstance(exc, GradingError) or not isinstance(exc, _MEMBER_ERRORS):
            raise
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise GradingError(f"cannot extract {name!r}: {exc.strerror}") from None
        rejected[target] = f"zip member {name!r} unreadable: {str(exc)[:80]}"
        return 0
    os.close(fd)
    _set_mtime(target, info)
    return n


def extract_zip(zpath: Path, dest: Path, limits: ZipLimits) -> dict[Path, str]:
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
        plan = _check_declared(zname, plan, limits, rejected)
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
