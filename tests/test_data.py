"""labkit.data: datasets, caches, derived datasets, augmentation and the Loader.

Loaders are exercised on caches that `python -m data_scripts` built from the tiny
fixture archives in each real format (see tests/conftest.py), not on mocks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_scripts import fixtures
from labkit import data as D
from labkit.profile import SIZES, resolve


def _toy(n_per_class: list[int], hw: int = 4) -> D.ImageData:
    """A dataset whose image i is filled with the value i % 256 (so samples are identifiable)."""
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(n_per_class)])
    images = (torch.arange(len(labels)) % 256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, hw, hw).clone()
    return D.ImageData(images, labels, [f"c{c}" for c in range(len(n_per_class))], "toy")


# --------------------------------------------------------------------------- digits
def test_digits32_shapes_split_and_determinism():
    train, test = D.load_digits32()
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 32, 32)
    assert train.labels.dtype == torch.int64 and test.labels.dtype == torch.int64
    assert len(train) + len(test) == 1797 and train.classes == [str(d) for d in range(10)]
    assert train.name == test.name == "digits"
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    # stratified 80/20: every class is split in the same proportion (within one image)
    frac = test.counts().double() / (train.counts() + test.counts()).double()
    assert torch.all((frac - 0.2).abs() < 0.01)
    train2, test2 = D.load_digits32()
    assert torch.equal(train.images, train2.images) and torch.equal(test.labels, test2.labels)


def test_mean_std_constants_match_the_data():
    train, _ = D.load_digits32()
    x = train.images.float() / 255
    mean, std = D.MEAN_STD["digits"]
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.tensor(mean), atol=1e-3)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.tensor(std), atol=1e-3)
    assert set(D.MEAN_STD) == {"digits", "cifar10", "food11"}


def test_imagedata_rejects_bad_tensors():
    with pytest.raises(ValueError, match="uint8"):
        D.ImageData(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long), ["a"], "x")
    with pytest.raises(ValueError, match="int64"):
        D.ImageData(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), ["a"], "x")
    with pytest.raises(ValueError, match="0..0"):
        D.ImageData(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a"], "x")


# --------------------------------------------------------------------------- subset / limit
def test_subset_by_list_tensor_and_mask():
    d = _toy([3, 3])
    a = d.subset([5, 0])
    assert a.labels.tolist() == [1, 0] and a.images[:, 0, 0, 0].tolist() == [5, 0]
    assert torch.equal(d.subset(torch.tensor([5, 0])).images, a.images)
    assert d.subset(d.labels == 1).labels.tolist() == [1, 1, 1]
    assert a.classes == d.classes and a.name == "toy"


def test_limit_is_stratified_and_deterministic():
    d = _toy([60, 30, 10])
    cut = d.limit(50, seed=0)
    assert len(cut) == 50 and cut.counts().tolist() == [30, 15, 5]
    assert torch.equal(cut.images, d.limit(50, seed=0).images)
    assert not torch.equal(cut.images, d.limit(50, seed=1).images)
    # rounding: 7 of 3 equal classes -> 3, 2, 2 (largest remainder, lower index first)
    assert _toy([10, 10, 10]).limit(7).counts().tolist() == [3, 2, 2]
    assert d.limit(None) is d and d.limit(1000) is d
    ids = cut.images[:, 0, 0, 0].long()
    assert torch.all(ids[1:] > ids[:-1])  # original order kept, no repeats


# --------------------------------------------------------------------------- skewed / class_subset
def test_skewed_fraction_and_count():
    d = _toy([20, 20, 20])
    s = D.skewed(d, minority=[1], keep=0.25, seed=0)
    assert s.counts().tolist() == [20, 5, 20]
    s2 = D.skewed(d, minority=[0, 2], keep=3, seed=0)
    assert s2.counts().tolist() == [3, 20, 3]
    assert torch.equal(s.images, D.skewed(d, [1], 0.25, seed=0).images)
    assert not torch.equal(s.images, D.skewed(d, [1], 0.25, seed=5).images)
    assert D.skewed(d, [1], keep=100).counts().tolist() == [20, 20, 20]
    with pytest.raises(ValueError, match="not in 0..2"):
        D.skewed(d, [3], 0.5)
    with pytest.raises(ValueError, match="fraction"):
        D.skewed(d, [1], 1.5)


def test_class_subset_relabels_in_given_order():
    d = _toy([2, 3, 4])
    s = D.class_subset(d, [2, 0])
    assert s.classes == ["c2", "c0"] and len(s) == 6
    assert s.counts().tolist() == [4, 2]
    # image ids 0,1 were class 0 -> now label 1; ids 5..8 were class 2 -> now 0
    ids = s.images[:, 0, 0, 0].tolist()
    assert dict(zip(ids, s.labels.tolist())) == {0: 1, 1: 1, 5: 0, 6: 0, 7: 0, 8: 0}
    kept = D.class_subset(d, [2, 0], relabel=False)
    assert kept.classes == d.classes and sorted(set(kept.labels.tolist())) == [0, 2]
    with pytest.raises(ValueError, match="repeats"):
        D.class_subset(d, [1, 1])


# --------------------------------------------------------------------------- augmentation
def _ramp(b: int = 16, h: int = 8, w: int = 8) -> torch.Tensor:
    """Images with no zero pixel and no symmetry: value = 1 + 3*row + col (+ image index)."""
    base = 1 + 3 * torch.arange(h)[:, None] + torch.arange(w)[None, :]
    return (base[None, None] + torch.arange(b)[:, None, None, None]).expand(b, 3, h, w).to(torch.uint8).clone()


def test_augment_shape_dtype_and_seeded_determinism():
    x = _ramp()
    a = D.augment_batch(x, generator=torch.Generator().manual_seed(3))
    b = D.augment_batch(x, generator=torch.Generator().manual_seed(3))
    c = D.augment_batch(x, generator=torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == torch.uint8 and a.device == x.device
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(D.augment_batch(x, pad=0, flip=False), x)


def test_flip_really_flips():
    x = _ramp(b=64)
    out = D.augment_batch(x, pad=0, flip=True, generator=torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert torch.all(same ^ flipped)  # each image is either untouched or mirrored
    assert 10 < int(flipped.sum()) < 54  # and both happen (p = 1/2 each)


def test_crop_shifts_content_and_pads_with_zeros():
    pad, x = 2, _ramp(b=64)
    out = D.augment_batch(x, pad=pad, flip=False, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    shifts = []
    for i in range(len(x)):  # a test may loop: find the window each output was cut from
        hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                if torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert len(hits) == 1
        shifts.append(hits[0])
    assert len(set(shifts)) > 10  # many different offsets occur
    moved = [i for i, s in enumerate(shifts) if s != (pad, pad)]
    assert moved and all(int((out[i] == 0).sum()) > 0 for i in moved)  # shifted-in border is zeros
    assert all(int((out[i] == 0).sum()) == 0 for i, s in enumerate(shifts) if s == (pad, pad))


def test_normalize():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    y = D.normalize(x, (0.5, 0.5, 0.5), (0.5, 0.25, 1.0))
    assert y.dtype == torch.float32 and y.shape == (1, 3, 1, 2)
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([-1.0, -2.0, -0.5]))
    assert torch.allclose(y[0, :, 0, 1], torch.tensor([1.0, 2.0, 0.5]))


# --------------------------------------------------------------------------- Loader
def _ids(batches) -> list[int]:
    """Recover each sample's id from an unaugmented, normalised batch (toy image i holds i)."""
    out = []
    for x, _ in batches:
        out += x[:, 0, 0, 0].tolist()
    return out


