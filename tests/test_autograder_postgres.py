"""The autograder with a PostgreSQL gradebook (``--db-url postgresql+psycopg2://…``).

A throwaway PostgreSQL server is started for the module: ``initdb`` into a private temp dir and
``pg_ctl start`` listening only on a unix socket in that dir (no TCP port is opened). PostgreSQL
refuses to run as root, so when the tests run as root the server commands run as the ``postgres``
(or ``nobody``) user via ``runuser``. The module is skipped, with the reason, when the PostgreSQL
binaries or psycopg2 are missing or the server cannot start.

The tiny class (reference, blank and a late reference of ``tiny_lab``) is built and graded twice
with the same code path: once with a SQLite ``db_url`` and once with the PostgreSQL one. The CSV
outputs must be byte-identical, the per-cell scores must be the expected ones, and the PostgreSQL
gradebook itself must hold the merged students, submissions, scores and penalty.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import grading_fixtures as gf
from autograder import grade as G
from autograder.job import lab_cells
from autograder import notebook as nbu
from autograder.release import build_course

VENV_BIN = str(Path(sys.executable).parent)
PG_BIN_DIRS = ["/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/lib/postgresql/16/bin",
               "/usr/lib/postgresql/14/bin"]
DB_USER = "grader"   # the superuser created by initdb (trust auth on the private socket only)
DB_NAME = "course"
DEADLINE = "2025-03-01T12:00:00+00:00"


def _pg_tool(name: str) -> str | None:
    """Path of a PostgreSQL server tool: on PATH first, then the usual Debian locations."""
    found = shutil.which(name)
    if found:
        return found
    for d in PG_BIN_DIRS:
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return None


def _server_user() -> str | None:
    """The unprivileged account to run the server as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    pytest.skip("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")


