"""labkit.starters: the models labs 1 and 2 start from (storage, splits, load-or-train)."""
from __future__ import annotations

import pytest
import torch

from labkit import starters
from labkit.artifacts import artifact_name
from labkit.models import build_model
from labkit.profile import resolve


@pytest.fixture()
def smoke(tmp_path):
    return resolve({"LABKIT_PROFILE": "smoke", "LABKIT_DEVICE": "cpu", "LABKIT_ARTIFACTS": str(tmp_path / "art")})


def test_transfer_classes_split_in_halves():
    assert starters.transfer_classes(10) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
    assert starters.transfer_classes(5) == ([0, 1], [2, 3, 4])


def test_save_load_round_trip_is_fp16_on_disk_and_fp32_back(tmp_path):
    torch.manual_seed(0)
    model = build_model("vgg", depth=11, width=0.125, num_classes=3).eval()
    path = starters.save_model(model, tmp_path / "m.pt", "vgg", {"depth": 11, "width": 0.125, "num_classes": 3},
                               test_acc=0.5)
    blob = torch.load(path, weights_only=True)
    assert {v.dtype for v in blob["state_dict"].values() if v.is_floating_point()} == {torch.float16}
    again, info = starters.load_model(path)
    assert info["arch"] == "vgg" and info["test_acc"] == 0.5 and not again.training
    assert all(p.dtype == torch.float32 for p in again.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        # fp16 storage: weights rounded to 11 significant bits, outputs agree to about 1e-3 relative
        torch.testing.assert_close(again(x), model(x), rtol=2e-2, atol=2e-2)


def test_load_model_refuses_a_file_that_is_not_a_starter(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a labkit starter"):
        starters.load_model(tmp_path / "x.pt")


def test_kd_task_splits_source_and_target_classes(smoke):
    task = starters.kd_task(smoke)
    assert len(task.src_train.classes) + len(task.tgt_train.classes) == 10
    assert int(task.tgt_train.labels.max()) == len(task.tgt_train.classes) - 1  # relabelled 0..K-1
    assert task.tgt_test.classes == task.tgt_train.classes


def test_unknown_starter_says_which_exist(smoke):
    with pytest.raises(KeyError, match="lab1/source_backbone"):
        starters.train_starter("lab9", "nothing", smoke)


def test_load_or_train_trains_once_then_uses_the_copy(smoke, capsys, monkeypatch):
    calls = []
    real = starters.STARTERS[("lab2", "teacher_scratch")]

    def counted(prof):
        calls.append(prof.name)
        return real.build(prof)

    monkeypatch.setitem(starters.STARTERS, ("lab2", "teacher_scratch"),
                        starters.Starter(real.lab, real.name, real.notebook, real.what, counted))
    model, info = starters.load_or_train("lab2", "teacher_scratch", smoke)
    out = capsys.readouterr().out
    assert "training it here" in out and calls == ["smoke"]
    assert (smoke.artifacts / artifact_name("lab2", "teacher_scratch", smoke)).is_file()
    assert info["kwargs"]["num_classes"] == 5 and 0.0 <= info["test_acc"] <= 1.0
    again, _ = starters.load_or_train("lab2", "teacher_scratch", smoke)
    assert calls == ["smoke"] and "from your own run" in capsys.readouterr().out
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_shipped_copy_is_used_when_there_is_no_own_run(smoke, tmp_path, capsys, monkeypatch):
    shipped = tmp_path / "course" / "checkpoints"
    shipped.mkdir(parents=True)
    model = build_model("resnet18", small_input=False, num_classes=5)
    starters.save_model(model, shipped / artifact_name("lab1", "source_backbone", smoke), "resnet18",
                        {"small_input": False, "num_classes": 5}, test_acc=0.8)
    monkeypatch.chdir(tmp_path / "course")
    _, info = starters.load_or_train("lab1", "source_backbone", smoke)
    out = capsys.readouterr().out
    assert "the copy shipped with the assignment" in out and "80.0%" in out and info["test_acc"] == 0.8


def test_lab8_teacher_trains_on_the_capstone_training_split_only(smoke, monkeypatch):
    from labkit.capstone import capstone_data

    split = capstone_data(smoke)
    seen = []
    real_fit = starters._fit

    def spy(model, tr, te, epochs, lr, prof, desc):
        seen.append((tr, te, epochs))
        return real_fit(model, tr, te, epochs, lr, prof, desc)

    monkeypatch.setattr(starters, "_fit", spy)
    path = starters.train_starter("lab8", "teacher", smoke)
    assert path.name == artifact_name("lab8", "teacher", smoke)
    (tr, te, epochs), = seen
    assert epochs == starters.STARTER_SIZES["smoke"].capstone_epochs == 1
    assert torch.equal(tr.labels, split.train.labels) and torch.equal(tr.images, split.train.images)
    assert torch.equal(te.images, split.val.images)          # accuracy measured on validation, never on test
    model, info = starters.load_model(path)
    assert (info["arch"], info["kwargs"]) == (*starters.teacher_arch(smoke)[:1], {**starters.teacher_arch(smoke)[1],
                                                                                  "num_classes": 10})
    assert info["evaluated_on"] == "capstone validation split" and 0.0 <= info["test_acc"] <= 1.0
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
