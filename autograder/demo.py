"""``python -m autograder demo``: the course end to end on the embedded dataset (~minutes, 2 cores).

1. run the six source notebooks in order on the embedded digits, under ``fast`` by default (whose
   digits sizes, :data:`labkit.profile.DIGITS_SIZES`, are chosen so that the models learn in about
   5 minutes) or ``smoke`` (seconds, accuracies at chance), with one temporary artifacts folder
   (lab 4 and 5 read what lab 3 and 4 wrote), printing run time, pass/fail and the headline
   numbers each notebook recorded (its entry of ``<artifacts>/headlines.json``, see
   :func:`labkit.artifacts.record_headline`);
2. build the release (course folder, checkpoints, student versions, bundle) in a temp folder;
3. grade two students, the reference solutions (with the ``model.pt`` lab 8 exported) and the
   untouched student version, and print their grade table and lab 8's leaderboard (grading always
   runs under ``smoke``; the model is evaluated on the hidden half of the digits test set).

The kernels' start-up warning about unencrypted TCP is filtered out of the output.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from autograder import notebook as nbu
from autograder.capstone import MODEL_FILE
from autograder.runner import without_kernel_tcp_warning


def _headlines(artifacts: Path, lab: str) -> str:
    """The numbers ``lab`` recorded with ``labkit.artifacts.record_headline``, as one line."""
    from labkit.artifacts import HEADLINES

    try:
        data = json.loads((artifacts / HEADLINES).read_text(encoding="utf-8")).get(lab.split("_")[0], {})
    except (OSError, json.JSONDecodeError):
        return ""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(data.items())
                     if k not in ("profile", "dataset"))


def demo(workers: int | None = None, keep: Path | None = None, profile: str = "fast", sandbox: bool = True) -> int:
    """Returns 0 when every lab ran and both students were graded, else 1.

    The notebooks run on the embedded digits dataset under ``profile``: ``fast`` (the default) learns
    for real (lab 3's VGG above 90 %); ``smoke`` only proves that the whole course runs, with
    accuracies near chance. Release and grading take about two more minutes either way. ``sandbox``:
    grade in bubblewrap (the default; checked first, so a machine without it stops at once with one
    line) or, when False, without it (the demo grades only the reference and the untouched notebook).
    """
    with without_kernel_tcp_warning():
        return _demo(workers, keep, profile, sandbox)


def _demo(workers: int | None, keep: Path | None, profile: str, sandbox: bool) -> int:
    from autograder.sandbox import sandbox_check

    # the demo ends by grading in the sandbox: say so now, not after minutes of notebooks
    problem = sandbox_check() if sandbox else None
    if problem:
        print(f"demo: cannot grade here: {problem}")
        return 1
    os.environ["LABKIT_DATASET"] = "digits"  # the embedded dataset: no download, ever
    from autograder.release import build_bundle, build_course
    from autograder.runner import run_notebook

    labs = nbu.available_labs()
    if not labs:
        print("demo: no notebooks under notebooks/")
        return 1
    ok = True
    tmp = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="autograder-demo-"))
    try:
        arts = tmp / "artifacts"
        arts.mkdir(parents=True, exist_ok=True)
        print(f"demo: running {len(labs)} notebooks under LABKIT_PROFILE={profile} on the embedded digits "
              f"(artifacts in {arts})")
        if profile == "smoke":
            print("      smoke trains for a few steps only: accuracies sit near chance; "
                  "`make demo PROFILE=fast` learns for real")
        else:
            print(f"      {profile} on the digits: the models learn (accuracies on 359 test images); "
                  f"grading runs under smoke")
        for lab in labs:  # each in a folder of its own that is kept: lab 8 leaves its model.pt there
            res = run_notebook(nbu.source_path(lab), arts, profile=profile, workdir=tmp / "runs" / lab)
            status = "ok" if res.error is None else f"FAILED: {res.error}"
            head = _headlines(arts, lab)
            print(f"  {lab:<32} {res.seconds:6.1f} s  {status}{'  ' + head if head else ''}")
            ok &= res.error is None
        t0 = time.perf_counter()
        course = build_course(tmp / "course", labs, log=lambda m: print("  " + m))
        build_bundle(course, tmp / "release", labs)
        print(f"demo: release built in {time.perf_counter() - t0:.0f} s")
    except Exception:
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _grade_two(tmp, labs, workers, ok, keep, sandbox)


def _grade_two(tmp: Path, labs: list[str], workers: int | None, ok: bool, keep: Path | None,
               sandbox: bool = True) -> int:
    from autograder.grade import grade
    from autograder.judge import reference_nb

    try:
        course, subs = tmp / "course", tmp / "submissions"
        for lab in labs:
            src = nbu.read_nb(course / "source" / lab / f"{lab}.ipynb")
            nbu.write_json_atomic(subs / "reference" / lab / f"{lab}.ipynb", reference_nb(src))
            model = tmp / "runs" / lab / MODEL_FILE  # the capstone's exported model goes beside the notebook
            if model.is_file():
                shutil.copyfile(model, subs / "reference" / lab / MODEL_FILE)
            shutil.copytree(course / "release" / lab, subs / "untouched" / lab, dirs_exist_ok=True)
        print("demo: grading two students (reference solutions, untouched student version)")
        rows = grade(subs, tmp / "grades", course, workers=workers, quiet=True, sandbox=sandbox)
        print()
        print(f"{'student':<10} " + " ".join(f"{lab.split('_')[0]:>9}" for lab in labs) + f" {'total':>11}")
        for student in ("reference", "untouched"):
            mine = {r["assignment"]: r for r in rows if r["student_id"] == student}
            cells = [f"{float(mine[lab]['score']):4.1f}/{float(mine[lab]['max_score']):<4.1f}" if lab in mine else "-"
                     for lab in labs]
            tot = sum(float(mine[lab]["score"]) for lab in mine)
            mx = sum(float(mine[lab]["max_score"]) for lab in mine)
            print(f"{student:<10} " + " ".join(f"{c:>9}" for c in cells) + f" {tot:5.1f}/{mx:<5.1f}")
        print("(written questions are graded by hand: the reference scores autograded points only)")
        problems = [f"{r['student_id']}/{r['assignment']}: {r['problems']}" for r in rows if r["problems"]]
        for line in problems:
            print("  problem:", line)
        ok &= all(r["status"].startswith("graded") for r in rows)
        board = tmp / "grades" / "leaderboard.csv"
        if board.is_file():
            print("capstone leaderboard (hidden test half):")
            print("  " + board.read_text().replace("\n", "\n  ").rstrip())
    finally:
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1
