"""Datasets in memory, their prepared caches, augmentation and a device-resident loader.

Over the kit's 400-line guide on purpose: the cache format, ``ImageData`` and ``Loader`` are one contract.

Every dataset is an :class:`ImageData`: all images as one ``uint8`` tensor
``[N, 3, H, W]`` (pixel values 0..255) and ``int64`` labels ``[N]``. The datasets
are small enough (CIFAR-10: 184 MB as uint8) to live in memory, and on 2 CPU
cores a plain in-memory loop beats ``DataLoader`` + PIL transforms, so the
:class:`Loader` moves the whole dataset to the device once and does shuffling,
augmentation and normalisation there, in batches.

Where the data comes from:

* ``digits``  scikit-learn's 1,797 real 8x8 handwritten digits (ships with
  scikit-learn, never downloaded), rendered to 32x32 RGB.
* ``cifar10`` / ``food11``  a cache prepared once by ``python -m data_scripts``
  under the data root (``LABKIT_DATA_ROOT``, default ``~/.cache/labkit/data``):
  one ``.npz`` per dataset holding ``<split>_images`` (uint8 ``[N, 3, H, W]``),
  ``<split>_labels`` (int64 ``[N]``) and ``classes`` (str ``[C]``).
"""
from __future__ import annotations

import functools
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from labkit.files import atomic_open
from labkit.profile import Profile, default_data_root, get_profile

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
FOOD11_CLASSES = ["Bread", "Dairy product", "Dessert", "Egg", "Fried food", "Meat",
                  "Noodles/Pasta", "Rice", "Seafood", "Soup", "Vegetable/Fruit"]
DIGITS_CLASSES = [str(d) for d in range(10)]

# Per-channel mean / std of the training images, on the 0..1 scale.
# cifar10: the usual published statistics of the 50,000 training images.
# digits: measured on the train split of load_digits32() (tests/test_data.py re-measures them).
# food11: ImageNet statistics, the customary choice for natural food photos.
MEAN_STD: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "digits": ((0.3055, 0.3055, 0.3055), (0.3237, 0.3237, 0.3237)),
    "food11": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


