"""Evaluate one submitted ``model.pt`` on images, inside the grading sandbox (no student code runs).

Run as a script in the sandbox (``python model_eval.py MODEL IMAGES DATASET OUT``), after the
job copied the submitted file and the hidden half's *images* (never its labels) into the sandbox's
folder. Steps, each ending the run with one ``problem`` line when it fails:

1. the file is at most ``MAX_MODEL_BYTES`` and ``torch.load(..., weights_only=True)`` reads it
   (a pickle payload is refused by the restricted unpickler; nothing in it runs);
2. it is ``{"arch": str, "kwargs": dict, "state_dict": {str: tensor}}``;
3. ``arch`` / ``kwargs`` pass :func:`labkit.capstone.check_spec` and are measured on the meta
   device (:func:`labkit.capstone.measure`): a model over budget stops here, before any weight
   is allocated;
4. the model is built, the state dict loaded strictly (float tensors cast to fp32), and the
   images predicted in batches (normalised as :class:`labkit.data.Loader` does).

Writes one JSON object to ``OUT``: ``arch``, ``kwargs``, ``params``, ``flops``, ``within_budget``,
``preds`` (a list of class ids, or None) and ``problem`` (None or one line). The trusted grader
(:mod:`autograder.capstone`) checks that record and scores it against the hidden labels.
"""
from __future__ import annotations

import json
import os
import re
import sys
import warnings
from typing import Any

MAX_MODEL_BYTES = 8 * 1024 ** 2   # a model within budget (100k fp32 parameters) is about 0.4 MB
BATCH = 256


def _fail(out: dict, problem: str) -> dict:
    out["problem"] = problem
    return out


def evaluate(model_path: str, images_path: str, dataset: str) -> dict[str, Any]:
    """The record of one model (see the module docstring); never raises for a bad model."""
    out: dict[str, Any] = {"arch": None, "kwargs": None, "params": None, "flops": None,
                           "within_budget": False, "preds": None, "problem": None}
    size = os.path.getsize(model_path)
    if size > MAX_MODEL_BYTES:
        return _fail(out, f"model.pt is {size / 2**20:.1f} MiB, over the {MAX_MODEL_BYTES // 2**20} MiB limit")
    import pickle

    import numpy as np
    import torch

    from labkit import capstone, data
    from labkit.models import build_model

    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": the refusal below says enough
            warnings.simplefilter("ignore")
            blob = torch.load(model_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(exc))
        what = f" (it names {found.group(1)})" if found else ""
        return _fail(out, f"model.pt holds more than tensors and plain values{what}; torch.load(weights_only=True) "
                          f"refused it: save it with export_model")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one problem line
        return _fail(out, f"model.pt is not a file torch.load can read ({type(exc).__name__}): save it with export_model")
    if not isinstance(blob, dict) or not {"arch", "kwargs", "state_dict"} <= set(blob):
        keys = sorted(map(str, blob))[:5] if isinstance(blob, dict) else type(blob).__name__
        return _fail(out, f"model.pt must be a dict with arch, kwargs and state_dict (got {keys}): save it with export_model")
    arch, kwargs, state = blob["arch"], blob["kwargs"], blob["state_dict"]
    out["arch"] = arch if isinstance(arch, str) else repr(arch)[:40]
    try:
        arch, kwargs = capstone.check_spec(arch, kwargs)
        out["kwargs"] = kwargs
        cost = capstone.measure(arch, kwargs)
    except capstone.ModelSpecError as exc:
        return _fail(out, str(exc))
    out.update(params=cost.params, flops=cost.flops, within_budget=cost.within(capstone.BUDGET))
    if not out["within_budget"]:
        return _fail(out, f"over budget: {cost.params:,} parameters and {cost.flops / 1e6:.2f} MFLOPs "
                          f"(allowed {capstone.BUDGET.describe()})")
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        return _fail(out, "state_dict must map parameter names to tensors")
    torch.manual_seed(0)
    model = build_model(arch, **kwargs)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        return _fail(out, f"the state dict does not fit {arch}(**kwargs): {' '.join(lines[1:2] or lines[:1])[:200]}")
    model.eval()
    images = torch.from_numpy(np.load(images_path, allow_pickle=False))
    mean, std = data.MEAN_STD[dataset]
    preds: list[int] = []
    with torch.inference_mode():
        for i in range(0, len(images), BATCH):
            logits = model(data.normalize(images[i:i + BATCH], mean, std))
            if logits.ndim != 2 or logits.shape[0] != len(images[i:i + BATCH]):
                return _fail(out, f"the model's output has shape {tuple(logits.shape)}, expected [batch, classes]")
            if not torch.isfinite(logits).all():
                return _fail(out, "the model's outputs contain NaN or infinity")
            preds += logits.argmax(1).tolist()
    out["preds"] = preds
    return out


def main(argv: list[str]) -> int:
    model_path, images_path, dataset, out_path = argv
    record = evaluate(model_path, images_path, dataset)
    with open(out_path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(out_path + ".tmp", out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
