"""Read dataset archives (tar, zip or an unpacked folder) into uint8 arrays.

Formats:

* CIFAR-10, python version: ``cifar-10-batches-py/data_batch_1..5``, ``test_batch``,
  ``batches.meta`` (pickled dicts; ``b'data'`` uint8 ``[N, 3072]`` in CHW order,
  ``b'labels'``).
* CIFAR-10, image folders: ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (also png).
* Food-11, as published: ``training/``, ``validation/``, ``evaluation/`` holding
  ``<label>_<n>.jpg`` with ``label`` in 0..10.

Every problem raises :class:`ArchiveError` with one line saying what is wrong and
how to fix it. Nothing here writes files.
"""
from __future__ import annotations

import codecs
import io
import multiprocessing
import pickle
import re
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from labkit.data import CIFAR10_CLASSES, FOOD11_CLASSES

IMAGE_EXT = (".jpg", ".jpeg", ".png")
POOL_MIN_IMAGES = 2000  # below this, starting worker processes costs more than it saves


class ArchiveError(ValueError):
    """The archive is not what was expected; the message is one line with the fix."""


# --------------------------------------------------------------------------- generic reading
def iter_files(path: Path, want: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """``(member name, bytes)`` of every regular file in ``path`` whose name passes ``want``.

    ``path`` is a tar (any compression), a zip or a folder. Names use ``/`` and never
    start with ``./``. Members are read sequentially: random access into a ``.tar.gz``
    would decompress it again for every member.
    """
    path = Path(path)
    if not path.exists():
        raise ArchiveError(f"{path} does not exist; pass the path of the downloaded archive with --from")
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            name = p.relative_to(path).as_posix()
            if p.is_file() and want(name):
                yield name, p.read_bytes()
        return
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    name = _clean(info.filename)
                    if not info.is_dir() and want(name):
                        yield name, zf.read(info)
            return
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                name = _clean(member.name)
                if member.isfile() and want(name):
                    f = tf.extractfile(member)
                    yield name, f.read() if f else b""
    except tarfile.ReadError as e:
        if "truncated" in str(e) or "unexpected end" in str(e):
            raise ArchiveError(f"{path} is truncated ({e}); download it again") from None
        raise ArchiveError(f"{path} is not a tar or zip archive; pass the dataset archive "
                           f"(.tar.gz / .zip) or its unpacked folder") from None
    except (EOFError, zlib.error, OSError, zipfile.BadZipFile) as e:
        raise ArchiveError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}); "
                           f"download it again") from None


def _clean(name: str) -> str:
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def decode_image(item: tuple[str, bytes, int | None]) -> np.ndarray | str:
    """Decode one image to uint8 ``[3, H, W]`` RGB; with a size, center-crop square and resize.

    Returns an error line instead of raising, so a worker process reports which member
    was bad rather than a traceback.
    """
    from PIL import Image

    name, data, size = item
    try:
        with Image.open(io.BytesIO(data)) as img:
            if size is not None:
                img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when it is much larger
                w, h = img.size
                s = min(w, h)
                box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
                img = img.convert("RGB").resize((size, size), Image.BILINEAR, box=box, reducing_gap=2.0)
            else:
                img = img.convert("RGB")
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()
    except Exception as e:  # PIL raises many types for bad data
        detail = str(e) if "BytesIO" not in str(e) else "unknown image format"
        return f"{name} is not a readable image ({type(e).__name__}: {detail})"


