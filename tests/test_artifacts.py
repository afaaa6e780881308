"""labkit.artifacts: where a lab's checkpoint is written and where later labs find it."""
from __future__ import annotations

import json

import pytest

from labkit.artifacts import artifact_name, artifact_path, find_artifact
from labkit.profile import resolve


@pytest.fixture
def prof(tmp_path):
    return resolve({"LABKIT_PROFILE": "smoke", "LABKIT_DEVICE": "cpu", "LABKIT_DATASET": "digits",
                    "LABKIT_ARTIFACTS": str(tmp_path / "artifacts")})


def test_name_and_path(prof, tmp_path):
    assert artifact_name("lab3", "vgg_sparse", prof) == "lab3-vgg_sparse-smoke-digits.pt"
    path = artifact_path("lab3", "vgg_sparse", prof)
    assert path == tmp_path / "artifacts" / "lab3-vgg_sparse-smoke-digits.pt"
    assert path.parent.is_dir()  # created so the lab can write into it


def test_own_run_is_preferred_over_shipped_copy(prof, tmp_path, capsys):
    shipped = tmp_path / "checkpoints"
    shipped.mkdir()
    (shipped / "lab4-pruned50-smoke-digits.pt").write_bytes(b"shipped")
    assert find_artifact("lab4", "pruned50", prof, search=[shipped]) == shipped / "lab4-pruned50-smoke-digits.pt"
    assert "shipped with the assignment" in capsys.readouterr().out
    own = artifact_path("lab4", "pruned50", prof)
    own.write_bytes(b"own")
    assert find_artifact("lab4", "pruned50", prof, search=[shipped]) == own
    assert "your own run" in capsys.readouterr().out


def test_default_search_is_checkpoints_in_cwd(prof, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    target = tmp_path / "checkpoints" / "lab3-vgg_sparse-smoke-digits.pt"
    target.write_bytes(b"x")
    assert find_artifact("lab3", "vgg_sparse", prof) == target


def test_missing_artifact_names_the_lab_to_run(prof, tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        find_artifact("lab3", "vgg_sparse", prof, search=[tmp_path / "nowhere"])
    msg = str(info.value)
    assert "lab3-vgg_sparse-smoke-digits.pt not found" in msg
    assert "run lab3 first" in msg and "profile=smoke, dataset=digits" in msg
    assert "\n" not in msg


def test_other_profile_does_not_match(prof, tmp_path):
    artifact_path("lab3", "vgg_sparse", prof).write_bytes(b"x")
    fast = prof.with_(name="fast")
    with pytest.raises(FileNotFoundError, match="profile=fast"):
        find_artifact("lab3", "vgg_sparse", fast, search=[])


def test_record_headline_merges_labs(prof):
    from labkit.artifacts import HEADLINES, record_headline

    path = record_headline("lab1", prof, test_acc=0.912345678, note="x")
    record_headline("lab2", prof, params=1234)
    record_headline("lab1", prof, test_acc=0.5)  # a rerun replaces the lab's entry
    data = json.loads(path.read_text(encoding="utf-8"))
    assert path.name == HEADLINES and path.parent == prof.artifacts
    assert data == {"lab1": {"profile": "smoke", "dataset": "digits", "test_acc": 0.5},
                    "lab2": {"profile": "smoke", "dataset": "digits", "params": 1234}}
    assert sorted(p.name for p in prof.artifacts.iterdir()) == [HEADLINES]  # no temp file left
    record_headline("lab3", prof, acc=0.123456, diff=2.86102e-06, seconds=1234.5678)
    lab3 = json.loads(path.read_text(encoding="utf-8"))["lab3"]
    # 5 significant digits: a tiny error (lab 7's BN folding) is not rounded to 0
    assert (lab3["acc"], lab3["diff"], lab3["seconds"]) == (0.12346, 2.861e-06, 1234.6)
