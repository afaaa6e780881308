"""labkit.profile: resolving a run from environment dicts (never the real environment)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit import profile
from labkit.profile import SIZES, ProfileError, resolve, seed_everything


def env(**kw: str) -> dict[str, str]:
    return {"LABKIT_DATA_ROOT": "/nonexistent/labkit-data", **kw}


def test_defaults():
    p = resolve(env())
    assert (p.name, p.dataset, p.seed, p.forced_by_nbgrader) == ("fast", "digits", 0, False)
    assert p.sizes.epochs == SIZES["fast"].epochs and p.sizes.batch_size == 64  # digits: small batches
    assert p.device == profile.default_device()
    assert p.artifacts == (Path.cwd() / "artifacts").resolve()


@pytest.mark.parametrize("value", ["autograde", "validate"])
def test_nbgrader_execution_forces_smoke(value):
    p = resolve(env(NBGRADER_EXECUTION=value, LABKIT_PROFILE="full"))
    assert p.name == "smoke" and p.forced_by_nbgrader and p.sizes == SIZES["smoke"]
    assert "forced: nbgrader is executing" in p.describe()


def test_explicit_settings(tmp_path):
    p = resolve(env(LABKIT_PROFILE=" FULL ", LABKIT_DEVICE="cpu", LABKIT_DATASET="cifar10",
                    LABKIT_SEED="7", LABKIT_ARTIFACTS=str(tmp_path)))
    assert (p.name, p.device, p.dataset, p.seed, p.artifacts) == ("full", "cpu", "cifar10", 7, tmp_path)
    assert p.as_dict()["artifacts"] == str(tmp_path)
    assert p.with_(seed=3).seed == 3 and p.seed == 7


def test_cifar10_chosen_when_its_cache_exists(tmp_path):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar10.npz").write_bytes(b"")
    assert resolve({"LABKIT_DATA_ROOT": str(tmp_path)}).dataset == "cifar10"
    # smoke runs stay on the bundled digits so they never need the cache
    assert resolve({"LABKIT_DATA_ROOT": str(tmp_path), "LABKIT_PROFILE": "smoke"}).dataset == "digits"


@pytest.mark.parametrize("var, value, valid", [
    ("LABKIT_PROFILE", "huge", "smoke, fast, full"),
    ("LABKIT_DEVICE", "tpu", "cuda, mps, cpu"),
    ("LABKIT_DATASET", "mnist", "digits, cifar10, food11"),
])
def test_unknown_values_list_the_valid_ones(var, value, valid):
    with pytest.raises(ProfileError) as info:
        resolve(env(**{var: value}))
    msg = str(info.value)
    assert "\n" not in msg and var in msg and repr(value) in msg and valid in msg


def test_bad_seed():
    with pytest.raises(ProfileError, match="LABKIT_SEED='x1' is not an integer"):
        resolve(env(LABKIT_SEED="x1"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_rejected():
    with pytest.raises(ProfileError, match="no cuda device is available"):
        resolve(env(LABKIT_DEVICE="cuda"))


def test_seed_everything_repeats_all_generators():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    assert seed_everything(5) == 5
    a = draw()
    seed_everything(5)
    assert draw() == a


def test_profile_error_is_a_value_error():
    assert issubclass(ProfileError, ValueError)


def test_small_embedded_dataset_gets_small_batches(tmp_path):
    from labkit.profile import DIGITS_SIZES, SIZES, resolve

    env = {"LABKIT_PROFILE": "fast", "LABKIT_DATASET": "digits", "LABKIT_DATA_ROOT": str(tmp_path)}
    prof = resolve(env)
    assert prof.sizes == DIGITS_SIZES["fast"]
    assert prof.sizes.batch_size == 64 < SIZES["fast"].batch_size
    assert prof.sizes.width == SIZES["fast"].width  # the same models, fewer repetitions
    assert resolve({"LABKIT_PROFILE": "smoke"}).sizes == SIZES["smoke"]
    assert resolve(dict(env, LABKIT_DATASET="cifar10")).sizes == SIZES["fast"]


def test_fallback_to_digits_is_announced_with_the_command_that_prepares_cifar10(tmp_path, capsys, monkeypatch):
    from labkit.profile import DATA_HINT

    note = resolve({"LABKIT_DATA_ROOT": str(tmp_path)}).note   # fast, no cache: the fallback
    assert "\n" not in note and "CIFAR-10 is not prepared" in note and DATA_HINT in note
    # no note when digits is chosen (smoke, or LABKIT_DATASET), or when the cache exists
    assert resolve({"LABKIT_DATA_ROOT": str(tmp_path), "LABKIT_PROFILE": "smoke"}).note == ""
    assert resolve({"LABKIT_DATA_ROOT": str(tmp_path), "LABKIT_DATASET": "digits"}).note == ""
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar10.npz").write_bytes(b"")
    assert resolve({"LABKIT_DATA_ROOT": str(tmp_path)}).note == ""
    # the notebook's first output: the profile line, then the note as one highlighted line
    fallback = resolve({"LABKIT_DATA_ROOT": str(tmp_path / "none"), "LABKIT_ARTIFACTS": str(tmp_path / "a")})
    monkeypatch.setattr(profile, "get_profile", lambda: fallback)
    profile.setup_notebook(quiet=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == fallback.describe() and lines[1] == f"\x1b[1;30;43m{fallback.note}\x1b[0m" and len(lines) == 2
