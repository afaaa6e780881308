"""Plot the compute-to-accuracy curve of one or more ``bench.pipeline`` JSON records.

    python -m bench.recipe_curve bench/pipeline-fast.json [more.json ...] --out bench/curve-fast.png

Test accuracy after every epoch against training TFLOP (3 x forward FLOPs x images seen), one line
per record (and per pruned-network fine-tuning, dashed, placed after its sparsity training), the
short-budget runs as points, and the goals of issue 10 as grey marks.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def plot(records: list[tuple[str, dict]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    for label, r in records:
        u = r["unpruned"]
        pts = [(c["tflop"], 100 * c["test_acc"]) for c in u.get("curve", []) if c["test_acc"] is not None]
        if pts:
            line, = ax.plot(*zip(*pts), marker="o", ms=3, label=f"{label}: sparsity training")
            for p in r.get("pruned", []):
                ft = [(u["train_tflop"] + c["tflop"], 100 * c["test_acc"]) for c in p.get("curve", [])
                      if c["test_acc"] is not None]
                if ft:
                    ax.plot(*zip(*ft), ls="--", marker=".", color=line.get_color(),
                            label=f"{label}: {p['percent']:.0%} pruned, fine-tuning")
            for b in r.get("budgets", []):
                ax.plot(b["train_tflop"], 100 * b["acc"], marker="*", ms=11, ls="none", color=line.get_color())
                ax.annotate(f"{100 * b['acc']:.1f} %", (b["train_tflop"], 100 * b["acc"]),
                            textcoords="offset points", xytext=(6, -10), fontsize=8)
        else:  # a record from before the curve existed: its final point only
            c = r["config"]
            images = c["epochs"] * (r["train_images"] // c["batch_size"]) * c["batch_size"]
            x = u.get("train_tflop", 3 * u["flops"] * images / 1e12)
            ax.plot(x, 100 * u["acc"], marker="s", ls="none", label=f"{label}: after training")
    for x, y, txt in [(14, 80, "≥ 80 % at 14"), (42, 87, "≥ 87 % at 42"), (139, 91, "≥ 91 % at 139")]:
        ax.plot([x], [y], marker="_", ms=18, mew=2, color="grey")
        ax.annotate(txt, (x, y), textcoords="offset points", xytext=(-10, 6), fontsize=8, color="grey")
    ax.set_xlabel("training compute (TFLOP = 3 × forward FLOPs × images seen)")
    ax.set_ylabel("CIFAR-10 test accuracy (%)")
    ax.set_ylim(40, 95)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recipe_curve", description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+", type=Path, help="pipeline JSON files (label=path to name one)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    records = []
    for path in args.records:
        label, _, p = str(path).rpartition("=") if "=" in str(path) else ("", "", str(path))
        records.append((label or Path(p).stem, json.loads(Path(p).read_text(encoding="utf-8"))))
    print(f"wrote {plot(records, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
