"""Grade on a Dask cluster: ``python -m autograder grade SUBMISSIONS --out DIR --scheduler ADDRESS``.

Each ticket of :func:`autograder.grade.grade` becomes one Dask task, :func:`grade_ticket`,
which runs the very command of a local run (``python -m autograder.worker TICKET`` through
:func:`autograder.grade._run_worker`: the same sandbox, the same judge) on whichever worker
takes it. What a task reads and writes goes through the run's work folder, so that folder
(``--work-dir``) and the course folder must be on storage every worker sees:

* before anything is sent, :func:`check_workers` runs one task per worker that reads a probe
  file written into the work folder and into the course folder (and checks the sandbox there);
  the first worker that cannot is named in one line and the run stops;
* the submissions are copied into ``<work>/submissions/`` (``collect`` leaves them where the
  instructor put them); each try of a ticket gets its own copy of the ticket, sandbox name and
  feedback file, and its job folder on the worker's own disk, so two tries never share anything;
* results come back to this process, which keeps each in ``<out>/.state/`` as it arrives
  (a killed run resumes), copies the feedback into ``<out>/feedback/`` and appends a line to
  ``<out>/cluster.log`` naming the worker that graded the job.

No grade is lost: a task whose worker dies is run again elsewhere by the scheduler (at most
``distributed.scheduler.allowed-failures`` + 1 tries, 4 by default, then ``KilledWorker``); a
task that raises is retried :data:`RETRIES` times. A job that keeps failing becomes one line of
its submission's ``problems`` and is not kept in ``.state``, so running the command again tries
it again.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path

from autograder import grade as G
from autograder import notebook as nbu
from autograder.collect import Job
from autograder.errors import GradingError

RETRIES = 2  # tries after a task raised (a worker that died is counted by the scheduler instead)
CONNECT_TIMEOUT_S = 30
WORKER_WAIT_S = 600  # for the first worker to join (a batch queue may take a while to start one)
CHECK_TIMEOUT_S = 300
LOG_NAME = "cluster.log"
SHARED_HINT = "put --work-dir and the course folder on storage every Dask worker sees"


# ---------------------------------------------------------------------------- the work folder

def make_work(work_dir: Path) -> Path:
    """A new work folder inside ``work_dir`` (shared storage); removes this host's stale ones first.

    The folder gets the grader's ``pid`` (as in a local run) and ``host``: a folder on shared
    storage is swept only by the host whose process left it.
    """
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for folder in work_dir.glob(G.WORK_PREFIX + "*"):
        try:
            if (folder / "host").read_text() != host:
                continue
            os.kill(int((folder / "pid").read_text()), 0)
        except ProcessLookupError:
            G.remove_tree(folder)
        except (OSError, ValueError):
            continue
    work = Path(tempfile.mkdtemp(prefix=G.WORK_PREFIX, dir=work_dir))
    (work / "host").write_text(host)
    return work


def share_tickets(todo: list[tuple[Path, Job, str]], work: Path) -> dict[Path, Path]:
    """Copy each ticket's submission into ``work``; returns ticket -> where its feedback belongs."""
    from autograder.submission import MAX_NOTEBOOK_BYTES, NotebookError, _read_capped

    (work / "submissions").mkdir(exist_ok=True)
    feedback = {}
    for path, _job, _key in todo:
        ticket = json.loads(path.read_text())
        feedback[path] = Path(ticket["feedback"])
        copy = work / "submissions" / path.name.replace(".json", ".ipynb")
        try:
            copy.write_bytes(_read_capped(Path(ticket["job"]["notebook"]), MAX_NOTEBOOK_BYTES))
            ticket["job"]["notebook"] = str(copy)
        except NotebookError:
            pass  # the worker meets the same error and reports it as this job's problem
        nbu.write_json_atomic(path, ticket)
    return feedback


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_probes(work: Path, course: Path) -> dict[str, str]:
    """Probe files in the work and course folders: ``{path: sha256}`` for the workers to check.

    A course folder this process cannot write to is checked through its ``gradebook.db``.
    """
    token = uuid.uuid4().hex
    probes = {}
    for folder in (work, course):
        path = folder / f".ag-probe-{token}"
        try:
            path.write_text(f"{socket.gethostname()} {token}\n")
        except OSError:
            path = folder / "gradebook.db"
        probes[str(path)] = _sha256(path)
    return probes


