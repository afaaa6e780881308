"""The benchmarks run end to end at smoke size and report numbers consistent with what they measured.

No assertion here is about speed (the machine is shared; timings are noise at smoke size): the
tests check that every row is present, well formed, and that each ratio is the quotient of the
two measured numbers printed beside it.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `bench` is a folder of the repository, not an installed package

from bench import SECTIONS, command, ratio, write_json  # noqa: E402
from bench.pruning import synthetic_sparse_gammas  # noqa: E402


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(REPO), LABKIT_ARTIFACTS=str(tmp_path / "artifacts"),
               LABKIT_PROFILE="smoke", MPLBACKEND="Agg", PYTHONWARNINGS="ignore")
    env.pop("LABKIT_DATASET", None)
    return env


def _close(a: float, b: float, rel: float = 2e-3, abs_: float = 2e-3) -> bool:
    """Equal up to the rounding the rows apply (4 significant decimals, ms to 3 decimals)."""
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(out)], cwd=REPO,
                          env=_env(out), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"python -m bench --smoke failed:\n{proc.stderr[-3000:]}"
    result = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return result, (out / "results.md").read_text(encoding="utf-8")


def test_smoke_bench_has_every_section_and_row_metadata(smoke_results):
    result, _ = smoke_results
    assert result["smoke"] is True and result["command"].startswith("python -m bench --smoke --out ")
    assert list(result["sections"]) == list(SECTIONS)
    for key in ("cpu", "cores", "torch", "device"):
        assert result["machine"][key], key
    for name, sec in result["sections"].items():
        assert sec["status"] in ("ok", "skipped"), (name, sec)
        assert sec["rows"], f"section {name} has no rows"
        for row in sec["rows"]:
            assert row["section"] == name
            assert row["command"].startswith(f"python -m bench --smoke --only {name}")
            assert row["wall_s"] >= 0 and row["machine"]["torch"] == torch.__version__


def test_throughput_ratio_is_computed_from_the_measured_rates(smoke_results):
    (row,) = smoke_results[0]["sections"]["throughput"]["rows"]
    base, kit = row["baseline_images_per_s"], row["candidate_images_per_s"]
    assert base > 0 and kit > 0 and row["images_per_epoch"] > 0
    assert base == max(row["baseline_runs"]) and kit == max(row["candidate_runs"])
    assert _close(row["ratio"], kit / base)
    assert row["goal_met"] == (row["ratio"] >= float(row["goal"].split()[1].rstrip("x")))
    assert "DataLoader(ImageFolder" in row["baseline"] and "labkit Loader" in row["candidate"]
    # the loader's own share: labkit's loader trained in the baseline's layout (fp32, NCHW)
    assert row["loader_only_images_per_s"] == max(row["loader_only_runs"]) > 0
    assert _close(row["loader_only_ratio"], row["loader_only_images_per_s"] / base)
    assert "NCHW" in row["baseline"] and "channels_last" in row["candidate"]


def test_structured_rows_prune_and_keep_the_function(smoke_results):
    rows = smoke_results[0]["sections"]["structured"]["rows"]
    assert [r["percent"] for r in rows] == [0.5, 0.7]
    for r in rows:
        assert r["transfer_max_abs_diff"] < 1e-4  # pruned net == masked net (lab 4's contract)
        assert r["params_pruned"] < r["params_unpruned"] and r["flops_pruned"] < r["flops_unpruned"]
        assert _close(r["params_ratio"], r["params_pruned"] / r["params_unpruned"], abs_=1e-4)
        assert _close(r["flops_ratio"], r["flops_pruned"] / r["flops_unpruned"], abs_=1e-4)
        for b in (1, 64):
            a, p = r[f"latency_b{b}_unpruned_ms"], r[f"latency_b{b}_pruned_ms"]
            assert a > 0 and p > 0
            assert _close(r[f"latency_b{b}_ratio"], p / a, rel=5e-3)
            assert r[f"latency_b{b}_goal_met"] == (r[f"latency_b{b}_ratio"] <= 1.3 * r["flops_ratio"])
        assert r["goal_met"] == (r["latency_b1_goal_met"] and r["latency_b64_goal_met"])
        assert "synthetic" in r["gamma_source"]  # no lab 3 artifact in the temporary artifacts folder
    assert rows[1]["flops_pruned"] < rows[0]["flops_pruned"]


def test_unstructured_rows_zero_weights_but_keep_flops(smoke_results):
    rows = smoke_results[0]["sections"]["unstructured"]["rows"]
    assert [r["amount"] for r in rows] == [0.5, 0.9]
    for r in rows:
        assert abs(r["sparsity"] - r["amount"]) < 0.01
        assert abs(r["nonzero_ratio"] - (1 - r["amount"])) < 0.01
        assert r["params_pruned"] == r["params_dense"] and r["flops_ratio"] == 1.0
        for b in (1, 64):
            assert _close(r[f"latency_b{b}_ratio"], r[f"latency_b{b}_pruned_ms"] / r[f"latency_b{b}_dense_ms"],
                          rel=5e-3)


def test_grading_is_skipped_under_smoke_and_markdown_lists_every_row(smoke_results):
    result, md = smoke_results
    (g,) = result["sections"]["grading"]["rows"]
    assert g["status"] == "skipped" and "smoke" in g["note"]
    for name in SECTIONS:
        assert f"## {name}" in md
    for sec in result["sections"].values():
        for row in sec["rows"]:
            assert row["command"] in md
    assert result["machine"]["cpu"] in md


def test_pipeline_smoke_runs_end_to_end(tmp_path):
    out = tmp_path / "pipeline.json"
    proc = subprocess.run([sys.executable, "-m", "bench.pipeline", "--profile", "smoke", "--out", str(out)],
                          cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text(encoding="utf-8"))
    assert r["profile"] == "smoke" and r["command"].startswith("python -m bench.pipeline --profile smoke")
    assert 0.0 <= r["unpruned"]["acc"] <= 1.0
    (p,) = r["pruned"]
    assert p["percent"] == 0.5 and 0.0 <= p["acc"] <= 1.0 and 0.0 <= p["acc_before_finetune"] <= 1.0
    assert p["params"] < r["unpruned"]["params"] and p["flops"] < r["unpruned"]["flops"]
    assert _close(p["params_ratio"], p["params"] / r["unpruned"]["params"], abs_=1e-4)
    for phase in ("train_sparse", "eval_unpruned", "prune_50", "finetune_50", "eval_pruned_50"):
        assert r["phases_s"][phase] >= 0
    assert r["total_s"] >= sum(v for k, v in r["phases_s"].items() if k != "load_solutions") - 0.1


def test_pipeline_slim_vgg_recipe_records_compute_and_curve(tmp_path):
    """The fast recipe's code path at smoke size: whitening slim_vgg, lookahead, flip-TTA,
    channels_last, the per-epoch curve, lab 4's pruning of the whitening conv, the budget runs."""
    out = tmp_path / "pipeline.json"
    sets = ["arch=slim_vgg", "width=0.25", "curve=True", "lookahead=2", "tta_flip=True",
            "channels_last=True", "label_smoothing=0.2", "epochs=2", "budgets_tflop=(1e-9,)"]
    cmd = [sys.executable, "-m", "bench.pipeline", "--profile", "smoke", "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text(encoding="utf-8"))
    assert r["limited"] is True and r["config"]["arch"] == "slim_vgg"
    u = r["unpruned"]
    per_epoch = 3 * u["flops"] * 256 / 1e12  # smoke: 256 images, batch 64
    assert [c["epoch"] for c in u["curve"]] == [1, 2]
    assert _close(u["curve"][-1]["tflop"], 2 * per_epoch, abs_=1e-3) and _close(r["train_tflop"], 2 * per_epoch)
    assert all(0 <= c["test_acc"] <= 1 and 0 <= c["train_s"] <= c["wall_s"] for c in u["curve"])
    (p,) = r["pruned"]
    assert p["cfg"][0] <= 24 and len(p["curve"]) == 1 and p["finetune_tflop"] == r["finetune_tflop"]
    (b,) = r["budgets"]
    assert b["epochs"] == 1 and 0 <= b["acc"] <= 1


def test_pipeline_muon_recipe_fits_its_training_budget(tmp_path):
    """optimizer=muon + the linear schedule + train_budget_tflop: each epoch is cut to the batches
    that keep the sparsity training within the budget (here 3 of smoke's 4 batches of 64)."""
    out = tmp_path / "pipeline.json"
    probe = [sys.executable, "-m", "bench.pipeline", "--profile", "smoke", "--out", str(out),
             "--set", "arch=slim_vgg", "--set", "width=0.25", "--set", "prune=()"]
    proc = subprocess.run(probe, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    batch_tflop = 3 * json.loads(out.read_text(encoding="utf-8"))["unpruned"]["flops"] * 64 / 1e12
    sets = ["optimizer=muon", "scheduler=linear", "lr=0.1", "epochs=2", f"train_budget_tflop={6.5 * batch_tflop!r}"]
    cmd = probe + [x for s in sets for x in ("--set", s)]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text(encoding="utf-8"))
    u = r["unpruned"]
    assert r["config"]["optimizer"] == "muon" and u["images_seen"] == 2 * 3 * 64
    assert r["train_tflop"] == round(6 * batch_tflop, 2)  # 6 batches, not the 8 of two whole epochs
    assert [c["epoch"] for c in u["curve"]] == [1, 2] and 0.0 <= u["acc"] <= 1.0
    proc = subprocess.run(probe + ["--set", "optimizer=adam"], cwd=REPO, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "config field optimizer must be one of sgd, muon, got 'adam'" in proc.stderr


def test_pipeline_rejects_bad_arguments_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.pipeline", "--profile", "smoke", "--limit", "0"],
                          cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--limit must be a positive integer" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "bench.pipeline", "--profile", "smoke", "--set", "nope=1"],
                          cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown config field(s) ['nope']" in proc.stderr


# --------------------------------------------------------------------------- helpers, in-process
def test_recipes_are_the_labkit_profiles_sizes_with_the_pipelines_changes():
    """``--profile`` means a labkit profile: its recipe starts from labkit.profile.SIZES."""
    from bench.recipes import RECIPES
    from labkit.profile import PROFILES, SIZES

    assert set(RECIPES) - set(PROFILES) == {"fast_vgg11"}
    s, r = SIZES["smoke"], RECIPES["smoke"]
    assert (r.depth, r.width, r.batch_size, r.epochs, r.finetune_epochs, r.lr, r.train_limit, r.test_limit) == (
        s.vgg_depth, s.width, s.batch_size, s.epochs, s.finetune_epochs, s.lr, s.train_limit, s.test_limit)
    assert (RECIPES["full"].depth, RECIPES["full"].width) == (SIZES["full"].vgg_depth, SIZES["full"].width)


def test_pipeline_data_come_from_labkit_load_dataset():
    from bench.recipes import RECIPES, load_data
    from labkit.data import load_digits32

    train, test = load_data(RECIPES["smoke"], seed=3)
    all_train, all_test = load_digits32()
    assert torch.equal(train.images, all_train.limit(256, 3).images)
    assert torch.equal(test.labels, all_test.limit(128, 3).labels)


def test_synthetic_gammas_are_sparse_heavy_tailed_and_seeded():
    from labkit.models import vgg

    a, b = vgg(19, width=0.25), vgg(19, width=0.25)
    synthetic_sparse_gammas(a, seed=3)
    synthetic_sparse_gammas(b, seed=3)
    ga = torch.cat([m.weight.detach() for m in a.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    gb = torch.cat([m.weight.detach() for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert torch.equal(ga, gb)
    near_zero = (ga.abs() < 0.05).float().mean().item()
    assert 0.3 < near_zero < 0.8            # a large collapsed group ...
    survivors = ga[ga.abs() >= 0.05]
    assert survivors.max().item() > 3 * survivors.median().item()  # ... and a long right tail


def test_ratio_command_and_atomic_json(tmp_path):
    assert ratio(3.0, 2.0) == 1.5 and ratio(1.0, 0.0) is None
    assert command("structured", True) == "python -m bench --smoke --only structured"
    path = write_json(tmp_path / "x.json", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1} and not list(tmp_path.glob(".x.json.*"))
    with pytest.raises(ValueError):
        write_json(tmp_path / "y.json", {"a": float("nan")})
    assert not (tmp_path / "y.json").exists() and not list(tmp_path.glob(".y.json.*"))


def test_a_new_run_keeps_the_sections_written_by_hand(tmp_path):
    from bench.__main__ import kept_by_hand

    md = tmp_path / "results.md"
    assert kept_by_hand(md) == ""                     # no file yet: nothing to keep
    md.write_text("# Benchmark results\n\n## throughput\n\n| a |\n\n"
                  "## pipeline (`fast`) — written by hand, not by `python -m bench`\n\n![curve](curve.png)\n"
                  "| goal | met |\n\n## structured\n\ngenerated\n", encoding="utf-8")
    kept = kept_by_hand(md)
    assert kept == ("\n## pipeline (`fast`) — written by hand, not by `python -m bench`\n\n![curve](curve.png)\n"
                    "| goal | met |\n\n")


def test_layout_benchmark_measures_both_layouts_on_a_tiny_model():
    from bench.layout import MODELS, images_per_s
    from labkit.models import simple_cnn

    for nhwc in (False, True):
        assert images_per_s(lambda: simple_cnn(10, width=4), 4, nhwc, steps=1, warmup=1) > 0
    assert all(batch > 0 and callable(make) for _, make, batch in MODELS)


def test_allocator_rows_measure_both_sides_in_fresh_processes(smoke_results):
    result, md = smoke_results
    (row,) = result["sections"]["allocator"]["rows"]
    assert row["ratio"] == pytest.approx(row["kept_images_per_s"] / row["default_images_per_s"], rel=1e-2)
    assert row["default_images_per_s"] > 0 and row["kept_images_per_s"] > 0
    assert row["default_faults_per_step"] >= 0 and row["kept_peak_rss_mb"] > 0
    assert row["goal_met"] == (row["kept_images_per_s"] > row["default_images_per_s"])
    assert f"{row['default_faults_per_step']:,} → {row['kept_faults_per_step']:,}" in md
