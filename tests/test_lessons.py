"""``python -m bench.lessons``: claims evaluated from hand-made headline numbers, the missing-cache
line, and one real run of two cheap notebooks under ``smoke`` on the embedded digits."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `bench` is a folder of the repository, not an installed package

from bench import lessons  # noqa: E402
from bench.claims import CLAIMS, Record, evaluate  # noqa: E402
from bench.lessons import evaluate_all  # noqa: E402

BY_ID = {c.id: c for c in CLAIMS}
L1, L2, L3, L4, L5, L6, L7 = lessons.LABS[:7]


def row(claim_id: str, **numbers) -> dict:
    """The claim's row from one run (seed 0) of its lab that recorded ``numbers``."""
    claim = BY_ID[claim_id]
    return evaluate(claim, {0: Record(claim.lab, numbers)})


def test_the_table_holds_every_claim_of_issues_11_13_and_14_in_order():
    ids = [c.id for c in CLAIMS]
    assert ids == ["L1.1", "L1.1b", "L1.2", "L1.3", "L1.4", "L1.5", "L2.1", "L2.2", "L2.2b", "L2.3",
                   "L3.1", "L3.1b", "L3.2", "L3.3", "L4.1", "L4.2", "L4.3", "L4.3b", "L4.4",
                   "L5.1", "L5.2", "L5.3", "L5.3b", "L5.4", "L6.1", "L6.2", "L6.3", "L6.3b", "L6.4",
                   "L7.1", "L7.2", "L7.3", "L7.4", "L7.5", "L8.1", "L8.2"]
    assert [c.lab for c in CLAIMS] == sorted(c.lab for c in CLAIMS)  # lab order
    assert L7 == "lab7_quantization" and {c.lab for c in CLAIMS} == set(lessons.LABS)


def test_points_are_differences_on_a_0_to_100_scale_without_float_noise():
    r = row("L1.2", top1_finetune=0.4070, top1_scratch=0.3070)  # 0.407 - 0.307 = 0.10000000000000003
    assert r["measured"] == 10.0 and r["holds"] is True and r["threshold"] == "≥ 10"
    r = row("L1.2", top1_finetune=0.3570, top1_scratch=0.3070)
    assert r["measured"] == 5.0 and r["holds"] is False and r["status"] == "measured"
    assert row("L4.1", acc_pruned50=0.62, acc_unpruned=0.64)["holds"] is True  # exactly -2 points: >= -2
    assert row("L4.4", acc_pruned90=0.5, acc_unpruned=0.64)["measured"] == -14.0


def test_ratios_booleans_ranges_and_bounds():
    r = row("L1.1", epochs_run=12, epoch_budget=20)
    assert (r["measured"], r["holds"]) == (0.6, True)
    r = row("L1.5", best_lr_interior=True)
    assert r["measured"] is True and r["holds"] is True and r["threshold"] == "true"
    assert row("L1.5", best_lr_interior=False)["holds"] is False
    assert row("L1.1b", best_val_acc_early_stop=0.556, best_val_acc=0.565)["holds"] is True   # -0.9: within ±1
    assert row("L1.1b", best_val_acc_early_stop=0.55, best_val_acc=0.565)["holds"] is False   # -1.5
    assert row("L6.2", latency_ratio_pruned90=0.92)["holds"] is True
    assert row("L6.2", latency_ratio_pruned90=0.80)["holds"] is False
    assert row("L6.2", latency_ratio_pruned90=1.0)["threshold"] == "0.85 – 1.15"
    assert row("L7.4", bn_fold_max_diff=3e-7)["measured"] == 3e-7  # small values keep their digits
    # record_headline rounds to 4 decimals: the scaled key, when recorded, keeps the digits
    assert row("L7.4", bn_fold_max_diff=0.0001, bn_fold_max_diff_x1e6=140.3)["measured"] == 1.403e-4
    assert row("L7.3", size_ratio_int8=0.254)["holds"] is True


def test_lab3_reads_the_per_lambda_keys_whatever_the_lambdas():
    numbers = {"acc_lam0": 0.668, "acc_lam0.003": 0.644, "acc_lam0.03": 0.214,
               "sparsity_lam0": 0.0, "sparsity_lam0.003": 0.388, "sparsity_lam0.03": 0.964}
    rows = {c.id: evaluate(c, {0: Record(L3, numbers)}) for c in CLAIMS if c.lab == L3}
    assert rows["L3.1"]["measured"] is True
    assert rows["L3.1b"]["measured"] == 0.388 and rows["L3.1b"]["holds"] is False
    assert rows["L3.2"]["measured"] == -2.4 and rows["L3.2"]["holds"] is False
    assert rows["L3.3"]["measured"] == -45.4 and rows["L3.3"]["holds"] is True
    flat = dict(numbers, **{"sparsity_lam0.03": 0.388})
    assert evaluate(BY_ID["L3.1"], {0: Record(L3, flat)})["holds"] is False  # not strictly increasing