# --------------------------------------------------------------------------- ImageData
@dataclass
class ImageData:
    """A labelled image dataset, entirely in memory.

    ``images``: uint8 ``[N, 3, H, W]``, pixel values 0..255.
    ``labels``: int64 ``[N]``, each in ``0 .. len(classes) - 1``.
    ``classes``: class names, index = label.
    ``name``: the dataset it came from (``digits`` / ``cifar10`` / ``food11``); it picks
    the normalisation statistics in :data:`MEAN_STD`, so subsets keep it.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if not (isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"ImageData.images must be a uint8 tensor [N, 3, H, W], got {got}")
        if not (isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.shape == (x.shape[0],)):
            got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"ImageData.labels must be an int64 tensor [{x.shape[0]}], got {got}")
        self.classes = list(self.classes)
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
            raise ValueError(f"ImageData labels must lie in 0..{len(self.classes) - 1} "
                             f"(one per class name), got {int(y.min())}..{int(y.max())}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:  # the default dataclass repr would print every pixel
        shape = tuple(self.images.shape[1:])
        return f"ImageData(name={self.name!r}, n={len(self)}, image_shape={shape}, classes={len(self.classes)})"

    def counts(self) -> torch.Tensor:
        """Images per class: int64 ``[len(classes)]``."""
        return torch.bincount(self.labels, minlength=len(self.classes))

    def subset(self, index: torch.Tensor | Sequence[int]) -> "ImageData":
        """The images at ``index`` (int positions or a bool mask of length N), in that order."""
        if not isinstance(index, torch.Tensor):
            index = torch.as_tensor(list(index), dtype=torch.long)
        if index.dtype != torch.bool:
            index = index.long()
        return ImageData(self.images[index], self.labels[index], list(self.classes), self.name)

    def limit(self, n: int | None, seed: int = 0) -> "ImageData":
        """At most ``n`` images, drawn per class in proportion to the class sizes.

        Deterministic for a given ``seed``; ``None`` or ``n >= len(self)`` keeps everything.
        Kept images stay in their original order.
        """
        if n is None or n >= len(self):
            return self
        if n < 0:
            raise ValueError(f"limit(n={n}): n must be >= 0 (or None for all images)")
        counts = self.counts()
        share = counts.double() * n / len(self)
        take = share.floor().long()
        # Largest remainder: hand the missing images to the classes that lost most to rounding
        # (ties go to the lower class index, so the result does not depend on sort stability).
        missing = n - int(take.sum())
        order = sorted(range(len(counts)), key=lambda c: (-(float(share[c]) - int(take[c])), c))
        for c in order[:missing]:
            take[c] += 1
        gen = torch.Generator().manual_seed(seed)
        keep = []
        for c in range(len(counts)):
            idx = (self.labels == c).nonzero().flatten()
            keep.append(idx[torch.randperm(len(idx), generator=gen)[: int(take[c])]])
        return self.subset(torch.cat(keep).sort().values)


# --------------------------------------------------------------------------- caches
def cache_path(name: str, root: Path | str | None = None, size: int | None = None) -> Path:
    """Where the prepared cache of ``name`` lives: ``<root>/<name>/<name>[-<size>].npz``."""
    root = Path(root) if root is not None else default_data_root()
    stem = name if size is None else f"{name}-{size}"
    return root.expanduser() / name / f"{stem}.npz"


def write_cache(path: Path | str, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                classes: Sequence[str]) -> Path:
    """Write splits ``{name: (uint8 [N, 3, H, W], int labels [N])}`` to one ``.npz``, atomically.

    The file appears complete or not at all: it is written to a temporary file in the
    same folder and renamed over ``path``; on any error the temporary file is removed.
    """
    path = Path(path)
    arrays: dict[str, np.ndarray] = {"classes": np.asarray(list(classes), dtype=np.str_)}
    for split, (images, labels) in splits.items():
        images, labels = np.asarray(images), np.asarray(labels)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"split {split!r}: images must be uint8 [N, 3, H, W], got {images.dtype} {images.shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"split {split!r}: {labels.shape[0]} labels for {images.shape[0]} images")
        arrays[f"{split}_images"] = np.ascontiguousarray(images)
        arrays[f"{split}_labels"] = labels.astype(np.int64)
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)  # uncompressed: zlib saves ~6% on photos but makes loading ~10x slower
    return path


def read_cache(path: Path | str, name: str) -> dict[str, ImageData]:
    """Read a cache written by :func:`write_cache`: ``{split: ImageData}`` (CPU tensors)."""
    path = Path(path)
    fix = f"delete it and prepare it again with `python -m data_scripts {name} --from ARCHIVE`"
    try:
        with np.load(path, allow_pickle=False) as z:
            classes = [str(c) for c in z["classes"]]
            splits = sorted(k[: -len("_images")] for k in z.files if k.endswith("_images"))
            out = {}
            for split in splits:
                images = torch.from_numpy(z[f"{split}_images"])
                labels = torch.from_numpy(z[f"{split}_labels"]).long()
                out[split] = ImageData(images, labels, classes, name)
    except FileNotFoundError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path} is not a readable {name} cache ({type(e).__name__}: {e}); {fix}") from None
    if not out:
        raise ValueError(f"{path} holds no image splits; {fix}")
    return out


# --------------------------------------------------------------------------- loaders
@functools.lru_cache(maxsize=1)
def _digits_raw() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as uint8 [1797, 3, 32, 32] and int64 labels [1797]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    small = torch.from_numpy(d.images.astype(np.float32)).unsqueeze(1)  # [N, 1, 8, 8], ink 0..16
    big = torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    gray = (big * (255.0 / 16.0)).round().clamp(0, 255).to(torch.uint8)
    return gray.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(d.target.astype(np.int64))


def load_digits32() -> tuple[ImageData, ImageData]:
    """scikit-learn's 8x8 digits as 32x32 RGB (bilinear upsampling, grey in all 3 channels).

    Returns ``(train, test)``: a stratified 80/20 split, the same on every machine
    (1,438 / 359 images). No download: the data ships with scikit-learn.
    """
    images, labels = _digits_raw()
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = np.flatnonzero(labels.numpy() == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * DIGITS_TEST_FRACTION))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr = torch.from_numpy(np.sort(np.concatenate(train_idx)))
    te = torch.from_numpy(np.sort(np.concatenate(test_idx)))
    # clone: callers may modify their copy without touching the cached tensor
    return (ImageData(images[tr].clone(), labels[tr].clone(), DIGITS_CLASSES, "digits"),
            ImageData(images[te].clone(), labels[te].clone(), DIGITS_CLASSES, "digits"))


def _prepared(name: str, title: str, path: Path, splits: tuple[str, ...], prepare: str,
              how: str) -> list[ImageData]:
    """The ``splits`` of the cache at ``path``; errors say how to prepare it (``python -m data_scripts {prepare}``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{title} is not prepared ({path} not found): run `python -m data_scripts "
                                f"{prepare} --root {path.parent.parent}`{how}, or set LABKIT_DATASET=digits to "
                                f"use the embedded dataset")
    s = read_cache(path, name)
    if set(s) != set(splits):
        raise ValueError(f"{path} holds splits {sorted(s)}, expected {', '.join(splits[:-1])} and {splits[-1]}; "
                         f"prepare it again with `python -m data_scripts {prepare}`")
    return [s[split] for split in splits]


