"""Training throughput: labkit's in-memory ``Loader`` vs torchvision ``DataLoader(ImageFolder)``.

Both paths train the same VGG (same initial weights, same SGD optimizer, same batch size,
same augmentation: random crop with 4 pixels of zero padding, horizontal flip, per-channel
normalisation) for one epoch through :func:`labkit.train.fit`, on the same real JPEG files:

* **baseline**: ``DataLoader(ImageFolder(root, RandomCrop(32, 4) + RandomHorizontalFlip +
  ToTensor + Normalize))`` with worker processes; every image is decoded by PIL every epoch
  and every batch is collated on the host; fp32, NCHW (``fit(..., amp=False, channels_last=False)``).
* **labkit**: the same JPEGs decoded once into a uint8 tensor (:class:`labkit.data.ImageData`);
  :class:`labkit.data.Loader` keeps it on the device and shuffles, crops, flips and normalises
  whole batches there, and ``fit`` trains as under the ``fast`` profile: channels_last (NHWC) on
  every device, plus bf16 autocast on CUDA.

The images come from ``/work/shared/datasets/cifar10-jpeg.tar.gz`` (``--jpeg-archive`` or
``LABKIT_CIFAR10_JPEG`` elsewhere) when present: the first ``n`` training images of each class
are extracted into a temporary folder. Without the archive the embedded digits dataset is
written out as JPEG files, so the benchmark runs on any machine.

The decode-once cost of the labkit path is measured and reported separately: a course run
pays it once (the prepared cache), not per epoch.
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench import command, log, machine_info, ratio
from labkit.profile import SIZES

DEFAULT_ARCHIVE = Path("/work/shared/datasets/cifar10-jpeg.tar.gz")
_MEMBER = re.compile(r"^(?:\./)?train/([^/]+)/(\d+)\.jpg$")


@dataclass(frozen=True)
class ThroughputConfig:
    """Sizes of the throughput benchmark.

    ``per_class``: training images per class in the JPEG folder; ``rounds``: epochs measured per
    path, alternating baseline / labkit, best one kept (the machine is shared, so the fastest
    epoch is the least disturbed one); ``workers``: DataLoader worker processes (``None`` =
    ``min(cores, 8)``). The network and batch size default to the ``fast`` profile's
    (:data:`labkit.profile.SIZES`): what a student's default run trains.
    """

    depth: int = SIZES["fast"].vgg_depth
    width: float = SIZES["fast"].width
    batch_size: int = SIZES["fast"].batch_size
    per_class: int = 500
    rounds: int = 2
    workers: int | None = None
    warmup_batches: int = 3


# Model sizes are labkit's profiles (labkit.profile.SIZES), not a second set: the default run trains
# the ``fast`` profile's VGG, ``--smoke`` the ``smoke`` profile's width on a tiny JPEG folder
# (batch 32: the folder holds 16 images per class).
FAST = ThroughputConfig()
SMOKE = ThroughputConfig(width=SIZES["smoke"].width, batch_size=32, per_class=16, rounds=1, warmup_batches=1)


# --------------------------------------------------------------------------- the JPEG folder
def archive_path() -> Path | None:
    """The CIFAR-10 JPEG archive if present (``LABKIT_CIFAR10_JPEG`` overrides the default)."""
    env = os.environ.get("LABKIT_CIFAR10_JPEG")
    path = Path(env) if env else DEFAULT_ARCHIVE
    return path if path.is_file() else None


def extract_cifar_subset(archive: Path, dest: Path, per_class: int) -> int:
    """Extract the training JPEGs numbered ``< per_class`` of every class into ``dest/<class>/``.

    The archive is read as a stream (one pass, no full extraction). Returns the number of files.
    """
    count = 0
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            m = _MEMBER.match(member.name)
            if not (m and member.isfile() and int(m.group(2)) < per_class):
                continue
            src = tar.extractfile(member)
            if src is None:
                continue
            out = dest / m.group(1) / f"{m.group(2)}.jpg"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(src.read())
            count += 1
    if count == 0:
        raise ValueError(f"{archive} holds no train/<class>/<n>.jpg files; is it the CIFAR-10 JPEG archive?")
    return count


def write_digits_jpegs(dest: Path, per_class: int) -> int:
    """Write up to ``per_class`` digits training images per class as JPEG (quality 95)."""
    from PIL import Image

    from labkit.data import load_digits32

    train, _ = load_digits32()
    count = 0
    for c, name in enumerate(train.classes):
        idx = (train.labels == c).nonzero().flatten()[:per_class]
        (dest / name).mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(idx.tolist()):
            arr = train.images[i].permute(1, 2, 0).numpy()  # [H, W, 3] uint8
            Image.fromarray(arr).save(dest / name / f"{k:04d}.jpg", quality=95)
            count += 1
    return count


def make_jpeg_folder(dest: Path, per_class: int) -> tuple[str, str]:
    """Fill ``dest`` with ``<class>/<n>.jpg``; returns ``(dataset name, where it came from)``."""
    archive = archive_path()
    if archive is not None:
        n = extract_cifar_subset(archive, dest, per_class)
        return "cifar10", f"{n} CIFAR-10 training JPEGs extracted from {archive}"
    n = write_digits_jpegs(dest, per_class)
    return "digits", (f"{n} embedded digits images written as JPEG (no CIFAR-10 archive at "
                      f"{DEFAULT_ARCHIVE}; set LABKIT_CIFAR10_JPEG to use one)")


def decode_folder(root: Path, name: str) -> "Any":
    """Decode every JPEG under ``root/<class>/`` once into a :class:`labkit.data.ImageData`.

    Classes are the sorted folder names, as ``ImageFolder`` orders them, so labels agree.
    """
    import numpy as np
    from PIL import Image

    from labkit.data import ImageData

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for c, cls in enumerate(classes):
        for f in sorted((root / cls).glob("*.jpg")):
            with Image.open(f) as im:
                images.append(np.asarray(im.convert("RGB")).transpose(2, 0, 1))
            labels.append(c)
    x = torch.from_numpy(np.stack(images))
    return ImageData(x, torch.tensor(labels, dtype=torch.int64), classes, name)


# --------------------------------------------------------------------------- the two paths
def torchvision_loader(root: Path, name: str, batch_size: int, workers: int, device: str,
                       seed: int = 0):
    """The usual tutorial pipeline: ``ImageFolder`` + PIL transforms + ``DataLoader``."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from labkit.data import MEAN_STD

    mean, std = MEAN_STD[name]
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(mean, std)])
    ds = datasets.ImageFolder(str(root), transform=tf)
    return DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                      pin_memory=device == "cuda", generator=torch.Generator().manual_seed(seed))


