"""Optimiser helpers of :func:`labkit.train.fit`: the default SGD, learning-rate schedules by
name, airbench's lookahead weight averaging, and :class:`Muon` (orthogonalised updates for the
conv filters, nesterov SGD for the rest: airbench's ``airbench94_muon.py``)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["make_sgd", "build_scheduler", "check_milestones", "Lookahead", "Muon", "make_muon",
           "newton_schulz"]


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
    ``epochs``; ``"linear"``: from each group's rate down to 0 at the last batch, stepped after
    every batch (airbench's schedule: no warm-up, and momentum left alone, which :class:`Muon`
    needs); ``"onecycle"`` and any ``OneCycleLR``: stepped after every batch; any other
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
        if name == "linear":
            if not steps_per_epoch:
                raise ValueError("scheduler='linear' needs a train_loader with len()")
            total = epochs * steps_per_epoch
            return torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: max(0.0, 1.0 - step / total)), True
        if name == "onecycle":
            if not steps_per_epoch:
                raise ValueError("scheduler='onecycle' needs a train_loader with len(); "
                                 "pass a torch OneCycleLR yourself instead")
            max_lr = [g["lr"] for g in optimizer.param_groups]
            return torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=max_lr, total_steps=epochs * steps_per_epoch), True
        raise ValueError(f"unknown scheduler {scheduler!r}; use 'cosine', 'onecycle', 'linear', "
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



# Coefficients of the quintic Newton-Schulz iteration airbench94_muon.py uses: chosen for a steep
# slope at zero, so three steps push every singular value into roughly [0.5, 1.5] (not exactly 1).
_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise a matrix ``g`` ``[m, n]``: about ``U V^T`` for ``g = U S V^T``.

    ``g`` is divided by its Frobenius norm (so every singular value is <= 1), then ``steps``
    quintic iterations ``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` (on the shorter side).
    Returns float32 ``[m, n]``; the singular values end between about 0.5 and 1.5, the singular
    vectors are ``g``'s.
    """
    if g.dim() != 2:
        raise ValueError(f"newton_schulz needs a matrix [m, n], got shape {tuple(g.shape)}")
    a, b, c = _NS_COEFFS
    x = g.float()
    x = x / (x.norm() + eps)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """One optimiser for two kinds of parameter group (so one :func:`labkit.train.fit` schedule
    drives both):

    * ``orthogonal=True`` (conv filters ``[C_out, C_in, k, k]``): momentum ``m <- mu m + g``,
      nesterov direction ``d = g + mu m``; the filter is rescaled to Frobenius norm
      ``sqrt(C_out)``, then ``p <- p - lr * newton_schulz(d as [C_out, C_in k k])``. The step has
      a fixed size whatever the gradient's scale (the loss's reduction does not matter) and is
      spread over all directions of the filter bank. Only for weights followed by BatchNorm,
      whose output does not depend on their norm.
    * ``orthogonal=False``: plain SGD with momentum, nesterov and L2 ``weight_decay`` (as
      ``torch.optim.SGD``), for BatchNorm parameters, biases and the classifier.

    Groups take ``lr``, ``momentum``, ``nesterov``, ``weight_decay`` and ``orthogonal``; build
    them with :func:`make_muon`. After Jordan et al., "Muon: An optimizer for hidden layers"
    (2024) and ``KellerJordan/cifar10-airbench`` ``airbench94_muon.py``.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.6, nesterov: bool = True,
                 weight_decay: float = 0.0, orthogonal: bool = False) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov,
                                      weight_decay=weight_decay, orthogonal=orthogonal))
        for group in self.param_groups:
            if group["orthogonal"] and any(p.dim() < 2 for p in group["params"]):
                raise ValueError("orthogonal groups take weight tensors of >= 2 dimensions only")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd and not group["orthogonal"]:
                    g = g.add(p, alpha=wd)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = torch.zeros_like(g)
                buf.mul_(mu).add_(g)
                d = g.add(buf, alpha=mu) if group["nesterov"] else buf
                if group["orthogonal"]:
                    p.mul_(len(p) ** 0.5 / p.norm().clamp_min(1e-12))
                    d = newton_schulz(d.reshape(len(d), -1)).view_as(p).to(p.dtype)
                p.add_(d, alpha=-lr)
        return loss


def make_muon(model: nn.Module, lr: float, sgd_lr: float, head_lr: float, *, momentum: float = 0.6,
              sgd_momentum: float = 0.85, weight_decay: float = 0.0) -> Muon:
    """:class:`Muon` over ``model``: the trainable conv filters (>= 3-D weights) orthogonalised at
    ``lr``; the ``nn.Linear`` layers' parameters at ``head_lr`` and everything else (BatchNorm
    scales and shifts) at ``sgd_lr``, both nesterov SGD with ``sgd_momentum``.

    ``weight_decay`` is the decay *per step* (airbench's convention: ``lr * wd`` the same for
    both SGD groups), so each group's L2 coefficient is ``weight_decay / its lr``.
    """
    for name, v in (("lr", lr), ("sgd_lr", sgd_lr), ("head_lr", head_lr)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{name} must be a number > 0, got {v!r}")
    head = {id(p) for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters()}
    train = [p for p in model.parameters() if p.requires_grad]
    filters = [p for p in train if p.dim() >= 3]
    heads = [p for p in train if id(p) in head]
    rest = [p for p in train if p.dim() < 3 and id(p) not in head]
    groups = [dict(params=filters, lr=lr, momentum=momentum, orthogonal=True, weight_decay=0.0),
              dict(params=heads, lr=head_lr, momentum=sgd_momentum, weight_decay=weight_decay / head_lr),
              dict(params=rest, lr=sgd_lr, momentum=sgd_momentum, weight_decay=weight_decay / sgd_lr)]
    return Muon([g for g in groups if g["params"]], lr=lr)
