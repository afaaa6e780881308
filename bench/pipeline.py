"""The course's real-data pipeline outside the notebooks: sparsity training -> prune -> fine-tune.

    python -m bench.pipeline --profile fast [--dataset cifar10] [--out bench/pipeline-fast.json]

Phases (each timed): train the network with an L1 penalty on the BatchNorm scales (lab 3's
``add_bn_l1_subgradient`` as ``fit``'s ``after_backward``), evaluate it, prune each amount with
lab 4's ``global_bn_threshold`` / ``build_cfg_mask`` / ``transfer_pruned_weights``, evaluate the
pruned network before and after fine-tuning. The graded functions come from the source notebooks'
solution cells (:func:`autograder.notebook.load_solutions`); nothing here re-implements them.

Profiles (see :data:`PROFILES`):

* ``smoke`` the embedded digits dataset cut to a few hundred images, a tiny VGG-11, one epoch per
  phase: proves the plumbing in seconds.
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
* ``fast_vgg11`` the recipe before issue 10 (VGG-11 at width 0.5, 2.3 M parameters, 77 MFLOP: 12
  epochs of one-cycle nesterov SGD, peak lr 0.2, batch 256, label smoothing 0.1, 4-pixel crops +
  flips, fp32 NCHW; 139 TFLOP), kept to measure the training seconds side by side.
* ``full``  a GPU (one H100): VGG-19 at full width, lambda = 1e-4 (the network-slimming value),
  batch 512, data resident on the GPU, bf16 autocast + channels_last (``fit``'s default on CUDA),
  30 epochs one-cycle (peak lr 0.2), then 50 % and 70 % pruned, each fine-tuned 20 epochs
  one-cycle (peak lr 0.05). Estimated at a few seconds per epoch on an H100 (about 0.8 GFLOP per
  32x32 image forward + backward x 3, 50,000 images), i.e. well under 15 minutes in total; this
  estimate has not been measured (no GPU where it was written).

``--limit N`` trains on N images (and tests on N // 2), ``--epochs`` / ``--finetune-epochs``
override the schedule and ``--set FIELD=VALUE`` any :class:`PipelineConfig` field: for checking
the code path of a profile or a probe, never for results (the JSON says ``"limited": true``).

Training compute is counted as 3 x forward FLOPs (``labkit.metrics.flops``: convolutions and
matmuls, a multiply-add = 2) x images seen; ``train_tflop`` / ``finetune_tflop`` record it and
``unpruned.curve`` / ``pruned[].curve`` give TFLOP, training seconds (evaluation excluded), wall
seconds and test accuracy after every epoch.
"""
from __future__ import annotations

