"""Resumable HTTP(S) download with checksum verification.

Bytes go to ``<dest>.part``; an interrupted download is resumed from there with an
HTTP ``Range`` request; the file becomes ``<dest>`` only after its checksum matched.
A checksum mismatch deletes the ``.part`` file (resuming corrupt bytes cannot help).
"""
from __future__ import annotations

import hashlib
import http.client
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """The download failed; the message is one line saying what to do."""


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, sha256: str | None = None, md5: str | None = None) -> str | None:
    """``None`` when ``path`` matches every checksum given, else a description of the mismatch."""
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            got = file_digest(path, algorithm)
            if got.lower() != expected.lower():
                return f"{algorithm} {got} != expected {expected.lower()}"
    return None


def download(url: str, dest: Path, *, sha256: str | None = None, md5: str | None = None,
             timeout: float = 60.0, log: Callable[[str], None] = print) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``) and verify it; returns ``dest``.

    At least one of ``sha256`` / ``md5`` is required: nothing unverified becomes ``dest``.
    Raises :class:`DownloadError` (one line) on network errors (the ``.part`` file is kept,
    so running again resumes) and on a checksum mismatch (the ``.part`` file is deleted).
    """
    if not (sha256 or md5):
        raise DownloadError(f"refusing to download {url} without a checksum; pass sha256= or md5=")
    dest = Path(dest)
    if dest.is_file():
        if verify(dest, sha256, md5) is None:
            log(f"{dest} already downloaded and verified")
            return dest
        dest.unlink()  # a stale or corrupt copy: fetch it again
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code != 416 or not have:
                raise
            # 416 Range Not Satisfiable: the .part already holds the whole file.
            log(f"{part} already complete ({have} bytes)")
            response = None
        if response is not None:
            with response:
                if have and response.status == 206:
                    m = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
                    if not m or int(m.group(1)) != have:
                        raise DownloadError(f"{url}: the server resumed at the wrong offset "
                                            f"({response.headers.get('Content-Range')!r}); delete {part} and run again")
                    mode = "ab"
                    log(f"resuming {url} at byte {have}")
                else:  # 200: the server ignored the Range header, start over
                    have, mode = 0, "wb"
                    log(f"downloading {url}")
                length = response.headers.get("Content-Length")
                expected_total = have + int(length) if length is not None else None
                with open(part, mode) as f:
                    for chunk in iter(lambda: response.read(CHUNK), b""):
                        f.write(chunk)
            size = part.stat().st_size
            if expected_total is not None and size != expected_total:
                raise DownloadError(f"download of {url} stopped at {size} of {expected_total} bytes; "
                                    f"run the same command again to resume from {part}")
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"download of {url} failed ({reason}); run again to resume from {part}, "
                            f"or fetch the file yourself and pass it with --from") from None
    problem = verify(part, sha256, md5)
    if problem:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url} arrived corrupt ({problem}); the partial file was deleted: run again, "
                            f"or fetch the file yourself and pass it with --from")
    part.replace(dest)
    return dest