def remove_probes(probes: dict[str, str]) -> None:
    for path in probes:
        if Path(path).name.startswith(".ag-probe-"):
            Path(path).unlink(missing_ok=True)


# ---------------------------------------------------------------------------- on a worker

def _worker_name() -> str:
    """This Dask worker as a log names it: ``tcp://address (host)``."""
    try:
        from distributed import get_worker

        address = get_worker().address
    except ValueError:  # not inside a worker (called directly)
        address = f"pid {os.getpid()}"
    return f"{address} ({socket.gethostname()})"


def probe_worker(probes: dict[str, str], sandbox: bool) -> str | None:
    """On a worker: None when it reads every probe as written and can sandbox; else why not."""
    for path, digest in probes.items():
        try:
            if _sha256(Path(path)) != digest:
                return f"reads a different {path} than the grader wrote"
        except OSError as exc:
            return f"cannot read {path} ({exc.strerror or type(exc).__name__})"
    if sandbox:
        from autograder.sandbox import sandbox_check

        problem = sandbox_check()
        if problem:
            return f"cannot run the sandbox: {problem}"
    return None


def grade_ticket(ticket_path: str, timeout: float) -> dict:
    """On a worker: one try of one ticket, as a local run grades it; ``{result, worker, try}``.

    The try works on its own copy of the ticket (own key, sandbox name and feedback file) and
    its job folder is in this node's temporary folder, not on the shared storage: a try the
    scheduler gave up on may still be running somewhere, and a kernel's sockets need a short,
    local path.
    """
    base = Path(ticket_path)
    try:
        ticket = json.loads(base.read_text())
    except OSError as exc:
        raise GradingError(f"worker {_worker_name()} cannot read {base}: {SHARED_HINT}") from exc
    attempt = uuid.uuid4().hex[:8]
    ticket["key"] = f"{ticket['key']}-{attempt}"
    ticket["sandbox_name"] = f"ag-{ticket['key']}"
    ticket["feedback"] = str(base.parent.parent / "feedback" / ticket["key"] / Path(ticket["feedback"]).name)
    G.sweep_stale_work()  # job folders on this node whose worker died
    local = Path(tempfile.mkdtemp(prefix=G.WORK_PREFIX))
    (local / "pid").write_text(str(os.getpid()))
    ticket["work"] = str(local)  # the job folder: on the node's disk (sockets, tmpfs mounts), never shared
    path = base.with_name(f"{base.stem}-{attempt}.json")
    nbu.write_json_atomic(path, ticket)
    env = G._worker_env()
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # nbgrader runs alembic
    try:
        result = G._run_worker(path, timeout, env)
    finally:
        if not os.environ.get("AUTOGRADER_KEEP_WORK"):
            G.remove_tree(local)
    return {"result": result, "worker": _worker_name(), "try": attempt}


# ---------------------------------------------------------------------------- the client

def connect(address: str):
    """A Dask client of the scheduler at ``address`` with at least one worker; GradingError if none."""
    from distributed import Client

    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise GradingError(f"cannot reach the Dask scheduler at {address}: {str(exc).splitlines()[0][:200]}") from None
    try:
        if not client.nthreads():
            print(f"waiting up to {WORKER_WAIT_S} s for a Dask worker to join {address} …", flush=True)
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except (OSError, TimeoutError) as exc:
        client.close()
        raise GradingError(f"no Dask worker joined the scheduler at {address} within {WORKER_WAIT_S} s") from exc
    return client


