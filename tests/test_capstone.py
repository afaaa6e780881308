"""labkit.capstone: the budget's measurement, model-spec checks and lab 8's data splits."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from labkit import capstone, data
from labkit.metrics import count_params, flops
from labkit.models import build_model
from labkit.profile import resolve


def _profile(tmp_path: Path):
    return resolve({"LABKIT_PROFILE": "smoke", "LABKIT_DEVICE": "cpu", "LABKIT_ARTIFACTS": str(tmp_path / "art")})


@pytest.mark.parametrize("arch, kwargs", [
    ("vgg", {"cfg": [8, "M", 12, "M", 16, 16, "M"], "num_classes": 10}),
    ("mobilenet_v1", {"width": 0.25, "num_classes": 10}),
    ("simple_cnn", {"width": 8, "depth": 3, "num_classes": 10}),
])
def test_measure_equals_the_real_models_counts(arch, kwargs):
    model = build_model(arch, **kwargs)
    cost = capstone.measure(arch, kwargs)
    assert cost == capstone.Cost(params=count_params(model), flops=flops(model, capstone.INPUT_SIZE))
    assert cost.params > 0 and cost.flops > 0


def test_measure_of_an_enormous_model_allocates_nothing():
    cost = capstone.measure("mobilenet_v1", {"width": 10 ** 5, "num_classes": 10})  # ~10^14 parameters
    assert cost.params > 10 ** 12 and not cost.within(capstone.BUDGET)


def test_cost_within_is_inclusive():
    b = capstone.Budget(max_params=10, max_flops=100)
    assert capstone.Cost(10, 100).within(b)
    assert not capstone.Cost(11, 100).within(b) and not capstone.Cost(10, 101).within(b)


@pytest.mark.parametrize("arch, kwargs, match", [
    ("resnet1000", {}, "unknown arch"),
    (["vgg"], {}, "unknown arch"),
    ("vgg", [("depth", 11)], "kwargs must be a dict"),
    ("vgg", {"depth": 10 ** 6}, "larger than"),
    ("vgg", {"width": float("nan")}, "not a finite number"),
    ("vgg", {"cfg": list(range(1000))}, "items"),
    ("vgg", {"cfg": [[8, 8]]}, "only numbers, strings"),
    ("vgg", {"cfg": torch.ones(3)}, "only numbers, strings"),
    ("vgg", {"name": "x" * 100}, "characters"),
    ("resnet18", {"weights": "IMAGENET1K_V1"}, "must be None"),
    ("vgg", {"num_classes": 7}, "the task has 10 classes"),
    ("vgg", {"depth": 12}, "failed"),
    ("simple_cnn", {"colour": True}, "failed"),
])
def test_bad_specs_raise_one_line(arch, kwargs, match):
    with pytest.raises(capstone.ModelSpecError, match=match) as err:
        capstone.measure(arch, kwargs)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


def test_check_spec_returns_a_plain_copy():
    kwargs = {"width": 0.5, "num_classes": 10}
    arch, out = capstone.check_spec("mobilenet_v1", kwargs)
    assert (arch, out) == ("mobilenet_v1", kwargs) and out is not kwargs


def _toy_test(n_per_class=(7, 10, 4)) -> data.ImageData:
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(n_per_class)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))]
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
    return data.ImageData(images, labels, ["a", "b", "c"], "toy")


def test_split_halves_are_disjoint_stratified_sorted_and_seeded():
    test = _toy_test()
    public, hidden = capstone.split_test(test, seed=5)
    assert public.dtype == hidden.dtype == torch.int64
    assert torch.equal(public, public.sort().values) and torch.equal(hidden, hidden.sort().values)
    assert not set(public.tolist()) & set(hidden.tolist())
    assert sorted(public.tolist() + hidden.tolist()) == list(range(len(test)))
    for c, n in enumerate((7, 10, 4)):
        assert int((test.labels[public] == c).sum()) == n // 2          # the odd image goes to the hidden half
        assert int((test.labels[hidden] == c).sum()) == n - n // 2
    again = capstone.split_test(test, seed=5)
    assert torch.equal(again[0], public) and torch.equal(again[1], hidden)
    other = capstone.split_test(test, seed=6)
    assert not torch.equal(other[0], public)


def test_save_and_load_split_round_trip(tmp_path):
    part = _toy_test().subset(torch.arange(5))
    path = capstone.save_split(tmp_path / capstone.public_test_name("toy"), part, "toy")
    assert path.name == "lab8-public_test-toy.npz" and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    back = capstone.load_split(path)
    assert torch.equal(back.images, part.images) and torch.equal(back.labels, part.labels)
    assert back.labels.dtype == torch.int64 and back.classes == part.classes and back.name == "toy"


def test_capstone_data_holds_out_a_stratified_validation_set(tmp_path):
    prof = _profile(tmp_path)
    d = capstone.capstone_data(prof, search=[])
    train_all, _ = data.load_dataset(profile=prof)
    assert len(d.train) + len(d.val) == len(train_all)
    assert "development split" in d.source
    for c in range(len(train_all.classes)):
        n = int((train_all.labels == c).sum())
        if n:
            assert int((d.val.labels == c).sum()) == max(1, round(capstone.VAL_FRACTION * n))
    assert len(d.test) <= prof.sizes.test_limit


def test_capstone_data_uses_the_shipped_public_half_and_says_so(tmp_path):
    prof = _profile(tmp_path)
    shipped = tmp_path / "checkpoints"
    shipped.mkdir()
    _, test = data.load_dataset(profile=prof)
    part = test.subset(torch.arange(10))
    capstone.save_split(shipped / capstone.public_test_name(prof.dataset), part, prof.dataset)
    d = capstone.capstone_data(prof, search=[tmp_path / "nowhere", shipped])
    assert "public test half" in d.source and str(shipped) in d.source
    assert torch.equal(d.test.images, part.images) and torch.equal(d.test.labels, part.labels)
