"""labkit.plots: every function returns a Figure with the expected axes and artists."""
from __future__ import annotations

import warnings

import pytest
import torch
from matplotlib.figure import Figure

from labkit import plots
from labkit.train import History

ROWS = [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.5 + 0.1 * e, "test_loss": 1.1 / e,
         "test_acc": 0.45 + 0.1 * e, "lr": 0.1, "seconds": 1.0} for e in (1, 2, 3)]


@pytest.fixture(autouse=True)
def no_pyplot_figures():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would reach stderr in a notebook
        yield
    assert plt.get_fignums() == before  # nothing registered with pyplot (never shown twice)


def test_training_curves_history_and_rows():
    fig = plots.training_curves({"a": History(rows=ROWS), "b": ROWS[:2]},
                                metrics=("train_acc", "test_acc", "train_loss"))
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert [len(ax.lines) for ax in fig.axes] == [2, 2, 2]
    xs, ys = fig.axes[1].lines[0].get_data()
    assert list(xs) == [1, 2, 3] and ys[0] == pytest.approx(55.0)  # accuracies in percent


def test_training_curves_skips_missing_test_values():
    rows = [dict(r, test_acc=None) for r in ROWS]
    fig = plots.training_curves({"no test": rows})
    assert [len(ax.lines) for ax in fig.axes] == [1, 0]


def test_sparsity_curves():
    fig = plots.sparsity_curves({"λ=0": [0.0, 0.1], "λ=1e-4": torch.tensor([0.0, 0.3, 0.5])},
                                ylabel="fraction of |γ| < 0.01")
    (ax,) = fig.axes
    assert len(ax.lines) == 2 and ax.get_ylabel() == "fraction of |γ| < 0.01"


def test_gamma_histograms():
    fig = plots.gamma_histograms({"a": torch.randn(100), "b": torch.rand(50)}, bins=10)
    assert len(fig.axes) == 2
    assert len(fig.axes[0].patches) == 10 and fig.axes[0].get_yscale() == "log"
    counts = sum(p.get_height() for p in fig.axes[1].patches)
    assert counts == 50


def test_params_vs_accuracy():
    fig = plots.params_vs_accuracy({"pruned": [(1000, 0.9), (100, 0.8)], "dense": [(5000, 91.0)]})
    (ax,) = fig.axes
    assert len(ax.lines) == 2 and ax.get_xscale() == "log"
    xs, ys = ax.lines[0].get_data()
    assert list(xs) == [100, 1000] and list(ys) == pytest.approx([80.0, 90.0])


def test_per_class_bars():
    classes = ["a", "b", "c"]
    fig = plots.per_class_bars({"x": torch.tensor([0.1, 0.5, 1.0]), "y": torch.tensor([1.0, 0, 0])},
                               classes)
    (ax,) = fig.axes
    assert len(ax.patches) == 6 and ax.patches[2].get_height() == pytest.approx(100.0)
    with pytest.raises(ValueError, match="3 classes"):
        plots.per_class_bars({"x": torch.ones(2)}, classes)


def test_figures_save_under_agg(tmp_path):
    fig = plots.training_curves({"a": ROWS})
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_params_vs_score_labels_points_and_the_budget():
    fig = plots.params_vs_score({"teacher": (579_098, 0.73), "student": (98_000, 0.71)},
                                ylabel="public-test macro-F1", max_params=100_000)
    (ax,) = fig.axes
    assert ax.get_ylabel() == "public-test macro-F1" and ax.get_xlabel() == "parameters"
    assert ax.get_xscale() == "linear"
    offsets = [tuple(c.get_offsets()[0]) for c in ax.collections]
    assert offsets == [(579_098, pytest.approx(0.73)), (98_000, pytest.approx(0.71))]  # scores as given
    assert [t.get_text() for t in ax.texts] == ["teacher", "student"]
    (budget,) = ax.lines
    assert list(budget.get_xdata()) == [100_000, 100_000]
    assert ax.get_legend() is not None


def test_params_vs_score_without_budget_and_log_axis():
    fig = plots.params_vs_score({"a": (10, 0.5)}, logx=True)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and not ax.lines and ax.get_legend() is None
    assert ax.get_ylabel() == "macro-F1"
    with pytest.raises(ValueError, match="at least one"):
        plots.params_vs_score({})
