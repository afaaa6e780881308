"""Release: course folder from ``notebooks/``, checkpoints, student versions, student bundle.

Course folder (``--course-dir``, default ``build/course``)::

    source/<lab>/<lab>.ipynb (+ checkpoints/: smoke)    the instructor's copy
    release/<lab>/...  (+ checkpoints/: smoke and the release's profile)   the student version
    gradebook.db                                        assignments and their cells

nbgrader's ``generate_assignment`` copies every non-notebook file of ``source/<lab>/`` to
``release/<lab>/`` and ``autograde`` copies them again into each autograded folder, so the
smoke checkpoints the labs load while graded must be in ``source/<lab>/checkpoints/`` *before*
``generate_assignment`` runs. The checkpoints of the profile students run (``--profile fast``)
are added to ``release/`` afterwards: grading never needs them. What is built, and the cache
that makes a second release reuse it, is :mod:`autograder.shipped`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from autograder import capstone, shipped
from autograder import notebook as nbu
from autograder.logs import error_line
from labkit.files import atomic_open

REPO = nbu.REPO
BUNDLE_FILES = ("pyproject.toml", "environment.yml")
BUNDLE_PACKAGES = ("labkit", "data_scripts")


class ReleaseError(RuntimeError):
    """The release cannot be built; the message says why and what to do."""


def build_checkpoints(course: Path, labs: list[str], notebooks: Path = nbu.NOTEBOOKS,
                      cache: Path | None = None, log=print) -> dict[str, list[Path]]:
    """The ``smoke`` checkpoints every lab loads, in ``source/<lab>/checkpoints/`` (grading runs under smoke).

    nbgrader copies them into the student version and into every autograded folder. Built once and
    cached in ``cache`` (default ``build/checkpoint-cache``), like every profile's.
    """
    try:
        _, files = shipped.build(labs, "smoke", cache=cache, notebooks=notebooks, log=log)
    except shipped.CheckpointError as exc:
        raise ReleaseError(str(exc)) from None
    shipped.ship(files, course / "source")
    return {lab: [course / "source" / lab / "checkpoints" / f.name for f in fs] for lab, fs in files.items()}


def ship_profile(course: Path, labs: list[str], profile: str, dataset: str | None = None,
                 notebooks: Path = nbu.NOTEBOOKS, cache: Path | None = None, log=print,
                 jobs: int = 1) -> float:
    """Build (or reuse) the ``profile``/``dataset`` checkpoints and add them to ``release/<lab>/checkpoints/``.

    They go only into the student version (after ``generate_assignment``), not into ``source/``,
    so grading, which runs under ``smoke``, does not copy them into every submission's folder.
    ``jobs``: items trained at once (``shipped.build``). Returns the megabytes shipped.
    """
    try:
        folder, files = shipped.build(labs, profile, dataset, cache=cache, notebooks=notebooks, log=log,
                                      jobs=jobs)
    except shipped.CheckpointError as exc:
        raise ReleaseError(str(exc)) from None
    mb = shipped.ship(files, course / "release")
    if mb > shipped.SIZE_LIMIT_MB:
        raise ReleaseError(f"the {profile} checkpoints are {mb:.1f} MB, over the bundle's limit of "
                           f"{shipped.SIZE_LIMIT_MB} MB; shrink the starters in labkit/starters.py")
    log(f"release: shipped {sum(map(len, files.values()))} {profile} checkpoints ({mb:.1f} MB) from {folder}")
    return mb


def build_course(course: Path, labs: list[str] | None = None, notebooks: Path = nbu.NOTEBOOKS,
                 db_url: str | None = None, checkpoints: bool = True, cache: Path | None = None,
                 log=print) -> Path:
    """Copy source notebooks into ``course/source``, build checkpoints (cached in ``cache``), run
    ``generate_assignment``."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    from autograder.config import make_config

    course = Path(course).resolve()
    labs = labs or nbu.available_labs(notebooks)
    if not labs:
        raise ReleaseError(f"no source notebooks found under {notebooks} (expected <lab>/<lab>.ipynb)")
    for lab in labs:
        src = nbu.source_path(lab, notebooks)
        if not src.is_file():
            raise ReleaseError(f"{src} does not exist; lab ids: {', '.join(nbu.available_labs(notebooks))}")
        dest = course / "source" / lab
        dest.mkdir(parents=True, exist_ok=True)
        for item in src.parent.iterdir():  # the notebook and any data files beside it
            if item.name in ("artifacts", ".ipynb_checkpoints", "checkpoints", "__pycache__", capstone.MODEL_FILE):
                continue
            if item.is_dir():
                shutil.copytree(item, dest / item.name, dirs_exist_ok=True)
            else:
                shutil.copyfile(item, dest / item.name)
    if checkpoints:
        build_checkpoints(course, labs, notebooks, cache=cache, log=log)
    for lab in labs:  # the capstone's test halves: digits for grading under smoke (public half in source/)
        if lab in capstone.MODEL_CELLS:
            capstone.build(course, lab, "digits", [course / "source" / lab], log=log)
    import logging

    # The course's own SQLite gradebook is always written: grading copies it into every job.
    # A different ``db_url`` (e.g. PostgreSQL) gets the same assignments from a second
    # generate_assignment pass (it rewrites release/ identically) so results can be merged there.
    configs = [make_config(course)]
    if db_url and db_url != configs[0].CourseDirectory.db_url:
        configs.append(make_config(course, db_url=db_url))
    for config in configs:
        api = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)
        api.log.setLevel(logging.ERROR)
        for lab in labs:
            res = api.generate_assignment(lab, force=True, create=True)
            if not res.get("success"):
                raise ReleaseError(f"nbgrader generate_assignment {lab} into {config.CourseDirectory.db_url} failed: "
                                   f"{error_line(res.get('error') or res.get('log') or '')}")
            if config is configs[0]:
                log(f"release: generated the student version of {lab}")
    build_judge(course, labs, log)
    return course


