"""Lab 8, the capstone: the budget a model must meet, how it is measured, and the data splits.

The instructor sets the budget here, in :data:`BUDGET`; the notebook shows it and the grader
checks submitted models against it (``autograder.capstone``). A submitted model is the file
``model.pt`` written by the student's ``export_model``: ``{"arch": name, "kwargs": {...},
"state_dict": ...}`` that :func:`labkit.models.build_model` rebuilds.

Its cost is measured from ``arch`` and ``kwargs`` alone, by building the model on PyTorch's
``meta`` device (shapes, no storage) and counting parameters and forward FLOPs there, so that
an enormous model (``width=10**6``) is refused before a single weight is allocated.

Test data: the dataset's test set is split in two halves, class by class, with a seed only
the instructor knows. The public half ships with the lab (``checkpoints/lab8-public_test-
<dataset>.npz``); the hidden half stays with the instructor and grades the models. Without the
shipped file (running the source notebook from the repository) the notebook uses a seed-0
development split and says so.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labkit import data
from labkit.artifacts import SHIPPED_DIR
from labkit.models import MODEL_NAMES, build_model
from labkit.profile import Profile, get_profile

__all__ = ["Budget", "BUDGET", "Cost", "ModelSpecError", "check_spec", "measure", "split_test",
           "public_test_name", "save_split", "load_split", "capstone_data", "CapstoneData",
           "DEV_SPLIT_SEED", "VAL_FRACTION"]


@dataclass(frozen=True)
class Budget:
    """Upper bounds a capstone model must meet (both inclusive).

    ``max_flops`` counts the FLOPs of one forward pass of one 32x32 image, a multiply-add
    being 2 FLOPs (:func:`labkit.metrics.flops`).
    """

    max_params: int
    max_flops: int

    def describe(self) -> str:
        return f"<= {self.max_params:,} parameters and <= {self.max_flops / 1e6:g} MFLOPs per 32x32 image"


# The instructor's budget (issue 14's default): the notebook and the grader both read it.
BUDGET = Budget(max_params=100_000, max_flops=20_000_000)

INPUT_SIZE = (1, 3, 32, 32)  # one image; FLOPs are per image
MAX_INT = 100_000            # an integer kwarg above this is refused outright (depth=10**6 would hang a build)
MAX_ITEMS = 256              # elements of a list kwarg (a VGG cfg has ~20)
DEV_SPLIT_SEED = 0           # the development split of the source notebook; a release uses its own
VAL_FRACTION = 0.1           # of the training set, held out for model selection


class ModelSpecError(ValueError):
    """``arch`` / ``kwargs`` cannot describe a capstone model; the message says why in one line."""


@dataclass(frozen=True)
class Cost:
    """What a model costs: parameters (elements) and forward FLOPs of one 32x32 image."""

    params: int
    flops: int

    def within(self, budget: Budget = BUDGET) -> bool:
        return self.params <= budget.max_params and self.flops <= budget.max_flops


def _check_value(key: str, value: Any, depth: int = 0) -> None:
    if value is None or isinstance(value, (bool, str)):
        if isinstance(value, str) and len(value) > 64:
            raise ModelSpecError(f"kwargs[{key!r}] is a string of {len(value)} characters (at most 64)")
        return
    if isinstance(value, int):
        if abs(value) > MAX_INT:
            raise ModelSpecError(f"kwargs[{key!r}] = {value} is larger than {MAX_INT:,}")
        return
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) > MAX_INT:
            raise ModelSpecError(f"kwargs[{key!r}] = {value!r} is not a finite number up to {MAX_INT:,}")
        return
    if isinstance(value, (list, tuple)) and depth == 0:
        if len(value) > MAX_ITEMS:
            raise ModelSpecError(f"kwargs[{key!r}] has {len(value)} items (at most {MAX_ITEMS})")
        for v in value:
            _check_value(key, v, depth + 1)
        return
    raise ModelSpecError(f"kwargs[{key!r}] is a {type(value).__name__}; only numbers, strings, None and "
                         f"flat lists of them describe a model")


def check_spec(arch: Any, kwargs: Any, num_classes: int = 10) -> tuple[str, dict]:
    """Validate a model description; returns ``(arch, kwargs)`` or raises :class:`ModelSpecError`.

    ``arch`` must be a :data:`labkit.models.MODEL_NAMES` name; ``kwargs`` plain values only
    (no tensors, no objects), ``num_classes`` equal to the task's, and no pretrained ``weights``
    (nothing may be downloaded while grading).
    """
    if not isinstance(arch, str) or arch not in MODEL_NAMES:
        shown = repr(arch)[:40]
        raise ModelSpecError(f"unknown arch {shown}; registered labkit.models names: {', '.join(MODEL_NAMES)}")
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ModelSpecError(f"kwargs must be a dict with string keys, got {type(kwargs).__name__}")
    kwargs = dict(kwargs)
    for key, value in kwargs.items():
        _check_value(key, value)
    if kwargs.get("weights") is not None:
        raise ModelSpecError("kwargs['weights'] must be None: pretrained weights are loaded from the state dict")
    if kwargs.get("num_classes", 10) != num_classes:
        raise ModelSpecError(f"kwargs['num_classes'] = {kwargs.get('num_classes')!r}; the task has {num_classes} classes")
    return arch, kwargs


def measure(arch: str, kwargs: Mapping[str, Any], num_classes: int = 10) -> Cost:
    """Parameters and FLOPs per image of ``build_model(arch, **kwargs)``, built on the meta device.

    Nothing is allocated, however large the model. Raises :class:`ModelSpecError` when the
    description is refused or the builder rejects it (the message says which).
    """
    from labkit.metrics import count_params, flops

    arch, kwargs = check_spec(arch, kwargs, num_classes)
    try:
        with torch.device("meta"):
            model = build_model(arch, **kwargs)
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as exc:
        raise ModelSpecError(f"build_model({arch!r}, **kwargs) failed: {str(exc).splitlines()[0][:160]}") from None
    params = count_params(model)
    try:
        n_flops = flops(model, INPUT_SIZE)
    except (RuntimeError, ValueError) as exc:
        raise ModelSpecError(f"{arch} cannot run a 32x32 image: {str(exc).splitlines()[0][:160]}") from None
    return Cost(params=params, flops=n_flops)


# ----------------------------------------------------------------------------- data
def split_test(test: data.ImageData, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(public, hidden)`` indices into ``test``: each class split in half (odd counts: the extra
    image goes to the hidden half), by a permutation seeded with ``seed``. Both sorted, int64."""
    gen = torch.Generator().manual_seed(int(seed))
    public, hidden = [], []
    for c in range(len(test.classes)):
        idx = torch.nonzero(test.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        half = len(idx) // 2
        public.append(idx[:half])
        hidden.append(idx[half:])
    return torch.sort(torch.cat(public)).values, torch.sort(torch.cat(hidden)).values


def public_test_name(dataset: str) -> str:
    """File name of the shipped public half: ``lab8-public_test-<dataset>.npz``."""
    return f"lab8-public_test-{dataset}.npz"


def save_split(path: Path | str, part: data.ImageData, dataset: str) -> Path:
    """Write one half as ``npz`` (``images`` uint8 ``[N, 3, H, W]``, ``labels`` int64 ``[N]``,
    ``classes``, ``dataset``) through a temporary file and a rename."""
    from labkit.files import atomic_open

    path = Path(path)
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, images=part.images.numpy(), labels=part.labels.numpy(),
                            classes=np.array(part.classes), dataset=np.array(dataset))
    return path


