"""Benchmarks of the course kit: each figure is two measurements taken side by side in one run.

``python -m bench`` runs four sections and writes ``bench/results.json`` and ``bench/results.md``:

* ``throughput``   one training epoch through :class:`labkit.data.Loader` vs torchvision's
  ``DataLoader(ImageFolder)`` over real JPEG files (:mod:`bench.throughput`);
* ``structured``   channel pruning of VGG-19 by the lab 4 pipeline vs the unpruned network
  (:mod:`bench.pruning`);
* ``unstructured`` magnitude pruning (lab 6) vs the dense network (:mod:`bench.pruning`);
* ``grading``      the autograder's throughput, from ``bench.grading.run`` when it exists.

``python -m bench.pipeline`` is the real-data sparsity -> prune -> fine-tune run
(:mod:`bench.pipeline`).

This module holds what every section shares: the machine description, ratios, the
reproducing command and the results' JSON writer. Every row a section returns is a dict with at
least ``section``, ``name``, ``command``, ``wall_s`` and ``machine``.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("throughput", "allocator", "structured", "unstructured", "grading")


def cpu_model() -> str:
    """The CPU's marketing name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(device: str | None = None) -> dict[str, Any]:
    """What the numbers were measured on: CPU model, cores, torch version, device (and GPU)."""
    import torch

    from labkit.profile import default_device

    dev = device or default_device()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": dev,
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:  # the throughput section reports the missing baseline itself
        info["torchvision"] = None
    if dev == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:  # the other processes on the machine make the timings noisy; say how busy it was
        info["load_avg_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator`` or ``None`` when the denominator is not positive."""
    return numerator / denominator if denominator and denominator > 0 else None


def command(section: str, smoke: bool, extra: str = "") -> str:
    """The shell command (run in the repository root) that reproduces a section's rows."""
    parts = ["python -m bench"]
    if smoke:
        parts.append("--smoke")
    parts.append(f"--only {section}")
    if extra:
        parts.append(extra)
    return " ".join(parts)


def write_json(path: Path | str, obj: Any) -> Path:
    """``obj`` as indented JSON (NaN/inf refused: they are not JSON), written atomically
    (:func:`labkit.files.write_text`, which every other bench file goes through too)."""
    from labkit.files import write_text

    return write_text(path, json.dumps(obj, indent=2, allow_nan=False, default=str) + "\n")


def log(msg: str) -> None:
    """Progress lines go to stderr so that stdout stays the machine-readable result."""
    print(msg, file=sys.stderr, flush=True)
