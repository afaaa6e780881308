"""The course's real-data pipeline outside the notebooks: sparsity training -> prune -> fine-tune.

    python -m bench.pipeline --profile fast [--dataset cifar10] [--out bench/pipeline-fast.json]

Phases (each timed): train the network with an L1 penalty on the BatchNorm scales (lab 3's
``add_bn_l1_subgradient`` as ``fit``'s ``after_backward``), evaluate it, prune each amount with
lab 4's ``global_bn_threshold`` / ``build_cfg_mask`` / ``transfer_pruned_weights``, evaluate the
pruned network before and after fine-tuning. The graded functions come from the source notebooks'
solution cells (:func:`autograder.notebook.load_solutions`); nothing here re-implements them.

``--profile`` picks the recipe (:data:`bench.recipes.RECIPES`, one per labkit profile, plus
``fast_vgg11``); the recipe and the pieces of its training run live in :mod:`bench.recipes`.

``--limit N`` trains on N images (and tests on N // 2), ``--epochs`` / ``--finetune-epochs``
override the schedule and ``--set FIELD=VALUE`` any :class:`Recipe` field: for checking the code
path of a recipe or a probe, never for results (the JSON says ``"limited": true``).

Training compute is counted as 3 x forward FLOPs (``labkit.metrics.flops``: convolutions and
matmuls, a multiply-add = 2) x images seen; ``train_tflop`` / ``finetune_tflop`` record it and
``unpruned.curve`` / ``pruned[].curve`` give TFLOP, training seconds (evaluation excluded), wall
seconds and test accuracy after every epoch.
"""
from __future__ import annotations

import argparse
import ast
import copy
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bench import REPO, log, machine_info, write_json
from bench.recipes import (RECIPES, FirstBatches, Recipe, build_model, curve, init_whitening,
                           fit_recipe, load_data, make_train_loader, tflop)


def graded_functions() -> Any:
    """Lab 3's and lab 4's graded functions from the source notebooks (one namespace)."""
    from types import SimpleNamespace

    from autograder.notebook import load_solutions

    lab3 = load_solutions("lab3_sparsity_training", ["add_bn_l1_subgradient", "bn_sparsity"])
    lab4 = load_solutions("lab4_vgg_prune", ["global_bn_threshold", "build_cfg_mask", "transfer_pruned_weights"])
    return SimpleNamespace(**vars(lab3), **vars(lab4))


