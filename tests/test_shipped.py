"""autograder.shipped: what a release ships, built once per profile and dataset, cached, resumable."""
from __future__ import annotations

import json
import os

import pytest

from autograder import shipped
from autograder.release import ReleaseError, build_checkpoints, ship_profile

LAB1, LAB2 = "lab1_early_stopping_transfer", "lab2_knowledge_distillation"


def test_needed_items_follow_the_chain_in_build_order():
    keys = [i.key for i in shipped.needed_items(["lab7_quantization"])]
    assert keys == ["lab3_sparsity_training", "lab4_vgg_prune", "lab5_finetune_pruned"]
    keys = [i.key for i in shipped.needed_items([LAB2, "lab4_vgg_prune"])]
    assert keys == ["lab2/teacher_scratch", "lab2/teacher_pretrained", "lab3_sparsity_training"]
    assert shipped.needed_items(["lab6_efficient_convs"]) == []


@pytest.fixture()
def fake_build(monkeypatch):
    """Replace training by writing each item's files (tiny), counting the calls; optionally fail."""
    calls: list[str] = []
    fail = {"at": None}

    def build_item(item, prof, artifacts, notebooks, timeout):
        if item.key == fail["at"]:
            raise KeyboardInterrupt  # an interrupt in the middle of the build
        calls.append(item.key)
        for pattern in item.files:
            (artifacts / pattern.format(profile=prof.name, dataset=prof.dataset)).write_bytes(b"x" * 10)

    monkeypatch.setattr(shipped, "_build_item", build_item)
    return calls, fail


def test_second_build_reuses_the_cache(tmp_path, fake_build):
    calls, _ = fake_build
    logs: list[str] = []
    folder, files = shipped.build([LAB1, LAB2], "smoke", cache=tmp_path, log=logs.append)
    assert calls == ["lab1/source_backbone", "lab2/teacher_scratch", "lab2/teacher_pretrained"]
    assert [p.name for p in files[LAB1]] == ["lab1-source_backbone-smoke-digits.pt"]
    assert len(files[LAB2]) == 2 and folder.name.startswith("smoke-digits-")
    again, files2 = shipped.build([LAB1, LAB2], "smoke", cache=tmp_path, log=logs.append)
    assert again == folder and files2 == files and len(calls) == 3
    assert logs[-1].startswith("checkpoints: reusing 3 built for profile=smoke dataset=digits")


def test_an_interrupted_build_resumes_at_the_first_unfinished_item(tmp_path, fake_build):
    calls, fail = fake_build
    fail["at"] = "lab4_vgg_prune"
    with pytest.raises(KeyboardInterrupt):
        shipped.build(["lab5_finetune_pruned", LAB1], "smoke", cache=tmp_path, log=lambda m: None)
    assert calls == ["lab1/source_backbone", "lab3_sparsity_training"]
    fail["at"] = None
    logs: list[str] = []
    shipped.build(["lab5_finetune_pruned", LAB1], "smoke", cache=tmp_path, log=logs.append)
    assert calls == ["lab1/source_backbone", "lab3_sparsity_training", "lab4_vgg_prune"]
    assert "resuming: 2 done" in logs[0]


def test_a_changed_profile_or_labkit_gets_its_own_cache_folder(tmp_path, fake_build, monkeypatch):
    a, _ = shipped.build([LAB1], "smoke", cache=tmp_path, log=lambda m: None)
    monkeypatch.setenv("LABKIT_SEED", "3")
    b, _ = shipped.build([LAB1], "smoke", cache=tmp_path, log=lambda m: None)
    assert a != b and a.parent == b.parent


def test_an_item_that_writes_nothing_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "_build_item", lambda *a: None)
    with pytest.raises(shipped.CheckpointError, match="wrote none of lab1-source_backbone"):
        shipped.build([LAB1], "smoke", cache=tmp_path, log=lambda m: None)