def check_workers(client, probes: dict[str, str], sandbox: bool) -> list[str]:
    """One task per worker (:func:`probe_worker`); returns the workers, or GradingError naming one that fails."""
    workers = sorted(client.nthreads())
    futures = {w: client.submit(probe_worker, probes, sandbox, workers=[w], allow_other_workers=False,
                                pure=False, key=f"ag-probe-{uuid.uuid4().hex}") for w in workers}
    for w, fut in futures.items():
        try:
            problem = fut.result(timeout=CHECK_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - cannot import autograder, died, timed out: all say "this worker"
            problem = f"could not run the check ({type(exc).__name__}: {str(exc).splitlines()[0][:150] if str(exc) else ''})"
        if problem:
            hint = "" if problem.startswith("cannot run the sandbox") else f": {SHARED_HINT}"
            raise GradingError(f"Dask worker {w} {problem}{hint}")
    return workers


class ClusterLog:
    """``<out>/cluster.log``: the run, its workers, and which worker graded each job (appended)."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOG_NAME

    def write(self, text: str) -> None:
        stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {text}\n")


def _tries(ticket: Path) -> int:
    """How many tries of ``ticket`` started (each wrote its own copy of the ticket)."""
    return sum(1 for p in ticket.parent.glob(f"{ticket.stem}-*.json") if not p.name.endswith(".result.json"))


def _collect_feedback(result: dict, dest: Path) -> dict:
    """Copy a try's feedback file to where a local run writes it; the result then names that."""
    if not result.get("feedback"):
        return result
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result["feedback"], dest.with_suffix(".tmp"))
        os.replace(dest.with_suffix(".tmp"), dest)
    except OSError as exc:
        problem = f"no feedback: it could not be copied from the work folder ({exc.strerror or type(exc).__name__})"
        return {k: v for k, v in result.items() if k != "feedback"} | {"problems": result["problems"] + [problem]}
    return dict(result, feedback=str(dest))


def _finish(fut, ticket: Path, job: Job, key: str, feedback: Path, out: Path, log: ClusterLog) -> dict:
    """The result of one finished (or failed) task; a graded one is kept in ``.state``."""
    tries = _tries(ticket)
    if fut.status == "finished":
        done = fut.result()
        result = _collect_feedback(done["result"], feedback)
        nbu.write_json_atomic(G._state_path(out, job), {"key": key, "result": result})
        log.write(f"{job.safe_id}/{job.lab}: graded by {done['worker']} in {result.get('seconds', 0):.1f} s "
                  f"(try {tries})")
        return result
    if fut.status == "cancelled":  # the scheduler forgot it (restarted, or this client lost it)
        raise GradingError(f"the Dask scheduler lost the job of {job.safe_id}/{job.lab}; the results so far "
                           f"are kept in {out / G.STATE}: run the same command again to resume")
    from distributed import KilledWorker

    exc = fut.exception()
    if not isinstance(exc, KilledWorker):  # raised: Dask retried it, maybe before it wrote its copy
        tries = max(tries, RETRIES + 1)
    why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:150] if str(exc) else ''}"
    log.write(f"{job.safe_id}/{job.lab}: NOT graded after {tries} tries ({why})")
    return {"student": job.student, "lab": job.lab, "graded": False, "cells": {},
            "problems": list(job.problems) + [f"not graded: the grading job failed on the cluster "
                                              f"({tries} tries, last: {why}); grade again to retry it"]}


def run_jobs(scheduler: str, todo: list[tuple[Path, Job, str]], results: dict, work: Path, course: Path,
             out: Path, job_timeout: float, progress: bool, sandbox: bool) -> None:
    """Grade ``todo`` (ticket, job, key) on the Dask cluster at ``scheduler``; fills ``results``."""
    from distributed import as_completed

    if not todo:
        return
    feedback = share_tickets(todo, work)
    log = ClusterLog(out)
    client = connect(scheduler)
    probes = write_probes(work, course)
    try:
        workers = check_workers(client, probes, sandbox)
        remove_probes(probes)
        try:  # a lambda travels by value: the scheduler need not import autograder
            failures = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
        except Exception:  # noqa: BLE001 - only for the log
            failures = "?"
        log.write(f"grading {len(todo)} jobs on {scheduler}: workers {', '.join(workers)}; "
                  f"retries={RETRIES}, allowed-failures={failures}; work folder {work}")
        run = uuid.uuid4().hex[:8]
        futures = {client.submit(grade_ticket, str(t), job_timeout + 60, retries=RETRIES, pure=False,
                                 key=f"ag-grade-{run}-{t.stem}"): (t, job, key) for t, job, key in todo}
        bar = _bar(len(todo), progress)
        for fut in as_completed(list(futures), loop=client.loop):
            ticket, job, key = futures.pop(fut)
            results[(job.student, job.lab)] = _finish(fut, ticket, job, key, feedback[ticket], out, log)
            fut.release()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    finally:
        remove_probes(probes)
        client.close()


def _bar(total: int, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="grading on dask", unit="nb", file=sys.stdout)