def build_judge(course: Path, labs: list[str], log=print) -> None:
    """``<course>/judge/<lab>.json``: the reference's record of every hidden check (see autograder/judge.py).

    It stays with the instructor: grading sandboxes never see the course folder.
    """
    from autograder.judge import JudgeError, build_expected

    for lab in labs:
        with tempfile.TemporaryDirectory(prefix=f"judge-{lab}-") as tmp:
            try:
                build_expected(course / "source" / lab / f"{lab}.ipynb", course / "judge" / f"{lab}.json", Path(tmp))
            except (JudgeError, OSError, subprocess.SubprocessError) as exc:
                raise ReleaseError(f"{lab}: {exc}") from None
        log(f"release: recorded the reference's hidden checks of {lab}")


STUDENT_README = """# Efficient deep learning labs: student bundle

## Install (Python 3.11)

    python3.11 -m venv .venv
    source .venv/bin/activate            # Windows: .venv\\Scripts\\activate
    pip install -e .

or with conda: `conda env create -f environment.yml && conda activate efficient-dl-labkit && pip install -e .`

## Work on a lab

    jupyter lab

Open `<lab>/<lab>.ipynb`, run the first cell (it prints the profile it uses), fill in every
`# YOUR CODE HERE` and answer the written questions where it says `YOUR ANSWER HERE`.
Each function you write has a test cell right after it: run it to check your work.

## Profiles (how big a run is)

Set `LABKIT_PROFILE` before starting JupyterLab:

* `smoke`: seconds per notebook on the small embedded dataset (what the grader uses);
* `fast` (default): minutes per notebook on a laptop CPU;
* `full`: the paper-sized runs, for a GPU.

Example: `LABKIT_PROFILE=smoke jupyter lab`. Labs 1 and 2 start from models the course staff
trained once for you (a pretrained backbone, two teachers) in `<lab>/checkpoints/`. Labs 4, 5
and 7 continue from models built in labs 3, 4 and 5; when you have not run those, they load
the copies in `checkpoints/` and say which file they use.

## Before you submit

Restart the kernel and run all cells, then validate:

    nbgrader validate lab1_early_stopping_transfer/lab1_early_stopping_transfer.ipynb

(or press the *Validate* button in the notebook's toolbar). Read its message: the command
exits 0 even when a test fails. Submit the `.ipynb` file
with its original name, through the course page.
"""


