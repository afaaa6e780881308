"""``python -m autograder {release,grade,validate,demo}``: the instructor's command line.

Run with the venv's ``bin`` on PATH (nbgrader runs ``alembic`` by name); this module adds
it when it is missing.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from autograder import notebook as nbu

DEFAULT_COURSE = nbu.REPO / "build" / "course"
DEFAULT_RELEASE = nbu.REPO / "build" / "release"


def _ensure_path() -> None:
    """Put this interpreter's bin folder on PATH (nbgrader calls ``alembic`` by name)."""
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def _lab_arg(value: str | list[str] | None, more: list[str] | None = None) -> list[str] | None:
    values = ([value] if isinstance(value, str) else list(value or [])) + list(more or [])
    if not values:
        return None
    for lab in values:
        if lab not in nbu.available_labs() and lab not in nbu.LAB_IDS:
            raise SystemExit(f"error: unknown lab {lab!r}; lab ids: {', '.join(nbu.LAB_IDS)}")
    return list(dict.fromkeys(values))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


def cmd_release(args: argparse.Namespace) -> int:
    from autograder.release import ReleaseError, release

    try:
        from autograder.runner import without_kernel_tcp_warning

        with without_kernel_tcp_warning():
            release(Path(args.out), Path(args.course_dir), _lab_arg(args.lab, args.labs), db_url=args.db_url,
                    profile=args.profile, dataset=args.dataset,
                    cache=Path(args.cache_dir) if args.cache_dir else None, jobs=args.jobs)
    except ReleaseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    from autograder.errors import GradingError
    from autograder.grade import grade
    from autograder.release import ReleaseError, build_course

    labs = _lab_arg(args.lab)
    course = Path(args.course_dir)
    try:
        if not (course / "gradebook.db").is_file() or (labs and not (course / "release" / labs[0]).is_dir()):
            print(f"grade: no course at {course} yet; building it (release step)")
            build_course(course, labs)
        grade(Path(args.submissions), Path(args.out), course, labs=labs, workers=args.workers,
              deadline=args.deadline, late_penalty_per_day=args.late_penalty_per_day, db_url=args.db_url,
              sandbox=not args.no_sandbox, mem_bytes=int(args.mem_gb * 1024 ** 3), job_timeout=args.job_timeout,
              scheduler=args.scheduler, work_dir=Path(args.work_dir) if args.work_dir else None)
    except (GradingError, ReleaseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def validate_notebook(path: Path) -> tuple[bool, str]:
    """(passed, message) from nbgrader's Validator; the message lists failing cells."""
    from nbgrader.validator import Validator
    from traitlets.config import Config

    if not path.is_file():
        return False, f"{path} does not exist"
    c = Config()
    c.Execute.timeout = 120
    c.Validator.ignore_checksums = False
    try:
        result = Validator(config=c).validate(str(path))
    except Exception as exc:  # noqa: BLE001 - broken notebook: report, fail
        return False, f"could not validate {path}: {type(exc).__name__}: {exc}"
    if not result:
        return True, "Success! Your notebook passes all the tests."
    lines = []
    for key, cells in result.items():
        for cell in cells if isinstance(cells, list) else [cells]:
            lines.append(f"{key}: {str(cell.get('source', cell) if isinstance(cell, dict) else cell)[:300]}")
    return False, "\n".join(lines) or str(result)


def cmd_validate(args: argparse.Namespace) -> int:
    ok, message = validate_notebook(Path(args.notebook))
    print(message)
    return 0 if ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from autograder.demo import demo

    return demo(workers=args.workers, profile=args.profile, sandbox=not args.no_sandbox)


def main(argv: list[str] | None = None) -> int:
    _ensure_path()
    p = argparse.ArgumentParser(prog="python -m autograder", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("release", help="build the course folder, student versions and the student bundle")
    r.add_argument("--lab", help="one lab id (default: every lab under notebooks/)")
    r.add_argument("--labs", nargs="+", help="several lab ids")
    r.add_argument("--out", default=str(DEFAULT_RELEASE), help="where the student bundle (+ .zip) goes")
    r.add_argument("--course-dir", default=str(DEFAULT_COURSE), help="nbgrader course folder to (re)build")
    r.add_argument("--db-url", help="gradebook URL (default sqlite in the course folder)")
    r.add_argument("--profile", choices=("smoke", "fast", "full"),
                   help="also ship the starting checkpoints of this profile (trained once, cached; fast: "
                        "about 30 min on 2 CPU cores, full: a GPU); smoke ones always ship, for grading")
    r.add_argument("--dataset", choices=("digits", "cifar10", "food11"),
                   help="dataset of those checkpoints (default: the profile's, cifar10 when prepared)")
    r.add_argument("--cache-dir", help="where built checkpoints are cached (default build/checkpoint-cache)")
    r.add_argument("--jobs", type=_positive_int, default=1,
                   help="checkpoints trained at once, each in a process of its own with cores/N threads and "
                        "its log beside the cache (default 1: on 2 cores one at a time is faster)")
    r.set_defaults(func=cmd_release)

    g = sub.add_parser("grade", help="autograde a folder or LMS zip of submissions")
    g.add_argument("submissions", help="folder <student>/<lab>/<lab>.ipynb, or a zip (see autograder/README.md)")
    g.add_argument("--out", required=True, help="where grades.csv, cell_scores.csv and feedback/ go")
    g.add_argument("--lab", help="grade only this lab")
    g.add_argument("--workers", type=int, default=None, help="parallel grading processes (default: CPU cores)")
    g.add_argument("--deadline", help="ISO date-time; later timestamp.txt values are late")
    g.add_argument("--late-penalty-per-day", type=float, default=0.0,
                   help="fraction of the raw score taken per started day late (e.g. 0.1)")
    g.add_argument("--db-url", help="also merge the results into this gradebook (sqlite:///… or postgresql://…)")
    g.add_argument("--course-dir", default=str(DEFAULT_COURSE), help="course folder built by release")
    g.add_argument("--mem-gb", type=float, default=2.0, help="memory cap of each grading sandbox, all its processes together (GiB)")
    g.add_argument("--job-timeout", type=float, default=600, help="wall-clock cap per submission (s)")
    g.add_argument("--no-sandbox", action="store_true", help="grade without the bubblewrap sandbox (trusted submissions only)")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="grade on this Dask scheduler (tcp://host:8786) instead of local processes")
    g.add_argument("--work-dir", metavar="DIR", help="where the run's work folder goes; with --scheduler it "
                   "must be on storage every Dask worker sees (default: the temporary folder)")
    g.set_defaults(func=cmd_grade)

    v = sub.add_parser("validate", help="nbgrader validate, exiting 1 when the notebook fails")
    v.add_argument("notebook")
    v.set_defaults(func=cmd_validate)

    d = sub.add_parser("demo", help="run the labs on the embedded dataset, release, grade two students")
    d.add_argument("--workers", type=int, default=None)
    d.add_argument("--profile", choices=("smoke", "fast"), default="fast",
                   help="size of the notebook runs: fast learns on the digits (about 5 min), smoke only "
                        "proves the course runs (grading always uses smoke)")
    d.add_argument("--no-sandbox", action="store_true",
                   help="grade the two demo students without bubblewrap (their notebooks are the course's own)")
    d.set_defaults(func=cmd_demo)

    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