def decode_all(items: list[tuple[str, bytes, int | None]], archive: Path, workers: int = 2) -> list[np.ndarray]:
    """Decode many images, with a process pool when there are enough of them."""
    if workers > 1 and len(items) >= POOL_MIN_IMAGES:
        methods = multiprocessing.get_all_start_methods()
        # fork: the workers need only PIL and numpy, and spawn would re-import torch in each
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ctx.Pool(workers) as pool:
            out = pool.map(decode_image, items, chunksize=max(1, len(items) // (workers * 8)))
    else:
        out = [decode_image(i) for i in items]
    for r in out:
        if isinstance(r, str):
            raise ArchiveError(f"{archive}: {r}; the archive is corrupt, get a fresh copy")
    return out  # type: ignore[return-value]


# --------------------------------------------------------------------------- CIFAR-10
_PICKLE_RE = re.compile(r"(?:^|/)cifar-10-batches-py/(data_batch_[1-5]|test_batch|batches\.meta)$")
_FOLDER_RE = re.compile(r"(?:^|/)(train|test)/([^/]+)/([^/]+)$")
_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's array-unpickling function, whatever module it lives in


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds (dicts, lists, bytes, numpy arrays): no code."""

    def find_class(self, module: str, name: str):
        if module.startswith("numpy") and name == "_reconstruct":
            return _RECONSTRUCT
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module.startswith("numpy") and module.endswith("multiarray") and name == "scalar":
            return np.zeros(1)[0].__reduce__()[0]
        if (module, name) == ("_codecs", "encode"):  # how Python 3 pickles bytes at protocol 2
            return codecs.encode
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR-10 batch")


def _unpickle(name: str, data: bytes, archive: Path) -> dict[str, object]:
    try:
        d = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:
        raise ArchiveError(f"{archive}: {name} is not a readable CIFAR-10 pickle ({type(e).__name__}: {e}); "
                           f"the archive is corrupt, get a fresh copy") from None
    if not isinstance(d, dict):
        raise ArchiveError(f"{archive}: {name} holds a {type(d).__name__}, not a CIFAR-10 batch dict")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in d.items()}


def _cifar_from_pickles(files: dict[str, bytes], archive: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    need = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    missing = [n for n in need if n not in files]
    if missing:
        raise ArchiveError(f"{archive}: cifar-10-batches-py/ lacks {', '.join(missing)}; the archive is "
                           f"incomplete, download cifar-10-python.tar.gz again")
    meta = _unpickle("batches.meta", files["batches.meta"], archive)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("label_names", [])]
    if names != CIFAR10_CLASSES:
        raise ArchiveError(f"{archive}: batches.meta names classes {names}, expected the 10 CIFAR-10 classes "
                           f"{CIFAR10_CLASSES}; pass the CIFAR-10 (not CIFAR-100) python archive")
    out: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {"train": ([], []), "test": ([], [])}
    for n in need[:-1]:
        d = _unpickle(n, files[n], archive)
        data, labels = d.get("data"), d.get("labels")
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == 3072 and labels is not None and len(labels) == len(data)):
            raise ArchiveError(f"{archive}: {n} is not a CIFAR-10 batch (expected b'data' uint8 [N, 3072] and "
                               f"N b'labels'); the archive is corrupt, get a fresh copy")
        y = np.asarray(labels, dtype=np.int64)
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise ArchiveError(f"{archive}: {n} has labels outside 0..9; the archive is corrupt, get a fresh copy")
        split = "test" if n == "test_batch" else "train"
        out[split][0].append(data.reshape(-1, 3, 32, 32))  # rows are 1024 R, 1024 G, 1024 B values
        out[split][1].append(y)
    return {s: (np.concatenate(x), np.concatenate(y)) for s, (x, y) in out.items()}


def _cifar_from_folders(files: dict[str, list[tuple[str, str, bytes]]], archive: Path,
                        workers: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    missing = [s for s in ("train", "test") if not files.get(s)]
    if missing:
        raise ArchiveError(f"{archive} has no {' or '.join(m + '/<class>/*.jpg' for m in missing)} images; "
                           f"an image-folder CIFAR-10 archive needs both train/ and test/ split folders")
    out = {}
    for split in ("train", "test"):
        found = sorted({cls for cls, _, _ in files[split]})
        if found != sorted(CIFAR10_CLASSES):
            extra = sorted(set(found) - set(CIFAR10_CLASSES))
            lack = sorted(set(CIFAR10_CLASSES) - set(found))
            raise ArchiveError(f"{archive}: {split}/ has class folders {found} (unexpected: {extra}, missing: "
                               f"{lack}); CIFAR-10 needs exactly {', '.join(CIFAR10_CLASSES)}")
        # canonical order (class index, file name): the same cache whatever order the archive has
        members = sorted(files[split], key=lambda m: (CIFAR10_CLASSES.index(m[0]), m[1]))
        images = decode_all([(f"{split}/{c}/{f}", b, None) for c, f, b in members], archive, workers)
        bad = next((f"{split}/{m[0]}/{m[1]}" for m, im in zip(members, images) if im.shape != (3, 32, 32)), None)
        if bad:
            raise ArchiveError(f"{archive}: {bad} is not 32x32; CIFAR-10 images are 32x32 RGB")
        labels = np.array([CIFAR10_CLASSES.index(c) for c, _, _ in members], dtype=np.int64)
        out[split] = (np.stack(images), labels)
    return out


def read_cifar10(archive: Path, workers: int = 2) -> tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Read either CIFAR-10 format from ``archive``: ``(format, {split: (uint8 [N,3,32,32], labels)})``."""
    pickles: dict[str, bytes] = {}
    folders: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}

    def want(name: str) -> bool:
        return bool(_PICKLE_RE.search(name)) or bool(
            _FOLDER_RE.search(name) and name.lower().endswith(IMAGE_EXT))

    for name, data in iter_files(archive, want):
        m = _PICKLE_RE.search(name)
        if m:
            pickles[m.group(1)] = data
            continue
        m = _FOLDER_RE.search(name)
        if m:
            folders[m.group(1)].append((m.group(2), m.group(3), data))
    if pickles:
        return "python-pickle", _cifar_from_pickles(pickles, archive)
    if folders["train"] or folders["test"]:
        return "image-folder", _cifar_from_folders(folders, archive, workers)
    raise ArchiveError(f"{archive} holds neither cifar-10-batches-py/ (the python version) nor "
                       f"train/<class>/*.jpg + test/<class>/*.jpg; pass cifar-10-python.tar.gz "
                       f"or an image-folder archive")


# --------------------------------------------------------------------------- Food-11
FOOD11_SPLITS = {"training": "train", "validation": "valid", "evaluation": "test"}
_FOOD_RE = re.compile(r"(?:^|/)(training|validation|evaluation)/(\d+)_(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)


def read_food11(archive: Path, size: int, workers: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read Food-11 (``training/ validation/ evaluation/`` of ``<label>_<n>.jpg``) at ``size x size``."""
    if size < 8:
        raise ArchiveError(f"--size {size} is too small; use e.g. --size 64")
    files: dict[str, list[tuple[int, int, str, bytes]]] = {s: [] for s in FOOD11_SPLITS}
    for name, data in iter_files(archive, lambda n: bool(_FOOD_RE.search(n))):
        m = _FOOD_RE.search(name)
        assert m is not None
        files[m.group(1).lower()].append((int(m.group(2)), int(m.group(3)), name, data))
    missing = [s for s, v in files.items() if not v]
    if len(missing) == 3:
        raise ArchiveError(f"{archive} holds no training/, validation/ or evaluation/ folders of <label>_<n>.jpg; "
                           f"pass the Food-11 archive (food-11.zip) or its unpacked folder")
    if missing:
        raise ArchiveError(f"{archive} lacks the split folder(s) {', '.join(m + '/' for m in missing)}; "
                           f"the Food-11 archive is incomplete, get a fresh copy")
    out = {}
    for folder, split in FOOD11_SPLITS.items():
        bad = sorted({lab for lab, _, _, _ in files[folder] if lab >= len(FOOD11_CLASSES)})
        if bad:
            raise ArchiveError(f"{archive}: {folder}/ has labels {bad}; Food-11 labels are 0..10, "
                               f"so this is not the Food-11 archive")
        members = sorted(files[folder], key=lambda m: (m[0], m[1], m[2]))
        images = decode_all([(name, data, size) for _, _, name, data in members], archive, workers)
        out[split] = (np.stack(images), np.array([m[0] for m in members], dtype=np.int64))
    return out