import argparse
import ast
import math
import copy
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bench import REPO, log, machine_info, write_json


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline schedule. ``lr`` / ``finetune_lr`` are one-cycle peak rates; ``l1`` is the
    lambda of the BatchNorm L1 penalty; ``prune`` the fractions of BatchNorm channels removed."""

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
    finetune_tflop: float | None = None  # if set: as many fine-tuning epochs as fit this budget,
    #                                      at most finetune_epochs
    model_kw: tuple[tuple[str, Any], ...] = ()  # extra builder arguments, e.g. (("logit_scale", 1.0),)
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


PROFILES: dict[str, PipelineConfig] = {
    "smoke": PipelineConfig(dataset="digits", depth=11, width=0.125, batch_size=64, epochs=1,
                            finetune_epochs=1, lr=0.05, finetune_lr=0.02, l1=1e-4, prune=(0.5,),
                            train_limit=256, test_limit=128),
    "fast": PipelineConfig(dataset="cifar10", depth=11, width=0.5, batch_size=512, epochs=14,
                           finetune_epochs=16, lr=1.0, finetune_lr=0.2, l1=3e-4, prune=(0.5,),
                           label_smoothing=0.2, arch="slim_vgg", lookahead=5, tta_flip=True,
                           channels_last=True, curve=True, budgets_tflop=(14.0, 42.0), translate=2,
                           finetune_tflop=40.0, goal_unpruned_acc=0.91, goal_pruned_acc=0.905,
                           goal_train_tflop=139.0, goal_prune_drop=0.01, goal_finetune_tflop=40.0,
                           goal_budget_acc=(0.80, 0.87)),
    # the recipe before issue 10 (README: 84.31 %), kept to measure seconds side by side
    "fast_vgg11": PipelineConfig(dataset="cifar10", depth=11, width=0.5, batch_size=256, epochs=12,
                                 finetune_epochs=8, lr=0.2, finetune_lr=0.05, l1=1e-4, prune=(0.5,),
                                 goal_unpruned_acc=0.85, goal_pruned_acc=0.84, goal_train_s=900.0),
    "full": PipelineConfig(dataset="cifar10", depth=19, width=1.0, batch_size=512, epochs=30,
                           finetune_epochs=20, lr=0.2, finetune_lr=0.05, l1=1e-4, prune=(0.5, 0.7),
                           goal_total_s=900.0),
}


def _load_solutions() -> Any:
    """Lab 3's and lab 4's graded functions from the source notebooks (one namespace)."""
    from types import SimpleNamespace

    from autograder.notebook import load_solutions

    lab3 = load_solutions("lab3_sparsity_training", ["add_bn_l1_subgradient", "bn_sparsity"])
    lab4 = load_solutions("lab4_vgg_prune", ["global_bn_threshold", "build_cfg_mask", "transfer_pruned_weights"])
    return SimpleNamespace(**vars(lab3), **vars(lab4))


def load_data(cfg: PipelineConfig, seed: int) -> tuple[Any, Any]:
    """``(train, test)`` :class:`labkit.data.ImageData` of ``cfg.dataset``, cut to the limits."""
    from labkit.data import load_cifar10, load_digits32, load_food11

    name = cfg.dataset
    if name == "digits":
        train, test = load_digits32()
    elif name == "cifar10":
        train, test = load_cifar10()
    elif name == "food11":
        train, _, test = load_food11()
    else:
        raise ValueError(f"unknown dataset {name!r}; use digits, cifar10 or food11")
    return train.limit(cfg.train_limit, seed), test.limit(cfg.test_limit, seed)


def build_model(cfg: PipelineConfig, num_classes: int, channels: list | None = None) -> nn.Module:
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


def make_optimizer(model: nn.Module, lr: float, cfg: PipelineConfig) -> torch.optim.Optimizer:
    """Nesterov SGD; with ``cfg.bias_lr_scale`` != 1 the BatchNorm biases get their own group
    (lr x scale, weight decay / scale: the same decay per step), as in airbench."""
    from labkit.train import make_sgd

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


def _train(model: nn.Module, train_loader: Any, test_loader: Any, epochs: int, lr: float,
           cfg: PipelineConfig, device: str, after_backward: Callable[[nn.Module], None] | None,
           desc: str) -> Any:
    """One-cycle nesterov SGD with label smoothing (and the profile's lookahead / flip-TTA /
    channels_last) through ``labkit.train.fit``; evaluates after every epoch when ``cfg.curve``.
    Returns its History."""
    from labkit.train import fit

    opt = make_optimizer(model, lr, cfg)
    return fit(model, train_loader, test_loader if cfg.curve else None, epochs=epochs,
               optimizer=opt, scheduler="onecycle", label_smoothing=cfg.label_smoothing,
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


def run(profile: str = "fast", dataset: str | None = None, limit: int | None = None,
        epochs: int | None = None, finetune_epochs: int | None = None, device: str | None = None,
        seed: int = 0, solutions: Any = None, overrides: dict[str, Any] | None = None) -> dict:
    """Run the pipeline; returns the result dict (accuracies, params, FLOPs, compute, wall times
    per phase, the compute-to-accuracy curve). ``overrides``: PipelineConfig fields to change (a
    probe: the result says ``"limited": true``)."""
    from labkit.data import Loader
    from labkit.metrics import count_params, flops
    from labkit.profile import default_device, seed_everything
    from labkit.train import evaluate

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; use one of: {', '.join(PROFILES)}")
    cfg = PROFILES[profile]
    changes: dict[str, Any] = dict(overrides or {})
    unknown = sorted(set(changes) - set(asdict(cfg)))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; fields: {', '.join(asdict(cfg))}")
    if dataset:
        changes["dataset"] = dataset
    if limit is not None:
        if limit < 2:
            raise ValueError(f"--limit must be at least 2 images, got {limit}")
        changes.update(train_limit=limit, test_limit=max(limit // 2, 1))
    if epochs is not None:
        changes["epochs"] = epochs
    if finetune_epochs is not None:
        changes["finetune_epochs"] = finetune_epochs
    cfg = replace(cfg, **changes)
    dev = device or default_device()
    t_all = time.perf_counter()
    phases: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = fn()
        phases[name] = round(time.perf_counter() - t, 2)
        log(f"[pipeline] {name}: {phases[name]:.1f} s")
        return out

    def ev(m: nn.Module) -> float:
        return evaluate(m, test_loader, device=dev, tta_flip=cfg.tta_flip)["acc"]

    sol = solutions or timed("load_solutions", _load_solutions)
    seed_everything(seed)
    train, test = timed("load_data", lambda: load_data(cfg, seed))
    n_cls = len(train.classes)
    train_loader: Any = Loader(train, cfg.batch_size, train=True, device=dev, seed=seed,
                               augment=False if cfg.translate != 4 else None)
    if cfg.translate != 4:
        train_loader = Translate(train_loader, cfg.translate, seed)
    test_loader = Loader(test, 512, train=False, device=dev)
    per_epoch = len(train_loader) * cfg.batch_size
    log(f"[pipeline] profile={profile} device={dev} data={cfg.dataset} train={len(train)} test={len(test)} "
        f"{cfg.arch} depth={cfg.depth} w{cfg.width} batch={cfg.batch_size} epochs={cfg.epochs}+{cfg.finetune_epochs}")

    model = build_model(cfg, n_cls)
    init_whitening(model, train)
    model_flops = flops(model)
    hist = timed("train_sparse", lambda: _train(model, train_loader, test_loader, cfg.epochs, cfg.lr, cfg, dev,
                                                lambda m: sol.add_bn_l1_subgradient(m, cfg.l1), "sparsity"))
    unpruned_acc = timed("eval_unpruned", lambda: ev(model))
    model_cpu = copy.deepcopy(model).float().cpu().to(memory_format=torch.contiguous_format).eval()
    train_seconds = round(sum(r["seconds"] for r in hist.rows) - sum(hist.eval_seconds), 2)
    base = {"acc": unpruned_acc, "params": count_params(model_cpu), "flops": flops(model_cpu),
            "train_tflop": round(tflop(model_flops, cfg.epochs * per_epoch), 2),
            "train_s_without_eval": train_seconds,
            "train_epoch_s": [round(r["seconds"], 2) for r in hist.rows],
            "train_loss_last": hist.last["train_loss"],
            "bn_sparsity_below_0.01": float(sol.bn_sparsity(model_cpu, 0.01)),
            "curve": curve(hist, model_flops, per_epoch)}
    log(f"[pipeline] unpruned: acc {unpruned_acc:.4f}, {base['params']:,} params, "
        f"{base['train_tflop']} TFLOP of training")

    pruned_rows = []
    for p in cfg.prune:
        key = f"{round(100 * p)}"

        def prune_now() -> tuple[nn.Module, list, float]:
            thr = float(sol.global_bn_threshold(model_cpu, p))
            pcfg, cfg_mask = sol.build_cfg_mask(model_cpu, thr)
            pruned = build_model(cfg, n_cls, pcfg)
            sol.transfer_pruned_weights(model_cpu, pruned, cfg_mask)
            return pruned, pcfg, thr

        pruned, pcfg, thr = timed(f"prune_{key}", prune_now)
        before = timed(f"eval_pruned_{key}_before_finetune", lambda: ev(pruned))
        params, fl = count_params(pruned), flops(pruned.to("cpu"))
        ft_epochs = cfg.finetune_epochs
        if cfg.finetune_tflop is not None:
            ft_epochs = max(1, min(cfg.finetune_epochs, int(cfg.finetune_tflop / tflop(fl, per_epoch))))
        ft = timed(f"finetune_{key}", lambda: _train(pruned, train_loader, test_loader, ft_epochs,
                                                     cfg.finetune_lr, cfg, dev, None, f"finetune {key}%"))
        after = timed(f"eval_pruned_{key}", lambda: ev(pruned))
        pruned_rows.append({"percent": p, "threshold": thr, "cfg": pcfg, "acc_before_finetune": before,
                            "acc": after, "params": params, "flops": fl,
                            "params_ratio": round(params / base["params"], 4),
                            "flops_ratio": round(fl / base["flops"], 4),
                            "finetune_epochs": ft_epochs,
                            "finetune_tflop": round(tflop(fl, ft_epochs * per_epoch), 2),
                            "finetune_epoch_s": [round(r["seconds"], 2) for r in ft.rows],
                            "curve": curve(ft, fl, per_epoch)})
        log(f"[pipeline] pruned {p:.0%}: acc {before:.4f} -> {after:.4f} after fine-tuning, "
            f"{params:,} params ({params / base['params']:.1%}), FLOPs {fl / base['flops']:.1%}")

    budget_rows = []
    for b in cfg.budgets_tflop:
        # the same recipe (no L1 penalty: what a lab trains) with the schedule cut to the budget:
        # ceil(budget / epoch) epochs of as many batches as fit in the budget
        batch_tflop = tflop(model_flops, cfg.batch_size)
        n_ep = max(1, math.ceil(b / tflop(model_flops, per_epoch)))
        n_batches = max(1, int(b / (n_ep * batch_tflop)))
        seed_everything(seed)
        short = build_model(cfg, n_cls)
        init_whitening(short, train)
        loader = FirstBatches(train_loader, n_batches)
        h = timed(f"budget_{b:g}", lambda: _train(short, loader, test_loader, n_ep, cfg.lr, cfg, dev,
                                                 None, f"{b:g} TFLOP"))
        acc = ev(short) if not cfg.curve else h.last["test_acc"]
        budget_rows.append({"budget_tflop": b, "epochs": n_ep, "batches_per_epoch": n_batches,
                            "train_tflop": round(n_ep * n_batches * batch_tflop, 2),
                            "train_s": round(sum(r["seconds"] for r in h.rows) - sum(h.eval_seconds), 2),
                            "acc": acc})
        log(f"[pipeline] budget {b:g} TFLOP: {n_ep} x {n_batches} batches, acc {acc:.4f}")

    total = round(time.perf_counter() - t_all, 2)
    goals: dict[str, Any] = {}
    limited = (limit is not None or epochs is not None or finetune_epochs is not None
               or bool(overrides))
    if cfg.goal_unpruned_acc is not None:
        goals["unpruned_acc"] = {"goal": f">= {cfg.goal_unpruned_acc}", "met": unpruned_acc >= cfg.goal_unpruned_acc}
    if cfg.goal_train_tflop is not None:
        goals["train_tflop"] = {"goal": f"<= {cfg.goal_train_tflop:g}",
                                "met": base["train_tflop"] <= cfg.goal_train_tflop}
    if cfg.goal_prune_drop is not None and pruned_rows:
        drop = unpruned_acc - pruned_rows[0]["acc_before_finetune"]
        goals[f"prune_{round(100 * cfg.prune[0])}_drop_before_finetune"] = {
            "goal": f"<= {cfg.goal_prune_drop}", "value": round(drop, 4), "met": drop <= cfg.goal_prune_drop}
    if cfg.goal_pruned_acc is not None and pruned_rows:
        goals[f"pruned_{round(100 * cfg.prune[0])}_acc"] = {"goal": f">= {cfg.goal_pruned_acc}",
                                                           "met": pruned_rows[0]["acc"] >= cfg.goal_pruned_acc}
    if cfg.goal_finetune_tflop is not None and pruned_rows:
        goals["finetune_tflop"] = {"goal": f"<= {cfg.goal_finetune_tflop:g}",
                                   "met": pruned_rows[0]["finetune_tflop"] <= cfg.goal_finetune_tflop}
    for row, g in zip(budget_rows, cfg.goal_budget_acc):
        goals[f"acc_at_{row['budget_tflop']:g}_tflop"] = {"goal": f">= {g}", "met": row["acc"] >= g}
    if cfg.goal_train_s is not None:
        goals["train_wall_s"] = {"goal": f"<= {cfg.goal_train_s:g}", "met": phases["train_sparse"] <= cfg.goal_train_s}
    if cfg.goal_total_s is not None:
        goals["total_wall_s"] = {"goal": f"<= {cfg.goal_total_s:g}", "met": total <= cfg.goal_total_s}
    images_per_s = cfg.epochs * per_epoch / max(train_seconds, 1e-9)
    return {
        "profile": profile, "limited": limited,
        "note": ("--limit/--epochs/--set override: a code-path check or probe, not a result" if limited else
                 "timings are wall clock on the machine below; on a shared machine they are noisy"),
        "config": asdict(cfg), "device": dev, "seed": seed,
        "train_images": len(train), "test_images": len(test),
        "train_images_per_s": round(images_per_s, 1),
        "train_tflop": base["train_tflop"],
        "finetune_tflop": pruned_rows[0]["finetune_tflop"] if pruned_rows else None,
        "unpruned": base, "pruned": pruned_rows, "budgets": budget_rows,
        "phases_s": phases, "total_s": total, "goals": goals,
        "machine": machine_info(dev),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=list(PROFILES), default="fast")
    parser.add_argument("--dataset", choices=["digits", "cifar10", "food11"], default=None,
                        help="override the profile's dataset")
    parser.add_argument("--limit", type=int, default=None, help="train on N images (code-path check)")
    parser.add_argument("--epochs", type=int, default=None, help="override the training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="override the fine-tuning epochs")
    parser.add_argument("--device", choices=["cpu", "cuda", "mps"], default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default bench/pipeline-<profile>.json)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a PipelineConfig field, e.g. --set width=0.5 --set 'prune=()' (a probe)")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set needs FIELD=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value  # a plain string, e.g. arch=slim_vgg
    for opt in ("limit", "epochs", "finetune_epochs"):
        v = getattr(args, opt)
        if v is not None and v < 1:
            parser.error(f"--{opt.replace('_', '-')} must be a positive integer, got {v}")
    try:
        result = run(args.profile, args.dataset, args.limit, args.epochs, args.finetune_epochs,
                     args.device, args.seed, overrides=overrides)
    except FileNotFoundError as e:  # e.g. CIFAR-10 not prepared: labkit's message says how to fix it
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        if "config field" not in str(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    argv_used = sys.argv[1:] if argv is None else argv
    result["command"] = "python -m bench.pipeline " + shlex.join(argv_used)
    out = args.out or REPO / "bench" / f"pipeline-{args.profile}.json"
    write_json(out, result)
    summary = {"unpruned_acc": result["unpruned"]["acc"], "train_tflop": result["train_tflop"],
               **{f"pruned_{round(100 * r['percent'])}_acc": r["acc"] for r in result["pruned"]},
               "total_s": result["total_s"], "goals": result["goals"]}
    print(f"{summary}\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
