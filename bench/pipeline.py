"""The course's real-data pipeline outside the notebooks: sparsity training -> prune -> fine-tune.

    python -m bench.pipeline --profile fast [--dataset cifar10] [--out bench/pipeline-fast.json]

Phases (each timed): train the VGG with an L1 penalty on the BatchNorm scales (lab 3's
``add_bn_l1_subgradient`` as ``fit``'s ``after_backward``), evaluate it, prune each amount with
lab 4's ``global_bn_threshold`` / ``build_cfg_mask`` / ``transfer_pruned_weights``, evaluate the
pruned network before and after fine-tuning. The graded functions come from the source notebooks'
solution cells (:func:`autograder.solutions.load_solution`); nothing here re-implements them.

Profiles (see :data:`PROFILES`):

* ``smoke`` the embedded digits dataset cut to a few hundred images, a tiny VGG-11, one epoch per
  phase: proves the plumbing in seconds.
* ``fast``  CIFAR-10 on 2 CPU cores. Goal: the unpruned VGG >= 85 % test accuracy with at most
  15 min of training, and >= 84 % after pruning 50 % of the channels and fine-tuning. Measured on
  2 quiet cores: VGG-11 at width 0.25 (0.58 M parameters) trains at about 2,800 images/s (18 s per
  epoch) but reached only 82.3 % in 14 epochs, so ``fast`` uses width 0.5 (2.3 M parameters):
  12 epochs of one-cycle SGD (nesterov, peak lr 0.2, batch 256, label smoothing 0.1, crop + flip),
  then 8 fine-tuning epochs of the pruned network.
* ``full``  a GPU (one H100): VGG-19 at full width, lambda = 1e-4 (the network-slimming value),
  batch 512, data resident on the GPU, bf16 autocast + channels_last (``fit``'s default on CUDA),
  30 epochs one-cycle (peak lr 0.2), then 50 % and 70 % pruned, each fine-tuned 20 epochs
  one-cycle (peak lr 0.05). Estimated at a few seconds per epoch on an H100 (about 0.8 GFLOP per
  32x32 image forward + backward x 3, 50,000 images), i.e. well under 15 minutes in total; this
  estimate has not been measured (no GPU where it was written).

``--limit N`` trains on N images (and tests on N // 2) and ``--epochs`` / ``--finetune-epochs``
override the schedule: for checking the code path of a profile, never for results (the JSON says
``"limited": true``).
"""
from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
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
    train_limit: int | None = None
    test_limit: int | None = None
    goal_unpruned_acc: float | None = None
    goal_pruned_acc: float | None = None   # for the first pruning amount
    goal_train_s: float | None = None      # wall seconds of the training phase
    goal_total_s: float | None = None      # wall seconds of the whole run


PROFILES: dict[str, PipelineConfig] = {
    "smoke": PipelineConfig(dataset="digits", depth=11, width=0.125, batch_size=64, epochs=1,
                            finetune_epochs=1, lr=0.05, finetune_lr=0.02, l1=1e-4, prune=(0.5,),
                            train_limit=256, test_limit=128),
    "fast": PipelineConfig(dataset="cifar10", depth=11, width=0.5, batch_size=256, epochs=12,
                           finetune_epochs=8, lr=0.2, finetune_lr=0.05, l1=1e-4, prune=(0.5,),
                           goal_unpruned_acc=0.85, goal_pruned_acc=0.84, goal_train_s=900.0),
    "full": PipelineConfig(dataset="cifar10", depth=19, width=1.0, batch_size=512, epochs=30,
                           finetune_epochs=20, lr=0.2, finetune_lr=0.05, l1=1e-4, prune=(0.5, 0.7),
                           goal_total_s=900.0),
}


