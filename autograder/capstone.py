"""Lab 8, the capstone: the hidden test half, the model's evaluation and the class leaderboard.

**At release** (:func:`build`): the test set of the capstone's dataset is split in two halves
(:func:`labkit.capstone.split_test`) with a seed drawn once per course and kept in
``<course>/capstone/<lab>/config.json``. The public half goes into the lab's ``checkpoints/``
(shipped, student-visible); the hidden half stays in ``<course>/capstone/<lab>/`` as two files,
``hidden_images-<dataset>.npy`` and ``hidden_labels-<dataset>.npy``. The student bundle's leak
check refuses any ``hidden_*`` file. ``config.json`` holds the instructor's settings: ``dataset``,
``tiers`` (``[[min_macro_f1, points], ...]``: a model within budget gets the points of the highest
tier it reaches), ``timeout_s`` of one evaluation, and ``seed``. Edit it to change the tiers; the
budget itself is :data:`labkit.capstone.BUDGET` (students see it).

**At grading** (:func:`evaluate_job`): the submitted ``model.pt`` (collected beside the notebook,
never the file the student's kernel may have written) and the hidden *images* are copied into a
fresh sandbox folder, where :mod:`autograder.model_eval` loads, checks and runs the model. The
labels never enter a sandbox: the trusted grader scores the predictions here, checks the record
(lengths, types, cost recomputed from ``arch`` / ``kwargs``) and turns macro-F1 into points. The
test cell :data:`MODEL_CELLS` names gets those points instead of a judge verdict.

**Outputs** (:func:`write_leaderboard`): ``leaderboard.csv`` (``student_id, arch, params, flops,
within_budget, accuracy, macro_f1, points, rank``) and ``leaderboard.html`` with the class's
params-vs-F1 scatter, next to ``grades.csv``.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import secrets
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from autograder.logs import printable_line
from autograder.model_eval import MAX_MODEL_BYTES
from labkit.files import write_text

MODEL_FILE = "model.pt"
#: lab id -> grade id of the test cell whose points come from the model (not from hidden checks)
MODEL_CELLS: dict[str, str] = {"lab8_capstone": "model_points"}
EVAL_SCRIPT = Path(__file__).with_name("model_eval.py")
DEFAULT_TIERS: list[list[float]] = [[0.80, 10], [0.75, 8], [0.70, 6], [0.60, 4], [0.40, 2]]
DEFAULT_TIMEOUT_S = 120
LEADERBOARD_COLUMNS = ["student_id", "arch", "params", "flops", "within_budget", "accuracy", "macro_f1",
                       "points", "rank"]


class CapstoneError(RuntimeError):
    """The capstone cannot be set up (release time); the message says why and what to do."""


def is_model_cell(lab: str, grade_id: str | None) -> bool:
    return MODEL_CELLS.get(lab) == grade_id


def folder(course: Path, lab: str) -> Path:
    """``<course>/capstone/<lab>``: instructor-only (never copied into a job or the bundle)."""
    return Path(course) / "capstone" / lab


def read_config(course: Path, lab: str) -> dict | None:
    path = folder(course, lab) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def check_tiers(tiers: Any, max_points: float) -> list[tuple[float, float]]:
    """``[(min_f1, points)]`` sorted by threshold, highest first; ``CapstoneError`` when malformed."""
    try:
        out = sorted(((float(f), float(p)) for f, p in tiers), reverse=True)
    except (TypeError, ValueError):
        raise CapstoneError(f"tiers must be a list of [min_macro_f1, points] pairs, got {tiers!r}") from None
    for f, p in out:
        if not (0.0 <= f <= 1.0 and 0.0 <= p <= max_points):
            raise CapstoneError(f"tier [{f}, {p}]: macro-F1 must lie in [0, 1] and points in [0, {max_points:g}] "
                                f"(the cell's points)")
    return out


def tier_points(macro_f1: float, tiers: list[tuple[float, float]]) -> float:
    """Points of the highest tier whose threshold ``macro_f1`` reaches (0 below every tier)."""
    return max((p for f, p in tiers if macro_f1 >= f), default=0.0)


# ------------------------------------------------------------------------------ release

def build(course: Path, lab: str, dataset: str, public_dirs: list[Path], seed: int | None = None,
          tiers: list | None = None, log=print) -> Path:
    """Split ``dataset``'s test set for ``lab``; public half into each of ``public_dirs``; returns the folder.

    A course keeps its seed (and the instructor's edits to ``config.json``) across releases, so the
    halves never change under students; a different ``dataset`` is added beside the first.
    """
    from labkit import capstone as lc
    from labkit.profile import resolve

    fdir = folder(course, lab)
    fdir.mkdir(parents=True, exist_ok=True)
    config = read_config(course, lab) or {"tiers": tiers or DEFAULT_TIERS, "timeout_s": DEFAULT_TIMEOUT_S,
                                          "seed": seed if seed is not None else secrets.randbelow(2**31)}
    config["dataset"] = dataset
    env = {"LABKIT_PROFILE": "fast" if dataset != "digits" else "smoke", "LABKIT_DATASET": dataset}
    if os.environ.get("LABKIT_DATA_ROOT"):  # where the instructor prepared CIFAR-10
        env["LABKIT_DATA_ROOT"] = os.environ["LABKIT_DATA_ROOT"]
    try:
        test = lc.full_test(resolve(env))
    except (FileNotFoundError, ValueError) as exc:
        raise CapstoneError(str(exc).splitlines()[0]) from None
    public_idx, hidden_idx = lc.split_test(test, int(config["seed"]))
    public, hidden = test.subset(public_idx), test.subset(hidden_idx)
    for d in public_dirs:
        lc.save_split(Path(d) / "checkpoints" / lc.public_test_name(dataset), public, dataset)
    _save_npy(fdir / f"hidden_images-{dataset}.npy", hidden.images.numpy())
    _save_npy(fdir / f"hidden_labels-{dataset}.npy", hidden.labels.numpy())
    write_text(fdir / "config.json", config_text(config))
    log(f"release: {lab} test split of {dataset}: {len(public)} public images shipped, "
        f"{len(hidden)} hidden in {fdir}")
    return fdir


def config_text(config: dict) -> str:
    """``config.json`` one setting per line (tiers one pair each), easy to edit by hand."""
    lines = []
    for key in sorted(config):
        value = config[key]
        if key == "tiers":
            pairs = ",\n  ".join(json.dumps(list(t)) for t in value)
            lines.append(f'"tiers": [\n  {pairs}\n ]')
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value)}")
    return "{\n " + ",\n ".join(lines) + "\n}\n"


def _save_npy(path: Path, array: np.ndarray) -> None:
    from labkit.files import atomic_open

    with atomic_open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def hidden_digests(course: Path) -> set[str]:
    """sha1 of every hidden image of the course (all capstone labs and datasets)."""
    import hashlib

    out: set[str] = set()
    for path in sorted((Path(course) / "capstone").glob("*/hidden_images-*.npy")):
        out |= {hashlib.sha1(row.tobytes()).hexdigest() for row in np.load(path, allow_pickle=False)}
    return out


def find_hidden_images(folder: Path, digests: set[str]) -> list[str]:
    """``path: N hidden images`` for every ``.npy`` / ``.npz`` under ``folder`` holding hidden images,
    whatever its name (the bundle's content check; the name check is in ``scan_for_leaks``)."""
    import hashlib

    found = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.suffix in (".npy", ".npz") and p.is_file()):
        try:
            loaded = np.load(path, allow_pickle=False)
            arrays = [loaded[k] for k in loaded.files] if isinstance(loaded, np.lib.npyio.NpzFile) else [loaded]
        except (OSError, ValueError):
            continue
        n = sum(hashlib.sha1(row.tobytes()).hexdigest() in digests
                for a in arrays if a.dtype == np.uint8 and a.ndim == 4 for row in a)
        if n:
            found.append(f"{path.relative_to(folder)}: {n} hidden images")
    return found


# ------------------------------------------------------------------------------ grading

def macro_f1(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """sklearn's macro-F1 over every class (absent from both sides: 0, still counted)."""
    from sklearn.metrics import f1_score

    if not len(labels):
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(f1_score(labels, preds, labels=list(range(num_classes)), average="macro", zero_division=0))


def _run_eval(jdir: Path, ticket: dict, model: Path, images: Path, dataset: str, timeout: float) -> tuple[dict | None, str | None]:
    """Run :mod:`autograder.model_eval` in a fresh sandbox; ``(record, problem)``."""
    from autograder.job import run_contained, scratch
    from autograder.judge import probe_env

    edir = jdir / "model"
    scratch(edir, 64 * 1024 ** 2)
    shutil.copyfile(model, edir / MODEL_FILE)
    shutil.copyfile(images, edir / "images.npy")
    shutil.copyfile(EVAL_SCRIPT, edir / "model_eval.py")
    rdir = edir / "record"
    scratch(rdir, 4 * 1024 ** 2)
    os.chmod(edir, 0o755)
    os.chmod(rdir, 0o777)
    cmd = [sys.executable, str(edir / "model_eval.py"), str(edir / MODEL_FILE), str(edir / "images.npy"),
           dataset, str(rdir / "out.json")]
    log = jdir / "model_eval.log"
    rc, timed_out = run_contained(ticket, "-m", edir, [rdir], cmd, probe_env(), timeout, log)
    if timed_out:
        return None, f"evaluating model.pt took longer than {timeout:.0f} s and was stopped"
    try:
        raw = _read_record(rdir / "out.json", 2 * 1024 ** 2)
        if raw is None:
            return None, "the model's evaluation wrote an oversized record"
        return json.loads(raw), None
    except (OSError, ValueError):
        from autograder.logs import last_line

        text = log.read_text(errors="replace") if log.is_file() else ""
        why = "it ran out of memory or was killed" if rc in (-9, 137) or "MemoryError" in text else last_line(text)
        return None, f"model.pt could not be evaluated (exit code {rc}): {why}"


def _read_record(path: Path, limit: int) -> bytes | None:
    """The record a sandbox wrote: a regular file, never followed through a link; None when over ``limit``."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path.name} is not a regular file")
        raw = f.read(limit + 1)
    return None if len(raw) > limit else raw


def _checked(record: dict, n: int, num_classes: int) -> tuple[dict, str | None]:
    """The record's fields, re-derived where the grader can; ``(row, problem)``.

    The cost is recomputed from ``arch`` / ``kwargs`` on this side (meta device, no weights), and
    the predictions must be ``n`` class ids: a record that disagrees is refused.
    """
    from labkit import capstone as lc

    if not isinstance(record, dict):
        return {"arch": "", "params": None, "flops": None, "within_budget": False}, \
            "the evaluation record does not match the model's description"
    arch = printable_line(record.get("arch") or "", 40)
    row: dict[str, Any] = {"arch": arch, "params": None, "flops": None,
                           "within_budget": False}
    problem = record.get("problem")
    if record.get("kwargs") is not None:
        try:
            cost = lc.measure(record["arch"], record["kwargs"], num_classes)
            row.update(params=cost.params, flops=cost.flops, within_budget=cost.within(lc.BUDGET))
        except (lc.ModelSpecError, TypeError):
            pass
    if problem:
        return row, printable_line(problem)
    if row["params"] is None or (record.get("params"), record.get("flops")) != (row["params"], row["flops"]):
        return row, "the evaluation record does not match the model's description"
    if not row["within_budget"]:  # the evaluator stops over budget: predictions here mean a forged record
        return row, "the evaluation record does not match the model's description"
    preds = record.get("preds")
    if not (isinstance(preds, list) and len(preds) == n
            and all(type(p) is int and 0 <= p < num_classes for p in preds)):
        return row, "the evaluation returned malformed predictions"
    row["preds"] = preds
    return row, None


def evaluate_job(course: Path, lab: str, model: str | None, jdir: Path, ticket: dict,
                 max_points: float) -> tuple[dict, dict]:
    """Evaluate a job's ``model.pt``; ``(leaderboard row, verdict {"points", "message"})``.

    Never raises for a bad model: every failure is zero points and the verdict's message.
    """
    config = read_config(course, lab) or {}
    row: dict[str, Any] = {"arch": "", "params": None, "flops": None, "within_budget": False,
                           "accuracy": None, "macro_f1": None, "points": 0.0, "problem": None}
    dataset = config.get("dataset")
    images = folder(course, lab) / f"hidden_images-{dataset}.npy"
    labels_path = folder(course, lab) / f"hidden_labels-{dataset}.npy"
    if not (dataset and images.is_file() and labels_path.is_file()):
        row["problem"] = "the course has no hidden test half for this lab (release it again)"
    elif model is None:
        row["problem"] = f"no {MODEL_FILE} submitted beside the notebook"
    elif os.path.getsize(model) > MAX_MODEL_BYTES:
        row["problem"] = (f"{MODEL_FILE} is {os.path.getsize(model) / 2**20:.1f} MiB, over the "
                          f"{MAX_MODEL_BYTES // 2**20} MiB limit")
    else:
        labels = np.load(labels_path, allow_pickle=False)
        num_classes = int(config.get("num_classes", 10))
        record, problem = _run_eval(jdir, ticket, Path(model), images,
                                    dataset, float(config.get("timeout_s", DEFAULT_TIMEOUT_S)))
        if record is not None:
            checked, problem = _checked(record, len(labels), num_classes)
            row.update({k: v for k, v in checked.items() if k != "preds"})
            if problem is None:
                preds = np.asarray(checked["preds"], dtype=np.int64)
                row["accuracy"] = float((preds == labels).mean())
                row["macro_f1"] = macro_f1(preds, labels, num_classes)
                tiers = check_tiers(config.get("tiers", DEFAULT_TIERS), max_points)
                row["points"] = float(tier_points(row["macro_f1"], tiers))
        row["problem"] = printable_line(problem) if problem else None
    if row["problem"]:
        message = f"model.pt: 0 points: {row['problem']}"
    else:
        message = (f"model.pt: hidden-half macro-F1 {row['macro_f1']:.4f}, accuracy {100 * row['accuracy']:.2f} %, "
                   f"{row['params']:,} parameters, {row['flops'] / 1e6:.2f} MFLOPs: {row['points']:g} points")
    return row, {"points": row["points"], "message": message}


# ------------------------------------------------------------------------------ the leaderboard

def leaderboard_rows(results: dict[tuple[str, str], dict], lab: str) -> list[dict]:
    """One row per student of ``lab`` (sorted by rank, then id); rank only for models within budget."""
    rows = []
    for (student, rlab), r in results.items():
        m = r.get("model")
        if rlab != lab or m is None:
            continue
        rows.append({"student_id": student, **{k: m.get(k) for k in LEADERBOARD_COLUMNS[1:-1]}, "rank": None})
    ranked = sorted((r for r in rows if r["within_budget"] and r["macro_f1"] is not None),
                    key=lambda r: -r["macro_f1"])
    for r in ranked:  # competition ranking: equal F1, equal rank
        r["rank"] = 1 + sum(q["macro_f1"] > r["macro_f1"] for q in ranked)
    return sorted(rows, key=lambda r: (r["rank"] is None, r["rank"] or 0, r["student_id"]))


def write_leaderboard(results: dict[tuple[str, str], dict], out: Path) -> list[Path]:
    """``leaderboard.csv`` / ``.html`` for each capstone lab graded in ``results``; the paths written."""
    from autograder.report import fmt, write_csv

    written = []
    for lab in sorted({lab for (_, lab), r in results.items() if r.get("model") is not None}):
        rows = leaderboard_rows(results, lab)
        stem = "leaderboard" if len(MODEL_CELLS) == 1 else f"leaderboard-{lab}"
        body = [[fmt(r["student_id"]), fmt(r["arch"]), fmt(r["params"]), fmt(r["flops"]),
                 fmt(bool(r["within_budget"])).lower(), fmt(r["accuracy"]), fmt(r["macro_f1"]),
                 fmt(float(r["points"] or 0.0)), fmt(r["rank"])] for r in rows]
        write_csv(out / f"{stem}.csv", LEADERBOARD_COLUMNS, body)
        write_text(out / f"{stem}.html", _html(lab, LEADERBOARD_COLUMNS, body, rows))
        written += [out / f"{stem}.csv", out / f"{stem}.html"]
    return written


def _scatter_png(rows: list[dict]) -> str:
    """The class's params-vs-macro-F1 scatter as a base64 PNG (models that were evaluated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from labkit.capstone import BUDGET

    pts = [r for r in rows if r["params"] is not None and r["macro_f1"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    for ok, colour, label in ((True, "tab:blue", "within budget"), (False, "tab:red", "over budget")):
        sel = [r for r in pts if bool(r["within_budget"]) == ok]
        if sel:
            ax.scatter([r["params"] for r in sel], [r["macro_f1"] for r in sel], c=colour, label=label)
    ax.axvline(BUDGET.max_params, color="grey", ls="--", lw=1, label=f"budget {BUDGET.max_params:,} params")
    ax.set_xlabel("parameters")
    ax.set_ylabel("macro-F1 on the hidden half")
    ax.set_title(f"{len(pts)} evaluated models")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _html(lab: str, header: list[str], body: list[list[str]], rows: list[dict]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    trs = "\n".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in body)
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{esc(lab)} leaderboard</title>\n"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:2px 8px;text-align:right}</style></head><body>\n"
            f"<h1>{esc(lab)}: leaderboard</h1>\n<p>Macro-F1 and accuracy on the hidden test half; "
            "rank among models within budget.</p>\n"
            f"<img alt=\"parameters vs macro-F1\" src=\"data:image/png;base64,{_scatter_png(rows)}\">\n"
            f"<table><thead><tr>{head}</tr></thead><tbody>\n{trs}\n</tbody></table>\n</body></html>\n")
