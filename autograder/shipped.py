"""What a release ships for labs to start from: built once per profile and dataset, cached, resumable.

Two kinds of item, built in this order:

* **starters** (:mod:`labkit.starters`): lab 1's source backbone, lab 2's two teachers and lab 8's
  teacher, trained here with ``labkit.starters.train_starter``;
* **chain checkpoints**: labs 4, 5, 7 and 8 continue from models that labs 3, 4 and 5 write. They
  are built by running those *source* notebooks (they hold the solutions) with nbclient under
  the profile, sharing one artifacts folder so each finds its predecessor's output.

Everything is cached in ``<cache>/<profile>-<dataset>-<key>/`` where ``key`` hashes the
producing notebooks, labkit's source, the profile's sizes and seed: a second release with
nothing changed reuses every file. Each item is recorded in ``done.json`` as soon as it is
written (files atomically), so a build that was interrupted resumes at the first unfinished
item. ``ship`` copies what each requested lab loads into ``<lab>/checkpoints/``, where
:func:`labkit.artifacts.find_artifact` looks.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from autograder import notebook as nbu
from autograder.runner import run_notebook
from labkit.files import atomic_open, write_text

REPO = nbu.REPO
SIZE_LIMIT_MB = 60  # the checkpoints one profile adds to the student bundle


class CheckpointError(RuntimeError):
    """The checkpoints cannot be built; the message is one line saying why and what to do."""


@dataclass(frozen=True)
class Item:
    """One thing to build: a starter (``lab``/``name``) or a producing notebook (``notebook``).

    ``files`` are the glob patterns (``{profile}``/``{dataset}`` filled in) of what it writes;
    ``ships_to`` the labs that load them; ``needs`` the items that must be built first.
    """

    key: str
    files: tuple[str, ...]
    ships_to: tuple[str, ...]
    needs: tuple[str, ...] = ()
    notebook: str | None = None  # lab id of a producing notebook
    starter: tuple[str, str] | None = None  # (lab, name) of labkit.starters.STARTERS
    minutes: float = 1.0  # its build time under fast on 2 CPU cores: only orders a parallel build


# ``minutes``: a whole fast release timed on 2 cores, two threads (README, 2026-12-07).
ITEMS: tuple[Item, ...] = (
    Item("lab1/source_backbone", ("lab1-source_backbone-{profile}-{dataset}.pt",),
         ("lab1_early_stopping_transfer",), starter=("lab1", "source_backbone"), minutes=6.7),
    Item("lab2/teacher_scratch", ("lab2-teacher_scratch-{profile}-{dataset}.pt",),
         ("lab2_knowledge_distillation",), starter=("lab2", "teacher_scratch"), minutes=1.9),
    Item("lab2/teacher_pretrained", ("lab2-teacher_pretrained-{profile}-{dataset}.pt",),
         ("lab2_knowledge_distillation",), starter=("lab2", "teacher_pretrained"), minutes=8.5),
    Item("lab8/teacher", ("lab8-teacher-{profile}-{dataset}.pt",), ("lab8_capstone",), starter=("lab8", "teacher"),
         minutes=10.7),
    Item("lab3_sparsity_training", ("lab3-vgg_sparse-{profile}-{dataset}.pt",), ("lab4_vgg_prune",),
         notebook="lab3_sparsity_training", minutes=7.0),
    Item("lab4_vgg_prune", tuple(f"lab4-{n}-{{profile}}-{{dataset}}.pt" for n in ("baseline", "pruned50", "pruned90")),
         ("lab5_finetune_pruned",), needs=("lab3_sparsity_training",), notebook="lab4_vgg_prune", minutes=0.3),
    Item("lab5_finetune_pruned", tuple(f"lab5-{n}_finetuned-{{profile}}-{{dataset}}.pt"
                                       for n in ("baseline", "pruned50", "pruned90")),
         ("lab7_quantization", "lab8_capstone"), needs=("lab4_vgg_prune",), notebook="lab5_finetune_pruned",
         minutes=3.2),
)
BY_KEY = {item.key: item for item in ITEMS}


def needed_items(labs: list[str]) -> list[Item]:
    """The items the ``labs`` load, with everything they depend on, in build order."""
    want: set[str] = set()
    stack = [item.key for item in ITEMS if set(item.ships_to) & set(labs)]
    while stack:
        key = stack.pop()
        if key not in want:
            want.add(key)
            stack.extend(BY_KEY[key].needs)
    return [item for item in ITEMS if item.key in want]


def _profile(profile: str, dataset: str | None, artifacts: Path):
    from labkit.profile import ProfileError, resolve

    env = {"LABKIT_PROFILE": profile, "LABKIT_ARTIFACTS": str(artifacts),
           "LABKIT_DATA_ROOT": os.environ.get("LABKIT_DATA_ROOT", ""), "LABKIT_SEED": os.environ.get("LABKIT_SEED", "")}
    if dataset:
        env["LABKIT_DATASET"] = dataset
    if os.environ.get("LABKIT_DEVICE"):
        env["LABKIT_DEVICE"] = os.environ["LABKIT_DEVICE"]
    try:
        return resolve({k: v for k, v in env.items() if v})
    except ProfileError as exc:
        raise CheckpointError(str(exc)) from None


def _check_dataset(prof) -> None:
    """Stop in one line when the profile's dataset is not prepared (before anything trains)."""
    from labkit import data

    try:
        data.load_dataset(profile=prof)
    except FileNotFoundError as exc:
        raise CheckpointError(f"cannot build {prof.name} checkpoints on {prof.dataset}: {exc}") from None


