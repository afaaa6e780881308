"""Tiny archives in each real dataset format, for tests and for trying the scripts offline.

The content is synthetic but deterministic (same bytes on every run: fixed pixel
patterns, tar/gzip/zip timestamps set to constants) and the layout is faithful:
the CIFAR-10 python archive holds real pickled batch dicts with bytes keys, like the
official Python 2 pickles do, under ``cifar-10-batches-py/``.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from labkit.data import CIFAR10_CLASSES, FOOD11_CLASSES

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def synthetic_image(label: int, index: int, height: int = 32, width: int = 32) -> np.ndarray:
    """A smooth, distinct uint8 ``[3, H, W]`` image for ``(label, index)``.

    Smooth (a colour per class plus gradients that depend on the index) so that JPEG
    keeps it within a few grey levels, and asymmetric so flips and shifts change it.
    """
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    base = np.array([(37 * label) % 200, (91 * label + 50) % 200, (53 * label + 100) % 200], dtype=np.float64)
    r = base[0] + 40 * xx + 5 * (index % 7)
    g = base[1] + 40 * yy + 3 * (index % 11)
    b = base[2] + 30 * xx * yy + 2 * (index % 13)
    return np.clip(np.stack([r, g, b]), 0, 255).round().astype(np.uint8)


def _encode(image: np.ndarray, fmt: str = "JPEG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.transpose(1, 2, 0)).save(buf, format=fmt, quality=95)
    return buf.getvalue()


def write_tar(path: Path, members: dict[str, bytes], gz: bool = True) -> Path:
    """A deterministic tar(.gz) holding ``members`` (name -> bytes), in the order given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tf:
        folders = sorted({"/".join(n.split("/")[:i]) for n in members for i in range(1, n.count("/") + 1)})
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tf.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tf.addfile(info, io.BytesIO(data))
    data = raw.getvalue()
    if gz:
        out = io.BytesIO()
        with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as g:
            g.write(data)
        data = out.getvalue()
    path.write_bytes(data)
    return path


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    """A deterministic zip holding ``members`` (name -> bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, _ZIP_TIME), data)
    return path


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes ``bytes`` as Python 2 ``str`` opcodes, as the official CIFAR-10 pickles were.

    Python 3 pickles bytes at protocol 2 as a call of ``_codecs.encode``; the real files
    (written by Python 2) store them as plain strings, which load as ``bytes`` with
    ``encoding="bytes"``.
    """

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj: object) -> bytes:
    """``obj`` pickled at protocol 2 the way Python 2 wrote it (bytes as ``str``)."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def cifar10_arrays(train_per_class: int = 3, test_per_class: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The images the CIFAR-10 fixtures hold: ``{split: (uint8 [N, 3, 32, 32], int64 [N])}``.

    Ordered class by class, which is also the order the image-folder import produces.
    """
    out = {}
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        offset = 0 if split == "train" else 1000
        labels = np.repeat(np.arange(10), per)
        images = np.stack([synthetic_image(int(c), offset + i) for i, c in enumerate(labels)])
        out[split] = (images, labels.astype(np.int64))
    return out


def cifar10_pickle_members(train_per_class: int = 3, test_per_class: int = 2) -> dict[str, bytes]:
    """Members of a python-version CIFAR-10 archive (``cifar-10-batches-py/...``)."""
    arrays = cifar10_arrays(train_per_class, test_per_class)
    x, y = arrays["train"]
    members: dict[str, bytes] = {}
    parts = np.array_split(np.arange(len(y)), 5)
    for i, idx in enumerate(parts, start=1):
        batch = {b"batch_label": f"training batch {i} of 5".encode(),
                 b"labels": [int(v) for v in y[idx]],
                 b"data": x[idx].reshape(len(idx), 3072),
                 b"filenames": [f"img_{j:05d}.png".encode() for j in idx]}
        members[f"cifar-10-batches-py/data_batch_{i}"] = py2_pickle(batch)
    xt, yt = arrays["test"]
    members["cifar-10-batches-py/test_batch"] = py2_pickle(
        {b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in yt],
         b"data": xt.reshape(len(yt), 3072), b"filenames": [f"t_{j:05d}.png".encode() for j in range(len(yt))]})
    members["cifar-10-batches-py/batches.meta"] = py2_pickle(
        {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_cases_per_batch": len(parts[0]),
         b"num_vis": 3072})
    members["cifar-10-batches-py/readme.html"] = b"<html>fixture</html>\n"
    return members


