"""The claims of issues 11 and 13: what each lab must show on a student's run, as data.

A :class:`Claim` names a quantity computed from one lab's recorded headline numbers
(:func:`labkit.artifacts.record_headline`), a threshold and how several seeds combine.
:func:`evaluate` turns a claim and its lab's records into the row ``bench.lessons`` reports:
``measured`` is exactly the quantity named (points on a 0–100 scale, plain ratios, booleans),
``None`` with a note naming the missing headline key when a notebook does not record it.
"""
from __future__ import annotations

import math
import operator
import statistics
from dataclasses import dataclass
from typing import Any, Callable

from autograder import notebook as nbu

LAB7 = "lab7_quantization"
LAB8 = "lab8_capstone"


class NotMeasured(LookupError):
    """The notebook does not record the quantity (yet); the message says which headline key."""


class Record(dict):
    """One run's headline numbers of one lab; reading a key it lacks raises :class:`NotMeasured`."""

    def __init__(self, lab: str, numbers: dict[str, Any]):
        super().__init__(numbers)
        self.lab = lab

    def __missing__(self, key: str):
        raise NotMeasured(f"{self.lab} records no headline key `{key}`")


# --------------------------------------------------------------------------- quantities
Quantity = Callable[[Record], "float | bool"]


def points(a: str, b: str) -> Quantity:
    """``a − b`` of two accuracies recorded as fractions, in points (0–100 scale)."""
    return lambda r: 100 * (r[a] - r[b])


def ratio(a: str, b: str) -> Quantity:
    return lambda r: r[a] / r[b]


def value(key: str) -> Quantity:
    return lambda r: r[key]


def flag(key: str) -> Quantity:
    return lambda r: bool(r[key])


def _teacher_gap(r: Record) -> float:
    """Lab 2: the better teacher ((a) scratch, (b) pretrained) − the student alone (c), in points."""
    return 100 * (max(r["acc_a"], r["acc_b"]) - r["acc_c"])


def _kd_gap(r: Record) -> float:
    """Lab 2: the student distilled (fixed T) from the better teacher − the student alone, in points."""
    kd = r["acc_d"] if r["acc_a"] >= r["acc_b"] else r["acc_e"]
    return 100 * (kd - r["acc_c"])


def _per_lambda(r: Record, prefix: str) -> list[tuple[float, float]]:
    """Lab 3's ``<prefix><λ>`` keys (``acc_lam0.003``) as ``(λ, value)`` sorted by λ; needs λ = 0 and 3 λs."""
    pts = []
    for k, v in r.items():
        if k.startswith(prefix):
            try:
                pts.append((float(k[len(prefix):]), v))
            except ValueError:
                continue
    pts.sort()
    if len(pts) < 3 or pts[0][0] != 0.0:
        raise NotMeasured(f"{r.lab} records {len(pts)} `{prefix}<λ>` keys; the claim needs λ = 0 and two more")
    return pts