def load_cifar10(root: Path | None = None) -> tuple[ImageData, ImageData]:
    """CIFAR-10 ``(train, test)`` (50,000 / 10,000 images, uint8 ``[N, 3, 32, 32]``) from the cache."""
    train, test = _prepared("cifar10", "CIFAR-10", cache_path("cifar10", root), ("train", "test"),
                            "cifar10 --from ARCHIVE", " (or without --from to download it)")
    return train, test


def load_food11(root: Path | None = None, size: int = 64) -> tuple[ImageData, ImageData, ImageData]:
    """Food-11 ``(train, valid, test)`` at ``size x size`` pixels from the cache for that size."""
    train, valid, test = _prepared("food11", "Food-11", cache_path("food11", root, size), ("train", "valid", "test"),
                                   f"food11 --from ARCHIVE --size {size}", " with the Food-11 zip")
    return train, valid, test


def load_dataset(name: str | None = None, profile: Profile | None = None) -> tuple[ImageData, ImageData]:
    """``(train, test)`` of the profile's dataset (or ``name``), cut to the profile's limits.

    Food-11 gives its training and evaluation splits. The cut is class-stratified and
    seeded by the profile's seed, so every run of a profile sees the same images.
    """
    prof = profile or get_profile()
    name = (name or prof.dataset).lower()
    if name == "digits":
        train, test = load_digits32()
    elif name == "cifar10":
        train, test = load_cifar10(prof.data_root)
    elif name == "food11":
        train, _, test = load_food11(prof.data_root)
    else:
        raise ValueError(f"unknown dataset {name!r}; use one of: digits, cifar10, food11")
    return train.limit(prof.sizes.train_limit, prof.seed), test.limit(prof.sizes.test_limit, prof.seed)


# --------------------------------------------------------------------------- derived datasets
def skewed(data: ImageData, minority: list[int], keep: float | int, seed: int = 0) -> ImageData:
    """Keep only part of each ``minority`` class and all images of the other classes.

    ``keep`` is a fraction of each minority class (float in [0, 1]) or a count per
    minority class (int, capped at the class size). Deterministic for a given ``seed``.
    """
    n_cls = len(data.classes)
    bad = [c for c in minority if not 0 <= int(c) < n_cls]
    if bad:
        raise ValueError(f"skewed: minority classes {bad} are not in 0..{n_cls - 1}")
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise ValueError(f"skewed: keep must be a fraction (float) or a count (int), got {keep!r}")
    if isinstance(keep, float) and not 0.0 <= keep <= 1.0:
        raise ValueError(f"skewed: keep={keep} as a fraction must lie in [0, 1]; pass an int for a count")
    if keep < 0:
        raise ValueError(f"skewed: keep={keep} must be >= 0")
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(len(data), dtype=torch.bool)
    for c in sorted(set(int(c) for c in minority)):
        idx = (data.labels == c).nonzero().flatten()
        k = int(round(keep * len(idx))) if isinstance(keep, float) else min(int(keep), len(idx))
        drop = idx[torch.randperm(len(idx), generator=gen)[k:]]
        mask[drop] = False
    return data.subset(mask)


def class_subset(data: ImageData, classes: list[int], relabel: bool = True) -> ImageData:
    """Only the images of ``classes``; with ``relabel`` they become 0..k-1 in the order given.

    With ``relabel=False`` labels and class names are kept as they were.
    """
    classes = [int(c) for c in classes]
    n_cls = len(data.classes)
    if len(set(classes)) != len(classes) or not classes:
        raise ValueError(f"class_subset: classes must be a non-empty list without repeats, got {classes}")
    bad = [c for c in classes if not 0 <= c < n_cls]
    if bad:
        raise ValueError(f"class_subset: classes {bad} are not in 0..{n_cls - 1}")
    mask = torch.isin(data.labels, torch.tensor(classes))
    sub = data.subset(mask)
    if not relabel:
        return sub
    lut = torch.full((n_cls,), -1, dtype=torch.long)
    lut[torch.tensor(classes)] = torch.arange(len(classes))
    return ImageData(sub.images, lut[sub.labels], [data.classes[c] for c in classes], data.name)


