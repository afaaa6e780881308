"""Checkpoints: ``save_checkpoint`` (atomic, tensors on the CPU) and ``load_checkpoint``
(``weights_only=True``, a one-line error when the file does not fit the model)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labkit.files import atomic_open
from labkit.metrics import as_state_dict

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(path: str | os.PathLike, model_or_state: nn.Module | Mapping[str, Any],
                    **extra: Any) -> Path:
    """Save ``{"state_dict": ..., **extra}`` to ``path`` atomically; returns the path.

    Tensors are moved to the CPU so the file loads anywhere. The file is written to a
    temporary name in the same folder and renamed, so a crash never leaves half a file.
    Keep ``extra`` to plain values (numbers, strings, lists, dicts, tensors): checkpoints
    are loaded with ``weights_only=True``.
    """
    if "state_dict" in extra:
        raise ValueError("'state_dict' is reserved; pass the model or state dict as the "
                         "second argument")
    state = as_state_dict(model_or_state, "save_checkpoint")
    state = {k: (v.detach().cpu() if torch.is_tensor(v) else v) for k, v in state.items()}
    path = Path(path)
    with atomic_open(path, "wb") as f:
        torch.save({"state_dict": state, **extra}, f)
    return path


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None,
                    map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`; if ``model`` is given, load its
    ``state_dict`` into it (strictly). Returns the whole dict (``extra`` values included)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a labkit checkpoint (no 'state_dict' key)")
    if model is not None:
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as e:
            first = " ".join(str(e).split())[:400]  # torch's message spans many lines
            hint = (f" (saved cfg: {ckpt['cfg']})" if "cfg" in ckpt else "")
            raise ValueError(f"{path} does not fit this model: {first}; build the model with "
                             f"the architecture it was saved from{hint}") from None
    return ckpt
