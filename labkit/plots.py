"""Figures the labs show. Each function returns a ``matplotlib.figure.Figure``.

Figures are closed in ``pyplot`` as soon as they are created: nothing is shown implicitly
(so never twice), nothing stays open (no "too many open figures" warning can reach stderr)
and nothing needs a GUI (safe under Agg and in grading kernels). A notebook displays one
by making it the cell's last expression (or ``display(fig)``); ``fig.savefig`` works.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

__all__ = ["training_curves", "sparsity_curves", "gamma_histograms", "params_vs_accuracy",
           "per_class_bars", "params_vs_score"]

_LABELS = {"train_acc": "train accuracy (%)", "test_acc": "test accuracy (%)",
           "train_loss": "train loss", "test_loss": "test loss", "lr": "learning rate",
           "seconds": "seconds per epoch"}


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A new Figure that pyplot has already let go of.

    It is created through ``pyplot`` so that, in a Jupyter kernel, the inline backend gets
    activated (that registers the formatter which displays a returned Figure as PNG), and
    closed at once so pyplot never shows it a second time or counts it as open.
    """
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=figsize, layout="constrained")
    plt.close(fig)
    return fig


def _rows(history) -> list[dict]:
    """A ``History`` or a list of row dicts -> list of row dicts."""
    rows = getattr(history, "rows", history)
    if not isinstance(rows, Sequence) or any(not isinstance(r, Mapping) for r in rows):
        raise TypeError(f"expected a History or a list of dicts, got {type(history).__name__}")
    return list(rows)


def _to_numpy(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().float().cpu().numpy().ravel()
    return np.asarray(t, dtype=float).ravel()


def training_curves(histories: Mapping[str, object],
                    metrics: Sequence[str] = ("train_acc", "test_acc")) -> Figure:
    """One panel per metric, one line per run, over epochs.

    ``histories`` maps a run name to a ``History`` or its list of rows. Accuracies are
    drawn in percent; rows where a metric is ``None`` are skipped.
    """
    if not histories:
        raise ValueError("training_curves needs at least one history")
    fig = _new_figure((4.5 * len(metrics), 3.4))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for name, history in histories.items():
            pts = [(r["epoch"], r[metric]) for r in _rows(history) if r.get(metric) is not None]
            if not pts:
                continue
            x, y = zip(*pts)
            scale = 100.0 if metric.endswith("acc") else 1.0
            ax.plot(x, [scale * v for v in y], marker="o", markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(_LABELS.get(metric, metric))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return fig


def sparsity_curves(curves: Mapping[str, Sequence[float]], ylabel: str = "sparsity",
                    xlabel: str = "epoch") -> Figure:
    """One line per named curve, x = position (1, 2, ...), e.g. BN sparsity per epoch."""
    fig = _new_figure((5, 3.4))
    ax = fig.subplots()
    for name, ys in curves.items():
        ys = _to_numpy(ys)
        ax.plot(np.arange(1, len(ys) + 1), ys, marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    return fig


def gamma_histograms(gammas: Mapping[str, torch.Tensor], bins: int = 50, log: bool = True) -> Figure:
    """Histograms of |gamma| (BatchNorm scales) side by side, one panel per name.

    ``gammas`` maps a name (e.g. ``"λ=0"``, ``"λ=1e-4"``) to a 1-D tensor of all scale
    factors. ``log`` uses a log-scaled count axis so the few large scales stay visible.
    """
    if not gammas:
        raise ValueError("gamma_histograms needs at least one tensor")
    fig = _new_figure((4 * len(gammas), 3.2))
    axes = fig.subplots(1, len(gammas), squeeze=False, sharex=True)[0]
    for ax, (name, g) in zip(axes, gammas.items()):
        ax.hist(np.abs(_to_numpy(g)), bins=bins, log=log, color="tab:blue")
        ax.set_title(name)
        ax.set_xlabel("|γ|")
        ax.set_ylabel("channels")
    return fig


def params_vs_accuracy(series: Mapping[str, Sequence[tuple[int, float]]], logx: bool = True,
                       xlabel: str = "parameters") -> Figure:
    """Accuracy against model size: one line per series of ``(params, accuracy)`` points.

    Accuracies given as fractions (all <= 1) are drawn in percent.
    """
    fig = _new_figure((5, 3.6))
    ax = fig.subplots()
    for name, pts in series.items():
        pts = sorted(pts)
        if not pts:
            continue
        x = [p for p, _ in pts]
        y = np.array([a for _, a in pts], dtype=float)
        if np.all(y <= 1.0):
            y = 100 * y
        ax.plot(x, y, marker="o", label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    if ax.lines:
        ax.legend(fontsize="small")
    return fig


def per_class_bars(accs: Mapping[str, torch.Tensor], classes: Sequence[str]) -> Figure:
    """Grouped bars of per-class accuracy (fractions ``[C]``, drawn in %), one group per class."""
    if not accs:
        raise ValueError("per_class_bars needs at least one series")
    n = len(accs)
    x = np.arange(len(classes))
    width = 0.8 / n
    fig = _new_figure((max(5.0, 0.55 * len(classes) * max(1, n / 2)), 3.6))
    ax = fig.subplots()
    for i, (name, a) in enumerate(accs.items()):
        a = _to_numpy(a)
        if len(a) != len(classes):
            raise ValueError(f"per_class_bars: {name!r} has {len(a)} values for "
                             f"{len(classes)} classes")
        ax.bar(x + (i - (n - 1) / 2) * width, 100 * a, width=width, label=name)
    ax.set_xticks(x, list(classes), rotation=45 if len(classes) > 6 else 0, ha="right"
                  if len(classes) > 6 else "center")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize="small")
    return fig


def params_vs_score(points: Mapping[str, tuple[float, float]], ylabel: str = "macro-F1",
                    xlabel: str = "parameters", max_params: float | None = None,
                    logx: bool = False) -> Figure:
    """One labelled marker per model at ``(params, score)``, e.g. the rows of an ablation table.

    ``points`` maps a model's name to ``(params, score)``; scores are drawn as given (no percent
    conversion) against ``ylabel``. ``max_params`` (a parameter budget) adds a dashed vertical
    line, so the models within the budget are those left of it.
    """
    if not points:
        raise ValueError("params_vs_score needs at least one point")
    fig = _new_figure((5.5, 3.8))
    ax = fig.subplots()
    for i, (name, (params, score)) in enumerate(points.items()):
        ax.scatter([params], [score], s=40, color=f"C{i % 10}", zorder=3)
        ax.annotate(name, (params, score), fontsize=8, xytext=(5, 3), textcoords="offset points")
    if max_params is not None:
        ax.axvline(max_params, color="gray", linestyle="--", linewidth=1, label=f"budget: {max_params:,.0f}")
        ax.legend(fontsize="small", loc="lower right")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    return fig