def cache_key(prof, notebooks: Path = nbu.NOTEBOOKS) -> str:
    """sha256 (16 hex digits) of the producing notebooks, labkit's source and the profile."""
    from labkit.starters import STARTER_SIZES

    h = hashlib.sha256()
    for item in ITEMS:
        if item.notebook:
            path = nbu.source_path(item.notebook, notebooks)
            h.update(item.notebook.encode() + (path.read_bytes() if path.is_file() else b"missing"))
    for path in sorted((REPO / "labkit").rglob("*.py")):
        h.update(str(path.relative_to(REPO)).encode() + path.read_bytes())
    h.update(json.dumps({"profile": prof.name, "dataset": prof.dataset, "seed": prof.seed, "device": prof.device,
                         "sizes": prof.as_dict()["sizes"], "starter": repr(STARTER_SIZES.get(prof.name))},
                        sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _files(item: Item, folder: Path, prof) -> list[Path]:
    found: list[Path] = []
    for pattern in item.files:
        found += sorted(folder.glob(pattern.format(profile=prof.name, dataset=prof.dataset)))
    return found


def _build_item(item: Item, prof, artifacts: Path, notebooks: Path, timeout: int) -> None:
    if item.starter is not None:
        from labkit.starters import train_starter

        train_starter(*item.starter, profile=prof)
        return
    source = nbu.source_path(item.notebook, notebooks)
    if not source.is_file():
        raise CheckpointError(f"{item.notebook} is needed to build checkpoints but {source} is missing")
    res = run_notebook(source, artifacts, timeout=timeout, profile=prof.name,
                       LABKIT_DATASET=prof.dataset, LABKIT_SEED=str(prof.seed))
    if res.error:
        raise CheckpointError(f"{item.notebook} failed under {prof.name} while building checkpoints: {res.error}")


def build(labs: list[str], profile: str = "smoke", dataset: str | None = None, cache: Path | None = None,
          notebooks: Path = nbu.NOTEBOOKS, timeout: int = 3600, log=print,
          jobs: int = 1) -> tuple[Path, dict[str, list[Path]]]:
    """Build (or reuse) what ``labs`` load under ``profile``/``dataset``.

    ``jobs``: items trained at once (default 1, in this process). With more, each item runs in a
    worker process of its own with ``cores // jobs`` threads, its output in
    ``<cache folder>/logs/<item>.log``; an item starts once the items it needs are built, the
    longest remaining chain first. On 2 cores one item at a time is faster: a whole fast release
    took 32 min 10 s, where two at a time ran each item 2.2x slower with one thread than alone
    with two (lab 8's teacher: 1.94 against 4.4 batches/s). Before labkit kept freed memory in
    the heap (:mod:`labkit.allocator`), page faults kept two threads from scaling, and two at a
    time won (32 min 11 s against 39 min 4 s). More cores than one training run can use are where
    ``jobs`` > 1 may pay.

    Returns ``(cache folder, {lab: [files it loads]})``. Raises :class:`CheckpointError`.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise CheckpointError(f"jobs must be a whole number of at least 1, got {jobs!r}")
    items = needed_items(labs)
    if dataset is None and profile != "smoke":
        dataset = "cifar10"  # what students run; a missing cache stops with the command that prepares it
    cache = Path(cache or REPO / "build" / "checkpoint-cache").resolve()
    prof = _profile(profile, dataset, cache)
    folder = cache / f"{prof.name}-{prof.dataset}-{cache_key(prof, notebooks)}"  # the key ignores artifacts
    artifacts = folder / "artifacts"
    prof = prof.with_(artifacts=artifacts)
    done_path = folder / "done.json"
    done = set(json.loads(done_path.read_text(encoding="utf-8"))) if done_path.is_file() else set()
    todo = [item for item in items if item.key not in done or not _files(item, artifacts, prof)]
    jobs = min(jobs, len(todo)) or 1
    if todo:
        _check_dataset(prof)
        artifacts.mkdir(parents=True, exist_ok=True)
        log(f"checkpoints: building {len(todo)} of {len(items)} for profile={prof.name} dataset={prof.dataset} "
            f"in {folder}" + (f" (resuming: {len(items) - len(todo)} done)" if len(todo) < len(items) else "")
            + (f", {jobs} at a time (logs in {folder / 'logs'})" if jobs > 1 else ""))
    elif items:
        log(f"checkpoints: reusing {len(items)} built for profile={prof.name} dataset={prof.dataset} ({folder})")

    def finished(item: Item) -> None:
        if not _files(item, artifacts, prof):
            raise CheckpointError(f"{item.key} was built but wrote none of {', '.join(item.files)} "
                                  f"into {artifacts}")
        done.add(item.key)
        write_text(done_path, json.dumps(sorted(done), indent=1))

    from tqdm.auto import tqdm

    with tqdm(total=len(todo), desc="checkpoints", unit="item", file=sys.stderr, disable=not todo) as bar:
        if jobs == 1:
            for item in todo:
                bar.set_postfix_str(item.key)
                _build_item(item, prof, artifacts, notebooks, timeout)
                finished(item)
                bar.update()
        else:
            _build_parallel(todo, jobs, prof, artifacts, notebooks, timeout, folder / "logs", finished, bar)
    shipped = {lab: [f for item in items if lab in item.ships_to for f in _files(item, artifacts, prof)]
               for lab in labs}
    return folder, {lab: files for lab, files in shipped.items() if files}


def _chain_minutes(todo: list[Item]) -> dict[str, float]:
    """Each item's minutes plus those of the longest chain of items in ``todo`` that need it."""
    longest: dict[str, float] = {}
    for item in reversed(todo):  # build order: every item comes after what it needs
        after = [longest[other.key] for other in todo if item.key in other.needs and other.key in longest]
        longest[item.key] = item.minutes + max(after, default=0.0)
    return longest


def _executor(jobs: int, threads: int):
    """The worker processes of a parallel build (tests swap in threads)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a fresh interpreter, not a fork of a process that may hold torch's thread pool
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init, initargs=(threads,))


def _worker_init(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)  # also what the notebooks' kernels inherit
    import torch

    torch.set_num_threads(threads)


def _build_logged(item: Item, prof, artifacts: Path, notebooks: Path, timeout: int, log_path: Path) -> str:
    """Build ``item`` with this process's stdout and stderr (its progress bars) in ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "w", encoding="utf-8") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        try:
            _build_item(item, prof, artifacts, notebooks, timeout)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    return item.key


def _build_parallel(todo: list[Item], jobs: int, prof, artifacts: Path, notebooks: Path, timeout: int,
                    logs: Path, finished, bar) -> None:
    """Build ``todo`` ``jobs`` at a time, each as soon as what it needs is built.

    An item that fails stops new ones from starting; those running finish (and count as built),
    then the first failure is raised, naming the item and its log.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    priority = _chain_minutes(todo)
    todo_keys = {item.key for item in todo}
    waiting = list(todo)
    running: dict = {}
    built: set[str] = set()
    failure: BaseException | None = None
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pool = _executor(jobs, threads)
    try:
        while waiting or running:
            ready = [item for item in waiting
                     if all(need in built or need not in todo_keys for need in item.needs)]
            ready.sort(key=lambda item: -priority[item.key])
            while failure is None and ready and len(running) < jobs:
                item = ready.pop(0)
                waiting.remove(item)
                running[pool.submit(_build_logged, item, prof, artifacts, notebooks, timeout,
                                    logs / f"{item.key.replace('/', '-')}.log")] = item
            if not running:
                break
            bar.set_postfix_str(", ".join(item.key for item in running.values()))
            finished_now, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished_now:
                item = running.pop(future)
                try:
                    future.result()
                    finished(item)
                    built.add(item.key)
                    bar.update()
                except BaseException as exc:  # noqa: BLE001 - reported once the running items finish
                    if failure is None:
                        log = logs / f"{item.key.replace('/', '-')}.log"
                        failure = (exc if isinstance(exc, (CheckpointError, KeyboardInterrupt)) else
                                   CheckpointError(f"{item.key} failed: {type(exc).__name__}: "
                                                   f"{str(exc).splitlines()[0] if str(exc) else ''} (log: {log})"))
    except BaseException:  # an interrupt: stop the workers too (their kernels exit with them)
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if failure is not None:
        raise failure


def ship(files: dict[str, list[Path]], root: Path) -> float:
    """Copy each lab's files into ``root/<lab>/checkpoints/``; returns the megabytes copied."""
    total = 0
    for lab, paths in files.items():
        dest = root / lab / "checkpoints"
        dest.mkdir(parents=True, exist_ok=True)
        for path in paths:
            with open(path, "rb") as src, atomic_open(dest / path.name, "wb") as copy:
                shutil.copyfileobj(src, copy)
            total += path.stat().st_size
    return total / 1e6
