"""Training images/s with glibc's default allocator settings vs :func:`labkit.allocator.keep_freed_memory`.

Each measurement runs in a fresh interpreter (the settings are per process and cannot be undone):
a few SGD steps in NHWC on random 32x32 images, as ``fit`` trains under ``fast``, counting the
process's minor page faults per step and its peak resident memory. The two sides alternate,
best of ``rounds`` kept. ``python -m bench.allocator`` prints the rows; ``make bench`` records them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from bench import REPO, command, machine_info

# (label, model expression in labkit.models, batch): models and batch sizes the labs train under fast
MODELS: list[tuple[str, str, int]] = [
    ("VGG-11 w0.25, batch 256 (labs 3-5)", "models.vgg(11, width=0.25, num_classes=10)", 256),
    ("VGG-11 w0.5, batch 256 (teachers)", "models.vgg(11, width=0.5, num_classes=10)", 256),
    ("ResNet-18 ImageNet stem, batch 256 (lab 1 source)", "models.resnet18(10, small_input=False)", 256),
]

_PROBE = r"""
import json, resource, sys
from labkit import models
from labkit.allocator import keep_freed_memory, minor_faults
from bench.layout import images_per_s
kept = keep_freed_memory()
expr, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
f0 = minor_faults()
rate = images_per_s(lambda: eval(expr), batch, True, steps=steps, warmup=2)
print(json.dumps({"kept": kept, "images_per_s": rate, "faults_per_step": (minor_faults() - f0) / (steps + 2),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(expr: str, batch: int, steps: int, keep: bool) -> dict[str, Any]:
    """One fresh process training ``expr`` for ``steps`` steps, with or without the kept heap."""
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    env.update(LABKIT_KEEP_FREED_MEMORY="1" if keep else "0", PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, "-c", _PROBE, expr, str(batch), str(steps)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=1800, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if result["kept"] != keep:
        raise RuntimeError(f"keep_freed_memory() returned {result['kept']} where {keep} was asked for "
                           "(not glibc, or MALLOC_* set?)")
    return result


def run(smoke: bool = False, rounds: int = 2) -> list[dict]:
    """One row per model: both sides' best images/s, their ratio, faults per step, peak memory."""
    rows = []
    models = MODELS[:1] if smoke else MODELS
    for label, expr, batch in models:
        batch, steps = (16, 2) if smoke else (batch, 10)
        t0 = time.perf_counter()
        sides: dict[bool, list[dict]] = {False: [], True: []}
        for r in range(1 if smoke else rounds):
            for keep in ((False, True) if r % 2 == 0 else (True, False)):
                sides[keep].append(measure(expr, batch, steps, keep))
        best = {k: max(v, key=lambda m: m["images_per_s"]) for k, v in sides.items()}
        rows.append({"section": "allocator", "name": label, "batch": batch, "steps": steps,
                     "default_images_per_s": round(best[False]["images_per_s"], 1),
                     "kept_images_per_s": round(best[True]["images_per_s"], 1),
                     "ratio": round(best[True]["images_per_s"] / best[False]["images_per_s"], 3),
                     "default_faults_per_step": round(best[False]["faults_per_step"]),
                     "kept_faults_per_step": round(best[True]["faults_per_step"]),
                     "default_peak_rss_mb": round(best[False]["peak_rss_mb"]),
                     "kept_peak_rss_mb": round(best[True]["peak_rss_mb"]),
                     "goal": "ratio > 1", "goal_met": best[True]["images_per_s"] > best[False]["images_per_s"],
                     "command": command("allocator", smoke), "machine": machine_info(),
                     "wall_s": round(time.perf_counter() - t0, 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.allocator", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    for row in run(smoke=args.smoke, rounds=args.rounds):
        print(f"{row['name']:<52} default {row['default_images_per_s']:7.0f} img/s "
              f"({row['default_faults_per_step']:,} faults/step, {row['default_peak_rss_mb']} MB)  kept "
              f"{row['kept_images_per_s']:7.0f} img/s ({row['kept_faults_per_step']:,}, "
              f"{row['kept_peak_rss_mb']} MB)  ratio {row['ratio']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