def test_missing_cifar10_stops_in_one_line_naming_the_import_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_DATA_ROOT", str(tmp_path / "no-data"))
    with pytest.raises(shipped.CheckpointError) as err:
        shipped.build([LAB1], "fast", cache=tmp_path, log=lambda m: None)
    msg = str(err.value)
    assert "\n" not in msg and "python -m data_scripts cifar10" in msg and "fast" in msg


def test_ship_profile_copies_into_the_student_version_and_enforces_the_size_limit(tmp_path, fake_build, monkeypatch):
    course = tmp_path / "course"
    mb = ship_profile(course, [LAB1], "smoke", "digits", cache=tmp_path / "cache", log=lambda m: None)
    copy = course / "release" / LAB1 / "checkpoints" / "lab1-source_backbone-smoke-digits.pt"
    assert copy.read_bytes() == b"x" * 10 and mb == pytest.approx(1e-5)
    assert not (course / "source").exists()  # grading copies source/: it never gets these
    monkeypatch.setattr(shipped, "SIZE_LIMIT_MB", 0)
    with pytest.raises(ReleaseError, match="over the bundle's limit of 0 MB"):
        ship_profile(course, [LAB1], "smoke", "digits", cache=tmp_path / "cache", log=lambda m: None)


def test_the_smoke_checkpoints_of_the_course_use_the_given_cache_too(tmp_path, fake_build):
    """`release --cache-dir DIR` caches every profile's checkpoints in DIR, grading's smoke ones included."""
    calls, _ = fake_build
    files = build_checkpoints(tmp_path / "course", [LAB1], cache=tmp_path / "cache", log=lambda m: None)
    assert [p.name for p in files[LAB1]] == ["lab1-source_backbone-smoke-digits.pt"]
    assert files[LAB1][0].is_file() and calls == ["lab1/source_backbone"]
    assert list((tmp_path / "cache").glob("smoke-digits-*/artifacts/lab1-source_backbone-smoke-digits.pt"))


@pytest.mark.slow
def test_real_smoke_build_of_lab4s_prerequisite_then_reused(tmp_path):
    """Runs lab 3's source notebook under smoke (seconds); the second call trains nothing."""
    folder, files = shipped.build(["lab4_vgg_prune"], "smoke", cache=tmp_path, log=lambda m: None)
    (path,) = files["lab4_vgg_prune"]
    assert path.name == "lab3-vgg_sparse-smoke-digits.pt" and path.stat().st_size > 0
    assert json.loads((folder / "done.json").read_text()) == ["lab3_sparsity_training"]
    before = os.stat(path).st_mtime_ns
    shipped.build(["lab4_vgg_prune"], "smoke", cache=tmp_path, log=lambda m: None)
    assert os.stat(path).st_mtime_ns == before


@pytest.fixture()
def thread_workers(monkeypatch):
    """A parallel build with threads for workers, so that the fake training above is seen."""
    from concurrent.futures import ThreadPoolExecutor

    started: list[int] = []
    monkeypatch.setattr(shipped, "_executor", lambda jobs, threads: (started.append(jobs), ThreadPoolExecutor(jobs))[1])
    monkeypatch.setattr(shipped, "_build_logged",
                        lambda item, prof, artifacts, notebooks, timeout, log: shipped._build_item(
                            item, prof, artifacts, notebooks, timeout))
    return started


def test_a_parallel_build_starts_the_longest_chain_first_and_respects_needs(tmp_path, fake_build, thread_workers):
    calls, _ = fake_build
    labs = [LAB1, LAB2, "lab7_quantization", "lab8_capstone"]
    folder, files = shipped.build(labs, "smoke", cache=tmp_path, log=lambda m: None, jobs=2)
    assert thread_workers == [2]
    assert sorted(calls) == sorted(item.key for item in shipped.ITEMS)
    # lab 8's teacher (10.7 min) and lab 3 (the head of a 10.5-minute chain) go first
    assert set(calls[:2]) == {"lab8/teacher", "lab3_sparsity_training"}
    chain = ["lab3_sparsity_training", "lab4_vgg_prune", "lab5_finetune_pruned"]
    assert [c for c in calls if c in chain] == chain
    assert json.loads((folder / "done.json").read_text()) == sorted(calls)
    # the same files as a one-at-a-time build
    again, files1 = shipped.build(labs, "smoke", cache=tmp_path / "one", log=lambda m: None, jobs=1)
    assert {lab: [p.name for p in ps] for lab, ps in files.items()} == \
           {lab: [p.name for p in ps] for lab, ps in files1.items()}