def load_split(path: Path | str) -> data.ImageData:
    """Read a half written by :func:`save_split` (no pickle)."""
    with np.load(Path(path), allow_pickle=False) as z:
        return data.ImageData(torch.from_numpy(z["images"].copy()), torch.from_numpy(z["labels"].astype(np.int64)),
                              [str(c) for c in z["classes"]], str(z["dataset"]))


@dataclass
class CapstoneData:
    """Lab 8's data: training images, a held-out validation set for model selection, the public test half."""

    train: data.ImageData
    val: data.ImageData
    test: data.ImageData
    source: str  # where the test half came from, for the notebook's first output


def capstone_data(profile: Profile | None = None, search: list[Path] | None = None) -> CapstoneData:
    """The profile's training set minus a class-stratified 10 % for validation, and the public test half.

    The public half is the release's ``checkpoints/lab8-public_test-<dataset>.npz`` when present,
    else the development split (seed 0) of the dataset's test set. The profile's ``test_limit``
    and ``train_limit`` apply as everywhere else.
    """
    prof = profile or get_profile()
    train_all, _ = data.load_dataset(profile=prof)
    name = public_test_name(prof.dataset)
    found = [Path(p) / name for p in (search if search is not None else [Path.cwd() / SHIPPED_DIR])]
    found = [p for p in found if p.is_file()]
    if found:
        public, source = load_split(found[0]), f"the course's public test half ({found[0]})"
    else:
        full_test = _full_test(prof)
        public_idx, _ = split_test(full_test, DEV_SPLIT_SEED)
        public = full_test.subset(public_idx)
        source = (f"a development split of the test set (seed {DEV_SPLIT_SEED}); the release ships the "
                  f"course's public half as {SHIPPED_DIR}/{name}")
    public = public.limit(prof.sizes.test_limit, prof.seed)
    gen = torch.Generator().manual_seed(prof.seed)
    val_idx, train_idx = [], []
    for c in range(len(train_all.classes)):
        idx = torch.nonzero(train_all.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = max(1, round(VAL_FRACTION * len(idx)))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return CapstoneData(train_all.subset(torch.sort(torch.cat(train_idx)).values),
                        train_all.subset(torch.sort(torch.cat(val_idx)).values), public, source)


def _full_test(prof: Profile) -> data.ImageData:
    """The dataset's whole test set (no profile limit)."""
    if prof.dataset == "digits":
        return data.load_digits32()[1]
    if prof.dataset == "cifar10":
        return data.load_cifar10(prof.data_root)[1]
    raise ValueError(f"lab 8 runs on digits or cifar10, not {prof.dataset!r}")


def full_test(profile: Profile | None = None) -> data.ImageData:
    """The whole test set of the profile's dataset (the release splits it)."""
    return _full_test(profile or get_profile())
