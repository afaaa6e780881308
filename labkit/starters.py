"""Models a lab starts from: trained once by the instructor's release, or here when missing.

Lab 1's transfer experiment needs a backbone trained on a source task, lab 2 needs
teachers and lab 8 (the capstone) a teacher clearly stronger than its students. A student should not have to spend most of a lab's time on a laptop training
them, and a short in-notebook run gives weak models that teach the opposite of the lesson
(a "pretrained" network no better than a fresh one). So ``python -m autograder release
--profile fast`` trains them once with :func:`train_starter` and ships them in the lab's
``checkpoints/`` folder. A lab calls :func:`load_or_train`: it takes the student's own
copy (``<artifacts>/``) or the shipped one (:func:`labkit.artifacts.find_artifact`), and
only when neither exists trains it in place, saying so and what it costs.

Nothing here is graded: each starter is labkit's ``fit`` on a fixed split of the data.
Starters are stored as ``{"arch", "kwargs", "state_dict"}`` (the format
:func:`labkit.models.build_model` rebuilds) with float tensors in fp16, which halves the
bundle; they are loaded back as fp32.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from labkit import data, train
from labkit.artifacts import artifact_path, find_artifact
from labkit.checkpoints import load_checkpoint, save_checkpoint
from labkit.models import build_model
from labkit.profile import Profile, get_profile, seed_everything

# Lab 2 trains on at most this many images per profile so that its many student runs stay
# within minutes on a laptop; its teachers see the same target images.
KD_TRAIN_CAP = {"smoke": None, "fast": 10_000, "full": None}


@dataclass(frozen=True)
class StarterSize:
    """How long a starter trains under one profile (epochs of its training set)."""

    source_epochs: int  # lab 1's backbone and lab 2's pretrained teacher on the source classes
    target_epochs: int  # each of lab 2's teachers on the target classes
    lr: float  # peak of the one-cycle schedule
    capstone_epochs: int = 1  # lab 8's teacher on the capstone's training split (all ten classes)


STARTER_SIZES: dict[str, StarterSize] = {
    "smoke": StarterSize(source_epochs=1, target_epochs=1, lr=0.05, capstone_epochs=1),
    # about 20 min on 2 quiet CPU cores for all three (training images per second: ResNet-18 with the
    # ImageNet stem ~1,300, VGG-11 w0.5 ~500; 25,000 source-class and 5,000 target-class images)
    # lab 8's teacher: VGG-11 w0.5 on the capstone's 45,000 training images, 12 epochs (~84 %)
    "fast": StarterSize(source_epochs=12, target_epochs=15, lr=0.1, capstone_epochs=12),
    "full": StarterSize(source_epochs=60, target_epochs=60, lr=0.1, capstone_epochs=60),
}


def transfer_classes(n_classes: int) -> tuple[list[int], list[int]]:
    """``(source, target)``: the first half of the class ids and the rest (labs 1 and 2)."""
    half = n_classes // 2
    return list(range(half)), list(range(half, n_classes))


@dataclass
class KDTask:
    """Lab 2's data: source-class and target-class splits of the profile's dataset (relabelled)."""

    src_train: data.ImageData
    src_test: data.ImageData
    tgt_train: data.ImageData
    tgt_test: data.ImageData


def kd_task(profile: Profile | None = None) -> KDTask:
    """Lab 2's splits: the training set capped by :data:`KD_TRAIN_CAP`, then split by class."""
    prof = profile or get_profile()
    train_all, test_all = data.load_dataset(profile=prof)
    train_all = train_all.limit(KD_TRAIN_CAP.get(prof.name), seed=prof.seed)
    src, tgt = transfer_classes(len(train_all.classes))
    return KDTask(data.class_subset(train_all, src), data.class_subset(test_all, src),
                  data.class_subset(train_all, tgt), data.class_subset(test_all, tgt))


def teacher_arch(profile: Profile) -> tuple[str, dict[str, Any]]:
    """Lab 2's teacher: ResNet-18 with the CIFAR stem on a GPU, VGG-11 width 0.5 on a CPU.

    Under ``fast``, a ResNet-18 with the ImageNet stem (32x32 -> 1x1) learned less than the
    24k-parameter student, so the CPU profiles use a VGG.
    """
    if profile.name == "full":
        return "resnet18", {"small_input": True}
    return "vgg", {"depth": 11, "width": 0.5}


