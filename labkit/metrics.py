"""Size, cost and quality measurements of models and predictions.

Conventions: a FLOP is one floating-point multiply or add, so a multiply-add counts 2
(``torch.utils.flop_counter``'s convention); sizes are bytes; latency is seconds;
accuracies are fractions in [0, 1].
"""
from __future__ import annotations

import copy
import io
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["count_params", "count_nonzero", "flops", "macs", "serialized_size", "latency",
           "zero_fraction", "accuracy", "confusion_matrix", "macro_f1", "classification_report"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_nonzero(model: nn.Module) -> int:
    """Number of nonzero weight elements of the Conv and Linear layers (biases excluded)."""
    total = 0
    for m in model.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            total += int(torch.count_nonzero(m.weight.detach()))
    return total


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def flops(model: nn.Module, input_size: Sequence[int] = (1, 3, 32, 32)) -> int:
    """FLOPs of one forward pass on a random input of ``input_size`` (batch included).

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` in eval mode without gradients;
    it counts matmuls and convolutions (a multiply-add = 2), not activations or BatchNorm.
    """
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(*input_size, device=_model_device(model))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def macs(model: nn.Module, input_size: Sequence[int] = (1, 3, 32, 32)) -> int:
    """Multiply-accumulate operations of one forward pass: ``flops(...) // 2``."""
    return flops(model, input_size) // 2


def serialized_size(model_or_state_dict: nn.Module | Mapping[str, Any],
                    dtype: torch.dtype | None = None) -> int:
    """Bytes that ``torch.save`` of the state dict takes (written to memory, not disk).

    ``dtype`` (e.g. ``torch.float16``) first casts every floating-point tensor, which is how
    a half-precision checkpoint would be stored; integer buffers keep their dtype.
    """
    state = (model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module)
             else model_or_state_dict)
    if not isinstance(state, Mapping):
        raise TypeError(f"serialized_size needs a model or a state dict, got {type(state).__name__}")
    if dtype is not None:
        state = {k: (v.detach().to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v)
                 for k, v in state.items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getbuffer().nbytes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def latency(model: nn.Module, batch_size: int = 1, input_size: Sequence[int] = (3, 32, 32),
            repeats: int = 20, warmup: int = 5, device: str | torch.device | None = None) -> float:
    """Median wall-clock seconds of one forward pass of a ``[batch_size, *input_size]`` batch.

    Runs in eval mode under ``torch.inference_mode``; GPU work is synchronized before each
    clock read so asynchronous kernels are counted. ``device`` defaults to the model's;
    a different one measures a copy, so ``model`` itself is never moved.
    """
    if repeats < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(f"need repeats >= 1, warmup >= 0, batch_size >= 1; got "
                         f"repeats={repeats}, warmup={warmup}, batch_size={batch_size}")
    here = _model_device(model)
    dev = here if device is None else torch.device(device)
    # "cuda" and "cuda:0" name the same device: only copy when the type or index differs
    same = here.type == dev.type and (dev.index is None or here.index in (None, dev.index))
    net, dev = (model, here) if same else (copy.deepcopy(model).to(dev), dev)
    x = torch.randn(batch_size, *input_size, device=dev)
    was_training = net.training
    net.eval()
    times: list[float] = []
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                _sync(dev)
                start = time.perf_counter()
                net(x)
                _sync(dev)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        net.train(was_training)
    return statistics.median(times)


def zero_fraction(t: torch.Tensor) -> float:
    """Fraction of the elements of ``t`` that are exactly zero."""
    if t.numel() == 0:
        raise ValueError("zero_fraction of an empty tensor is undefined")
    return float((t == 0).sum().item()) / t.numel()


def _as_preds(x: torch.Tensor) -> torch.Tensor:
    """Logits ``[N, C]`` -> predicted labels ``[N]``; labels ``[N]`` pass through."""
    x = torch.as_tensor(x).detach().cpu()
    return x.argmax(dim=1) if x.ndim == 2 else x.long()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1] of logits ``[N, C]`` (or predicted labels ``[N]``)."""
    preds, labels = _as_preds(logits), torch.as_tensor(labels).detach().cpu()
    if preds.shape != labels.shape or preds.numel() == 0:
        raise ValueError(f"accuracy needs N >= 1 predictions and N labels; got "
                         f"{tuple(preds.shape)} and {tuple(labels.shape)}")
    return float((preds == labels).float().mean().item())


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 ``[C, C]`` counts: row = true class, column = predicted class.

    ``preds`` are predicted labels ``[N]`` or logits ``[N, C]``.
    """
    preds, labels = _as_preds(preds), torch.as_tensor(labels).detach().cpu().long()
    if preds.shape != labels.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and labels {tuple(labels.shape)} differ in shape")
    for name, t in (("preds", preds), ("labels", labels)):
        if t.numel() and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes - 1}]; got values "
                             f"{int(t.min())}..{int(t.max())}")
    return torch.bincount(labels * num_classes + preds,
                          minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def macro_f1(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Unweighted mean over all ``num_classes`` of the per-class F1 score.

    A class that is neither present nor predicted scores 0, as in
    ``sklearn.metrics.f1_score(average="macro", labels=range(C), zero_division=0)``.
    """
    cm = confusion_matrix(preds, labels, num_classes).double()
    tp = cm.diag()
    denom = 2 * tp + (cm.sum(0) - tp) + (cm.sum(1) - tp)  # 2TP + FP + FN
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
    return float(f1.mean().item())


def classification_report(logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                          ks: Sequence[int] = (1, 3)) -> dict[str, Any]:
    """Top-k accuracies and per-class recall of logits ``[N, C]`` against labels ``[N]``.

    Returns ``{"n": N, "top1": float, "top3": float, ..., "per_class_recall": float32 [C]
    tensor (NaN for a class with no test images), "classes": list[str]}``.
    """
    # Lab 1 grades students on writing top-k and per-class accuracy themselves, so labkit must
    # not contain its own implementation of that logic: this delegates to scikit-learn.
    from sklearn.metrics import recall_score, top_k_accuracy_score

    scores = torch.as_tensor(logits).detach().float().cpu()
    y = torch.as_tensor(labels).detach().cpu().long().numpy()
    num_classes = len(classes)
    if scores.ndim != 2 or scores.shape[1] != num_classes or scores.shape[0] != len(y):
        raise ValueError(f"need logits [N, {num_classes}] and labels [N]; got "
                         f"{tuple(scores.shape)} and {tuple(y.shape)}")
    label_ids = list(range(num_classes))
    report: dict[str, Any] = {"n": int(len(y)), "classes": list(classes)}
    with warnings.catch_warnings():  # sklearn warns (stderr) on degenerate inputs
        warnings.simplefilter("ignore")
        for k in ks:
            if k >= num_classes:
                report[f"top{k}"] = 1.0  # every class is among the top k
            elif num_classes == 2:
                # binary mode of sklearn wants the probability of class 1 (threshold 0.5)
                report[f"top{k}"] = float(top_k_accuracy_score(
                    y, scores.softmax(1)[:, 1].numpy(), k=k, labels=label_ids))
            else:
                report[f"top{k}"] = float(top_k_accuracy_score(y, scores.numpy(), k=k,
                                                               labels=label_ids))
        recall = recall_score(y, scores.argmax(1).numpy(), labels=label_ids, average=None,
                              zero_division=np.nan)
    report["per_class_recall"] = torch.as_tensor(np.asarray(recall, dtype=np.float32))
    return report