def _middle(pts: list[tuple[float, float]]) -> float:
    """The value at the middle λ (the lower middle one when their number is even)."""
    return pts[(len(pts) - 1) // 2][1]


def _sparsity_increases(r: Record) -> bool:
    s = [v for _, v in _per_lambda(r, "sparsity_lam")]
    return all(a < b for a, b in zip(s, s[1:]))


def _acc_vs_no_penalty(pick: Callable[[list[tuple[float, float]]], float]) -> Quantity:
    """Lab 3: accuracy at the λ that ``pick`` chooses − at λ = 0, in points."""
    def q(r: Record) -> float:
        pts = _per_lambda(r, "acc_lam")
        return 100 * (pick(pts) - pts[0][1])
    return q


def _bn_fold_diff(r: Record) -> float:
    """Lab 7: max |BN-folded − unfolded|; ``bn_fold_max_diff_x1e6`` keeps the digits that
    ``record_headline``'s 4-decimal rounding takes from ``bn_fold_max_diff`` (≈ 1e-7 reads 0.0)."""
    return r["bn_fold_max_diff_x1e6"] / 1e6 if "bn_fold_max_diff_x1e6" in r else r["bn_fold_max_diff"]


def _after_finetuned_baseline(key: str) -> Quantity:
    """Lab 5: ``key`` − the baseline fine-tuned for the same epochs, in points."""
    def q(r: Record) -> float:
        if not r["baseline_finetuned"]:
            raise NotMeasured(f"{r.lab} does not fine-tune the baseline (`baseline_finetuned` is false): "
                              "`acc_after_baseline` is its accuracy before fine-tuning")
        return 100 * (r[key] - r["acc_after_baseline"])
    return q


# --------------------------------------------------------------------------- comparisons
# op -> (threshold text, holds(measured, threshold), margin: >= 0 when it holds, smaller = worse)
OPS: dict[str, tuple[Callable[[Any], str], Callable[[Any, Any], bool], Callable[[Any, Any], float]]] = {
    ">=": (lambda t: f"≥ {t:g}", operator.ge, lambda m, t: m - t),
    ">": (lambda t: f"> {t:g}", operator.gt, lambda m, t: m - t),
    "<=": (lambda t: f"≤ {t:g}", operator.le, lambda m, t: t - m),
    "within": (lambda t: f"within ±{t:g}", lambda m, t: abs(m) <= t, lambda m, t: t - abs(m)),
    "between": (lambda t: f"{t[0]:g} – {t[1]:g}", lambda m, t: t[0] <= m <= t[1],
                lambda m, t: min(m - t[0], t[1] - m)),
    "is": (lambda t: str(t).lower(), lambda m, t: m is t, lambda m, t: 0.0 if m is t else -1.0),
}


@dataclass(frozen=True)
class Claim:
    """One lesson: ``quantity`` of the lab's headlines, compared by ``op`` with ``threshold``.

    ``seeds``: how runs of several seeds combine (``mean``, or ``worst``: the seed with the smallest
    margin); booleans always take the worst. ``min_seeds``: how many seeds the claim asks for.
    """

    id: str
    lab: str
    text: str
    quantity: Quantity
    op: str
    threshold: Any
    seeds: str = "mean"
    min_seeds: int = 1

    @property
    def threshold_text(self) -> str:
        return OPS[self.op][0](self.threshold)

    def holds(self, measured: Any) -> bool:
        return measured is not None and bool(OPS[self.op][1](measured, self.threshold))

    def combine(self, values: list[Any]) -> Any:
        if self.seeds == "mean" and not any(isinstance(v, bool) for v in values):
            return statistics.fmean(values)
        return min(values, key=lambda v: OPS[self.op][2](v, self.threshold))


L1, L2, L3, L4, L5, L6 = nbu.LAB_IDS[:6]
CLAIMS: tuple[Claim, ...] = (
    # issue 11
    Claim("L1.1", L1, "epochs run with early stopping ÷ epoch budget", ratio("epochs_run", "epoch_budget"), "<=", 0.7),
    Claim("L1.1b", L1, "best val accuracy with early stopping − best over the full budget (points)",
          points("best_val_acc_early_stop", "best_val_acc"), "within", 1.0),
    Claim("L1.2", L1, "top-1 fine-tune-all − scratch on a scarce, skewed target split (points)",
          points("top1_finetune", "top1_scratch"), ">=", 10),
    Claim("L1.3", L1, "top-1 frozen backbone − scratch (points)", points("top1_frozen", "top1_scratch"), ">=", 5),
    Claim("L1.4", L1, "mean accuracy of the minority classes, fine-tune-all − scratch (points)",
          points("minority_acc_finetune", "minority_acc_scratch"), ">=", 15),
    Claim("L1.5", L1, "the best learning rate of the sweep is interior", flag("best_lr_interior"), "is", True),
    Claim("L2.1", L2, "best teacher − student alone (points)", _teacher_gap, ">=", 8),
    Claim("L2.2", L2, "KD student (from the better teacher, fixed T) − student alone, mean over seeds (points)",
          _kd_gap, ">=", 1.0, seeds="mean", min_seeds=2),
    Claim("L2.2b", L2, "the same, worst seed (points)", _kd_gap, ">", 0, seeds="worst", min_seeds=2),
    Claim("L2.3", L2, "pretrained teacher − scratch teacher (points)", points("acc_b", "acc_a"), ">=", 1.0),
    Claim("L3.1", L3, "sparsity strictly increases with λ", _sparsity_increases, "is", True),
    Claim("L3.1b", L3, "share of |γ| < 1e-2 at the middle λ", lambda r: _middle(_per_lambda(r, "sparsity_lam")),
          ">=", 0.4),
    Claim("L3.2", L3, "accuracy at the middle λ − at λ = 0 (points)", _acc_vs_no_penalty(_middle), ">=", -1.5),
    Claim("L3.3", L3, "accuracy at the largest λ − at λ = 0 (points)", _acc_vs_no_penalty(lambda p: p[-1][1]),
          "<=", -5),
    Claim("L4.1", L4, "50 % pruned before fine-tuning − unpruned (points)", points("acc_pruned50", "acc_unpruned"),
          ">=", -2),
    Claim("L4.2", L4, "masked and physically pruned accuracies are equal", flag("masked_equals_pruned50"), "is", True),
    Claim("L4.3", L4, "params ratio at 50 %", value("params_ratio50"), "<=", 0.35),
    Claim("L4.3b", L4, "FLOPs ratio at 50 %", value("flops_ratio50"), "<=", 0.6),
    Claim("L4.4", L4, "90 % pruned before fine-tuning − unpruned (points)", points("acc_pruned90", "acc_unpruned"),
          "<=", -10),
    Claim("L5.1", L5, "50 % pruned + FT − baseline fine-tuned for the same epochs (points)",
          _after_finetuned_baseline("acc_after_pruned50"), ">=", -1.0),
    Claim("L5.2", L5, "90 % pruned + FT − that baseline (points)", _after_finetuned_baseline("acc_after_pruned90"),
          ">=", -10),
    Claim("L5.3", L5, "CPU batch-64 speed-up at 50 %", value("speedup_b64_pruned50"), ">=", 1.5),
    Claim("L5.3b", L5, "CPU batch-64 speed-up at 90 %", value("speedup_b64_pruned90"), ">=", 3.0),
    Claim("L5.4", L5, "saved-file (serialized state dict) size ratio at 50 %", value("size_ratio_pruned50"),
          "<=", 0.4),
    # L6.1 read −0.68 and +2.83 in two runs: within run-to-run noise of its threshold, so (issue 11) it
    # takes the mean over >= 2 seeds, each seed listed (2026-12-07: +2.83 and −2.11). L7.5 stays one seed:
    # lab 7's own seed does not move it (k-means is deterministic: −2.84 for seeds 0 and 1 on the same
    # lab 5 models); it varied between runs with the lab 5 models each run fine-tuned.
    Claim("L6.1", L6, "depthwise-separable − plain at the smallest common parameter budget, mean over seeds (points)",
          points("acc_smallest_depthwise", "acc_smallest_plain"), ">=", 2, min_seeds=2),
    Claim("L6.2", L6, "latency ratio, 90 % unstructured-pruned ÷ dense", value("latency_ratio_pruned90"),
          "between", (0.85, 1.15)),
    Claim("L6.3", L6, "fp16 size ratio", value("fp16_size_ratio"), "<=", 0.55),
    Claim("L6.3b", L6, "compressed storage of the 90 %-pruned weights ÷ dense fp32",
          value("compressed_size_ratio_pruned90"), "<=", 0.3),
    Claim("L6.4", L6, "low-rank accuracy − full (points; the largest rank of the sweep with ≤ half the weights)",
          points("acc_low_rank", "acc_full_rank"), ">=", -1.0),
    # issue 13
    Claim("L7.1", LAB7, "int8 PTQ accuracy − fp32 on the same model (points)", points("acc_int8", "acc_fp32"),
          ">=", -1.0),
    Claim("L7.2", LAB7, "int8 CPU batch-64 speed-up", value("speedup_int8_b64"), ">=", 2.0),
    Claim("L7.3", LAB7, "int8 ÷ fp32 state-dict size", value("size_ratio_int8"), "<=", 0.3),
    Claim("L7.4", LAB7, "max |BN-folded − unfolded| output difference", _bn_fold_diff, "<=", 1e-4),
    Claim("L7.5", LAB7, "4-bit k-means weight sharing accuracy − fp32 (points)", points("acc_kmeans4", "acc_fp32"),
          ">=", -2.0),
    # issue 14 (macro-F1 on the public test half, 0–100 points)
    Claim("L8.1", LAB8, "KD student with the decreasing temperature − student alone (macro-F1 points)",
          points("kd_decreasing_f1", "student_f1"), ">=", 1.0),
    Claim("L8.2", LAB8, "the reference's final model is within the budget", flag("final_within_budget"), "is", True),
)


def _plain(v: Any) -> Any:
    """6 significant digits (no float noise such as 0.5000000000000004 at a threshold); bools kept."""
    return v if isinstance(v, bool) or v is None else float(f"{float(v):.6g}")


def evaluate(claim: Claim, records: dict[int, Record], unavailable: str | None = None) -> dict[str, Any]:
    """The claim's row from its lab's runs (``seed -> Record``); ``unavailable``: why the lab has none."""
    row: dict[str, Any] = {"id": claim.id, "lab": claim.lab, "claim": claim.text, "measured": None,
                           "threshold": claim.threshold_text, "holds": False}
    if unavailable:
        return dict(row, status="not run", note=unavailable)
    try:
        per_seed = {seed: _plain(claim.quantity(rec)) for seed, rec in sorted(records.items())}
        bad = [v for v in per_seed.values() if not isinstance(v, bool) and not math.isfinite(v)]
        if bad:
            raise NotMeasured(f"the recorded numbers give {bad[0]}, not a finite number")
    except (NotMeasured, TypeError, ValueError, ZeroDivisionError) as e:
        return dict(row, status="not measured", note=str(e) if isinstance(e, NotMeasured)
                    else f"{claim.lab}'s headline numbers do not give the quantity ({type(e).__name__}: {e})")
    measured = _plain(claim.combine(list(per_seed.values())))
    row.update(measured=measured, holds=claim.holds(measured), status="measured")
    if len(per_seed) > 1:
        row.update(seeds=claim.seeds, per_seed={str(s): v for s, v in per_seed.items()})
    if len(per_seed) < claim.min_seeds:
        row["note"] = f"measured on {len(per_seed)} seed(s); the claim asks for ≥ {claim.min_seeds} (--seeds)"
    return row