def backbone_arch(profile: Profile) -> tuple[str, dict[str, Any]]:
    """Lab 1's ResNet-18: the CIFAR stem on a GPU, the 15x cheaper ImageNet stem on a CPU."""
    return "resnet18", {"small_input": profile.name == "full"}


def replace_head(model: nn.Module, num_classes: int) -> None:
    """A fresh last layer for ``num_classes`` (ResNet's ``fc`` or labkit VGG's ``classifier``)."""
    name = "fc" if hasattr(model, "fc") else "classifier"
    old = getattr(model, name)
    setattr(model, name, nn.Linear(old.in_features, num_classes).to(old.weight.device))


# --------------------------------------------------------------------------- training recipes
def _fit(model: nn.Module, tr: data.ImageData, te: data.ImageData, epochs: int, lr: float,
         prof: Profile, desc: str) -> float:
    """One-cycle SGD on ``tr`` for ``epochs``; returns the final accuracy on ``te`` (0-1)."""
    batch = prof.sizes.batch_size
    hist = train.fit(model, data.Loader(tr, batch, train=True, seed=prof.seed),
                     data.Loader(te, batch, train=False), epochs=epochs, lr=lr,
                     scheduler="onecycle", device=prof.device, desc=desc)
    return float(hist.last["test_acc"])


def _source_backbone(prof: Profile) -> tuple[nn.Module, dict]:
    size = STARTER_SIZES[prof.name]
    train_all, test_all = data.load_dataset(profile=prof)
    src, _ = transfer_classes(len(train_all.classes))
    arch, kwargs = backbone_arch(prof)
    kwargs = {**kwargs, "num_classes": len(src)}
    seed_everything(prof.seed)
    model = build_model(arch, **kwargs)
    acc = _fit(model, data.class_subset(train_all, src), data.class_subset(test_all, src),
               size.source_epochs, size.lr, prof, "lab 1 source backbone")
    return model, {"arch": arch, "kwargs": kwargs, "test_acc": acc, "classes": src}


def _teacher_scratch(prof: Profile) -> tuple[nn.Module, dict]:
    size, task = STARTER_SIZES[prof.name], kd_task(prof)
    arch, kwargs = teacher_arch(prof)
    kwargs = {**kwargs, "num_classes": len(task.tgt_train.classes)}
    seed_everything(prof.seed)
    model = build_model(arch, **kwargs)
    acc = _fit(model, task.tgt_train, task.tgt_test, size.target_epochs, size.lr, prof,
               "lab 2 teacher from scratch")
    return model, {"arch": arch, "kwargs": kwargs, "test_acc": acc}


def _teacher_pretrained(prof: Profile) -> tuple[nn.Module, dict]:
    """Pretrained on every source-class training image (not only lab 2's capped set), then trained on
    lab 2's target set with teacher (a)'s schedule: the two teachers differ only in their start.

    (A tenth of the learning rate for 8 epochs, tried first, left it at 83.5 % against (a)'s 86.8 %
    under ``fast``: too little to adapt features learned on other classes.)"""
    size, task = STARTER_SIZES[prof.name], kd_task(prof)
    train_all, test_all = data.load_dataset(profile=prof)
    src, _ = transfer_classes(len(train_all.classes))
    arch, kwargs = teacher_arch(prof)
    seed_everything(prof.seed)
    model = build_model(arch, **kwargs, num_classes=len(src))
    src_acc = _fit(model, data.class_subset(train_all, src), data.class_subset(test_all, src),
                   size.source_epochs, size.lr, prof, "lab 2 teacher: pretrain on the source classes")
    replace_head(model, len(task.tgt_train.classes))
    acc = _fit(model, task.tgt_train, task.tgt_test, size.target_epochs, size.lr, prof,
               "lab 2 teacher: train on the target classes")
    kwargs = {**kwargs, "num_classes": len(task.tgt_train.classes)}
    return model, {"arch": arch, "kwargs": kwargs, "test_acc": acc, "source_test_acc": src_acc}


def _capstone_teacher(prof: Profile) -> tuple[nn.Module, dict]:
    """Lab 8's teacher: :func:`teacher_arch` on all ten classes, trained on the capstone's training
    split (:func:`labkit.capstone.capstone_data`), never on its validation or test halves; its
    accuracy is measured on the validation split."""
    from labkit.capstone import capstone_data

    size, split = STARTER_SIZES[prof.name], capstone_data(prof)
    arch, kwargs = teacher_arch(prof)
    kwargs = {**kwargs, "num_classes": len(split.train.classes)}
    seed_everything(prof.seed)
    model = build_model(arch, **kwargs)
    acc = _fit(model, split.train, split.val, size.capstone_epochs, size.lr, prof, "lab 8 teacher")
    return model, {"arch": arch, "kwargs": kwargs, "test_acc": acc, "evaluated_on": "capstone validation split"}