def test_loader_covers_each_sample_once_and_is_deterministic():
    d = _toy([25, 25, 25, 25])  # ids 0..99 fit in uint8
    mean, std = D.mean_std(d)
    loader = D.Loader(d, batch_size=16, train=True, device="cpu", augment=False, seed=7, drop_last=False)
    assert len(loader) == 7 and loader.num_classes == 4 and loader.dataset_size == 100
    assert loader.classes == d.classes
    e0 = list(loader)
    x, y = e0[0]
    assert x.dtype == torch.float32 and x.shape == (16, 3, 4, 4) and y.dtype == torch.int64
    assert x.device.type == "cpu" and y.device.type == "cpu"
    ids0 = [round(v * std[0] * 255 + mean[0] * 255) for v in _ids(e0)]
    assert sorted(ids0) == list(range(100))  # each sample exactly once
    assert torch.equal(torch.cat([b[1] for b in e0]), d.labels[torch.tensor(ids0)])  # labels travel along
    e1 = list(loader)
    assert _ids(e1) != _ids(e0)  # reshuffled every epoch
    again = D.Loader(d, batch_size=16, train=True, device="cpu", augment=False, seed=7, drop_last=False)
    assert _ids(list(again)) == _ids(e0) and _ids(list(again)) == _ids(e1)  # same (seed, epoch) -> same order


