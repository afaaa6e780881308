"""Submitted ``model.pt`` files for the capstone's grading tests: one good model and every bad input.

Each entry of :func:`bad_models` is ``name -> (writer, expected problem prefix)``; the writer puts
a file at the path it is given. The good model is a small ``simple_cnn`` trained for a few
seconds on the digits training set, so its predictions have wide margins (exactly reproducible).
"""
from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import torch

from labkit import data
from labkit.models import build_model

GOOD_ARCH, GOOD_KWARGS = "simple_cnn", {"width": 8, "depth": 3, "num_classes": 10}


def payload(model: torch.nn.Module, arch: str, kwargs: dict) -> dict:
    return {"arch": arch, "kwargs": dict(kwargs),
            "state_dict": {k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.detach().cpu()
                           for k, v in model.state_dict().items()}}


def train_good(epochs: int = 6) -> torch.nn.Module:
    """A digits classifier within the budget (a few seconds on one core)."""
    torch.manual_seed(0)
    train, _ = data.load_digits32()
    model = build_model(GOOD_ARCH, **GOOD_KWARGS)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    loader = data.Loader(train, 64, train=True, augment=False, seed=0)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def write_good(path: Path, model: torch.nn.Module) -> Path:
    torch.save(payload(model, GOOD_ARCH, GOOD_KWARGS), path)
    return path


class _Evil:
    """Unpickling this runs ``os.system``: ``weights_only=True`` must refuse it."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/capstone-pwned",))


def _write_bytes(content: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(content)


def _save(obj) -> Callable[[Path], None]:
    return lambda p: torch.save(obj, p)


def _pickle_payload(p: Path) -> None:
    blob = payload(build_model(GOOD_ARCH, **GOOD_KWARGS), GOOD_ARCH, GOOD_KWARGS)
    blob["extra"] = _Evil()
    torch.save(blob, p)


def _mismatch(p: Path) -> None:
    blob = payload(build_model(GOOD_ARCH, **GOOD_KWARGS), GOOD_ARCH, GOOD_KWARGS)
    blob["kwargs"] = {**GOOD_KWARGS, "width": 6}
    torch.save(blob, p)


def _huge_width(p: Path) -> None:
    blob = payload(build_model(GOOD_ARCH, **GOOD_KWARGS), "mobilenet_v1", {"width": 10 ** 5, "num_classes": 10})
    torch.save(blob, p)


def _truncated(p: Path) -> None:
    """The first 200 bytes of a valid file: a broken zip."""
    buf = io.BytesIO()
    torch.save(payload(build_model(GOOD_ARCH, **GOOD_KWARGS), GOOD_ARCH, GOOD_KWARGS), buf)
    p.write_bytes(buf.getvalue()[:200])


def _over_size(p: Path) -> None:
    with open(p, "wb") as f:
        f.truncate(9 * 1024 ** 2)


def bad_models() -> dict[str, tuple[Callable[[Path], None], str]]:
    """``name -> (writer, problem prefix)`` of every bad model input the grader must survive."""
    m = build_model(GOOD_ARCH, **GOOD_KWARGS)
    return {
        "garbage": (_write_bytes(b"this is not a torch file\n" * 10), "model.pt is not a file torch.load can read"),
        "empty": (_write_bytes(b""), "model.pt is not a file torch.load can read"),
        "pickle_payload": (_pickle_payload, "model.pt holds more than tensors and plain values (it names posix.system)"),
        "plain_pickle": (lambda p: p.write_bytes(pickle.dumps(_Evil())), "model.pt holds more than tensors and plain values; torch"),
        "not_a_dict": (_save([1, 2, 3]), "model.pt must be a dict with arch, kwargs and state_dict"),
        "unknown_arch": (_save({**payload(m, GOOD_ARCH, GOOD_KWARGS), "arch": "alexnet"}), "unknown arch 'alexnet'"),
        "bad_kwargs": (_save(payload(m, GOOD_ARCH, {**GOOD_KWARGS, "colour": 3})), "build_model('simple_cnn', **kwargs) failed"),
        "pretrained_weights": (_save(payload(m, "resnet18", {"weights": "IMAGENET1K_V1"})), "kwargs['weights'] must be None"),
        "state_mismatch": (_mismatch, "the state dict does not fit simple_cnn(**kwargs)"),
        "over_budget": (_huge_width, "over budget: "),
        "too_large_file": (_over_size, "model.pt is 9.0 MiB, over the 8 MiB limit"),
        "truncated_zip": (_truncated, "model.pt is not a file torch.load can read"),
    }