def cifar10_pickle_archive(path: Path, train_per_class: int = 3, test_per_class: int = 2) -> Path:
    """``cifar-10-python.tar.gz`` in the official layout, with a few images per class."""
    return write_tar(path, cifar10_pickle_members(train_per_class, test_per_class))


def cifar10_folder_members(train_per_class: int = 3, test_per_class: int = 2) -> dict[str, bytes]:
    """Members of an image-folder CIFAR-10 archive (``train/<class>/<nnnn>.jpg``, ``test/...``)."""
    members = {}
    for split, (x, y) in cifar10_arrays(train_per_class, test_per_class).items():
        for i, (img, c) in enumerate(zip(x, y)):
            members[f"{split}/{CIFAR10_CLASSES[c]}/{i:04d}.jpg"] = _encode(img)
    # shuffled like the shared archive, deterministically: the import must not depend on member order
    names = sorted(members, key=lambda n: (hash_name(n), n))
    return {n: members[n] for n in names}


def hash_name(name: str) -> int:
    """A stable (not per-process salted) hash, used to shuffle members deterministically."""
    import zlib

    return zlib.crc32(name.encode())


def cifar10_folder_archive(path: Path, train_per_class: int = 3, test_per_class: int = 2) -> Path:
    """An image-folder CIFAR-10 ``.tar.gz`` like ``shared/datasets/cifar10-jpeg.tar.gz``, tiny."""
    return write_tar(path, cifar10_folder_members(train_per_class, test_per_class))


FOOD11_FIXTURE_SIZES = [(48, 40), (40, 56), (44, 44)]  # non-square on purpose: the import center-crops


def food11_members(per_class: int = 1, root: str = "") -> dict[str, bytes]:
    """Members of a Food-11 archive: ``training/ validation/ evaluation/`` of ``<label>_<n>.jpg``."""
    members = {}
    for k, folder in enumerate(("training", "validation", "evaluation")):
        for label in range(len(FOOD11_CLASSES)):
            for n in range(per_class):
                h, w = FOOD11_FIXTURE_SIZES[(label + n + k) % len(FOOD11_FIXTURE_SIZES)]
                members[f"{root}{folder}/{label}_{n}.jpg"] = _encode(synthetic_image(label, 100 * k + n, h, w))
    return members


def food11_archive(path: Path, per_class: int = 1, kind: str = "zip") -> Path:
    """Food-11 as a zip (as published, under ``food-11/``), a tar.gz, or an unpacked folder (``kind``)."""
    path = Path(path)
    if kind == "zip":
        return write_zip(path, food11_members(per_class, root="food-11/"))
    if kind == "tar":
        return write_tar(path, food11_members(per_class))
    if kind == "dir":
        for name, data in food11_members(per_class).items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
        return path
    raise ValueError(f"kind={kind!r}: use zip, tar or dir")


def build_all(folder: Path) -> dict[str, Path]:
    """Write every fixture archive into ``folder``; returns ``{description: path}``."""
    folder = Path(folder)
    return {
        "cifar10 python-pickle": cifar10_pickle_archive(folder / "cifar-10-python.tar.gz"),
        "cifar10 image-folder": cifar10_folder_archive(folder / "cifar10-jpeg.tar.gz"),
        "food11 zip": food11_archive(folder / "food-11.zip"),
    }
