"""The one place that decides how a run is sized and where it runs.

Everything else (notebooks, training code, the autograder, data scripts) asks
:func:`get_profile` instead of reading environment variables itself, so a
notebook, a CI job and a grading kernel all agree on profile, device, dataset,
seed and artifacts folder.

Environment variables (all optional):

* ``LABKIT_PROFILE``   ``smoke`` | ``fast`` | ``full`` (default ``fast``; forced to
  ``smoke`` whenever nbgrader is executing the notebook, i.e. ``NBGRADER_EXECUTION``
  is set).
* ``LABKIT_DEVICE``    ``cuda`` | ``mps`` | ``cpu`` (default: best available).
* ``LABKIT_DATASET``   ``digits`` | ``cifar10`` (default: ``cifar10`` when its cache
  has been prepared under the data root and the profile is not ``smoke``, else
  ``digits``, which ships with scikit-learn and never needs a download).
* ``LABKIT_DATA_ROOT`` where prepared datasets live (default ``~/.cache/labkit/data``).
* ``LABKIT_ARTIFACTS`` where labs write checkpoints for later labs (default
  ``./artifacts`` relative to the current directory's course root).
* ``LABKIT_SEED``      integer seed (default 0).
"""
from __future__ import annotations

import functools
import os
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

PROFILES = ("smoke", "fast", "full")
DEVICES = ("cuda", "mps", "cpu")
DATASETS = ("digits", "cifar10", "food11")


class ProfileError(ValueError):
    """A run setting is invalid; the message is one line saying how to fix it."""


@dataclass(frozen=True)
class Sizes:
    """How big a run is under one profile.

    ``train_limit`` / ``test_limit`` cap the number of images (``None`` = all).
    ``width`` multiplies every channel count of the VGG / CNN models.
    ``epochs`` is the base number of epochs of one training run; labs scale it.
    ``channels_last``: whether :func:`labkit.train.fit` trains in the NHWC layout by default (1.3-1.8x
    more images/s for the ``fast`` models on 2 CPU cores, ``python -m bench.layout``; for ``smoke``'s
    tiny models the layout conversions cost more than they save: tests/test_judge.py took 58 s NHWC
    against 50 s NCHW).
    """

    train_limit: int | None
    test_limit: int | None
    width: float
    vgg_depth: int
    epochs: int
    finetune_epochs: int
    batch_size: int
    lr: float
    trials: int  # hyperparameter-search trials (lab 1)
    sweep_points: int  # points per 1-D sweep (lab 1 lr / step size, lab 6 sizes)
    latency_repeats: int
    channels_last: bool = True


SIZES: dict[str, Sizes] = {
    # seconds per notebook on 2 CPU cores: CI, nbval and autograding
    "smoke": Sizes(train_limit=256, test_limit=128, width=0.125, vgg_depth=11, epochs=1,
                   finetune_epochs=1, batch_size=64, lr=0.05, trials=2, sweep_points=2,
                   latency_repeats=3, channels_last=False),
    # minutes per notebook on a laptop CPU
    "fast": Sizes(train_limit=None, test_limit=None, width=0.25, vgg_depth=11, epochs=8,
                  finetune_epochs=4, batch_size=256, lr=0.1, trials=8, sweep_points=3,
                  latency_repeats=20),
    # paper schedules on a GPU (network slimming: VGG-19, 160 epochs; we use a short one-cycle)
    "full": Sizes(train_limit=None, test_limit=None, width=1.0, vgg_depth=19, epochs=40,
                  finetune_epochs=20, batch_size=256, lr=0.1, trials=30, sweep_points=5,
                  latency_repeats=50),
}

# The same profiles on the embedded digits (1,438 training images): what a student gets when CIFAR-10
# is not prepared, and what `make demo` runs (python -m autograder demo). CIFAR-sized batches would
# leave ~5 optimizer steps per epoch and nothing would learn: batch 64 gives ~22 steps per epoch at
# about the same cost per image. `fast` is also trimmed (fewer trials, sweep points and latency
# repeats) so that the six notebooks learn on the digits (lab 3's unpruned VGG >= 90 %) in about
# 5 minutes on 2 CPU cores: more runs on 1,438 images would teach nothing more.
DIGITS_SIZES: dict[str, Sizes] = {
    "fast": replace(SIZES["fast"], batch_size=64, lr=0.05, epochs=8, finetune_epochs=4, trials=4,
                    sweep_points=2, latency_repeats=5),
    "full": replace(SIZES["full"], batch_size=64, lr=0.05),
}
DATA_HINT = "python -m data_scripts cifar10"  # the one command that prepares CIFAR-10