def test_a_failed_item_in_a_parallel_build_stops_new_ones_and_the_rest_resume(tmp_path, monkeypatch, thread_workers):
    calls: list[str] = []

    def build_item(item, prof, artifacts, notebooks, timeout):
        if item.key == "lab3_sparsity_training" and not calls.count("retry"):
            raise RuntimeError("out of memory\nsecond line")
        calls.append(item.key)
        for pattern in item.files:
            (artifacts / pattern.format(profile=prof.name, dataset=prof.dataset)).write_bytes(b"x")

    monkeypatch.setattr(shipped, "_build_item", build_item)
    with pytest.raises(shipped.CheckpointError) as err:
        shipped.build(["lab5_finetune_pruned", "lab8_capstone"], "smoke", cache=tmp_path, log=lambda m: None, jobs=2)
    msg = str(err.value)
    assert msg.startswith("lab3_sparsity_training failed: RuntimeError: out of memory (log: ")
    assert "\n" not in msg and msg.endswith("lab3_sparsity_training.log)")
    assert calls == ["lab8/teacher"]  # running beside it, it finished and counts; lab 4 never started
    calls.append("retry")
    logs: list[str] = []
    shipped.build(["lab5_finetune_pruned", "lab8_capstone"], "smoke", cache=tmp_path, log=logs.append, jobs=2)
    assert calls[2:] == ["lab3_sparsity_training", "lab4_vgg_prune", "lab5_finetune_pruned"]
    assert "resuming: 1 done" in logs[0] and "2 at a time" in logs[0]


def test_one_item_at_a_time_by_default_and_jobs_below_one_refused(tmp_path, fake_build, monkeypatch):
    started: list[int] = []
    monkeypatch.setattr(shipped, "_executor", lambda jobs, threads: started.append(jobs))
    shipped.build([LAB1, LAB2], "smoke", cache=tmp_path, log=lambda m: None)
    assert started == [] and len(fake_build[0]) == 3  # in this process, no worker pool
    for bad in (0, -1, True, 1.5):
        with pytest.raises(shipped.CheckpointError, match="jobs must be a whole number of at least 1"):
            shipped.build([LAB1], "smoke", cache=tmp_path, log=lambda m: None, jobs=bad)


@pytest.mark.slow
def test_real_parallel_smoke_build_in_worker_processes(tmp_path):
    """Two spawned workers, one thread each: lab 1's starter beside lab 3's notebook, logs kept."""
    folder, files = shipped.build([LAB1, "lab4_vgg_prune"], "smoke", cache=tmp_path, log=lambda m: None, jobs=2)
    assert [p.name for p in files[LAB1]] == ["lab1-source_backbone-smoke-digits.pt"]
    assert [p.name for p in files["lab4_vgg_prune"]] == ["lab3-vgg_sparse-smoke-digits.pt"]
    assert json.loads((folder / "done.json").read_text()) == ["lab1/source_backbone", "lab3_sparsity_training"]
    assert sorted(p.name for p in (folder / "logs").iterdir()) == ["lab1-source_backbone.log",
                                                                   "lab3_sparsity_training.log"]


def test_release_command_refuses_jobs_below_one(capsys):
    from autograder.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["release", "--profile", "fast", "--jobs", "0"])
    assert exit_.value.code == 2
    assert "--jobs: must be a whole number of at least 1, got '0'" in capsys.readouterr().err
