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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["count_params", "count_nonzero", "flops", "macs", "serialized_size", "latency", "latencies",
           "accuracy", "confusion_matrix", "model_device", "as_state_dict"]


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


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter, else of its first buffer, else the CPU."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def as_state_dict(model_or_state: nn.Module | Mapping[str, Any], caller: str) -> Mapping[str, Any]:
    """``model.state_dict()`` of a module, a mapping as it is; ``TypeError`` naming ``caller`` otherwise."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    if not isinstance(state, Mapping):
        raise TypeError(f"{caller} needs a model or a state dict, got {type(state).__name__}")
    return state


def flops(model: nn.Module, input_size: Sequence[int] = (1, 3, 32, 32)) -> int:
    """FLOPs of one forward pass on a random input of ``input_size`` (batch included).

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` in eval mode without gradients;
    it counts matmuls and convolutions (a multiply-add = 2), not activations or BatchNorm.
    """
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(*input_size, device=model_device(model))
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
    state = as_state_dict(model_or_state_dict, "serialized_size")
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
    a different one measures a copy, so ``model`` itself is never moved. To compare several
    models, use :func:`latencies`, which interleaves them.
    """
    return latencies({"model": model}, batch_size, input_size, repeats, warmup, device)["model"]


def latencies(models: Mapping[str, nn.Module], batch_size: int = 1, input_size: Sequence[int] = (3, 32, 32),
              repeats: int = 20, warmup: int = 5, device: str | torch.device | None = None) -> dict[str, float]:
    """Median wall-clock seconds of one forward pass of each model, measured in interleaved rounds.

    Every model first runs ``warmup`` untimed passes; then each of ``repeats`` rounds times one
    pass of every model on the same ``[batch_size, *input_size]`` batch, in an order that rotates
    from round to round. A slow spell of the machine (another process, a clock change, the
    allocator settling) thus falls on all models alike, and their ratios stay comparable, which
    timing one model after the other does not guarantee. Eval mode, ``torch.inference_mode``, GPU
    work synchronized before each clock read; ``device`` defaults to each model's own, and a
    model on another device is measured as a copy (the models themselves never move).

    Returns ``{name: seconds}`` in the order of ``models``.
    """
    if repeats < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(f"need repeats >= 1, warmup >= 0, batch_size >= 1; got "
                         f"repeats={repeats}, warmup={warmup}, batch_size={batch_size}")
    if not models:
        raise ValueError("latencies needs at least one model")
    nets: dict[str, tuple[nn.Module, torch.device, bool]] = {}
    for name, model in models.items():
        here = model_device(model)
        dev = here if device is None else torch.device(device)
        # "cuda" and "cuda:0" name the same device: only copy when the type or index differs
        same = here.type == dev.type and (dev.index is None or here.index in (None, dev.index))
        net, dev = (model, here) if same else (copy.deepcopy(model).to(dev), dev)
        nets[name] = (net, dev, model.training)
    inputs = {dev: torch.randn(batch_size, *input_size, device=dev) for _, dev, _ in nets.values()}
    names = list(nets)
    times: dict[str, list[float]] = {name: [] for name in names}

    def timed(name: str) -> float:
        net, dev, _ = nets[name]
        _sync(dev)
        start = time.perf_counter()
        net(inputs[dev])
        _sync(dev)
        return time.perf_counter() - start

    try:
        for net, _, _ in nets.values():
            net.eval()
        with torch.inference_mode():
            for name in names:
                for _ in range(warmup):
                    timed(name)
            for r in range(repeats):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    times[name].append(timed(name))
    finally:
        for net, _, was_training in nets.values():
            net.train(was_training)
    return {name: statistics.median(times[name]) for name in names}


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


def _checked(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted labels and labels as int64 arrays, both ``[N]`` and in ``[0, num_classes)``."""
    preds, labels = _as_preds(preds), torch.as_tensor(labels).detach().cpu().long()
    if preds.shape != labels.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and labels {tuple(labels.shape)} differ in shape")
    for name, t in (("preds", preds), ("labels", labels)):
        if t.numel() and (t.min() < 0 or t.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes - 1}]; got values "
                             f"{int(t.min())}..{int(t.max())}")
    return preds.numpy(), labels.numpy()


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 ``[C, C]`` counts: row = true class, column = predicted class (``sklearn.metrics``).

    ``preds`` are predicted labels ``[N]`` or logits ``[N, C]``. Every one of the ``num_classes``
    classes has its row and column, also a class that is neither present nor predicted (zeros).
    """
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    p, y = _checked(preds, labels, num_classes)
    if not len(y):  # sklearn refuses empty input; no sample, no count
        return torch.zeros(num_classes, num_classes, dtype=torch.int64)
    return torch.as_tensor(sk_confusion_matrix(y, p, labels=list(range(num_classes))), dtype=torch.int64)
