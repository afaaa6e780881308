"""Optimiser helpers of :func:`labkit.train.fit`: the default SGD, learning-rate schedules by
name, and airbench's lookahead weight averaging."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["make_sgd", "build_scheduler", "check_milestones", "Lookahead"]


def make_sgd(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4,
             nesterov: bool = False) -> torch.optim.SGD:
    """SGD with momentum and weight decay on all parameters (the network-slimming setup)."""
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise ValueError(f"lr must be a number > 0 (e.g. 0.1), got {lr!r}")
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                           weight_decay=weight_decay, nesterov=nesterov)


def check_milestones(milestones: Iterable[Any]) -> list[int]:
    """``milestones`` sorted, or one ``ValueError`` if any is not a positive integer epoch."""
    ms = list(milestones)
    bad = [m for m in ms if isinstance(m, bool) or not isinstance(m, int) or m < 1]
    if bad:
        raise ValueError(
            f"milestones must be positive integer epochs, got {ms}; a float such as "
            f"{bad[0]!r} never equals an epoch number, so the rate would never decay: "
            f"use e.g. [int(0.5 * epochs), int(0.75 * epochs)]")
    return sorted(ms)


def build_scheduler(scheduler: Any, milestones: Iterable[int] | None,
                    optimizer: torch.optim.Optimizer, epochs: int,
                    steps_per_epoch: int | None) -> tuple[Any, bool]:
    """``fit``'s ``scheduler=`` / ``milestones=`` as ``(torch scheduler or None, steps per batch)``.

    ``milestones``: ``MultiStepLR`` (x0.1 after each); ``"cosine"``: ``CosineAnnealingLR`` over
    ``epochs``; ``"onecycle"`` and any ``OneCycleLR``: stepped after every batch; any other
    object with ``.step()`` is stepped once per epoch.
    """
    if scheduler is not None and milestones is not None:
        raise ValueError("pass either scheduler= or milestones=, not both")
    if milestones is not None:
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=check_milestones(milestones), gamma=0.1), False
    if scheduler is None:
        return None, False
    if isinstance(scheduler, str):
        name = scheduler.strip().lower()
        if name == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs), False
        if name == "onecycle":
            if not steps_per_epoch:
                raise ValueError("scheduler='onecycle' needs a train_loader with len(); "
                                 "pass a torch OneCycleLR yourself instead")
            max_lr = [g["lr"] for g in optimizer.param_groups]
            return torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=max_lr, total_steps=epochs * steps_per_epoch), True
        raise ValueError(f"unknown scheduler {scheduler!r}; use 'cosine', 'onecycle', "
                         f"milestones=[...] or a torch.optim.lr_scheduler object")
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
        return scheduler, True  # its total_steps count batches
    if not hasattr(scheduler, "step"):
        raise ValueError(f"scheduler must be a string or have .step(), got {type(scheduler).__name__}")
    return scheduler, False


class Lookahead:
    """Weight averaging as airbench does it ("lookahead"): an exponential moving average of the
    model's floating-point state (parameters *and* BatchNorm running statistics) that the model
    is reset to at every update.

    ``update(model, decay)`` sets ``avg <- decay * avg + (1 - decay) * current`` for every
    floating-point tensor of ``model.state_dict()``, then copies ``avg`` back into the model.
    ``decay = 0`` leaves the model as it is; ``decay = 1`` resets it to the average.
    :func:`labkit.train.fit` with ``lookahead=k`` calls it every ``k`` steps with ``decay =
    0.95**k * (step / total_steps)**3`` (no averaging early, when the weights still move far;
    about 0.77 at the end), and once more with ``decay = 1`` after the last step, so the trained
    model *is* the average.
    """

    def __init__(self, model: nn.Module) -> None:
        self.avg = {k: v.detach().clone() for k, v in model.state_dict().items()
                    if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay!r}")
        state = model.state_dict()
        for k, avg in self.avg.items():
            avg.lerp_(state[k].detach(), 1.0 - decay)
            state[k].copy_(avg)

    @staticmethod
    def decay(step: int, total_steps: int, every: int) -> float:
        """airbench's schedule: ``0.95**every * (step / total_steps)**3``."""
        return 0.95 ** every * (step / max(total_steps, 1)) ** 3