def test_a_quantity_not_recorded_is_null_with_a_note_naming_the_key():
    r = row("L1.4", top1_finetune=0.5, top1_scratch=0.3)
    assert r["measured"] is None and r["holds"] is False and r["status"] == "not measured"
    assert "minority_acc_finetune" in r["note"]
    r = row("L3.2", acc_lam0=0.5)
    assert r["measured"] is None and "acc_lam" in r["note"]
    # lab 5 compares with a baseline fine-tuned for the same epochs; an untouched baseline is not it
    r = row("L5.1", acc_after_baseline=0.64, acc_after_pruned50=0.72, baseline_finetuned=False)
    assert r["measured"] is None and "baseline_finetuned" in r["note"]
    r = row("L5.1", acc_after_baseline=0.73, acc_after_pruned50=0.72, baseline_finetuned=True)
    assert (r["measured"], r["holds"]) == (-1.0, True)
    # numbers that give no finite quantity (NaN accuracy, a zero budget) are not measured either
    for r in (row("L1.4", minority_acc_finetune=float("nan"), minority_acc_scratch=0.2),
              row("L1.1", epochs_run=3, epoch_budget=0)):
        assert r["measured"] is None and r["holds"] is False and r["status"] == "not measured", r


def test_seeds_give_the_mean_and_the_worst():
    def lab2(kd_gain: float) -> Record:  # teacher (a) the better one, so KD means (d)
        return Record(L2, {"acc_a": 0.78, "acc_b": 0.75, "acc_c": 0.70, "acc_d": 0.70 + kd_gain, "acc_e": 0.60})

    records = {0: lab2(0.03), 1: lab2(-0.005)}
    mean, worst = evaluate(BY_ID["L2.2"], records), evaluate(BY_ID["L2.2b"], records)
    assert (mean["measured"], mean["holds"], mean["seeds"]) == (1.25, True, "mean")
    assert mean["per_seed"] == {"0": 3.0, "1": -0.5} and "note" not in mean
    assert (worst["measured"], worst["holds"], worst["seeds"]) == (-0.5, False, "worst")
    assert evaluate(BY_ID["L2.2b"], {0: lab2(0.03), 1: lab2(0.01)})["measured"] == 1.0
    assert evaluate(BY_ID["L2.1"], records)["measured"] == 8.0  # best teacher 0.78 - student 0.70
    # the pretrained teacher (b) better: KD from (b) counts
    assert row("L2.2", acc_a=0.7, acc_b=0.8, acc_c=0.7, acc_d=0.9, acc_e=0.72)["measured"] == 2.0
    one = evaluate(BY_ID["L2.2"], {0: lab2(0.03)})
    assert one["measured"] == 3.0 and "≥ 2" in one["note"]  # measured, but said to be one seed only
    assert lessons.seeds_for(L2, 3) == [0, 1, 2] and lessons.seeds_for(L3, 3) == [0]
    assert lessons.seeds_for(L6, 2) == [0, 1] and lessons.seeds_for(L7, 2) == [0]


def test_a_lab_without_its_notebook_or_with_a_failed_run_is_marked_not_run():
    runs = [{"lab": L7, "seed": 0, "wall_s": None, "status": "no notebook", "record": None},
            {"lab": L4, "seed": 0, "wall_s": 3.0, "status": "failed", "error": "CellExecutionError: boom",
             "record": None}]
    rows = evaluate_all([L4, L7], runs)
    assert [r["id"] for r in rows] == [c.id for c in CLAIMS if c.lab in (L4, L7)]
    for r in rows:
        assert r["measured"] is None and r["holds"] is False and r["status"] == "not run"
    assert "does not exist" in rows[-1]["note"] and "boom" in rows[0]["note"]
    assert "|γ|" not in lessons.to_markdown({
        "profile": "smoke", "dataset": "digits", "command": "c", "started_utc": "t", "wall_s": 1.0,
        "machine": {"cpu": "x", "cores": 2, "torch": "t", "device": "cpu"}, "notebooks": [],
        "claims": [evaluate(BY_ID["L3.1b"], {}, "not run")]})  # escaped in the table: \|γ\|


def test_a_missing_cifar10_cache_stops_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LABKIT_DATA_ROOT", str(tmp_path / "empty"))
    out = tmp_path / "lessons.json"
    assert lessons.main(["--profile", "fast", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "python -m data_scripts cifar10 --from" in err
    assert not out.exists() and not out.with_suffix(".md").exists()


@pytest.mark.slow
def test_a_smoke_run_of_two_notebooks_writes_the_json_and_the_markdown(tmp_path):
    out = tmp_path / "lessons.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "bench.lessons", "--profile", "smoke", "--only",
                           "lab3_sparsity_training", "lab4_vgg_prune", "--out", str(out),
                           "--artifacts", str(tmp_path / "artifacts")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert {"claims", "notebooks", "machine", "command"} <= set(result)
    assert result["command"].startswith("python -m bench.lessons --profile smoke --only lab3_sparsity_training")
    assert [(n["lab"], n["status"]) for n in result["notebooks"]] == [(L3, "ok"), (L4, "ok")]
    assert all(n["wall_s"] > 0 for n in result["notebooks"])
    assert [c["id"] for c in result["claims"]] == [c.id for c in CLAIMS if c.lab in (L3, L4)]
    for c in result["claims"]:  # every quantity of labs 3 and 4 is recorded: all measured
        assert set(c) >= {"id", "lab", "claim", "measured", "threshold", "holds"}
        assert c["status"] == "measured" and c["measured"] is not None and isinstance(c["holds"], bool)
    assert result["claims"][[c["id"] for c in result["claims"]].index("L4.2")]["measured"] is True
    md = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "| id | claim | measured | threshold | holds |" in md and "| L4.3 |" in md and "lab4_vgg_prune" in md