def _warm_up(model: torch.nn.Module, device: str, batch_size: int, steps: int) -> None:
    """A few training steps on random data so that neither path pays first-call costs."""
    from labkit.train import fit

    if steps < 1:
        return
    batches = [(torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,)))] * steps
    fit(model, batches, epochs=1, lr=0.01, device=device, progress=False)


def _timed_epoch(model: torch.nn.Module, loader: Any, device: str, amp: bool | None,
                 channels_last: bool | None = None) -> tuple[float, int]:
    """Seconds and images of one training epoch of ``model`` through ``fit`` (fresh optimizer)."""
    from labkit.train import fit, make_sgd

    opt = make_sgd(model, lr=0.05, nesterov=True)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    hist = fit(model, loader, epochs=1, optimizer=opt, device=device, progress=False, amp=amp,
               channels_last=channels_last)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    images = len(loader) * loader.batch_size  # both loaders drop the last partial batch
    if not torch.isfinite(torch.tensor(hist.last["train_loss"])):
        raise FloatingPointError("the throughput epoch diverged; the benchmark model is broken")
    return seconds, images


def _rounds(init: torch.nn.Module, data: Any, folder: Path, name: str, cfg: ThroughputConfig, workers: int,
            dev: str) -> tuple[list[float], list[float], list[float], int]:
    """Images/s of each round of both paths, alternating (torchvision first), images per epoch, and
    images/s of the labkit loader trained NCHW like the baseline (the loader's share of the gain)."""
    from labkit.data import Loader

    base_runs: list[float] = []
    kit_runs: list[float] = []
    kit_nchw_runs: list[float] = []
    images = 0
    for r in range(cfg.rounds):
        base = torchvision_loader(folder, name, cfg.batch_size, workers, dev, seed=r)
        s, images_b = _timed_epoch(copy.deepcopy(init), base, dev, amp=False, channels_last=False)
        base_runs.append(images_b / s)
        kit = Loader(data, cfg.batch_size, train=True, device=dev, seed=r)
        s, images = _timed_epoch(copy.deepcopy(init), kit, dev, amp=None, channels_last=True)  # fast's layout
        kit_runs.append(images / s)
        kit = Loader(data, cfg.batch_size, train=True, device=dev, seed=r)
        s, images = _timed_epoch(copy.deepcopy(init), kit, dev, amp=False, channels_last=False)
        kit_nchw_runs.append(images / s)
        log(f"[throughput] round {r + 1}/{cfg.rounds}: torchvision {base_runs[-1]:.0f} img/s, "
            f"labkit {kit_runs[-1]:.0f} img/s, labkit loader trained NCHW {kit_nchw_runs[-1]:.0f} img/s")
    return base_runs, kit_runs, kit_nchw_runs, images


