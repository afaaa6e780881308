"""The capstone's grading (:mod:`autograder.capstone`, :mod:`autograder.model_eval`).

Every bad ``model.pt`` a student could submit gets zero model points and one exact problem line;
a good one is scored on the hidden half exactly as sklearn scores its predictions; the
leaderboard ranks models within budget. The whole pipeline (notebook + model, a class of them)
is graded in ``tests/test_autograder_e2e.py``.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import capstone_fixtures as cf
from autograder import capstone, model_eval
from autograder.release import scan_for_leaks
from labkit import capstone as lc
from labkit import data
from labkit.models import build_model

LAB = "lab8_capstone"


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("capstone-course")
    (root / "source" / LAB).mkdir(parents=True)
    capstone.build(root, LAB, "digits", [root / "source" / LAB], seed=7, log=lambda m: None)
    return root


@pytest.fixture(scope="module")
def good_model() -> torch.nn.Module:
    return cf.train_good()


def _hidden(course: Path) -> tuple[np.ndarray, np.ndarray]:
    f = capstone.folder(course, LAB)
    return np.load(f / "hidden_images-digits.npy"), np.load(f / "hidden_labels-digits.npy")


def _expected(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import f1_score

    mean, std = data.MEAN_STD["digits"]
    with torch.inference_mode():
        preds = model(data.normalize(torch.from_numpy(images), mean, std)).argmax(1).numpy()
    return float((preds == labels).mean()), float(f1_score(labels, preds, average="macro", labels=list(range(10)),
                                                           zero_division=0))


# ----------------------------------------------------------------------------- release

def test_split_halves_are_disjoint_stratified_and_seeded(course: Path) -> None:
    test = data.load_digits32()[1]
    pub, hid = lc.split_test(test, 7)
    assert len(pub) + len(hid) == len(test) and not set(pub.tolist()) & set(hid.tolist())
    for c in range(10):  # each class split in half, the odd image to the hidden half
        n = int((test.labels == c).sum())
        assert int((test.labels[pub] == c).sum()) == n // 2
    assert torch.equal(pub, lc.split_test(test, 7)[0]) and not torch.equal(pub, lc.split_test(test, 8)[0])
    public = lc.load_split(course / "source" / LAB / "checkpoints" / lc.public_test_name("digits"))
    assert torch.equal(public.images, test.images[pub]) and torch.equal(public.labels, test.labels[pub])
    images, labels = _hidden(course)
    assert np.array_equal(images, test.images[hid].numpy()) and np.array_equal(labels, test.labels[hid].numpy())


def test_a_second_release_keeps_the_seed_and_the_instructors_tiers(course: Path, tmp_path: Path) -> None:
    cfg = capstone.read_config(course, LAB)
    assert cfg["seed"] == 7 and cfg["dataset"] == "digits" and cfg["tiers"] == capstone.DEFAULT_TIERS
    edited = dict(cfg, tiers=[[0.5, 10]])
    (capstone.folder(course, LAB) / "config.json").write_text(json.dumps(edited))
    capstone.build(course, LAB, "digits", [tmp_path], seed=99, log=lambda m: None)
    again = capstone.read_config(course, LAB)
    assert again["seed"] == 7 and again["tiers"] == [[0.5, 10]]
    (capstone.folder(course, LAB) / "config.json").write_text(capstone.config_text(cfg))


def test_cifar10_halves_from_the_prepared_cache(tmp_path: Path, monkeypatch) -> None:
    """``release --profile fast --dataset cifar10``'s split, on a small cache in the real format."""

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 3, 32, 32), dtype=np.uint8)
    labels = np.repeat(np.arange(10), 4)
    data.write_cache(tmp_path / "data" / "cifar10" / "cifar10.npz",
                     {"train": (images, labels), "test": (images[::-1].copy(), labels)}, [f"c{i}" for i in range(10)])
    monkeypatch.setenv("LABKIT_DATA_ROOT", str(tmp_path / "data"))
    course = tmp_path / "course"
    capstone.build(course, LAB, "cifar10", [tmp_path / "release"], seed=3, log=lambda m: None)
    public = lc.load_split(tmp_path / "release" / "checkpoints" / lc.public_test_name("cifar10"))
    hidden = np.load(capstone.folder(course, LAB) / "hidden_labels-cifar10.npy")
    assert len(public) == len(hidden) == 20 and public.name == "cifar10"
    assert np.bincount(hidden, minlength=10).tolist() == [2] * 10
    assert capstone.read_config(course, LAB)["dataset"] == "cifar10"
    monkeypatch.setenv("LABKIT_DATA_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(capstone.CapstoneError, match="python -m data_scripts cifar10"):
        capstone.build(tmp_path / "c2", LAB, "cifar10", [tmp_path / "r2"], seed=3, log=lambda m: None)


def test_bundle_leak_check_refuses_hidden_half_files(tmp_path: Path) -> None:
    (tmp_path / LAB / "checkpoints").mkdir(parents=True)
    (tmp_path / LAB / "checkpoints" / "hidden_labels-digits.npy").write_bytes(b"x")
    assert scan_for_leaks(tmp_path) == [f"{LAB}/checkpoints/hidden_labels-digits.npy: hidden half"]


def test_bundle_content_check_finds_hidden_images_under_any_name(course: Path, tmp_path: Path) -> None:
    images, _ = _hidden(course)
    public = course / "source" / LAB / "checkpoints" / lc.public_test_name("digits")
    digests = capstone.hidden_digests(course)
    assert len(digests) == len(images)
    assert capstone.find_hidden_images(public.parent, digests) == []
    np.savez_compressed(tmp_path / "extra_data.npz", x=images[:3], y=np.zeros(3))
    assert capstone.find_hidden_images(tmp_path, digests) == ["extra_data.npz: 3 hidden images"]


# ----------------------------------------------------------------------------- tiers

def test_tiers_pick_the_highest_reached() -> None:
    tiers = capstone.check_tiers([[0.6, 4], [0.8, 10], [0.7, 6]], 10)
    assert tiers == [(0.8, 10.0), (0.7, 6.0), (0.6, 4.0)]
    assert [capstone.tier_points(f, tiers) for f in (0.59, 0.6, 0.79999, 0.8, 1.0)] == [0, 4, 6, 10, 10]
    with pytest.raises(capstone.CapstoneError, match="points in"):
        capstone.check_tiers([[0.5, 11]], 10)
    with pytest.raises(capstone.CapstoneError, match="pairs"):
        capstone.check_tiers("high", 10)


# ----------------------------------------------------------------------------- the evaluator

def test_every_bad_model_gets_one_exact_problem_line(tmp_path: Path, course: Path) -> None:
    images, _ = _hidden(course)
    np.save(tmp_path / "images.npy", images)
    marker = Path("/tmp/capstone-pwned")
    marker.unlink(missing_ok=True)
    for name, (write, problem) in cf.bad_models().items():
        path = tmp_path / f"{name}.pt"
        write(path)
        rec = model_eval.evaluate(str(path), str(tmp_path / "images.npy"), "digits")
        assert rec["preds"] is None and rec["problem"] and rec["problem"].startswith(problem), (name, rec["problem"])
        assert "\n" not in rec["problem"], name
    assert not marker.exists(), "a pickle payload ran"


def test_over_budget_is_measured_without_allocating(tmp_path: Path) -> None:
    import resource

    path = tmp_path / "huge.pt"
    cf.bad_models()["over_budget"][0](path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rec = model_eval.evaluate(str(path), str(path), "digits")  # stops before reading any image
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert rec["within_budget"] is False and rec["params"] > 10 ** 12 and grew_mb < 200


def test_good_model_record_matches_sklearn(tmp_path: Path, course: Path, good_model) -> None:
    images, labels = _hidden(course)
    np.save(tmp_path / "images.npy", images)
    cf.write_good(tmp_path / "model.pt", good_model)
    rec = model_eval.evaluate(str(tmp_path / "model.pt"), str(tmp_path / "images.npy"), "digits")
    assert rec["problem"] is None and rec["within_budget"] is True
    cost = lc.measure(cf.GOOD_ARCH, cf.GOOD_KWARGS)
    assert (rec["params"], rec["flops"]) == (cost.params, cost.flops)
    acc, f1 = _expected(good_model, images, labels)
    preds = np.array(rec["preds"])
    assert float((preds == labels).mean()) == acc and capstone.macro_f1(preds, labels, 10) == f1
    assert f1 > 0.8, "the fixture model should have learned digits"


def test_forged_records_are_refused() -> None:
    ok = {"arch": cf.GOOD_ARCH, "kwargs": cf.GOOD_KWARGS, "problem": None, "preds": [0, 1, 2]}
    cost = lc.measure(cf.GOOD_ARCH, cf.GOOD_KWARGS)
    good = dict(ok, params=cost.params, flops=cost.flops)
    assert capstone._checked(good, 3, 10)[1] is None
    assert capstone._checked(dict(good, params=1), 3, 10)[1] == "the evaluation record does not match the model's description"
    for preds in ([0, 1], [0, 1, 10], [0, 1, True], [0, 1, 2.0], "012"):
        assert capstone._checked(dict(good, preds=preds), 3, 10)[1] == "the evaluation returned malformed predictions"
    for forged in ([1, 2], "x", None, 3):
        assert capstone._checked(forged, 3, 10)[1] == "the evaluation record does not match the model's description"
    row, _ = capstone._checked(dict(good, arch="=cmd|' /C calc'!A0\n\x1b[31m" + "x" * 100), 3, 10)
    assert "\n" not in row["arch"] and "\x1b" not in row["arch"] and len(row["arch"]) <= 40
    # an honest-looking record of a model over budget, with predictions: refused
    over = lc.measure("mobilenet_v1", {"width": 10 ** 5, "num_classes": 10})
    forged = dict(ok, arch="mobilenet_v1", kwargs={"width": 10 ** 5, "num_classes": 10}, params=over.params,
                  flops=over.flops)
    assert capstone._checked(forged, 3, 10)[1] == "the evaluation record does not match the model's description"
    # a problem line quoting a state-dict key with terminal escapes reaches the CSVs printable only
    row, problem = capstone._checked(dict(good, problem='Unexpected key(s): "\x1b[2J\x1b]0;pwned\x07"'), 3, 10)
    assert problem == 'Unexpected key(s): "?[2J?]0;pwned?"'
    # a tiny description with the predictions of a big model: the cost is recomputed here
    big = dict(good, kwargs={"width": 10 ** 5, "num_classes": 10}, arch="mobilenet_v1")
    row, problem = capstone._checked(big, 3, 10)
    assert problem and row["within_budget"] is False


# ----------------------------------------------------------------------------- in the sandbox

@pytest.fixture
def new_jdir():
    """Makes job folders outside pytest's private tmp tree (the sandbox mounts them); removes them after."""
    made: list[Path] = []

    def make() -> Path:
        made.append(Path(tempfile.mkdtemp(prefix="capstone-job-")))
        os.chmod(made[-1], 0o755)
        return made[-1]

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def _ticket(**kw) -> dict:
    return {"sandbox": True, "sandbox_name": f"capstone-test-{os.getpid()}-{os.urandom(3).hex()}",
            "mem_bytes": 2 * 1024 ** 3, "job_timeout": 300, **kw}


def test_sandboxed_evaluation_scores_by_tier(bwrap_ok, course: Path, good_model, new_jdir) -> None:
    jdir = new_jdir()
    model = cf.write_good(jdir / "submitted.pt", good_model)
    row, verdict = capstone.evaluate_job(course, LAB, str(model), jdir, _ticket(), 10)
    images, labels = _hidden(course)
    acc, f1 = _expected(good_model, images, labels)
    assert row["problem"] is None and row["macro_f1"] == f1 and row["accuracy"] == acc
    tiers = capstone.check_tiers(capstone.DEFAULT_TIERS, 10)
    assert row["points"] == capstone.tier_points(f1, tiers) == verdict["points"] > 0
    assert verdict["message"].startswith(f"model.pt: hidden-half macro-F1 {f1:.4f}")


def test_sandboxed_evaluation_time_and_memory_caps(bwrap_ok, course: Path, good_model, new_jdir) -> None:
    jdir = new_jdir()
    model = cf.write_good(jdir / "submitted.pt", good_model)
    cfg_path = capstone.folder(course, LAB) / "config.json"
    saved = cfg_path.read_text()
    try:
        cfg_path.write_text(json.dumps(dict(json.loads(saved), timeout_s=0.3)))
        row, verdict = capstone.evaluate_job(course, LAB, str(model), jdir, _ticket(), 10)
        assert row["problem"] == "evaluating model.pt took longer than 0 s and was stopped" and verdict["points"] == 0
    finally:
        cfg_path.write_text(saved)
    row, verdict = capstone.evaluate_job(course, LAB, str(model), new_jdir(), _ticket(mem_bytes=48 * 1024 ** 2), 10)
    assert row["problem"].startswith("model.pt could not be evaluated") and verdict["points"] == 0


def test_unsandboxed_evaluation_for_trusted_submissions(course: Path, good_model, tmp_path: Path) -> None:
    """``grade --no-sandbox`` runs the same evaluator as a plain child process: same row."""
    model = cf.write_good(tmp_path / "submitted.pt", good_model)
    row, verdict = capstone.evaluate_job(course, LAB, str(model), tmp_path, {"sandbox": False}, 10)
    images, labels = _hidden(course)
    acc, f1 = _expected(good_model, images, labels)
    assert row["problem"] is None and (row["accuracy"], row["macro_f1"]) == (acc, f1) and verdict["points"] == 10


def test_the_record_is_never_read_through_a_link(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("{}")
    (tmp_path / "out.json").symlink_to(tmp_path / "secret")
    with pytest.raises(OSError):
        capstone._read_record(tmp_path / "out.json", 100)
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(OSError, match="not a regular file"):
        capstone._read_record(tmp_path / "fifo.json", 100)
    (tmp_path / "big.json").write_bytes(b"x" * 101)
    assert capstone._read_record(tmp_path / "big.json", 100) is None


def test_a_state_dict_key_with_terminal_escapes_stays_out_of_the_csvs(tmp_path: Path, course: Path) -> None:
    m = build_model(cf.GOOD_ARCH, **cf.GOOD_KWARGS)
    blob = cf.payload(m, cf.GOOD_ARCH, cf.GOOD_KWARGS)
    blob["state_dict"]["\x1b[2J\x1b]0;pwned\x07=HYPERLINK(1)"] = torch.zeros(1)
    torch.save(blob, tmp_path / "esc.pt")
    row, verdict = capstone.evaluate_job(course, LAB, str(tmp_path / "esc.pt"), tmp_path, {"sandbox": False}, 10)
    assert row["problem"].startswith("the state dict does not fit simple_cnn(**kwargs): Unexpected key(s)")
    assert "\x1b" not in row["problem"] and "\x07" not in row["problem"] and verdict["points"] == 0


def test_missing_model_and_missing_hidden_half(course: Path, tmp_path: Path) -> None:
    row, verdict = capstone.evaluate_job(course, LAB, None, tmp_path, _ticket(), 10)
    assert verdict == {"points": 0.0, "message": "model.pt: 0 points: no model.pt submitted beside the notebook"}
    row, verdict = capstone.evaluate_job(tmp_path, LAB, str(tmp_path / "x.pt"), tmp_path, _ticket(), 10)
    assert row["problem"] == "the course has no hidden test half for this lab (release it again)"


# ----------------------------------------------------------------------------- the leaderboard

def _result(f1, params, within, problem=None):
    return {"model": {"arch": "simple_cnn", "params": params, "flops": 5_000_000, "within_budget": within,
                      "accuracy": None if f1 is None else f1 + 0.01, "macro_f1": f1,
                      "points": 0.0 if problem else 4.0, "problem": problem}}


def test_leaderboard_ranks_models_within_budget(tmp_path: Path) -> None:
    results = {("amy", LAB): _result(0.7, 50_000, True), ("bob", LAB): _result(0.9, 90_000, True),
               ("cat", LAB): _result(0.7, 60_000, True), ("dan", LAB): _result(None, 10 ** 9, False, "over budget"),
               ("eve", LAB): _result(None, None, False, "no model.pt"), ("amy", "lab7_quantization"): {"cells": {}}}
    written = capstone.write_leaderboard(results, tmp_path)
    assert [p.name for p in written] == ["leaderboard.csv", "leaderboard.html"]
    rows = list(csv.reader((tmp_path / "leaderboard.csv").open()))
    assert rows[0] == capstone.LEADERBOARD_COLUMNS
    assert [(r[0], r[-1]) for r in rows[1:]] == [("bob", "1"), ("amy", "2"), ("cat", "2"), ("dan", ""), ("eve", "")]
    assert rows[1] == ["bob", "simple_cnn", "90000", "5000000", "true", "0.91", "0.9", "4.0", "1"]
    page = (tmp_path / "leaderboard.html").read_text()
    assert "data:image/png;base64," in page and "<script" not in page


def test_leaderboard_escapes_student_ids(tmp_path: Path) -> None:
    results = {("<img src=x onerror=alert(1)>", LAB): _result(0.5, 10, True)}
    capstone.write_leaderboard(results, tmp_path)
    assert "<img src=x" not in (tmp_path / "leaderboard.html").read_text()