@pytest.fixture(scope="module")
def pg_url():
    """Start a private PostgreSQL server on a unix socket; yield a SQLAlchemy URL to a fresh database."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary)")
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
    user = _server_user()
    prefix = ["runuser", "-u", user, "--"] if user else []
    if user and not shutil.which("runuser"):
        pytest.skip(f"running as root but `runuser` is missing, so PostgreSQL cannot run as {user!r}")
    # Own top-level temp dir (pytest's tmp dirs are 0700 root, which the server user cannot enter);
    # short path because a unix socket path is limited to ~107 bytes.
    base = Path(tempfile.mkdtemp(prefix="agpg-"))
    data, sock, log = base / "data", base / "sock", base / "server.log"
    sock.mkdir()
    if user:
        pw = pwd.getpwnam(user)
        for p in (base, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    base.chmod(0o755)
    sock.chmod(0o755)

    def run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(prefix + cmd, capture_output=True, text=True, timeout=timeout, cwd=base)

    started = False
    try:
        r = run([initdb, "-D", str(data), "-U", DB_USER, "--auth=trust", "-E", "UTF8", "--no-sync"])
        if r.returncode != 0:
            pytest.skip(f"initdb failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        # listen_addresses='' : no TCP at all; the socket lives in our private dir.
        r = run([pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "30",
                 "-o", f"-k {sock} -c listen_addresses='' -c fsync=off", "start"])
        started = r.returncode == 0
        if not started:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            pytest.skip(f"PostgreSQL did not start: {r.stderr.strip() or r.stdout.strip()} {tail}")
        import psycopg2

        conn = psycopg2.connect(host=str(sock), user=DB_USER, dbname="postgres")
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {DB_NAME}")
        conn.close()
        yield f"postgresql+psycopg2://{DB_USER}@/{DB_NAME}?host={sock}"
    finally:
        if started:
            run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(base, ignore_errors=True)


def _grade_class(root: Path, db_url: str) -> dict:
    """Build the tiny course with ``db_url``, grade reference / blank / late with it (2 workers)."""
    notebooks = gf.write_tiny_source(root / "notebooks")
    course = build_course(root / "course", [gf.TINY_LAB], notebooks, db_url=db_url, log=lambda m: None)
    source = nbu.read_nb(course / "source" / gf.TINY_LAB / f"{gf.TINY_LAB}.ipynb")
    release = nbu.read_nb(course / "release" / gf.TINY_LAB / f"{gf.TINY_LAB}.ipynb")
    cases = {"reference": gf.Case(gf.reference(source)),
             "blank": gf.Case(release, zero=("*",)),
             "late": gf.Case(gf.reference(source), timestamp="2025-03-02 13:00:00 UTC")}  # 2 started days
    subs = root / "subs"
    for student, case in cases.items():
        gf.write_submission(subs, student, gf.TINY_LAB, case.nb, timestamp=case.timestamp)
    out = root / "out"
    rows = G.grade(subs, out, course, workers=2, deadline=DEADLINE, late_penalty_per_day=0.1, db_url=db_url,
                   quiet=True, progress=False)
    return {"course": course, "cases": cases, "out": out, "rows": rows}


def _gradebook_contents(db_url: str) -> dict:
    """What the gradebook at ``db_url`` holds for tiny_lab: per-student cell scores, totals, penalty."""
    from nbgrader.api import Gradebook

    got: dict = {}
    with Gradebook(db_url) as gb:
        assert [a.name for a in gb.assignments] == [gf.TINY_LAB]
        for sub in gb.assignment_submissions(gf.TINY_LAB):
            cells = {g.name: (g.auto_score, g.max_score) for snb in sub.notebooks for g in snb.grades}
            got[sub.student_id] = {"cells": cells, "score": sub.score, "max_score": sub.max_score,
                                   "penalty": sub.late_submission_penalty or 0.0}
    return got


@pytest.fixture(scope="module")
def both(pg_url, tmp_path_factory):
    """The tiny class graded with a SQLite and with the PostgreSQL gradebook."""
    old_path = os.environ.get("PATH", "")
    os.environ["PATH"] = VENV_BIN + os.pathsep + old_path  # nbgrader calls `alembic` by name
    try:
        sq_root = tmp_path_factory.mktemp("sqlite")
        sqlite = _grade_class(sq_root, f"sqlite:///{sq_root / 'merged.db'}")
        pg = _grade_class(tmp_path_factory.mktemp("postgres"), pg_url)
    finally:
        os.environ["PATH"] = old_path
    return {"sqlite": sqlite, "sqlite_url": f"sqlite:///{sq_root / 'merged.db'}", "pg": pg, "pg_url": pg_url}


def test_postgres_csv_outputs_equal_sqlite(both):
    for name in ("grades.csv", "cell_scores.csv"):
        pg = (both["pg"]["out"] / name).read_text()
        assert pg == (both["sqlite"]["out"] / name).read_text(), name
    # and they are the right scores, not just equally wrong ones
    rows = {r["student_id"]: r for r in both["pg"]["rows"]}
    assert set(rows) == set(both["pg"]["cases"])
    assert all(r["status"].startswith("graded") for r in rows.values()), rows  # q_why is manual
    assert float(rows["reference"]["raw_score"]) == 3.0 and float(rows["blank"]["raw_score"]) == 0.0
    assert float(rows["late"]["late_submission_penalty"]) == pytest.approx(0.6)


def test_postgres_gradebook_holds_merged_results(both):
    pg = _gradebook_contents(both["pg_url"])
    assert set(pg) == set(both["pg"]["cases"])
    cells = lab_cells(both["pg"]["course"], gf.TINY_LAB)
    for student, case in both["pg"]["cases"].items():
        for gid, want in gf.expected_scores(case, cells).items():
            assert pg[student]["cells"][gid][0] == want, (student, gid, pg[student]["cells"][gid])
    assert pg["reference"]["score"] == 3.0 and pg["reference"]["max_score"] == 4.0
    assert pg["blank"]["score"] == 0.0
    assert pg["late"]["penalty"] == pytest.approx(0.6) and pg["reference"]["penalty"] == 0.0
    # exactly what the SQLite path merged into its gradebook
    assert pg == _gradebook_contents(both["sqlite_url"])