def _load_solutions() -> Any:
    """Lab 3's and lab 4's graded functions from the source notebooks (one namespace)."""
    from types import SimpleNamespace

    from bench.pruning import _load

    lab3 = _load("lab3_sparsity_training", ["add_bn_l1_subgradient", "bn_sparsity"])
    lab4 = _load("lab4_vgg_prune", ["global_bn_threshold", "build_cfg_mask", "transfer_pruned_weights"])
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


def _smoothed_ce(smoothing: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    def loss(logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=smoothing)
    return loss


def _train(model: nn.Module, train_loader: Any, epochs: int, lr: float, cfg: PipelineConfig,
           device: str, after_backward: Callable[[nn.Module], None] | None, desc: str) -> Any:
    """One-cycle SGD (nesterov) with label smoothing through ``labkit.train.fit``; returns its History."""
    from labkit.train import fit, make_sgd

    opt = make_sgd(model, lr, weight_decay=cfg.weight_decay, nesterov=True)
    return fit(model, train_loader, epochs=epochs, optimizer=opt, scheduler="onecycle",
               loss_fn=_smoothed_ce(cfg.label_smoothing), after_backward=after_backward,
               device=device, progress=sys.stdout.isatty(), desc=desc)


def run(profile: str = "fast", dataset: str | None = None, limit: int | None = None,
        epochs: int | None = None, finetune_epochs: int | None = None, device: str | None = None,
        seed: int = 0, solutions: Any = None) -> dict:
    """Run the pipeline; returns the result dict (accuracies, params, FLOPs, wall times per phase)."""
    from labkit.data import Loader
    from labkit.metrics import count_params, flops
    from labkit.models import vgg
    from labkit.profile import default_device, seed_everything
    from labkit.train import evaluate

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; use one of: {', '.join(PROFILES)}")
    cfg = PROFILES[profile]
    changes: dict[str, Any] = {}
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

    sol = solutions or timed("load_solutions", _load_solutions)
    seed_everything(seed)
    train, test = timed("load_data", lambda: load_data(cfg, seed))
    train_loader = Loader(train, cfg.batch_size, train=True, device=dev, seed=seed)
    test_loader = Loader(test, 512, train=False, device=dev)
    log(f"[pipeline] profile={profile} device={dev} data={cfg.dataset} train={len(train)} test={len(test)} "
        f"VGG-{cfg.depth} w{cfg.width} batch={cfg.batch_size} epochs={cfg.epochs}+{cfg.finetune_epochs}")

    model = vgg(cfg.depth, width=cfg.width, num_classes=len(train.classes))
    hist = timed("train_sparse", lambda: _train(model, train_loader, cfg.epochs, cfg.lr, cfg, dev,
                                                lambda m: sol.add_bn_l1_subgradient(m, cfg.l1), "sparsity"))
    unpruned_acc = timed("eval_unpruned", lambda: evaluate(model, test_loader)["acc"])
    model_cpu = copy.deepcopy(model).float().cpu().to(memory_format=torch.contiguous_format).eval()
    base = {"acc": unpruned_acc, "params": count_params(model_cpu), "flops": flops(model_cpu),
            "train_epoch_s": [round(r["seconds"], 2) for r in hist.rows],
            "train_loss_last": hist.last["train_loss"],
            "bn_sparsity_below_0.01": float(sol.bn_sparsity(model_cpu, 0.01))}
    log(f"[pipeline] unpruned: acc {unpruned_acc:.4f}, {base['params']:,} params")

    pruned_rows = []
    for p in cfg.prune:
        key = f"{round(100 * p)}"

        def prune_now() -> tuple[nn.Module, list, float]:
            thr = float(sol.global_bn_threshold(model_cpu, p))
            pcfg, cfg_mask = sol.build_cfg_mask(model_cpu, thr)
            pruned = vgg(cfg=pcfg, num_classes=len(train.classes))
            sol.transfer_pruned_weights(model_cpu, pruned, cfg_mask)
            return pruned, pcfg, thr

        pruned, pcfg, thr = timed(f"prune_{key}", prune_now)
        before = timed(f"eval_pruned_{key}_before_finetune", lambda: evaluate(pruned, test_loader, device=dev)["acc"])
        params, fl = count_params(pruned), flops(pruned.to("cpu"))
        ft = timed(f"finetune_{key}", lambda: _train(pruned, train_loader, cfg.finetune_epochs, cfg.finetune_lr,
                                                     cfg, dev, None, f"finetune {key}%"))
        after = timed(f"eval_pruned_{key}", lambda: evaluate(pruned, test_loader)["acc"])
        pruned_rows.append({"percent": p, "threshold": thr, "cfg": pcfg, "acc_before_finetune": before,
                            "acc": after, "params": params, "flops": fl,
                            "params_ratio": round(params / base["params"], 4),
                            "flops_ratio": round(fl / base["flops"], 4),
                            "finetune_epoch_s": [round(r["seconds"], 2) for r in ft.rows]})
        log(f"[pipeline] pruned {p:.0%}: acc {before:.4f} -> {after:.4f} after fine-tuning, "
            f"{params:,} params ({params / base['params']:.1%}), FLOPs {fl / base['flops']:.1%}")

    total = round(time.perf_counter() - t_all, 2)
    goals: dict[str, Any] = {}
    limited = limit is not None or epochs is not None or finetune_epochs is not None
    if cfg.goal_unpruned_acc is not None:
        goals["unpruned_acc"] = {"goal": f">= {cfg.goal_unpruned_acc}", "met": unpruned_acc >= cfg.goal_unpruned_acc}
    if cfg.goal_pruned_acc is not None and pruned_rows:
        goals[f"pruned_{round(100 * cfg.prune[0])}_acc"] = {"goal": f">= {cfg.goal_pruned_acc}",
                                                           "met": pruned_rows[0]["acc"] >= cfg.goal_pruned_acc}
    if cfg.goal_train_s is not None:
        goals["train_wall_s"] = {"goal": f"<= {cfg.goal_train_s:g}", "met": phases["train_sparse"] <= cfg.goal_train_s}
    if cfg.goal_total_s is not None:
        goals["total_wall_s"] = {"goal": f"<= {cfg.goal_total_s:g}", "met": total <= cfg.goal_total_s}
    images_per_s = cfg.epochs * len(train_loader) * cfg.batch_size / max(phases["train_sparse"], 1e-9)
    return {
        "profile": profile, "limited": limited,
        "note": ("--limit/--epochs override: a code-path check, not a result" if limited else
                 "timings are wall clock on the machine below; on a shared machine they are noisy"),
        "config": asdict(cfg), "device": dev, "seed": seed,
        "train_images": len(train), "test_images": len(test),
        "train_images_per_s": round(images_per_s, 1),
        "unpruned": base, "pruned": pruned_rows, "phases_s": phases, "total_s": total, "goals": goals,
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
    args = parser.parse_args(argv)
    for opt in ("limit", "epochs", "finetune_epochs"):
        v = getattr(args, opt)
        if v is not None and v < 1:
            parser.error(f"--{opt.replace('_', '-')} must be a positive integer, got {v}")
    try:
        result = run(args.profile, args.dataset, args.limit, args.epochs, args.finetune_epochs,
                     args.device, args.seed)
    except FileNotFoundError as e:  # e.g. CIFAR-10 not prepared: labkit's message says how to fix it
        print(f"error: {e}", file=sys.stderr)
        return 2
    argv_used = sys.argv[1:] if argv is None else argv
    result["command"] = "python -m bench.pipeline " + shlex.join(argv_used)
    out = args.out or REPO / "bench" / f"pipeline-{args.profile}.json"
    write_json(out, result)
    summary = {"unpruned_acc": result["unpruned"]["acc"],
               **{f"pruned_{round(100 * r['percent'])}_acc": r["acc"] for r in result["pruned"]},
               "total_s": result["total_s"], "goals": result["goals"]}
    print(f"{summary}\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