def test_loader_drop_last_and_eval_order():
    d = _toy([25, 25, 25, 25])
    train = D.Loader(d, batch_size=16, train=True, device="cpu")
    assert train.drop_last and train.augment and len(train) == 6
    assert all(len(y) == 16 for _, y in train)
    ev = D.Loader(d, batch_size=16, train=False, device="cpu")
    assert not ev.drop_last and not ev.augment and len(ev) == 7
    labels = torch.cat([y for _, y in ev])
    assert torch.equal(labels, d.labels)  # evaluation keeps dataset order
    assert not D.Loader(d, batch_size=256, train=True, device="cpu").drop_last  # one partial batch only
    with pytest.raises(ValueError, match="batch_size"):
        D.Loader(d, batch_size=0, train=True, device="cpu")


def test_augmented_loader_is_deterministic_by_seed():
    train, _ = D.load_digits32()
    small = train.limit(100)
    a = [x for x, _ in D.Loader(small, 32, train=True, device="cpu", seed=1)]
    b = [x for x, _ in D.Loader(small, 32, train=True, device="cpu", seed=1)]
    c = [x for x, _ in D.Loader(small, 32, train=True, device="cpu", seed=2)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loader_on_cuda_matches_cpu():
    train, _ = D.load_digits32()
    small = train.limit(64)
    cpu = [x for x, _ in D.Loader(small, 32, train=True, device="cpu", seed=3)]
    gpu = [x for x, _ in D.Loader(small, 32, train=True, device="cuda", seed=3)]
    assert gpu[0].device.type == "cuda"
    assert all(torch.allclose(u, v.cpu()) for u, v in zip(cpu, gpu))


def test_loaders_use_profile_defaults():
    from labkit.profile import get_profile

    train, test = D.load_digits32()
    tr, te = D.loaders(train.limit(200), test.limit(100), device="cpu")
    assert tr.train and not te.train and tr.batch_size == get_profile().sizes.batch_size
    assert tr.seed == get_profile().seed


# --------------------------------------------------------------------------- prepared caches
def test_load_cifar10_from_pickle_fixture(prepared_root: Path):
    train, test = D.load_cifar10(prepared_root)
    expected = fixtures.cifar10_arrays()
    for got, split in ((train, "train"), (test, "test")):
        assert got.images.dtype == torch.uint8 and got.labels.dtype == torch.int64
        assert got.classes == D.CIFAR10_CLASSES and got.name == "cifar10"
        assert np.array_equal(got.images.numpy(), expected[split][0])  # exact: no lossy step
        assert np.array_equal(got.labels.numpy(), expected[split][1])


def test_load_cifar10_from_image_folder_fixture(tmp_path: Path, fixture_archives):
    from data_scripts.__main__ import main

    assert main(["cifar10", "--from", str(fixture_archives["cifar10-folder"]), "--root", str(tmp_path)]) == 0
    train, test = D.load_cifar10(tmp_path)
    expected = fixtures.cifar10_arrays()
    assert train.images.shape == (30, 3, 32, 32) and test.images.shape == (20, 3, 32, 32)
    assert np.array_equal(train.labels.numpy(), expected["train"][1])
    err = (train.images.float() - torch.from_numpy(expected["train"][0]).float()).abs().mean()
    assert err < 3  # JPEG at quality 95 of smooth images: a few grey levels at most


def test_load_food11_fixture(prepared_root: Path):
    train, valid, test = D.load_food11(prepared_root, size=32)
    for d in (train, valid, test):
        assert d.images.shape == (11, 3, 32, 32) and d.classes == D.FOOD11_CLASSES
        assert d.labels.tolist() == list(range(11))
    with pytest.raises(FileNotFoundError, match="--size 64"):
        D.load_food11(prepared_root, size=64)


def test_missing_cache_says_how_to_prepare(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="python -m data_scripts cifar10 --from ARCHIVE"):
        D.load_cifar10(tmp_path)


def test_cache_write_is_atomic_and_corrupt_cache_is_reported(tmp_path: Path):
    x = np.zeros((2, 3, 4, 4), np.uint8)
    path = D.write_cache(tmp_path / "cifar10" / "cifar10.npz", {"train": (x, [0, 1]), "test": (x, [1, 0])},
                         ["a", "b"])
    assert [p.name for p in path.parent.iterdir()] == ["cifar10.npz"]  # no temp file left
    assert D.load_cifar10(tmp_path)[1].labels.tolist() == [1, 0]
    with pytest.raises(ValueError, match="uint8"):
        D.write_cache(tmp_path / "bad.npz", {"train": (x.astype(np.float32), [0, 1])}, ["a", "b"])
    assert not (tmp_path / "bad.npz").exists() and not list(tmp_path.glob(".bad*"))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable cifar10 cache"):
        D.load_cifar10(tmp_path)


def test_load_dataset_applies_profile_limits(prepared_root: Path):
    prof = resolve({"LABKIT_PROFILE": "smoke", "LABKIT_DEVICE": "cpu"})
    train, test = D.load_dataset(profile=prof)
    assert prof.dataset == "digits" and len(train) == SIZES["smoke"].train_limit
    assert len(test) == SIZES["smoke"].test_limit
    assert torch.all(train.counts() >= 24)  # stratified: ~25.6 per class
    full = resolve({"LABKIT_PROFILE": "fast", "LABKIT_DEVICE": "cpu", "LABKIT_DATA_ROOT": str(prepared_root)})
    assert full.dataset == "cifar10"  # the profile picks cifar10 once its cache exists
    train, test = D.load_dataset(profile=full)
    assert (len(train), len(test)) == (30, 20)
    with pytest.raises(ValueError, match="unknown dataset"):
        D.load_dataset("mnist", profile=prof)


def test_load_dataset_food11_gives_train_and_evaluation(tmp_path: Path, prepared_root: Path):
    # load_food11 defaults to size 64: link the size-32 cache there so load_dataset finds it
    (tmp_path / "food11").mkdir()
    (tmp_path / "food11" / "food11-64.npz").symlink_to(prepared_root / "food11" / "food11-32.npz")
    prof = resolve({"LABKIT_PROFILE": "fast", "LABKIT_DEVICE": "cpu", "LABKIT_DATA_ROOT": str(tmp_path),
                    "LABKIT_DATASET": "food11"})
    train, test = D.load_dataset(profile=prof)
    _, _, evaluation = D.load_food11(tmp_path)
    assert torch.equal(test.images, evaluation.images) and len(train) == 11