def run(smoke: bool = False, device: str | None = None, cfg: ThroughputConfig | None = None) -> list[dict]:
    """Measure both paths side by side; returns one row (images/s of each, ratio, goal)."""
    from labkit.models import vgg
    from labkit.profile import default_device

    cfg = cfg or (SMOKE if smoke else FAST)
    dev = device or default_device()
    workers = cfg.workers if cfg.workers is not None else min(os.cpu_count() or 1, 8)
    goal = 5.0 if dev == "cuda" else 2.0
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-jpeg-"))
    try:
        t = time.perf_counter()
        name, source = make_jpeg_folder(tmp, cfg.per_class)
        prepare_s = time.perf_counter() - t
        t = time.perf_counter()
        data = decode_folder(tmp, name)
        decode_s = time.perf_counter() - t
        log(f"[throughput] {source}; decoded {len(data)} images in {decode_s:.1f}s")

        torch.manual_seed(0)
        init = vgg(cfg.depth, width=cfg.width, num_classes=len(data.classes))
        _warm_up(copy.deepcopy(init), dev, cfg.batch_size, cfg.warmup_batches)
        base_runs, kit_runs, kit_nchw_runs, images = _rounds(init, data, tmp, name, cfg, workers, dev)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base_best, kit_best = max(base_runs), max(kit_runs)
    speedup = ratio(kit_best, base_best)
    kit_desc = ("labkit Loader (uint8 data on the GPU) + fit (bf16 autocast, channels_last)"
                if dev == "cuda" else "labkit Loader (in-memory uint8, batched augmentation) + fit (fp32, channels_last)")
    return [{
        "section": "throughput",
        "name": f"train epoch VGG-{cfg.depth} w{cfg.width}, batch {cfg.batch_size}",
        "dataset": name,
        "images_source": source,
        "images_per_epoch": images,
        "baseline": f"torchvision DataLoader(ImageFolder, PIL transforms), {workers} workers, fit (fp32, NCHW)",
        "candidate": kit_desc,
        "baseline_images_per_s": round(base_best, 1),
        "candidate_images_per_s": round(kit_best, 1),
        "baseline_runs": [round(v, 1) for v in base_runs],
        "candidate_runs": [round(v, 1) for v in kit_runs],
        "ratio": round(speedup, 3) if speedup is not None else None,
        "ratio_means": "candidate images/s / baseline images/s (best of the rounds of each)",
        "loader_only_images_per_s": round(max(kit_nchw_runs), 1),
        "loader_only_runs": [round(v, 1) for v in kit_nchw_runs],
        "loader_only_ratio": round(ratio(max(kit_nchw_runs), base_best) or 0.0, 3),
        "loader_only_means": "the labkit loader trained fp32 NCHW like the baseline: the data pipeline's share",
        "goal": f">= {goal:g}x on {dev}",
        "goal_met": bool(speedup is not None and speedup >= goal),
        "decode_once_s": round(decode_s, 2),
        "prepare_jpegs_s": round(prepare_s, 2),
        "command": command("throughput", smoke),
        "machine": machine_info(dev),
        "wall_s": round(time.perf_counter() - t0, 2),
    }]
