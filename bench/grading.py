"""Grading throughput: the same batch graded with 1 and with N worker processes.

``run(n_submissions=20, workers=(1, N))`` builds a course for one lab (the tiny self-made
assignment of :mod:`autograder.samples` by default, so it measures the grader and not a
lab's training time; pass ``lab=`` to use a real lab), writes ``n_submissions`` copies of the
reference solution (:func:`autograder.judge.reference_nb`), grades them once per worker count
and returns seconds per notebook and the speed-up ratio. Goal on 2 cores: ratio >= 1.8.
``run_dask`` compares 1 local worker with 2 workers of a Dask cluster on this machine
(``grade --scheduler``); ``run_launcher`` 1 worker whose jobs are forked by an
:mod:`autograder.launcher` with 1 worker that starts a fresh interpreter per job.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


@contextlib.contextmanager
def _fresh_processes(on: bool = True):
    """Grade with a fresh ``python -m autograder.worker`` per job (no launcher) while inside, if ``on``."""
    saved = os.environ.get("AUTOGRADER_NO_LAUNCHER")
    if on:
        os.environ["AUTOGRADER_NO_LAUNCHER"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("AUTOGRADER_NO_LAUNCHER", None)
        else:
            os.environ["AUTOGRADER_NO_LAUNCHER"] = saved


def _timed_grade(tmp: Path, out: str, course: Path, lab: str, n_submissions: int, sandbox: bool, **kw) -> dict:
    """Grade the batch in ``tmp / "subs"`` into ``tmp / out``; ``{"seconds", "seconds_per_notebook"}``."""
    from autograder.grade import grade

    t0 = time.perf_counter()
    rows = grade(tmp / "subs", tmp / out, course, labs=[lab], sandbox=sandbox, progress=False, quiet=True, **kw)
    dt = time.perf_counter() - t0
    if not all(r["status"].startswith("graded") for r in rows):
        raise RuntimeError(f"benchmark batch not graded cleanly: {[r['problems'] for r in rows][:2]}")
    return {"seconds": round(dt, 2), "seconds_per_notebook": round(dt / n_submissions, 3)}


def _same_csvs(a: Path, b: Path) -> bool:
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in ("grades.csv", "cell_scores.csv"))


def run_launcher(n_submissions: int = 20, lab: str | None = None, sandbox: bool = True) -> dict:
    """The same batch graded by 1 worker, with launchers (forked workers) and with a fresh process per job.

    Result: ``{"lab", "n_submissions", "sandbox", "runs": [{"launcher", "seconds", "seconds_per_notebook"}],
    "ratio", "same_csv"}``; ratio = time without / time with the launcher.
    """
    tmp = Path(tempfile.mkdtemp(prefix="bench-grading-launcher-"))
    try:
        course, lab = _batch(tmp, lab, n_submissions)
        runs = []
        for launcher in (False, True):
            with _fresh_processes(not launcher):
                runs.append({"launcher": launcher, **_timed_grade(tmp, f"out-{launcher}", course, lab, n_submissions,
                                                                   sandbox, workers=1)})
        return {"lab": lab, "n_submissions": n_submissions, "sandbox": sandbox, "runs": runs,
                "ratio": round(runs[0]["seconds"] / runs[1]["seconds"], 3),
                "same_csv": _same_csvs(tmp / "out-False", tmp / "out-True")}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(n_submissions: int = 20, workers: tuple[int, ...] = (1, os.cpu_count() or 1), lab: str | None = None,
        sandbox: bool = True) -> dict:
    """Grade ``n_submissions`` notebooks with each worker count; returns timings.

    Result: ``{"lab", "n_submissions", "sandbox", "runs": [{"workers", "seconds",
    "seconds_per_notebook"}], "ratio"}`` where ratio = time(first) / time(last).
    """
    tmp = Path(tempfile.mkdtemp(prefix="bench-grading-"))
    try:
        course, lab = _batch(tmp, lab, n_submissions)
        runs = [{"workers": w, **_timed_grade(tmp, f"out{w}", course, lab, n_submissions, sandbox, workers=w)}
                for w in workers]
        return {"lab": lab, "n_submissions": n_submissions, "sandbox": sandbox, "runs": runs,
                "ratio": round(runs[0]["seconds"] / runs[-1]["seconds"], 3) if len(runs) > 1 else 1.0}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _batch(tmp: Path, lab: str | None, n_submissions: int) -> tuple[Path, str]:
    """A course for ``lab`` (default: the tiny lab) in ``tmp`` and ``n_submissions`` reference submissions."""
    from autograder import notebook as nbu
    from autograder import samples
    from autograder.judge import reference_nb
    from autograder.release import build_course

    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    if lab is None:
        notebooks, lab = samples.write_tiny_source(tmp / "notebooks"), samples.TINY_LAB
    else:
        notebooks = nbu.NOTEBOOKS
    course = build_course(tmp / "course", [lab], notebooks, log=lambda m: None)
    ref = reference_nb(nbu.read_nb(course / "source" / lab / f"{lab}.ipynb"))
    for i in range(n_submissions):
        samples.write_submission(tmp / "subs", f"s{i:03d}", lab, ref)
    return course, lab


def run_dask(n_submissions: int = 20, dask_workers: int = 2, lab: str | None = None, sandbox: bool = True) -> dict:
    """The same batch graded by 1 local worker and by ``dask_workers`` Dask workers on this machine.

    The Dask side is a ``distributed.LocalCluster`` of single-thread worker processes, reached
    through ``grade(scheduler=...)`` like a remote cluster (:mod:`autograder.cluster`). Result:
    ``{"lab", "n_submissions", "sandbox", "runs": [{"where", "workers", "seconds",
    "seconds_per_notebook"}], "ratio", "same_csv"}``; ratio = local / Dask time (goal >= 1.8 with
    2 workers on 2 cores); ``same_csv``: both runs wrote byte-identical CSVs. Both sides start a fresh
    worker process per job (Dask workers have no launcher).
    """
    from distributed import LocalCluster

    tmp = Path(tempfile.mkdtemp(prefix="bench-grading-dask-"))
    try:
        course, lab = _batch(tmp, lab, n_submissions)
        runs = []
        with LocalCluster(n_workers=dask_workers, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster:
            for where, kw in (("local", {"workers": 1}), ("dask", {"scheduler": cluster.scheduler_address})):
                # Dask workers start a fresh process per job: so does the local side here, for a like-for-like ratio
                with _fresh_processes():
                    runs.append({"where": where, "workers": kw.get("workers", dask_workers),
                                 **_timed_grade(tmp, where, course, lab, n_submissions, sandbox, **kw)})
        return {"lab": lab, "n_submissions": n_submissions, "sandbox": sandbox, "runs": runs,
                "ratio": round(runs[0]["seconds"] / runs[1]["seconds"], 3),
                "same_csv": _same_csvs(tmp / "local", tmp / "dask")}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    import json

    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 20), indent=1))
