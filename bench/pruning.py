"""Structured (channel) vs unstructured (magnitude) pruning of VGG-19: what actually gets faster.

Structured: the lab 4 pipeline (``global_bn_threshold`` -> ``build_cfg_mask`` -> a narrower
``labkit.models.vgg(cfg=cfg)`` -> ``transfer_pruned_weights``), at 50 % and 70 % of the BatchNorm
channels, against the unpruned network: parameters, FLOPs and measured CPU latency at batch 1 and
64, each as pruned / unpruned. The goal is a latency ratio within 1.3x of the FLOPs ratio
(``latency_ratio <= 1.3 * flops_ratio``): the removed channels really are removed.

Unstructured: lab 6's ``global_magnitude_prune`` at 50 % and 90 % of the conv / linear weights.
The zeros stay in dense tensors, so FLOPs and latency do not change: masks alone do not speed
up dense inference.

The graded functions come from the source notebooks' solution cells
(:func:`autograder.notebook.load_solutions`); this module has no copy of them.

Before pruning, the BatchNorm scales ``gamma`` need the shape that sparsity training gives them
(many near zero, a heavy tail of large ones), otherwise the global threshold is meaningless.
A lab 3 ``vgg_sparse`` artifact that fits VGG-19 at full width is used when present; otherwise
``gamma`` is drawn from a fixed, seeded distribution (:func:`synthetic_sparse_gammas`) and the
rows say so. Latency does not depend on the weight values, only on the shapes.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from autograder.notebook import load_solutions
from bench import command, log, machine_info, ratio
from labkit.profile import SIZES

LATENCY_GOAL = 1.3  # latency ratio may exceed the FLOPs ratio by at most this factor


@dataclass(frozen=True)
class PruningConfig:
    """Sizes: model, pruning amounts, latency repeats (``rounds`` interleave the models so that
    a busy moment of the shared machine does not hit one model only; the best median is kept).

    The model defaults to the ``full`` profile's VGG (:data:`labkit.profile.SIZES`): the network
    a full-profile lab 3 artifact fits (see :func:`sparse_vgg`)."""

    depth: int = SIZES["full"].vgg_depth
    width: float = SIZES["full"].width
    structured: tuple[float, ...] = (0.5, 0.7)
    unstructured: tuple[float, ...] = (0.5, 0.9)
    batches: tuple[int, ...] = (1, 64)
    repeats: dict[int, int] | None = None  # batch size -> repeats; default below
    warmup: int = 3  # per latency call at batch 1; one call at larger batches (a global warm-up ran)
    rounds: int = 3
    seed: int = 0

    def repeats_for(self, batch: int) -> int:
        if self.repeats and batch in self.repeats:
            return self.repeats[batch]
        return 30 if batch == 1 else 3


# Model sizes are labkit's profiles (labkit.profile.SIZES), not a second set: the default run prunes
# the ``full`` profile's VGG, ``--smoke`` the same depth at the ``smoke`` profile's width. Only the
# measurement settings (repeats, warm-up, rounds) belong to the benchmark.
FULL = PruningConfig()
SMOKE = PruningConfig(width=SIZES["smoke"].width, repeats={1: 2, 64: 2}, warmup=1, rounds=1)


# --------------------------------------------------------------------------- the model
@torch.no_grad()
def synthetic_sparse_gammas(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm2d the statistics of a network after L1 sparsity training.

    Per layer ``i`` of ``L``, a fraction ``0.9 - 0.7 i / (L - 1)`` of the channels "survive"
    (later, wider layers are more redundant, as in the network-slimming paper): their
    ``gamma`` is log-normal (median 0.3, sigma 0.6, a heavy right tail); the others collapsed
    towards zero (exponential, mean 0.005). ``beta`` ~ N(0, 0.05), running mean ~ N(0, 0.1),
    running var ~ U(0.5, 2), so that the pruned/unpruned equivalence check is not trivial.
    Deterministic for a given ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for i, bn in enumerate(bns):
        n = bn.num_features
        alive_frac = 0.9 - 0.7 * i / max(len(bns) - 1, 1)
        alive = torch.rand(n, generator=gen) < alive_frac
        big = torch.exp(torch.randn(n, generator=gen) * 0.6 + math.log(0.3))
        small = -0.005 * torch.log(torch.rand(n, generator=gen).clamp_min(1e-12))  # Exp(mean 0.005)
        bn.weight.copy_(torch.where(alive, big, small))
        bn.bias.copy_(0.05 * torch.randn(n, generator=gen))
        bn.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
        bn.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))


def _lab3_artifact_candidates() -> list[Path]:
    """Where a VGG-19 lab 3 checkpoint could be: the ``full`` profile's artifact, then the current one's."""
    from labkit.artifacts import artifact_name
    from labkit.profile import get_profile

    prof = get_profile()
    out = []
    for p in (prof.with_(name="full", dataset="cifar10"), prof):
        path = prof.artifacts / artifact_name("lab3", "vgg_sparse", p)
        if path not in out:
            out.append(path)
    return out


def sparse_vgg(cfg: PruningConfig) -> tuple[nn.Module, str]:
    """The VGG to prune, with sparse-trained gammas; returns ``(model, where gamma came from)``."""
    from labkit.models import vgg
    from labkit.train import load_checkpoint

    torch.manual_seed(cfg.seed)
    model = vgg(cfg.depth, width=cfg.width)
    for path in _lab3_artifact_candidates():
        if not path.is_file():
            continue
        try:
            load_checkpoint(path, model)
            return model.eval(), f"lab 3 artifact {path}"
        except (ValueError, RuntimeError) as e:  # another width / depth: try the next one
            log(f"[pruning] {path} does not fit VGG-{cfg.depth} w{cfg.width}: {str(e)[:120]}")
    synthetic_sparse_gammas(model, cfg.seed)
    return model.eval(), (f"no lab 3 artifact for VGG-{cfg.depth} w{cfg.width}: synthetic "
                          f"sparse-trained gamma (seeded log-normal/exponential mixture, seed {cfg.seed})")


def structured_prune(model: nn.Module, percent: float, lab4: Any) -> tuple[nn.Module, list, float]:
    """Lab 4's pipeline; returns ``(pruned VGG, cfg, max |output difference| vs masked model)``.

    The masked model is ``model`` with the removed channels' gamma and beta set to 0: in eval mode
    the pruned network must give the same logits (the contract of ``transfer_pruned_weights``).
    """
    from labkit.models import vgg

    thr = lab4.global_bn_threshold(model, percent)
    cfg, cfg_mask = lab4.build_cfg_mask(model, thr)
    pruned = vgg(cfg=cfg, num_classes=model.classifier.out_features)
    lab4.transfer_pruned_weights(model, pruned, cfg_mask)
    masked = copy.deepcopy(model)
    bns = [m for m in masked.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn, mask in zip(bns, cfg_mask):
            bn.weight.mul_(mask.to(bn.weight))
            bn.bias.mul_(mask.to(bn.bias))
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        diff = float((pruned.eval()(x) - masked.eval()(x)).abs().max())
    return pruned.eval(), cfg, diff


# --------------------------------------------------------------------------- measurement
def _latencies(models: dict[str, nn.Module], cfg: PruningConfig) -> dict[str, dict[int, float]]:
    """Best-of-rounds median latency (seconds) of every model at every batch size, interleaved."""
    from labkit.metrics import latency

    best: dict[str, dict[int, float]] = {k: {} for k in models}
    first = next(iter(models.values()))
    for batch in cfg.batches:  # thrown away: thread pools and oneDNN kernels start up here
        latency(first, batch_size=batch, repeats=1, warmup=1, device="cpu")
    for _ in range(cfg.rounds):
        for batch in cfg.batches:
            for key, m in models.items():
                t = latency(m, batch_size=batch, repeats=cfg.repeats_for(batch),
                            warmup=cfg.warmup if batch == 1 else 1, device="cpu")
                best[key][batch] = min(t, best[key].get(batch, math.inf))
    return best


def _row_common(section: str, name: str, smoke: bool, gamma_source: str) -> dict[str, Any]:
    return {"section": section, "name": name, "gamma_source": gamma_source,
            "command": command(section, smoke), "machine": machine_info("cpu")}


def run_structured(smoke: bool = False, cfg: PruningConfig | None = None,
                   loader: Callable[[str, list[str]], Any] = load_solutions) -> list[dict]:
    """Rows for structured pruning at each amount of ``cfg.structured`` (see module doc)."""
    from labkit.metrics import count_params, flops

    cfg = cfg or (SMOKE if smoke else FULL)
    t0 = time.perf_counter()
    lab4 = loader("lab4_vgg_prune", ["global_bn_threshold", "build_cfg_mask", "transfer_pruned_weights"])
    base, source = sparse_vgg(cfg)
    log(f"[structured] gamma: {source}")
    models: dict[str, nn.Module] = {"unpruned": base}
    info: dict[str, tuple[list, float]] = {}
    for p in cfg.structured:
        pruned, pcfg, diff = structured_prune(base, p, lab4)
        models[f"{p:g}"] = pruned
        info[f"{p:g}"] = (pcfg, diff)
    lat = _latencies(models, cfg)
    p0, f0 = count_params(base), flops(base)
    rows = []
    for key, (pcfg, diff) in info.items():
        m = models[key]
        p1, f1 = count_params(m), flops(m)
        fr = ratio(f1, f0)
        row = _row_common("structured", f"VGG-{cfg.depth} w{cfg.width:g} channels pruned {float(key):.0%}",
                          smoke, source)
        row.update({"percent": float(key), "cfg": pcfg, "transfer_max_abs_diff": diff,
                    "params_unpruned": p0, "params_pruned": p1, "params_ratio": round(ratio(p1, p0), 4),
                    "flops_unpruned": f0, "flops_pruned": f1, "flops_ratio": round(fr, 4)})
        met_all = True
        for b in cfg.batches:
            lr_ = ratio(lat[key][b], lat["unpruned"][b])
            met = bool(lr_ is not None and lr_ <= LATENCY_GOAL * fr)
            met_all &= met
            row.update({f"latency_b{b}_unpruned_ms": round(1e3 * lat["unpruned"][b], 3),
                        f"latency_b{b}_pruned_ms": round(1e3 * lat[key][b], 3),
                        f"latency_b{b}_ratio": round(lr_, 4),
                        f"latency_b{b}_goal_met": met})
        row["ratio_means"] = "pruned / unpruned (smaller is better)"
        row["goal"] = f"latency ratio <= {LATENCY_GOAL} x FLOPs ratio at batch {', '.join(map(str, cfg.batches))}"
        row["goal_met"] = met_all
        row["wall_s"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
    return rows


def run_unstructured(smoke: bool = False, cfg: PruningConfig | None = None,
                     loader: Callable[[str, list[str]], Any] = load_solutions) -> list[dict]:
    """Rows for magnitude pruning at each amount of ``cfg.unstructured`` (see module doc)."""
    from labkit.metrics import count_nonzero, count_params, flops

    cfg = cfg or (SMOKE if smoke else FULL)
    t0 = time.perf_counter()
    lab6 = loader("lab6_efficient_convs", ["global_magnitude_prune", "model_sparsity"])
    base, source = sparse_vgg(cfg)
    models: dict[str, nn.Module] = {"dense": base}
    for a in cfg.unstructured:
        m = copy.deepcopy(base)
        lab6.global_magnitude_prune(m, a)
        models[f"{a:g}"] = m.eval()
    lat = _latencies(models, cfg)
    n0, f0, p0 = count_nonzero(base), flops(base), count_params(base)
    rows = []
    for a in cfg.unstructured:
        key = f"{a:g}"
        m = models[key]
        n1, f1 = count_nonzero(m), flops(m)
        row = _row_common("unstructured", f"VGG-{cfg.depth} w{cfg.width:g} weights pruned {a:.0%} (masks)",
                          smoke, source)
        row.update({"amount": a, "sparsity": round(float(lab6.model_sparsity(m)), 4),
                    "params_dense": p0, "params_pruned": count_params(m),
                    "nonzero_dense": n0, "nonzero_pruned": n1, "nonzero_ratio": round(ratio(n1, n0), 4),
                    "flops_dense": f0, "flops_pruned": f1, "flops_ratio": round(ratio(f1, f0), 4)})
        for b in cfg.batches:
            row.update({f"latency_b{b}_dense_ms": round(1e3 * lat["dense"][b], 3),
                        f"latency_b{b}_pruned_ms": round(1e3 * lat[key][b], 3),
                        f"latency_b{b}_ratio": round(ratio(lat[key][b], lat["dense"][b]), 4)})
        row["ratio_means"] = "pruned / dense; FLOPs and latency stay near 1: zeros in dense tensors are still multiplied"
        row["wall_s"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
    return rows