def _timed(phases: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, its wall seconds recorded as ``phases[name]`` and logged."""
    t = time.perf_counter()
    out = fn()
    phases[name] = round(time.perf_counter() - t, 2)
    log(f"[pipeline] {name}: {phases[name]:.1f} s")
    return out


@dataclass
class _Pipeline:
    """What every phase of :func:`run` uses: the recipe, the solutions, the data and the timings."""

    cfg: Recipe
    device: str
    seed: int
    sol: Any
    train: Any                         # labkit.data.ImageData
    test: Any
    train_loader: Any
    test_loader: Any
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase, in order

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def per_epoch(self) -> int:
        """Images seen per training epoch."""
        return len(self.train_loader) * self.cfg.batch_size

    def timed(self, name: str, fn: Callable[[], Any]) -> Any:
        return _timed(self.phases, name, fn)

    def accuracy(self, model: nn.Module) -> float:
        """Test accuracy (with the recipe's flip-TTA)."""
        from labkit.train import evaluate

        return evaluate(model, self.test_loader, device=self.device, tta_flip=self.cfg.tta_flip)["acc"]

    def fit(self, model: nn.Module, epochs: int, lr: float, desc: str, loader: Any = None,
            after_backward: Callable[[nn.Module], None] | None = None) -> Any:
        """:func:`bench.recipes.fit_recipe` on ``loader`` (default: the training loader)."""
        loader = self.train_loader if loader is None else loader
        return fit_recipe(model, loader, self.test_loader, epochs, lr, self.cfg, self.device,
                          after_backward, desc)


def _recipe(profile: str, dataset: str | None, limit: int | None, epochs: int | None,
            finetune_epochs: int | None, overrides: dict[str, Any] | None) -> Recipe:
    """``RECIPES[profile]`` with the command line's changes."""
    if profile not in RECIPES:
        raise ValueError(f"unknown profile {profile!r}; use one of: {', '.join(RECIPES)}")
    cfg = RECIPES[profile]
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
    for name, allowed in (("optimizer", ("sgd", "muon")), ("scheduler", ("onecycle", "linear"))):
        if name in changes and changes[name] not in allowed:
            raise ValueError(f"config field {name} must be one of {', '.join(allowed)}, got {changes[name]!r}")
    return replace(cfg, **changes)


def _setup(profile: str, cfg: Recipe, device: str | None, seed: int, solutions: Any) -> _Pipeline:
    """The graded functions, the data and the loaders (phases ``load_solutions``, ``load_data``)."""
    from labkit.data import Loader
    from labkit.profile import default_device, seed_everything

    dev = device or default_device()
    phases: dict[str, float] = {}
    sol = solutions or _timed(phases, "load_solutions", graded_functions)
    seed_everything(seed)
    train, test = _timed(phases, "load_data", lambda: load_data(cfg, seed))
    p = _Pipeline(cfg, dev, seed, sol, train, test, make_train_loader(cfg, train, dev, seed),
                  Loader(test, 512, train=False, device=dev), phases)
    log(f"[pipeline] profile={profile} device={dev} data={cfg.dataset} train={len(train)} test={len(test)} "
        f"{cfg.arch} depth={cfg.depth} w{cfg.width} batch={cfg.batch_size} epochs={cfg.epochs}+{cfg.finetune_epochs}")
    return p


def _train_seconds(hist: Any) -> float:
    """Training seconds of a History, evaluation excluded."""
    return round(sum(r["seconds"] for r in hist.rows) - sum(hist.eval_seconds), 2)


def _train_unpruned(p: _Pipeline) -> tuple[nn.Module, dict, int]:
    """Sparsity training (phase ``train_sparse``) and its evaluation; returns the trained model
    on the CPU, the record's ``unpruned`` entry and the model's forward FLOPs per image."""
    from labkit.metrics import count_params, flops

    cfg, sol = p.cfg, p.sol
    model = build_model(cfg, p.num_classes)
    init_whitening(model, p.train)
    model_flops = flops(model)
    loader, per_epoch = p.train_loader, p.per_epoch
    if cfg.train_budget_tflop is not None:  # a fraction of each epoch, so the whole run fits the budget
        n = _batches_within(cfg.train_budget_tflop, cfg.epochs, tflop(model_flops, cfg.batch_size))
        loader, per_epoch = FirstBatches(p.train_loader, n), min(n, len(p.train_loader)) * cfg.batch_size
    hist = p.timed("train_sparse", lambda: p.fit(model, cfg.epochs, cfg.lr, "sparsity", loader=loader,
                                                 after_backward=lambda m: sol.add_bn_l1_subgradient(m, cfg.l1)))
    acc = p.timed("eval_unpruned", lambda: p.accuracy(model))
    model_cpu = copy.deepcopy(model).float().cpu().to(memory_format=torch.contiguous_format).eval()
    base = {"acc": acc, "params": count_params(model_cpu), "flops": flops(model_cpu),
            "train_tflop": round(tflop(model_flops, cfg.epochs * per_epoch), 2),
            "images_seen": cfg.epochs * per_epoch,
            "train_s_without_eval": _train_seconds(hist),
            "train_epoch_s": [round(r["seconds"], 2) for r in hist.rows],
            "train_loss_last": hist.last["train_loss"],
            "bn_sparsity_below_0.01": float(sol.bn_sparsity(model_cpu, 0.01)),
            "curve": curve(hist, model_flops, per_epoch)}
    log(f"[pipeline] unpruned: acc {acc:.4f}, {base['params']:,} params, "
        f"{base['train_tflop']} TFLOP of training")
    return model_cpu, base, model_flops


def _prune_and_finetune(p: _Pipeline, model_cpu: nn.Module, base: dict, percent: float) -> dict:
    """Lab 4's pruning of ``percent`` of the channels, evaluated before and after fine-tuning
    (phases ``prune_<percent>``, ``eval_pruned_<percent>_before_finetune``,
    ``finetune_<percent>``, ``eval_pruned_<percent>``); returns the record's ``pruned[]`` entry."""
    from labkit.metrics import count_params, flops

    cfg, sol, key = p.cfg, p.sol, f"{round(100 * percent)}"

    def prune_now() -> tuple[nn.Module, list, float]:
        thr = float(sol.global_bn_threshold(model_cpu, percent))
        pcfg, cfg_mask = sol.build_cfg_mask(model_cpu, thr)
        pruned = build_model(cfg, p.num_classes, pcfg)
        sol.transfer_pruned_weights(model_cpu, pruned, cfg_mask)
        return pruned, pcfg, thr

    pruned, pcfg, thr = p.timed(f"prune_{key}", prune_now)
    before = p.timed(f"eval_pruned_{key}_before_finetune", lambda: p.accuracy(pruned))
    params, fl = count_params(pruned), flops(pruned.to("cpu"))
    ft_epochs = cfg.finetune_epochs
    if cfg.finetune_tflop is not None:
        ft_epochs = max(1, min(cfg.finetune_epochs, int(cfg.finetune_tflop / tflop(fl, p.per_epoch))))
    ft = p.timed(f"finetune_{key}", lambda: p.fit(pruned, ft_epochs, cfg.finetune_lr, f"finetune {key}%"))
    after = p.timed(f"eval_pruned_{key}", lambda: p.accuracy(pruned))
    log(f"[pipeline] pruned {percent:.0%}: acc {before:.4f} -> {after:.4f} after fine-tuning, "
        f"{params:,} params ({params / base['params']:.1%}), FLOPs {fl / base['flops']:.1%}")
    return {"percent": percent, "threshold": thr, "cfg": pcfg, "acc_before_finetune": before,
            "acc": after, "params": params, "flops": fl,
            "params_ratio": round(params / base["params"], 4),
            "flops_ratio": round(fl / base["flops"], 4),
            "finetune_epochs": ft_epochs,
            "finetune_tflop": round(tflop(fl, ft_epochs * p.per_epoch), 2),
            "finetune_epoch_s": [round(r["seconds"], 2) for r in ft.rows],
            "curve": curve(ft, fl, p.per_epoch)}


def _batches_within(budget: float, epochs: int, batch_tflop: float) -> int:
    """Batches per epoch (at least one) such that ``epochs`` epochs cost at most ``budget`` TFLOP."""
    return max(1, int(budget / (epochs * batch_tflop)))


def _budget_run(p: _Pipeline, model_flops: int, budget: float) -> dict:
    """The same recipe (no L1 penalty: what a lab trains) with the schedule cut to ``budget``
    TFLOP: ceil(budget / epoch) epochs of as many batches as fit (phase ``budget_<budget>``)."""
    from labkit.profile import seed_everything

    cfg = p.cfg
    batch_tflop = tflop(model_flops, cfg.batch_size)
    n_ep = max(1, math.ceil(budget / tflop(model_flops, p.per_epoch)))
    n_batches = _batches_within(budget, n_ep, batch_tflop)
    seed_everything(p.seed)
    short = build_model(cfg, p.num_classes)
    init_whitening(short, p.train)
    loader = FirstBatches(p.train_loader, n_batches)
    h = p.timed(f"budget_{budget:g}", lambda: p.fit(short, n_ep, cfg.lr, f"{budget:g} TFLOP", loader=loader))
    acc = p.accuracy(short) if not cfg.curve else h.last["test_acc"]
    log(f"[pipeline] budget {budget:g} TFLOP: {n_ep} x {n_batches} batches, acc {acc:.4f}")
    return {"budget_tflop": budget, "epochs": n_ep, "batches_per_epoch": n_batches,
            "train_tflop": round(n_ep * n_batches * batch_tflop, 2), "train_s": _train_seconds(h),
            "acc": acc}


def _goals(cfg: Recipe, base: dict, pruned: list[dict], budgets: list[dict],
           phases: dict[str, float], total: float) -> dict[str, Any]:
    """Each of the recipe's goals: what it asks and whether the run met it."""
    goals: dict[str, Any] = {}
    if cfg.goal_unpruned_acc is not None:
        goals["unpruned_acc"] = {"goal": f">= {cfg.goal_unpruned_acc}", "met": base["acc"] >= cfg.goal_unpruned_acc}
    if cfg.goal_train_tflop is not None:
        goals["train_tflop"] = {"goal": f"<= {cfg.goal_train_tflop:g}",
                                "met": base["train_tflop"] <= cfg.goal_train_tflop}
    first = f"{round(100 * cfg.prune[0])}" if pruned else ""
    if cfg.goal_prune_drop is not None and pruned:
        drop = base["acc"] - pruned[0]["acc_before_finetune"]
        goals[f"prune_{first}_drop_before_finetune"] = {
            "goal": f"<= {cfg.goal_prune_drop}", "value": round(drop, 4), "met": drop <= cfg.goal_prune_drop}
    if cfg.goal_pruned_acc is not None and pruned:
        goals[f"pruned_{first}_acc"] = {"goal": f">= {cfg.goal_pruned_acc}",
                                        "met": pruned[0]["acc"] >= cfg.goal_pruned_acc}
    if cfg.goal_finetune_tflop is not None and pruned:
        goals["finetune_tflop"] = {"goal": f"<= {cfg.goal_finetune_tflop:g}",
                                   "met": pruned[0]["finetune_tflop"] <= cfg.goal_finetune_tflop}
    for row, g in zip(budgets, cfg.goal_budget_acc):
        goals[f"acc_at_{row['budget_tflop']:g}_tflop"] = {"goal": f">= {g}", "met": row["acc"] >= g}
    if cfg.goal_train_s is not None:
        goals["train_wall_s"] = {"goal": f"<= {cfg.goal_train_s:g}", "met": phases["train_sparse"] <= cfg.goal_train_s}
    if cfg.goal_total_s is not None:
        goals["total_wall_s"] = {"goal": f"<= {cfg.goal_total_s:g}", "met": total <= cfg.goal_total_s}
    return goals


def run(profile: str = "fast", dataset: str | None = None, limit: int | None = None,
        epochs: int | None = None, finetune_epochs: int | None = None, device: str | None = None,
        seed: int = 0, solutions: Any = None, overrides: dict[str, Any] | None = None) -> dict:
    """Run the pipeline; returns the result dict (accuracies, params, FLOPs, compute, wall times
    per phase, the compute-to-accuracy curve). ``overrides``: :class:`Recipe` fields to change (a
    probe: the result says ``"limited": true``)."""
    cfg = _recipe(profile, dataset, limit, epochs, finetune_epochs, overrides)
    t_all = time.perf_counter()
    p = _setup(profile, cfg, device, seed, solutions)
    model_cpu, base, model_flops = _train_unpruned(p)
    pruned = [_prune_and_finetune(p, model_cpu, base, percent) for percent in cfg.prune]
    budgets = [_budget_run(p, model_flops, b) for b in cfg.budgets_tflop]
    total = round(time.perf_counter() - t_all, 2)
    limited = (limit is not None or epochs is not None or finetune_epochs is not None
               or bool(overrides))
    return {
        "profile": profile, "limited": limited,
        "note": ("--limit/--epochs/--set override: a code-path check or probe, not a result" if limited else
                 "timings are wall clock on the machine below; on a shared machine they are noisy"),
        "config": asdict(cfg), "device": p.device, "seed": seed,
        "train_images": len(p.train), "test_images": len(p.test),
        "train_images_per_s": round(base["images_seen"] / max(base["train_s_without_eval"], 1e-9), 1),
        "train_tflop": base["train_tflop"],
        "finetune_tflop": pruned[0]["finetune_tflop"] if pruned else None,
        "unpruned": base, "pruned": pruned, "budgets": budgets,
        "phases_s": p.phases, "total_s": total, "goals": _goals(cfg, base, pruned, budgets, p.phases, total),
        "machine": machine_info(p.device),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=list(RECIPES), default="fast",
                        help="a labkit profile (its recipe in RECIPES) or fast_vgg11")
    parser.add_argument("--dataset", choices=["digits", "cifar10", "food11"], default=None,
                        help="override the recipe's dataset")
    parser.add_argument("--limit", type=int, default=None, help="train on N images (code-path check)")
    parser.add_argument("--epochs", type=int, default=None, help="override the training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="override the fine-tuning epochs")
    parser.add_argument("--device", choices=["cpu", "cuda", "mps"], default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default bench/pipeline-<profile>.json)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a Recipe field, e.g. --set width=0.5 --set 'prune=()' (a probe)")
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
