"""Grading throughput: the same batch graded with 1 and with N worker processes.

``run(n_submissions=20, workers=(1, N))`` builds a course for one lab (the tiny self-made
assignment of ``tests/grading_fixtures.py`` by default, so it measures the grader and not a
lab's training time; pass ``lab=`` to use a real lab), writes ``n_submissions`` copies of the
reference solution, grades them once per worker count and returns seconds per notebook and
the speed-up ratio. Goal on 2 cores: ratio >= 1.8.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(n_submissions: int = 20, workers: tuple[int, ...] = (1, os.cpu_count() or 1), lab: str | None = None,
        sandbox: bool = True) -> dict:
    """Grade ``n_submissions`` notebooks with each worker count; returns timings.

    Result: ``{"lab", "n_submissions", "sandbox", "runs": [{"workers", "seconds",
    "seconds_per_notebook"}], "ratio"}`` where ratio = time(first) / time(last).
    """
    sys.path.insert(0, str(REPO / "tests"))
    import grading_fixtures as gf

    from autograder import notebook as nbu
    from autograder.grade import grade
    from autograder.release import build_course

    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    tmp = Path(tempfile.mkdtemp(prefix="bench-grading-"))
    try:
        if lab is None:
            notebooks, lab = gf.write_tiny_source(tmp / "notebooks"), gf.TINY_LAB
        else:
            notebooks = nbu.NOTEBOOKS
        course = build_course(tmp / "course", [lab], notebooks, log=lambda m: None)
        ref = gf.reference(nbu.read_nb(course / "source" / lab / f"{lab}.ipynb"))
        for i in range(n_submissions):
            gf.write_submission(tmp / "subs", f"s{i:03d}", lab, ref)
        runs = []
        for w in workers:
            t0 = time.perf_counter()
            rows = grade(tmp / "subs", tmp / f"out{w}", course, labs=[lab], workers=w, sandbox=sandbox,
                         progress=False, quiet=True)
            dt = time.perf_counter() - t0
            if not all(r["status"].startswith("graded") for r in rows):
                raise RuntimeError(f"benchmark batch not graded cleanly: {[r['problems'] for r in rows][:2]}")
            runs.append({"workers": w, "seconds": round(dt, 2), "seconds_per_notebook": round(dt / n_submissions, 3)})
        return {"lab": lab, "n_submissions": n_submissions, "sandbox": sandbox, "runs": runs,
                "ratio": round(runs[0]["seconds"] / runs[-1]["seconds"], 3) if len(runs) > 1 else 1.0}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    import json

    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 20), indent=1))