def build_bundle(course: Path, out: Path, labs: list[str] | None = None, repo: Path = REPO) -> tuple[Path, Path]:
    """Write the student bundle folder ``out/student-bundle`` and ``out/student-bundle.zip``.

    Contents: the released notebooks (+ shipped checkpoints), ``labkit/``, ``data_scripts/``,
    ``pyproject.toml``, ``environment.yml`` and a README. Raises ``ReleaseError`` when any
    file of it holds a solution or hidden-test marker.
    """
    course, out = Path(course).resolve(), Path(out).resolve()
    labs = labs or sorted(p.name for p in (course / "release").iterdir() if p.is_dir())
    final = out / "student-bundle"
    stage = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out if out.exists() else None))
    out.mkdir(parents=True, exist_ok=True)
    try:
        for lab in labs:
            shutil.copytree(course / "release" / lab, stage / lab,
                            ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        for pkg in BUNDLE_PACKAGES:
            if (repo / pkg).is_dir():
                shutil.copytree(repo / pkg, stage / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in BUNDLE_FILES:
            if (repo / name).is_file():
                shutil.copyfile(repo / name, stage / name)
        (stage / "README.md").write_text(STUDENT_README, encoding="utf-8")
        leaks = scan_for_leaks(stage) + capstone.find_hidden_images(stage, capstone.hidden_digests(course))
        if leaks:
            raise ReleaseError(f"refusing to write a student bundle with solutions or hidden tests: {leaks[:3]}")
        if final.exists():
            shutil.rmtree(final)
        os.replace(stage, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    zpath = out / "student-bundle.zip"
    with atomic_open(zpath, "wb") as fz, zipfile.ZipFile(fz, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(final.rglob("*")):
            if path.is_file():
                info = zipfile.ZipInfo(str(Path("student-bundle") / path.relative_to(final)), (2020, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, path.read_bytes())
    return final, zpath


def _capstone_for(course: Path, labs: list[str], profile: str, dataset: str | None, log) -> None:
    """The capstone's halves for the shipped profile's dataset: public half into ``release/`` only,
    hidden half for grading (``config.json``'s dataset becomes this one)."""
    from labkit.profile import resolve

    env = {"LABKIT_PROFILE": profile, "LABKIT_DATASET": dataset or "", "LABKIT_DATA_ROOT": os.environ.get("LABKIT_DATA_ROOT", "")}
    name = resolve({k: v for k, v in env.items() if v}).dataset
    for lab in labs:
        if lab in capstone.MODEL_CELLS and name != "digits":
            try:
                capstone.build(course, lab, name, [course / "release" / lab], log=log)
            except capstone.CapstoneError as exc:
                raise ReleaseError(str(exc)) from None


def scan_for_leaks(folder: Path) -> list[str]:
    """``path: marker`` for every text file under ``folder`` holding a solution / hidden-test marker,
    and ``path: hidden half`` for any file of the capstone's hidden test half."""
    found = [f"{p.relative_to(folder)}: hidden half" for p in sorted(Path(folder).rglob("hidden_*"))]
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.suffix in (".ipynb", ".py", ".md", ".txt", ".html", ".json", ".toml", ".yml"):
            text = path.read_text(encoding="utf-8", errors="replace")
            for marker in nbu.LEAK_MARKERS:
                if marker in text:
                    found.append(f"{path.relative_to(folder)}: {marker}")
    return found


def release(out: Path, course: Path, labs: list[str] | None = None, notebooks: Path = nbu.NOTEBOOKS,
            db_url: str | None = None, profile: str | None = None, dataset: str | None = None,
            cache: Path | None = None, log=print, jobs: int = 1) -> dict:
    """The whole release: course folder, checkpoints, student versions, student bundle (+ zip).

    ``profile`` (e.g. ``fast``) and ``dataset`` add that profile's checkpoints to the student
    version, built once and cached (``cache``, default ``build/checkpoint-cache``), ``jobs`` of
    them at a time (default one: faster on 2 cores, see ``shipped.build``).
    """
    course = build_course(course, labs, notebooks, db_url=db_url, cache=cache, log=log)
    labs = labs or nbu.available_labs(notebooks)
    if profile and (profile != "smoke" or dataset):
        ship_profile(course, labs, profile, dataset, notebooks, cache, log=log, jobs=jobs)
        _capstone_for(course, labs, profile, dataset, log)
    bundle, zpath = build_bundle(course, out, labs)
    log(f"release: student bundle {bundle} ({zpath.name})")
    return {"course": Path(course).resolve(), "bundle": bundle, "zip": zpath}