@dataclass(frozen=True)
class Starter:
    """One model a lab starts from: ``<lab>-<name>-<profile>-<dataset>.pt`` (labkit.artifacts)."""

    lab: str
    name: str
    notebook: str  # the lab id whose checkpoints/ folder ships it
    what: str
    build: Callable[[Profile], tuple[nn.Module, dict]]


STARTERS: dict[tuple[str, str], Starter] = {(s.lab, s.name): s for s in (
    Starter("lab1", "source_backbone", "lab1_early_stopping_transfer",
            "ResNet-18 trained on the source classes (every training image of them)", _source_backbone),
    Starter("lab2", "teacher_scratch", "lab2_knowledge_distillation",
            "teacher (a), trained from scratch on the target classes", _teacher_scratch),
    Starter("lab2", "teacher_pretrained", "lab2_knowledge_distillation",
            "teacher (b), pretrained on the source classes, then trained on the target classes like (a)",
            _teacher_pretrained),
    Starter("lab8", "teacher", "lab8_capstone",
            "the capstone's teacher, trained on the capstone's training split (all ten classes)",
            _capstone_teacher),
)}


# --------------------------------------------------------------------------- storage
def save_model(model: nn.Module, path: Path | str, arch: str, kwargs: dict, **info: Any) -> Path:
    """Write ``{"arch", "kwargs", "state_dict" (floats as fp16), **info}`` atomically."""
    state = {k: (v.detach().half() if v.is_floating_point() else v.detach()) for k, v in model.state_dict().items()}
    return save_checkpoint(path, state, arch=arch, kwargs=dict(kwargs), **info)


def load_model(path: Path | str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model written by :func:`save_model` (fp32, eval mode); returns ``(model, info)``."""
    try:
        blob = load_checkpoint(path)
    except ValueError:  # no state_dict at all
        blob = {}
    if not {"arch", "kwargs", "state_dict"} <= set(blob):
        raise ValueError(f"{path} is not a labkit starter (needs arch, kwargs, state_dict); "
                         f"rebuild it with python -m autograder release")
    model = build_model(blob["arch"], **blob["kwargs"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()})
    info = {k: v for k, v in blob.items() if k != "state_dict"}
    return model.to(device).eval(), info


def train_starter(lab: str, name: str, profile: Profile | None = None,
                  out: Path | str | None = None) -> Path:
    """Train the starter ``(lab, name)`` under ``profile`` and save it (default: the artifacts folder)."""
    prof = profile or get_profile()
    if (lab, name) not in STARTERS:
        raise KeyError(f"no starter {lab}/{name}; known: {', '.join('/'.join(k) for k in STARTERS)}")
    t0 = time.perf_counter()
    model, info = STARTERS[(lab, name)].build(prof)
    info["train_seconds"] = round(time.perf_counter() - t0, 1)
    dest = Path(out) if out is not None else artifact_path(lab, name, prof)
    return save_model(model, dest, profile=prof.name, dataset=prof.dataset, **info)


def load_or_train(lab: str, name: str, profile: Profile | None = None) -> tuple[nn.Module, dict]:
    """The starter ``(lab, name)``: your own copy, else the shipped one, else trained here now.

    Returns ``(model on the profile's device in eval mode, info)``; ``info`` holds ``arch``,
    ``kwargs`` and the ``test_acc`` measured when it was trained.
    """
    prof = profile or get_profile()
    try:
        path = find_artifact(lab, name, prof)
    except FileNotFoundError:
        size = STARTER_SIZES[prof.name]
        print(f"no {lab}/{name} for profile={prof.name}, dataset={prof.dataset} (the release ships one "
              f"in checkpoints/): training it here, {size.source_epochs}+ epochs, once")
        path = train_starter(lab, name, prof)
    model, info = load_model(path, prof.device)
    print(f"{lab}/{name}: {STARTERS[(lab, name)].what}; accuracy when trained "
          f"{100 * info.get('test_acc', float('nan')):.1f}% (on the {info.get('evaluated_on', 'test set')})")
    return model, info
