"""What ``python -m bench.pipeline`` trains (:class:`Recipe`, :data:`RECIPES`) and the pieces that
turn a recipe into a training run: data, model, loader, optimizer, the ``labkit.train.fit`` call
and the compute accounting (shared with ``bench.recipe_speed``).

``--profile`` names a labkit profile (:data:`labkit.profile.SIZES`) and picks the pipeline's
:class:`Recipe` for it from :data:`RECIPES`: the profile's sizes, with what this pipeline trains
differently on top (:func:`recipe_on`). The data come from :func:`labkit.data.load_dataset`.

* ``smoke`` the profile's sizes as they are (the embedded digits cut to a few hundred images, a
  tiny VGG-11, one epoch per phase): proves the plumbing in seconds.
* ``fast``  CIFAR-10 on 2 CPU cores, issue 10's recipe: ``slim_vgg`` at width 0.5 (a frozen 2x2
  patch-whitening conv, then 32-32-M-128-M-128-128-M-128 conv/BN/ReLU blocks, dirac init, BN
  momentum 0.6, max-pooled head; 66 MFLOP, 0.5 M parameters), batch 512, 14 epochs of one-cycle
  nesterov SGD at peak lr 1.0 with label smoothing 0.2, lookahead weight averaging every 5 steps,
  2-pixel translations + flips, channels_last, flip-TTA at evaluation, L1 lambda 3e-4 on the BN
  scales: 138 TFLOP of training. Then 50 % of the channels pruned and fine-tuned with at most
  40 TFLOP (peak lr 0.2), and two short runs of the same recipe (without the L1 penalty) at 14 and
  42 TFLOP. Every phase evaluates after each epoch: the compute-to-accuracy curve. Goals (issue
  10): >= 91 % unpruned with <= 139 TFLOP; pruning 50 % costs <= 1 point before fine-tuning;
  >= 90.5 % after <= 40 TFLOP of fine-tuning; >= 80 % at 14 TFLOP and >= 87 % at 42 TFLOP.
* ``fast_vgg11`` the ``fast`` profile's recipe before issue 10 (VGG-11 at width 0.5, 2.3 M
  parameters, 77 MFLOP: 12 epochs of one-cycle nesterov SGD, peak lr 0.2, batch 256, label
  smoothing 0.1, 4-pixel crops + flips, fp32 NCHW; 139 TFLOP), kept to measure the training
  seconds side by side.
* ``full``  a GPU (one H100): VGG-19 at full width, lambda = 1e-4 (the network-slimming value),
  batch 512, data resident on the GPU, bf16 autocast + channels_last (``fit``'s default on CUDA),
  30 epochs one-cycle (peak lr 0.2), then 50 % and 70 % pruned, each fine-tuned 20 epochs
  one-cycle (peak lr 0.05). Estimated at a few seconds per epoch on an H100 (about 0.8 GFLOP per
  32x32 image forward + backward x 3, 50,000 images), i.e. well under 15 minutes in total; this
  estimate has not been measured (no GPU where it was written).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from torch import nn

from labkit.profile import SIZES


@dataclass(frozen=True)
class Recipe:
    """What the pipeline trains under one ``--profile``. ``lr`` / ``finetune_lr`` are one-cycle
    peak rates; ``l1`` is the lambda of the BatchNorm L1 penalty; ``prune`` the fractions of
    BatchNorm channels removed. The JSON record keeps it as ``config``."""

    dataset: str
    depth: int
    width: float
    batch_size: int
    epochs: int
    finetune_epochs: int
    lr: float
    finetune_lr: float
    l1: float
    prune: tuple[float, ...]
    label_smoothing: float = 0.1
    weight_decay: float = 5e-4
    arch: str = "vgg"                 # labkit.models builder: "vgg" (depth, width) or "slim_vgg"
    lookahead: int | None = None      # fit(lookahead=...): weight averaging every k steps
    tta_flip: bool = False            # evaluate on image + mirror image
    channels_last: bool = False       # NHWC training (faster on CPU)
    curve: bool = False               # evaluate after every epoch: the compute-to-accuracy curve
    budgets_tflop: tuple[float, ...] = ()  # extra short runs of the same recipe at these budgets
    momentum: float = 0.9
    bias_lr_scale: float = 1.0        # BatchNorm biases: lr x this, weight decay / this (airbench: 64)
    translate: int = 4                # random-crop padding in pixels (labkit's Loader: 4)
    train_budget_tflop: float | None = None  # if set: each training epoch takes only as many batches
    #                                          as keep the sparsity training within this budget
    finetune_tflop: float | None = None  # if set: as many fine-tuning epochs as fit this budget,
    #                                      at most finetune_epochs
    model_kw: tuple[tuple[str, Any], ...] = ()  # extra builder arguments, e.g. (("logit_scale", 1.0),)
    optimizer: str = "sgd"            # "sgd" (nesterov) or "muon" (labkit.optim.make_muon; lr = its conv rate)
    scheduler: str = "onecycle"       # fit(scheduler=...): "onecycle" or "linear" (airbench: no warm-up)
    # Muon only: the other groups' rates and the weight decay per step, per image of a batch (airbench's
    # units for a summed loss; x batch_size for fit's mean loss) and scaled like lr when fine-tuning
    sgd_lr: float = 0.053             # BatchNorm scales and shifts
    head_lr: float = 0.67 / 256 ** 2  # the classifier (airbench: 0.67 on a head whose logits are / 256)
    step_decay: float = 2e-6
    train_limit: int | None = None
    test_limit: int | None = None
    goal_unpruned_acc: float | None = None
    goal_pruned_acc: float | None = None   # for the first pruning amount
    goal_train_s: float | None = None      # wall seconds of the training phase
    goal_total_s: float | None = None      # wall seconds of the whole run
    goal_train_tflop: float | None = None  # training compute budget of the unpruned model
    goal_prune_drop: float | None = None   # accuracy lost by pruning, before fine-tuning
    goal_finetune_tflop: float | None = None
    goal_budget_acc: tuple[float, ...] = ()  # accuracy goals of the budgets_tflop runs


def recipe_on(profile: str, **recipe: Any) -> Recipe:
    """The labkit ``profile``'s sizes (:data:`labkit.profile.SIZES`: depth, width, batch, epochs,
    learning rate, image limits) with ``recipe``'s fields on top."""
    s = SIZES[profile]
    sizes = dict(depth=s.vgg_depth, width=s.width, batch_size=s.batch_size, epochs=s.epochs,
                 finetune_epochs=s.finetune_epochs, lr=s.lr, train_limit=s.train_limit,
                 test_limit=s.test_limit)
    return Recipe(**{**sizes, **recipe})