@dataclass(frozen=True)
class Profile:
    """A resolved run: profile name, device, dataset, seed, folders and sizes."""

    name: str
    device: str
    dataset: str
    seed: int
    data_root: Path
    artifacts: Path
    sizes: Sizes = field(repr=False)
    forced_by_nbgrader: bool = False
    note: str = ""  # a warning for the first output (e.g. CIFAR-10 missing, digits used instead)

    def describe(self) -> str:
        """One line for the first output of every notebook."""
        why = " (forced: nbgrader is executing)" if self.forced_by_nbgrader else ""
        return (f"labkit profile={self.name}{why} device={self.device} dataset={self.dataset} "
                f"seed={self.seed} artifacts={self.artifacts}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["data_root"], d["artifacts"] = str(self.data_root), str(self.artifacts)
        return d

    def with_(self, **changes) -> "Profile":
        """A copy with some fields changed (tests use this)."""
        return replace(self, **changes)


def _choose(var: str, value: str, valid: tuple[str, ...]) -> str:
    value = value.strip().lower()
    if value not in valid:
        raise ProfileError(f"{var}={value!r} is not valid; use one of: {', '.join(valid)}")
    return value


def default_device() -> str:
    """``cuda`` if a CUDA GPU is usable, else ``mps`` on Apple silicon, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def default_data_root(environ: Mapping[str, str] | None = None) -> Path:
    """``LABKIT_DATA_ROOT`` of ``environ`` (default ``os.environ``), else ``~/.cache/labkit/data``."""
    env = os.environ if environ is None else environ
    return Path(env.get("LABKIT_DATA_ROOT") or Path.home() / ".cache" / "labkit" / "data")


def resolve(environ: dict[str, str] | None = None) -> Profile:
    """Resolve a profile from ``environ`` (default ``os.environ``) without caching."""
    env = os.environ if environ is None else environ
    forced = bool(env.get("NBGRADER_EXECUTION"))
    name = "smoke" if forced else _choose("LABKIT_PROFILE", env.get("LABKIT_PROFILE") or "fast", PROFILES)

    device = env.get("LABKIT_DEVICE")
    if device:
        device = _choose("LABKIT_DEVICE", device, DEVICES)
        if device != "cpu" and device != default_device():
            raise ProfileError(f"LABKIT_DEVICE={device} but no {device} device is available here; "
                               f"unset it or use LABKIT_DEVICE=cpu")
    else:
        device = default_device()

    data_root = default_data_root(env)
    dataset = env.get("LABKIT_DATASET")
    if dataset:
        dataset = _choose("LABKIT_DATASET", dataset, DATASETS)
    elif name != "smoke" and (data_root / "cifar10" / "cifar10.npz").exists():
        dataset = "cifar10"
    else:
        dataset = "digits"
    note = ""
    if not env.get("LABKIT_DATASET") and name != "smoke" and dataset == "digits":  # the fallback
        note = (f"CIFAR-10 is not prepared (no {data_root / 'cifar10' / 'cifar10.npz'}): this {name} run uses "
                f"the embedded digits instead. Prepare it with `{DATA_HINT}`, then restart the kernel.")

    seed_text = env.get("LABKIT_SEED") or "0"
    try:
        seed = int(seed_text)
    except ValueError:
        raise ProfileError(f"LABKIT_SEED={seed_text!r} is not an integer; use e.g. LABKIT_SEED=0") from None

    sizes = DIGITS_SIZES.get(name, SIZES[name]) if dataset == "digits" else SIZES[name]
    artifacts = Path(env.get("LABKIT_ARTIFACTS") or Path.cwd() / "artifacts").expanduser().resolve()
    return Profile(name=name, device=device, dataset=dataset, seed=seed, data_root=data_root,
                   artifacts=artifacts, sizes=sizes, forced_by_nbgrader=forced, note=note)


@functools.lru_cache(maxsize=1)
def get_profile() -> Profile:
    """The profile of this process, resolved once from the environment."""
    return resolve()


def seed_everything(seed: int | None = None) -> int:
    """Seed Python, NumPy and torch (CPU and CUDA); returns the seed used."""
    import numpy as np
    import torch

    seed = get_profile().seed if seed is None else seed
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed


def setup_notebook(quiet: bool = True) -> Profile:
    """First call of every notebook: resolve the profile, seed, silence warnings, print it.

    Warnings are silenced because nbgrader scores any stderr output of a graded
    cell as a failure, and torch / matplotlib warn about harmless things.
    """
    import logging
    import warnings

    if quiet:
        warnings.filterwarnings("ignore")
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
        logging.getLogger("optuna").setLevel(logging.ERROR)
        logging.getLogger("matplotlib").setLevel(logging.ERROR)
    from labkit.allocator import keep_freed_memory

    keep_freed_memory()  # freed tensors stay in the heap: 1.35-1.65x faster training on a CPU
    prof = get_profile()
    if prof.name == "smoke":
        # Smoke runs are tiny and often run side by side (CI, parallel grading workers): one
        # thread each avoids oversubscribing the cores, which made them several times slower.
        import torch

        torch.set_num_threads(1)
    seed_everything(prof.seed)
    prof.artifacts.mkdir(parents=True, exist_ok=True)
    print(prof.describe())
    if prof.note:  # one highlighted line (bold, yellow background in Jupyter and terminals)
        print(f"\x1b[1;30;43m{prof.note}\x1b[0m")
    return prof
