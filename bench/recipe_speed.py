"""Training seconds of two pipeline recipes measured side by side (issue 10: the new ``fast``
recipe must not train slower than ``fast_vgg11``, today's recipe, on the same machine).

    python -m bench.recipe_speed [--profiles fast fast_vgg11] [--batches 24] [--rounds 3]

Each round trains every profile's network (its recipe, :data:`bench.recipes.RECIPES`) for
``--batches`` batches of real CIFAR-10 through the pipeline's own training function
(:func:`bench.recipes.fit_recipe`: the same ``labkit.train.fit`` call, optimizer, loader and
options, L1 hook included), alternating the profiles so that a busy moment
of a shared machine does not hit one side only; the fastest round of each is kept. The result is
seconds per image and, multiplied by the images of each profile's full training, the predicted
training seconds. It is a sample of the schedule, not the whole run: the whole runs' seconds are
in their own records.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import log, machine_info, write_json


def measure(profiles: list[str], batches: int, rounds: int, seed: int = 0) -> dict[str, Any]:
    from labkit.metrics import flops
    from labkit.profile import seed_everything

    from bench import recipes
    from bench.pipeline import graded_functions

    sol = graded_functions()
    setups = {}
    for name in profiles:
        cfg = recipes.RECIPES[name]
        train, _ = recipes.load_data(cfg, seed)
        loader = recipes.make_train_loader(cfg, train, "cpu", seed)
        seed_everything(seed)
        model = recipes.build_model(cfg, len(train.classes))
        recipes.init_whitening(model, train)
        setups[name] = (cfg, model, recipes.FirstBatches(loader, batches), flops(model))
    best: dict[str, float] = {}
    loads = []
    for r in range(rounds + 1):  # round 0 warms up (allocator, oneDNN kernels) and is dropped
        for name, (cfg, model, loader, _) in setups.items():
            t = time.perf_counter()
            recipes.fit_recipe(model, loader, None, 1, cfg.lr * 0.1, cfg, "cpu",  # no test loader: no evaluation
                               lambda m, c=cfg: sol.add_bn_l1_subgradient(m, c.l1), name)
            per_image = (time.perf_counter() - t) / (batches * cfg.batch_size)
            if r:
                best[name] = min(best.get(name, float("inf")), per_image)
        loads.append(os.getloadavg()[0])
    rows = {}
    for name, (cfg, model, loader, fl) in setups.items():
        images = cfg.epochs * (50000 // cfg.batch_size) * cfg.batch_size
        rows[name] = {"s_per_image": best[name], "images_per_s": round(1 / best[name], 1),
                      "train_images": images, "train_tflop": round(3 * fl * images / 1e12, 2),
                      "predicted_train_s": round(best[name] * images, 1),
                      "gflop_per_s": round(3 * fl / best[name] / 1e9, 1)}
        log(f"[speed] {name}: {rows[name]}")
    return {"profiles": rows, "batches": batches, "rounds": rounds, "load_avg_1min": loads,
            "machine": machine_info("cpu")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recipe_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["fast", "fast_vgg11"])
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = measure(args.profiles, args.batches, args.rounds)
    result["command"] = "python -m bench.recipe_speed " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result["profiles"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