# --------------------------------------------------------------------------- augmentation
def augment_batch(x: torch.Tensor, pad: int = 4, flip: bool = True,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole batch at once.

    ``x``: uint8 ``[B, 3, H, W]`` on any device. Each image is zero-padded by ``pad``
    pixels on every side, cropped back to ``H x W`` at a random offset (uniform over the
    ``(2 pad + 1)^2`` offsets) and, with ``flip``, mirrored left-right with probability 1/2.
    Returns a new uint8 ``[B, 3, H, W]`` tensor on ``x``'s device. The random numbers come
    from ``generator`` (on whichever device it lives) so a seeded generator repeats exactly.
    Implemented as one gather: crop and flip only change which source pixel each output reads.
    """
    if x.dim() != 4:
        raise ValueError(f"augment_batch expects [B, C, H, W], got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    gdev = generator.device if generator is not None else torch.device("cpu")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=gdev).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=gdev).to(x.device)
    mirror = (torch.randint(0, 2, (b,), generator=generator, device=gdev).to(x.device).bool()
              if flip else torch.zeros(b, dtype=torch.bool, device=x.device))
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad)) if pad else x
    rows = dy[:, None] + torch.arange(h, device=x.device)                 # [B, H] rows of `padded`
    cols = dx[:, None] + torch.arange(w, device=x.device)                 # [B, W]
    cols = torch.where(mirror[:, None], cols.flip(1), cols)               # flip = read columns backwards
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` (0..255) -> float32 ``[B, 3, H, W]``: ``(x / 255 - mean) / std`` per channel."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return (x.float().div_(255.0) - m).div_(s)


def mean_std(data: ImageData) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``data`` on the 0..1 scale: :data:`MEAN_STD` or measured."""
    if data.name in MEAN_STD:
        return MEAN_STD[data.name]
    x = data.images.float().div(255.0)
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist())


class Loader:
    """Batches of ``(float32 images [B, 3, H, W], int64 labels [B])`` on ``device``.

    The whole dataset is moved to ``device`` once, as uint8. Training loaders reshuffle
    every epoch with a generator seeded by ``(seed, epoch)`` (so runs repeat exactly)
    and, unless ``augment=False``, apply :func:`augment_batch`; evaluation loaders go in
    dataset order without augmentation. Images are normalised with the dataset's
    :data:`MEAN_STD`. ``drop_last`` defaults to True for training when the dataset holds
    more than one batch (keeps BatchNorm away from a tiny last batch) and False otherwise.
    """

    def __init__(self, data: ImageData, batch_size: int, train: bool, device: str | None = None,
                 augment: bool | None = None, seed: int = 0, drop_last: bool | None = None) -> None:
        if len(data) == 0:
            raise ValueError(f"Loader: the dataset {data.name!r} is empty; check the limits or the subset")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Loader: batch_size must be a positive int, got {batch_size!r}")
        self.device = torch.device(device or get_profile().device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.classes = list(data.classes)
        self.num_classes = len(data.classes)
        self.dataset_size = len(data)
        self.name = data.name
        self.batch_size = batch_size
        self.train = train
        self.augment = train if augment is None else augment
        self.drop_last = (train and len(data) > batch_size) if drop_last is None else drop_last
        self.seed = seed
        self.epoch = 0  # the epoch the next iteration will use; set it to replay an epoch
        self.mean, self.std = mean_std(data)

    def __len__(self) -> int:
        if self.drop_last:
            return self.dataset_size // self.batch_size
        return math.ceil(self.dataset_size / self.batch_size)

    def _generator(self, epoch: int) -> torch.Generator:
        # One CPU generator per (seed, epoch): the same stream on every device.
        return torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        gen = self._generator(epoch)
        if self.train:
            order = torch.randperm(self.dataset_size, generator=gen).to(self.device)
        else:
            order = torch.arange(self.dataset_size, device=self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images[idx]
            if self.augment:
                x = augment_batch(x, generator=gen)
            yield normalize(x, self.mean, self.std), self.labels[idx]

    def __repr__(self) -> str:
        return (f"Loader({self.name}, n={self.dataset_size}, batch_size={self.batch_size}, "
                f"train={self.train}, augment={self.augment}, device={self.device})")


def loaders(train: ImageData, test: ImageData, batch_size: int | None = None,
            device: str | None = None) -> tuple[Loader, Loader]:
    """A training loader (shuffled, augmented, seeded by the profile) and an evaluation loader.

    ``batch_size`` and ``device`` default to the profile's.
    """
    prof = get_profile()
    bs = batch_size or prof.sizes.batch_size
    dev = device or prof.device
    return (Loader(train, bs, train=True, device=dev, seed=prof.seed),
            Loader(test, bs, train=False, device=dev, seed=prof.seed))