# The pipeline's recipe for each labkit profile (``--profile``), plus ``fast_vgg11``: the ``fast``
# profile's recipe before issue 10 (README: 84.31 %), kept to measure seconds side by side.
RECIPES: dict[str, Recipe] = {
    "smoke": recipe_on("smoke", dataset="digits", finetune_lr=0.02, l1=1e-4, prune=(0.5,)),
    "fast": recipe_on("fast", dataset="cifar10", width=0.5, batch_size=512, epochs=14,
                      finetune_epochs=16, lr=1.0, finetune_lr=0.2, l1=3e-4, prune=(0.5,),
                      label_smoothing=0.2, arch="slim_vgg", lookahead=5, tta_flip=True,
                      channels_last=True, curve=True, budgets_tflop=(14.0, 42.0), translate=2,
                      finetune_tflop=40.0, goal_unpruned_acc=0.91, goal_pruned_acc=0.905,
                      goal_train_tflop=139.0, goal_prune_drop=0.01, goal_finetune_tflop=40.0,
                      goal_budget_acc=(0.80, 0.87)),
    "fast_vgg11": recipe_on("fast", dataset="cifar10", width=0.5, epochs=12, finetune_epochs=8,
                            lr=0.2, finetune_lr=0.05, l1=1e-4, prune=(0.5,), goal_unpruned_acc=0.85,
                            goal_pruned_acc=0.84, goal_train_s=900.0),
    "full": recipe_on("full", dataset="cifar10", batch_size=512, epochs=30, lr=0.2, finetune_lr=0.05,
                      l1=1e-4, prune=(0.5, 0.7), goal_total_s=900.0),
}


def load_data(cfg: Recipe, seed: int) -> tuple[Any, Any]:
    """``(train, test)`` of ``cfg.dataset`` cut to the recipe's limits: :func:`labkit.data.load_dataset`
    under this process's profile (its data root) with the recipe's limits and ``seed``."""
    from labkit.data import load_dataset
    from labkit.profile import get_profile

    prof = get_profile()
    sizes = replace(prof.sizes, train_limit=cfg.train_limit, test_limit=cfg.test_limit)
    return load_dataset(cfg.dataset, prof.with_(seed=seed, sizes=sizes))


def build_model(cfg: Recipe, num_classes: int, channels: list | None = None) -> nn.Module:
    """The profile's network (``channels``: a pruned channel list from lab 4's ``build_cfg_mask``)."""
    from labkit.models import build_model as build, vgg

    if cfg.arch == "vgg":
        return vgg(cfg.depth, width=cfg.width, num_classes=num_classes, cfg=channels)
    return build(cfg.arch, width=cfg.width, num_classes=num_classes, cfg=channels, **dict(cfg.model_kw))


class Translate:
    """A training :class:`labkit.data.Loader` built with ``augment=False``, its batches cropped
    at random offsets of up to ``pad`` pixels and flipped (labkit's ``augment_batch``, seeded per
    epoch). airbench translates by 2 pixels; labkit's Loader by 4."""

    def __init__(self, loader: Any, pad: int, seed: int = 0) -> None:
        self.loader, self.pad, self.seed = loader, pad, seed

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def epoch(self) -> int:
        return self.loader.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.loader.epoch = value

    def __iter__(self):
        from labkit.data import augment_batch

        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.loader.epoch + 7919) % 2**63)
        for x, y in self.loader:  # normalised floats; the zero padding is the dataset mean
            yield augment_batch(x, pad=self.pad, generator=gen), y


