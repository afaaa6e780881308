"""Per-epoch results of :func:`labkit.train.fit`: :class:`History` and its Markdown table."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from labkit.tables import markdown_table

__all__ = ["History", "ROW_KEYS"]

ROW_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds")


@dataclass
class History:
    """Per-epoch results of :func:`labkit.train.fit`.

    ``rows[i]`` has ``epoch`` (from 1), ``train_loss`` / ``test_loss`` (mean cross-entropy
    per image, nats), ``train_acc`` / ``test_acc`` (fractions), ``lr`` (first parameter group,
    at the start of the epoch) and ``seconds`` (wall clock of the epoch, evaluation included).
    Test values are ``None`` when ``fit`` had no test loader. Train values are measured while
    training (augmented batches, weights changing), so they are not comparable to the test
    values of the same epoch.
    """

    rows: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    monitor: str = "test_acc"
    eval_seconds: list[float] = field(default_factory=list)  # per epoch, part of "seconds"

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]

    def column(self, key: str) -> list:
        """The values of ``key`` over epochs, e.g. ``history.column("test_acc")``."""
        if self.rows and key not in self.rows[0]:
            raise KeyError(f"History has no column {key!r}; columns: {', '.join(self.rows[0])}")
        return [row[key] for row in self.rows]

    def best(self, key: str | None = None) -> dict:
        """The row with the best ``key`` (default: the monitored one); losses are minimized,
        everything else maximized; the earliest row wins ties."""
        key = key or self.monitor
        values = [(v, i) for i, v in enumerate(self.column(key)) if v is not None]
        if not values:
            raise ValueError(f"History has no {key!r} values (was fit run without a "
                             f"test_loader?); try best('train_acc')")
        if key.endswith("loss"):
            _, i = min(values, key=lambda vi: (vi[0], vi[1]))
        else:
            _, i = max(values, key=lambda vi: (vi[0], -vi[1]))
        return self.rows[i]

    @property
    def best_epoch(self) -> int:
        """Epoch number (from 1) of the best monitored value."""
        return int(self.best()["epoch"])

    @property
    def last(self) -> dict:
        if not self.rows:
            raise ValueError("History is empty")
        return self.rows[-1]

    def to_markdown(self) -> str:
        """A Markdown table of all rows (accuracies in %, times in s)."""
        def fmt(key: str, v: Any) -> str:
            if v is None:
                return "–"
            if key.endswith("acc"):
                return f"{100 * v:.2f}"
            if key == "lr":
                return f"{v:.3g}"
            if key == "epoch":
                return str(v)
            return f"{v:.3f}" if key.endswith("loss") else f"{v:.1f}"

        keys = list(self.rows[0]) if self.rows else list(ROW_KEYS)
        head = ["epoch", *(f"{k} (%)" if k.endswith("acc") else
                          f"{k} (s)" if k == "seconds" else k for k in keys[1:])]
        table = markdown_table(head, ([fmt(k, row[k]) for k in keys] for row in self.rows))
        if self.stopped_early:
            table += f"\n\nstopped early after epoch {self.rows[-1]['epoch']}"
        return table

    def _repr_markdown_(self) -> str:  # rendered as a table when a notebook cell returns it
        return self.to_markdown()