class FirstBatches:
    """Only the first ``n`` batches of every epoch of ``loader`` (reshuffled every epoch, so all
    images get used over the epochs): a training budget that is not a whole number of epochs."""

    def __init__(self, loader: Any, n: int) -> None:
        self.loader, self.n = loader, max(1, min(n, len(loader)))

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.n:
                break
            yield batch


def make_train_loader(cfg: Recipe, train: Any, device: str, seed: int) -> Any:
    """The recipe's training loader: labkit's :class:`~labkit.data.Loader` (4-pixel crops +
    flips), or :class:`Translate` by ``cfg.translate`` pixels."""
    from labkit.data import Loader

    loader = Loader(train, cfg.batch_size, train=True, device=device, seed=seed,
                    augment=False if cfg.translate != 4 else None)
    return loader if cfg.translate == 4 else Translate(loader, cfg.translate, seed)


def make_optimizer(model: nn.Module, lr: float, cfg: Recipe) -> torch.optim.Optimizer:
    """Nesterov SGD; with ``cfg.bias_lr_scale`` != 1 the BatchNorm biases get their own group
    (lr x scale, weight decay / scale: the same decay per step), as in airbench. With
    ``cfg.optimizer == "muon"``: :func:`labkit.optim.make_muon` with ``lr`` for the conv filters
    and ``cfg.sgd_lr`` / ``cfg.head_lr`` x batch size x ``lr / cfg.lr`` for the rest."""
    from labkit.optim import make_muon
    from labkit.train import make_sgd

    if cfg.optimizer == "muon":
        k = cfg.batch_size * lr / cfg.lr
        return make_muon(model, lr, sgd_lr=cfg.sgd_lr * k, head_lr=cfg.head_lr * k,
                         weight_decay=cfg.step_decay * cfg.batch_size)
    if cfg.optimizer != "sgd":
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use 'sgd' or 'muon'")

    if cfg.bias_lr_scale == 1.0:
        return make_sgd(model, lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    biases = [m.bias for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.bias is not None]
    ids = {id(p) for p in biases}
    rest = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    return torch.optim.SGD([{"params": rest, "lr": lr, "weight_decay": cfg.weight_decay},
                            {"params": biases, "lr": lr * cfg.bias_lr_scale,
                             "weight_decay": cfg.weight_decay / cfg.bias_lr_scale}],
                           lr=lr, momentum=cfg.momentum, nesterov=True)


def init_whitening(model: nn.Module, train: Any, n: int = 5000) -> None:
    """Set a whitening first conv (``slim_vgg``) from the first ``n`` normalised training images."""
    if getattr(model, "whiten", False):
        from labkit.data import mean_std, normalize

        model.init_whitening(normalize(train.images[:n], *mean_std(train)))


def fit_recipe(model: nn.Module, train_loader: Any, test_loader: Any, epochs: int, lr: float,
               cfg: Recipe, device: str, after_backward: Callable[[nn.Module], None] | None,
               desc: str) -> Any:
    """The recipe's optimizer (:func:`make_optimizer`) and schedule (one-cycle by default) with
    label smoothing (and the profile's lookahead / flip-TTA / channels_last) through
    ``labkit.train.fit``; evaluates after every epoch when ``cfg.curve``. Returns its History."""
    from labkit.train import fit

    opt = make_optimizer(model, lr, cfg)
    return fit(model, train_loader, test_loader if cfg.curve else None, epochs=epochs,
               optimizer=opt, scheduler=cfg.scheduler, label_smoothing=cfg.label_smoothing,
               lookahead=cfg.lookahead, tta_flip=cfg.tta_flip, channels_last=cfg.channels_last,
               after_backward=after_backward, device=device, progress=sys.stdout.isatty(),
               desc=desc)


def tflop(model_flops: int, images: int) -> float:
    """Training compute in TFLOP: 3 x forward FLOPs per image x images seen (forward +
    backward ~ 3 forwards)."""
    return 3 * model_flops * images / 1e12


def curve(hist: Any, model_flops: int, images_per_epoch: int) -> list[dict]:
    """Per epoch: cumulative training TFLOP, training seconds (evaluation excluded), wall seconds
    (evaluation included) and test accuracy."""
    rows, train_s, wall_s = [], 0.0, 0.0
    for row, ev_s in zip(hist.rows, hist.eval_seconds):
        train_s += row["seconds"] - ev_s
        wall_s += row["seconds"]
        rows.append({"epoch": row["epoch"], "tflop": round(tflop(model_flops, row["epoch"] * images_per_epoch), 3),
                     "train_s": round(train_s, 2), "wall_s": round(wall_s, 2),
                     "train_loss": round(row["train_loss"], 4),
                     "test_acc": None if row["test_acc"] is None else round(row["test_acc"], 4)})
    return rows
