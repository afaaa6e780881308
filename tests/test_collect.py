"""autograder.collect on hostile input: each test builds one and asserts the exact outcome."""
from __future__ import annotations

import copy
import json
import logging
import os
import re
import stat
import sys
import zipfile
import zlib
from pathlib import Path

import nbformat
import pytest

import grading_fixtures as gf
from autograder import archive, lms
from autograder import collect as C
from autograder import submission as S
from autograder.errors import GradingError

LAB = gf.TINY_LAB
MiB = 1024 ** 2
SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+\-]*$")


def _nb() -> dict:
    return gf.reference(gf.tiny_notebook())


def _write(path: Path, nb: dict | str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(nb, bytes):
        path.write_bytes(nb)
    else:
        path.write_text(nb if isinstance(nb, str) else json.dumps(nb), encoding="utf-8")
    return path


def _collect(subs: Path, tmp_path: Path, labs: list[str] = [LAB], **kw) -> dict[str, C.Job]:
    jobs = C.collect(subs, labs, tmp_path / "work", **kw)
    assert jobs == sorted(jobs, key=lambda j: (j.student, j.lab))
    return {j.student: j for j in jobs}


def _outcome(job: C.Job) -> tuple[bool, list[str]]:
    return job.notebook is not None, job.problems


def _symlink_member(zf: zipfile.ZipFile, name: str, target: str) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, target)


def _files_under(folder: Path) -> list[Path]:
    return [Path(d) / f for d, _, files in os.walk(folder) for f in files]


# ------------------------------------------------------------------ today's behaviour kept

def test_folder_layout_keeps_todays_problems(tmp_path):
    subs = tmp_path / "subs"
    gf.write_submission(subs, "alice", LAB, _nb(), timestamp="2025-01-01 10:00:00 UTC")
    gf.write_submission(subs, "bob", LAB, _nb(), filename="copy of tiny.ipynb")
    gf.write_submission(subs, "carol", LAB, "{not json")
    gf.write_submission(subs, "dave", LAB, None)
    (subs / "erin" / "notes").mkdir(parents=True)
    jobs = _collect(subs, tmp_path)
    assert jobs["alice"].timestamp == "2025-01-01 10:00:00 UTC" and _outcome(jobs["alice"]) == (True, [])
    assert jobs["bob"].notebook.endswith("copy of tiny.ipynb")
    assert jobs["bob"].problems == ["notebook named 'copy of tiny.ipynb', expected 'tiny_lab.ipynb'; graded it anyway"]
    assert _outcome(jobs["carol"]) == (False, ["unreadable notebook: malformed JSON (JSONDecodeError: Expecting "
                                               "property name enclosed in double quotes: line 1 column 2 (char 1))"])
    assert _outcome(jobs["dave"]) == (False, ["nothing submitted"])
    assert _outcome(jobs["erin"]) == (False, ["ignored folder 'notes': not a lab of this course", "nothing submitted"])
    assert [j.safe_id for j in jobs.values()] == ["alice", "bob", "carol", "dave", "erin"]


def test_zip_of_folder_and_canvas_fixture_style(tmp_path):
    subs = tmp_path / "class"
    gf.write_submission(subs, "alice", LAB, _nb())
    gf.write_submission(subs, "bob", LAB, _nb())
    z1 = tmp_path / "tree.zip"
    with zipfile.ZipFile(z1, "w") as zf:
        for p in subs.rglob("*.ipynb"):
            zf.write(p, Path("download") / p.relative_to(subs))  # one wrapping folder
    assert {s: _outcome(j) for s, j in _collect(z1, tmp_path).items()} == {"alice": (True, []), "bob": (True, [])}
    z2 = tmp_path / "canvas.zip"
    with zipfile.ZipFile(z2, "w") as zf:  # the fixture style of tests/test_autograder.py (non-numeric ids)
        zf.writestr(f"smithalice_s1001_4242_{LAB}.ipynb", json.dumps(_nb()))
        zf.writestr(f"jonesbob_s1002_4243_{LAB}-1.ipynb", json.dumps(_nb()))
    jobs = C.collect(z2, [LAB], tmp_path / "w2")
    assert [(j.student, j.lab, j.problems) for j in jobs] == [("s1001", LAB, []), ("s1002", LAB, [])]


def test_a_student_id_equal_to_a_lab_id_does_not_make_the_class_one_student(tmp_path):
    """Red-team pass, 2026-12-07: in ``download/{alice,bob,lab2_knowledge_distillation}/<lab>/…`` the
    lab-named folder made the whole zip one student "download" (alice and bob got no row at all)."""
    subs = tmp_path / "class"
    for student in ("alice", "bob", "lab2_knowledge_distillation"):
        gf.write_submission(subs, student, LAB, _nb())
    z = tmp_path / "tree.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in subs.rglob("*.ipynb"):
            zf.write(p, Path("download") / p.relative_to(subs))
    assert {s: _outcome(j) for s, j in _collect(z, tmp_path).items()} == {
        "alice": (True, []), "bob": (True, []), "lab2_knowledge_distillation": (True, [])}
    # still one student's folder when only labs (and folders that hold none) are inside
    one = tmp_path / "one.zip"
    with zipfile.ZipFile(one, "w") as zf:
        zf.writestr(f"alice/{LAB}/{LAB}.ipynb", json.dumps(_nb()))
        zf.writestr("alice/data/notes.txt", "not a lab")
    assert list(_collect(one, tmp_path / "w1")) == ["alice"]


# ------------------------------------------------------------------ 1. malformed cells, grade ids

def _malformed() -> dict:
    nb = _nb()
    nb["cells"][0]["metadata"]["nbgrader"] = "x"                      # nbgrader metadata not a dict
    nb["cells"][2]["metadata"] = "not a dict"                         # metadata not a dict
    nb["cells"][6]["source"] = ["def mean(xs):\n", 42]                # source with a non-string line
    nb["cells"][7]["metadata"]["nbgrader"]["grade_id"] = ["test_mean"]  # grade_id not a string
    nb["cells"][8]["metadata"]["nbgrader"]["points"] = 1000          # tampered points (course wins)
    nb["cells"].insert(3, {"cell_type": "heading", "level": 1, "source": "old v3 cell", "metadata": {}})
    nb["cells"].append("not a cell")
    nb["cells"][1]["outputs"] = [{"output_type": "bogus"}]            # outputs are cleared anyway
    return nb


def test_sanitize_malformed_cells_exact_problems_and_valid_result():
    clean, problems = S.sanitize_notebook(_malformed(), gf.tiny_notebook())
    assert problems == [
        "cell 1: malformed nbgrader metadata (str): treated as a plain cell",
        "cell 3: metadata is not an object; dropped",
        "cell 4: cell type 'heading' is not code, markdown or raw; dropped",
        "cell 8: source is not text; emptied",
        "cell 9: malformed nbgrader metadata (grade_id list): treated as a plain cell",
        "cell 11: not a JSON object; dropped",
        "missing cell 'test_mean' put back with the course's content",
    ]
    nbformat.validate(clean)  # raises on any schema error
    assert [(c["cell_type"], S.grade_id(c)) for c in clean["cells"]] == [
        ("markdown", None), ("code", "setup"), ("markdown", None), ("code", "add"), ("code", "test_add"),
        ("markdown", None), ("code", "mean"), ("code", "test_mean"), ("code", None), ("markdown", "q_why")]
    assert clean["cells"][6]["source"] == "" and clean["cells"][1]["outputs"] == []
    assert S.nbgrader_meta(clean["cells"][9]) == S.nbgrader_meta(gf.tiny_notebook()["cells"][8])  # points: 1


def test_a_million_junk_cells_give_ten_problem_lines_and_a_count():
    """Red-team pass, 2026-12-07: one line per junk cell made 167 MB of grades.csv from a 7.6 MiB notebook."""
    nb = gf.tiny_notebook()
    nb["cells"] = nb["cells"] + [0] * 1_000_000
    clean, problems = S.sanitize_notebook(nb, gf.tiny_notebook())
    first = len(gf.tiny_notebook()["cells"]) + 1  # cells are numbered from 1
    assert problems == [f"cell {k}: not a JSON object; dropped" for k in range(first, first + 10)] + [
        "... and 999990 more like these"]
    assert len(clean["cells"]) == len(gf.tiny_notebook()["cells"])


def test_sanitize_keeps_only_valid_tags_and_attachments():
    nb = _nb()
    nb["cells"][0]["metadata"]["tags"] = ["a,b"]
    nb["cells"][0]["attachments"] = {"x.png": {"image/png": "iVBORw0KGgo="}}
    nb["cells"][2]["metadata"]["tags"] = ["intro", "intro"]
    nb["cells"][2]["attachments"] = {"y": {"not a mime": 5}}
    nb["cells"][5]["metadata"] = {"tags": ["keep"], "deletable": "yes", "jupyter": 3}
    clean, problems = S.sanitize_notebook(nb, gf.tiny_notebook())
    assert problems == ["cell 3: malformed attachments dropped"]
    assert [(c["metadata"], "attachments" in c) for c in clean["cells"][:6:5]] == [({}, True), ({"tags": ["keep"]}, False)]
    nbformat.validate(clean)


def test_collect_keeps_a_notebook_with_malformed_cells(tmp_path):
    _write(tmp_path / "subs" / "alice" / LAB / f"{LAB}.ipynb", _malformed())
    assert _outcome(_collect(tmp_path / "subs", tmp_path)["alice"]) == (True, [])


def test_sanitize_unknown_renamed_and_duplicated_grade_ids():
    nb = _nb()
    nb["cells"][4]["metadata"]["nbgrader"]["grade_id"] = "test_add_v2"      # renamed test cell
    bonus = gf.insert_after(nb, "q_why", "print('free points')")
    bonus["cells"][-1]["metadata"] = {"nbgrader": {"grade": True, "grade_id": "test_bonus", "points": 100,
                                                   "locked": True, "solution": False, "schema_version": 3}}
    i = next(k for k, c in enumerate(bonus["cells"]) if S.grade_id(c) == "test_mean")
    bonus["cells"].insert(i + 1, copy.deepcopy(bonus["cells"][i]))          # duplicated test cell
    bonus["cells"].insert(1, {"cell_type": "code", "metadata": {}, "source": "x = 1", "outputs": [],
                              "execution_count": None})                     # extra plain cell: fine
    clean, problems = S.sanitize_notebook(bonus, gf.tiny_notebook())
    assert problems == ["unknown grade_id 'test_add_v2': treated as a plain cell",
                        "unknown grade_id 'test_bonus': treated as a plain cell",
                        "duplicated grade_id test_mean: later copies treated as plain cells",
                        "missing cell 'test_add' put back with the course's content"]
    ids = [S.grade_id(c) for c in clean["cells"]]
    assert ids == [None, None, "setup", None, "add", "test_add", None, None, "mean", "test_mean", None, "q_why", None]
    nbformat.validate(clean)


def test_sanitize_changes_a_retyped_graded_cell_back():
    nb = _nb()
    nb["cells"][4]["cell_type"] = "raw"
    nb["cells"][4]["attachments"] = {}
    del nb["cells"][4]["outputs"], nb["cells"][4]["execution_count"]
    clean, problems = S.sanitize_notebook(nb, gf.tiny_notebook())
    assert problems == ["cell 'test_add' was changed from code to raw: changed back"]
    assert {k: clean["cells"][4][k] for k in ("cell_type", "outputs", "execution_count")} == \
        {"cell_type": "code", "outputs": [], "execution_count": None}
    nbformat.validate(clean)


def test_sanitize_puts_back_a_deleted_function_and_its_test():
    nb = gf.delete_cells(_nb(), lambda c: S.grade_id(c) in ("add", "test_add"))
    clean, problems = S.sanitize_notebook(nb, gf.tiny_notebook())
    assert problems == ["missing cell 'add' put back empty",
                        "missing cell 'test_add' put back with the course's content"]
    assert [S.grade_id(c) for c in clean["cells"]] == [None, "setup", "add", "test_add", None, None, "mean",
                                                     "test_mean", "q_why"]
    assert clean["cells"][2]["source"] == clean["cells"][3]["source"] == ""  # never the course's solution


def test_deduplicate_ids_is_tolerant():
    nb = _nb()
    nb["cells"].append(copy.deepcopy(nb["cells"][4]))
    nb["cells"][0]["metadata"]["nbgrader"] = "x"
    assert S.deduplicate_ids(nb) == ["test_add"]
    assert "nbgrader" not in nb["cells"][0]["metadata"] and "nbgrader" not in nb["cells"][-1]["metadata"]


@pytest.fixture(scope="module")
def gradebook(tmp_path_factory):
    """A course with the tiny lab's assignment in an SQLite gradebook (nbgrader's generate_assignment)."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import Config

    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")  # alembic
    root = tmp_path_factory.mktemp("course")
    _write(root / "source" / LAB / f"{LAB}.ipynb", gf.tiny_notebook())
    config = Config()
    config.CourseDirectory.root = str(root)
    config.CourseDirectory.db_url = f"sqlite:///{root / 'gradebook.db'}"
    api = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)
    api.log.setLevel(logging.ERROR)
    res = api.generate_assignment(LAB, force=True, create=True)
    assert res["success"], res.get("error")
    return config.CourseDirectory.db_url


def _overwrite_cells(nb: dict, db_url: str) -> nbformat.NotebookNode:
    from nbgrader.preprocessors import CheckCellMetadata, DeduplicateIds, OverwriteCells

    resources = {"nbgrader": {"db_url": db_url, "assignment": LAB, "notebook": LAB, "student": "s"}}
    node = nbformat.from_dict(copy.deepcopy(nb))
    for pp in (DeduplicateIds(), OverwriteCells(add_missing_cells=True), CheckCellMetadata()):
        node, _ = pp.preprocess(node, resources)
    return node


@pytest.mark.filterwarnings("ignore:Cell is missing an id field")  # the unsanitised notebook
def test_sanitized_notebooks_go_through_nbgrader_overwritecells(gradebook):
    deleted_both = gf.delete_cells(_nb(), lambda c: S.grade_id(c) in ("add", "test_add"))
    with pytest.raises(KeyError):  # why sanitize_notebook puts cells back: nbgrader 0.9.6 alone crashes
        _overwrite_cells(deleted_both, gradebook)
    everything_deleted = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    renamed = _nb()
    renamed["cells"][4]["metadata"]["nbgrader"]["grade_id"] = "invented"
    for nb in (deleted_both, _malformed(), renamed, everything_deleted):
        clean, _ = S.sanitize_notebook(nb, gf.tiny_notebook())
        out = _overwrite_cells(clean, gradebook)
        assert [S.grade_id(c) for c in out.cells if S.grade_id(c)] == ["setup", "add", "test_add", "mean",
                                                                       "test_mean", "q_why"]
        test_add = next(c for c in out.cells if S.grade_id(c) == "test_add")
        assert test_add.source.startswith("assert add(1, 2) == 3")  # the locked test, from the gradebook


# ------------------------------------------------------------------ 2. symlinks

def test_symlinks_in_a_folder_are_rejected(tmp_path):
    subs = tmp_path / "subs"
    outside = _write(tmp_path / "elsewhere" / LAB / f"{LAB}.ipynb", _nb())
    (subs / "alice" / LAB).mkdir(parents=True)
    (subs / "alice" / LAB / f"{LAB}.ipynb").symlink_to(outside)
    (subs / "bob").mkdir()
    (subs / "bob" / LAB).symlink_to(outside.parent, target_is_directory=True)
    (subs / "carol").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    gf.write_submission(subs, "dave", LAB, _nb())
    (subs / "dave" / LAB / "timestamp.txt").symlink_to("/etc/hostname")
    gf.write_submission(subs, "erin", LAB, _nb())
    (subs / "erin" / LAB / "notes.ipynb").symlink_to("/etc/passwd")
    jobs = _collect(subs, tmp_path)
    assert {s: _outcome(j) for s, j in jobs.items()} == {
        "alice": (False, [f"symlink 'alice/{LAB}/{LAB}.ipynb' rejected"]),
        "bob": (False, [f"symlink 'bob/{LAB}' rejected"]),
        "carol": (False, ["symlink 'carol' rejected"]),
        "dave": (True, [f"symlink 'dave/{LAB}/timestamp.txt' rejected"]),
        "erin": (True, [f"symlink 'erin/{LAB}/notes.ipynb' rejected"]),
    }
    assert jobs["dave"].timestamp is None


def test_check_notebook_opens_with_o_nofollow(tmp_path):
    real = _write(tmp_path / "real.ipynb", _nb())
    (tmp_path / "link.ipynb").symlink_to(real)
    assert S.check_notebook(real, LAB) is None
    assert S.check_notebook(tmp_path / "link.ipynb", LAB) == "symlink 'link.ipynb' rejected"
    with pytest.raises(S.NotebookError, match="symlink 'link.ipynb' rejected"):
        S.load_notebook(tmp_path / "link.ipynb")


def test_symlink_members_of_zips_are_rejected(tmp_path):
    tree = tmp_path / "tree.zip"
    with zipfile.ZipFile(tree, "w") as zf:
        _symlink_member(zf, f"alice/{LAB}/{LAB}.ipynb", "/etc/passwd")
        _symlink_member(zf, "carol", "/")
        zf.writestr(f"bob/{LAB}/{LAB}.ipynb", json.dumps(_nb()))
    jobs = _collect(tree, tmp_path / "a")
    assert {s: _outcome(j) for s, j in jobs.items()} == {
        "alice": (False, [f"symlink 'alice/{LAB}/{LAB}.ipynb' rejected"]),
        "bob": (True, []),
        "carol": (False, ["symlink 'carol' rejected"])}
    canvas = tmp_path / "canvas.zip"
    with zipfile.ZipFile(canvas, "w") as zf:
        _symlink_member(zf, f"smith_123_456_{LAB}.ipynb", "../../../../etc/passwd")
        zf.writestr(f"jones_124_457_{LAB}.ipynb", json.dumps(_nb()))
    jobs = _collect(canvas, tmp_path / "b")
    assert {s: _outcome(j) for s, j in jobs.items()} == {
        "123": (False, [f"symlink 'smith_123_456_{LAB}.ipynb' rejected"]), "124": (True, [])}
    for work in (tmp_path / "a" / "work", tmp_path / "b" / "work"):
        assert not [p for p in work.rglob("*") if p.is_symlink()]
        assert [p.name for p in _files_under(work)] in ([f"{LAB}.ipynb"], [f"jones_124_457_{LAB}.ipynb"])


# ------------------------------------------------------------------ 3. LMS names

@pytest.mark.parametrize("name, expected", [
    (f"smithjane_12345_678901_{LAB}.ipynb", ("12345", 678901, LAB)),
    (f"smithjane_LATE_12345_678901_{LAB}-1.ipynb", ("12345", 678901, LAB)),
    (f"zed_victim01_x_55555_1_{LAB}.ipynb", ("55555", 1, LAB)),       # display name with "_" and digits
    (f"zed_victim01_55555_1_{LAB}.ipynb", ("55555", 1, LAB)),         # not the alphanumeric token
    (f"smithalice_s1001_4242_{LAB}.ipynb", ("s1001", 4242, LAB)),     # no numeric id at all: old style
    (f"smithjane_12345_678901_notes.ipynb", None),                    # no lab in the original file name
    (f"{LAB}_smith_12345_678_notes.ipynb", None),                     # a lab id in the display name is not enough
    (f"smith_s1_{LAB}.ipynb", None),                                  # old FLAT_PATTERN accepted it
    (f"zed_99999_1_55555_2_{LAB}.ipynb", lms.AmbiguousName),            # display name "zed_99999_1"
    (f"zed_99999_1_{LAB}_55555_2_x.ipynb", lms.AmbiguousName),          # lab only in the longer reading
    (f"mary_2_12345_678_{LAB}.ipynb", lms.AmbiguousName),               # a digit token in a real name
])
def test_parse_canvas_name(name, expected):
    if expected is lms.AmbiguousName:
        with pytest.raises(lms.AmbiguousName):
            lms.parse_canvas_name(name, [LAB])
    else:
        assert lms.parse_canvas_name(name, [LAB]) == expected
        m = lms.CANVAS_PATTERN.match(name)  # the documented pattern reads the same id
        assert m is None or expected is None or m["student"] == expected[0]


def test_canvas_zip_takes_the_id_token_never_the_display_name(tmp_path, capsys):
    z = tmp_path / "canvas.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(f"victim_11111_900_{LAB}.ipynb", json.dumps(_nb()))
        zf.writestr(f"zed_victim01_x_55555_901_{LAB}.ipynb", json.dumps(_nb()))
        zf.writestr(f"zed_11111_999999_55555_902_{LAB}.ipynb", json.dumps(_nb()))  # would replace 11111's
        zf.writestr(f"kim_LATE_22222_903_{LAB}.ipynb", json.dumps(_nb()))
    jobs = _collect(z, tmp_path)
    assert {s: (_outcome(j), Path(j.notebook).name) for s, j in jobs.items()} == {
        "11111": ((True, []), f"victim_11111_900_{LAB}.ipynb"),
        # Canvas's LATE_ is noted on the row: the download has no submission time to compute a penalty from
        "22222": ((True, [f"Canvas marks kim_LATE_22222_903_{LAB}.ipynb LATE"]), f"kim_LATE_22222_903_{LAB}.ipynb"),
        "55555": ((True, []), f"zed_victim01_x_55555_901_{LAB}.ipynb")}
    assert f"skipped zed_11111_999999_55555_902_{LAB}.ipynb: ambiguous" in capsys.readouterr().out


def test_moodle_folders(tmp_path):
    z = tmp_path / "moodle.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(f"Jane Doe_12345_assignsubmission_file_/{LAB}.ipynb", json.dumps(_nb()))
        zf.writestr(f"Zed_victim01_777_assignsubmission_file_/sub/{LAB}.ipynb", json.dumps(_nb()))
        zf.writestr("Jane Doe_12345_assignsubmission_onlinetext_/onlinetext.html", "<p>hi</p>")
        zf.writestr(f"Bad_x_assignsubmission_file_/{LAB}.ipynb", json.dumps(_nb()))  # no numeric id
    jobs = _collect(z, tmp_path)
    assert {s: _outcome(j) for s, j in jobs.items()} == {"12345": (True, []), "777": (True, [])}


def test_two_canvas_files_keep_the_latest_submission_id(tmp_path):
    subs = tmp_path / "subs"  # a flat folder this time (the name-sorted last one is the older)
    _write(subs / f"aaa_12345_200_{LAB}-1.ipynb", _nb())
    _write(subs / f"zzz_12345_100_{LAB}.ipynb", "{broken")
    job = _collect(subs, tmp_path)["12345"]
    assert Path(job.notebook).name == f"aaa_12345_200_{LAB}-1.ipynb"
    assert job.problems == [f"2 files for this lab; graded the latest (aaa_12345_200_{LAB}-1.ipynb)"]


def test_two_moodle_files_keep_the_latest_zip_date(tmp_path):
    z = tmp_path / "moodle.zip"
    folder = "Jane Doe_12345_assignsubmission_file_"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(zipfile.ZipInfo(f"{folder}/{LAB} (1).ipynb", (2025, 3, 2, 9, 0, 0)), json.dumps(_nb()))
        zf.writestr(zipfile.ZipInfo(f"{folder}/{LAB}.ipynb", (2025, 3, 1, 9, 0, 0)), "{older")
    job = _collect(z, tmp_path)["12345"]
    assert Path(job.notebook).name == f"{LAB} (1).ipynb"
    assert job.problems == [f"2 files for this lab; graded the latest ({folder}/{LAB} (1).ipynb)"]


def test_zip_of_folders_with_alphanumeric_ids(tmp_path):
    z = tmp_path / "class.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for student in ("a1b2", "X-9", "jane.doe@uni.edu"):
            zf.writestr(f"{student}/{LAB}/{LAB}.ipynb", json.dumps(_nb()))
    jobs = _collect(z, tmp_path)
    assert {s: (_outcome(j), j.safe_id) for s, j in jobs.items()} == {
        "X-9": ((True, []), "X-9"), "a1b2": ((True, []), "a1b2"), "jane.doe@uni.edu": ((True, []), "jane.doe@uni.edu")}


# ------------------------------------------------------------------ 4. student ids

def test_odd_student_ids_are_kept_with_safe_ids(tmp_path):
    subs = tmp_path / "subs"
    odd = ["José Núñez", "jane doe", "李雷", "a__b"]
    for student in ["alice", *odd]:
        gf.write_submission(subs, student, LAB, _nb())
    jobs = _collect(subs, tmp_path)
    assert sorted(jobs) == sorted(["alice", *odd]) and all(_outcome(j) == (True, []) for j in jobs.values())
    assert jobs["alice"].safe_id == "alice"
    for student in odd:
        sid = jobs[student].safe_id
        assert re.fullmatch(r"[A-Za-z0-9-]+__[0-9a-f]{8}", sid) and sid == C.safe_student_id(student)
    assert jobs["José Núñez"].safe_id.startswith("Jose-Nunez__") and jobs["李雷"].safe_id.startswith("student__")
    assert len({j.safe_id for j in jobs.values()}) == len(jobs)


def test_refused_student_ids_still_get_a_row(tmp_path):
    subs = tmp_path / "subs"
    for student in (".hidden", "a..b", "back\\slash", "bell\x07", "line\u2028sep", ".ipynb_checkpoints", "ok"):
        gf.write_submission(subs, student, LAB, _nb())
    jobs = _collect(subs, tmp_path)
    assert {s: _outcome(j) for s, j in jobs.items()} == {
        ".hidden": (False, ["student id '.hidden' refused: starts with '.'"]),
        "a..b": (False, ["student id 'a..b' refused: contains a path separator or '..'"]),
        "back\\slash": (False, ["student id 'back\\\\slash' refused: contains a path separator or '..'"]),
        "bell\x07": (False, ["student id 'bell\\x07' refused: contains a NUL or control character"]),
        "line\u2028sep": (False, ["student id 'line\\u2028sep' refused: contains a NUL or control character"]),
        "ok": (True, []),
    }
    sids = [j.safe_id for j in jobs.values()]
    assert all(SAFE.match(s) and ".." not in s for s in sids) and len(set(sids)) == len(sids)


def test_refused_ids_from_lms_names_and_zip_members(tmp_path):
    z = tmp_path / "canvas.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(f"x_.._12_{LAB}.ipynb", json.dumps(_nb()))       # old-style name, id ".."
        zf.writestr(f"y_.profile_13_{LAB}.ipynb", json.dumps(_nb()))
    jobs = _collect(z, tmp_path / "a")
    assert {s: (_outcome(j), j.safe_id) for s, j in jobs.items()} == {
        "..": ((False, ["student id '..' refused: contains a path separator or '..'"]), C.safe_student_id("..")),
        ".profile": ((False, ["student id '.profile' refused: starts with '.'"]), C.safe_student_id(".profile"))}
    assert C.safe_student_id("..").startswith("student__")
    z = tmp_path / "tree.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(f"tab\there/{LAB}/{LAB}.ipynb", json.dumps(_nb()))
        zf.writestr(f"win\\dows/{LAB}/{LAB}.ipynb", json.dumps(_nb()))
    jobs = _collect(z, tmp_path / "b")
    assert {s: _outcome(j) for s, j in jobs.items()} == {
        "tab\there": (False, ["student id 'tab\\there' refused: contains a NUL or control character"]),
        "win\\dows": (False, ["student id 'win\\\\dows' refused: contains a path separator or '..'"])}


def test_non_utf8_folder_name_is_refused_and_printable(tmp_path):
    subs = tmp_path / "subs"
    gf.write_submission(subs, os.fsdecode(b"caf\xe9"), LAB, _nb())
    job, = C.collect(subs, [LAB], tmp_path / "work")
    assert job.student == "caf\\xe9" and job.student.encode("utf-8")
    assert _outcome(job) == (False, ["student id 'caf\\\\xe9' refused: the folder name is not valid UTF-8"])


def test_safe_ids_are_stable_and_unique(monkeypatch):
    assert [C.safe_student_id(s) for s in ("alice", "s1001", "a.b@c.d", "X-9")] == ["alice", "s1001", "a.b@c.d", "X-9"]
    for odd in ("a__b", "../etc", "-rf", ".x", "a" * 65, "trailing space "):
        sid = C.safe_student_id(odd)
        assert sid == C.safe_student_id(odd) and re.fullmatch(r"[A-Za-z0-9-]+__[0-9a-f]{8}", sid), odd
    real = C.safe_student_id  # force a collision of the short hashes: the full hash tells them apart
    monkeypatch.setattr(C, "safe_student_id", lambda s, digits=8: "same__00000000" if digits == 8 else real(s, digits))
    jobs = [C.Job("x y", LAB), C.Job("x  y", LAB), C.Job("x y", "other")]
    C._assign_safe_ids(jobs)
    assert jobs[0].safe_id == jobs[2].safe_id == real("x y", 64) != jobs[1].safe_id == real("x  y", 64)


# ------------------------------------------------------------------ 5. zip limits

def _bomb(path: Path, name: str, size: int) -> Path:
    """A zip holding ``size`` zero bytes (deflated: ~1000:1, so small on disk)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open(name, "w") as out:
        chunk = bytes(MiB)
        for _ in range(size // MiB):
            out.write(chunk)
        out.write(bytes(size % MiB))
    return path


_ZEROS = "unreadable notebook: malformed JSON (JSONDecodeError: Expecting value: line 1 column 1 (char 0))"


def test_zip_bomb_is_refused_before_extracting(tmp_path):
    z = _bomb(tmp_path / "bomb.zip", f"alice/{LAB}/{LAB}.ipynb", 300_000_000)
    assert z.stat().st_size < 1 * MiB
    job, = C.collect(z, [LAB], tmp_path / "work")
    assert _outcome(job) == (False, [f"zip member 'alice/{LAB}/{LAB}.ipynb' unpacks to 286.1 MiB, over the 64 MiB "
                                     "per-file limit; not extracted"])
    assert _files_under(tmp_path / "work") == []


def test_zip_ratio_limit(tmp_path):
    z = _bomb(tmp_path / "ratio.zip", f"alice/{LAB}/{LAB}.ipynb", 8 * MiB)
    job, = C.collect(z, [LAB], tmp_path / "work")
    assert job.student == "alice" and job.notebook is None and len(job.problems) == 1
    assert re.fullmatch(r"zip member 'alice/tiny_lab/tiny_lab\.ipynb' is compressed \d+:1, over the 100:1 limit "
                        r"\(a zip bomb\?\); not extracted", job.problems[0])
    assert _files_under(tmp_path / "work") == []
    jobs = C.collect(z, [LAB], tmp_path / "w2", limits=archive.ZipLimits(max_ratio=1e6))  # raised: extracted
    assert [(j.student, j.problems) for j in jobs] == [("alice", [_ZEROS])]


def test_zip_total_size_and_member_count_limits(tmp_path):
    z = tmp_path / "class.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for student in ("a", "b", "c"):
            zf.writestr(f"{student}/{LAB}/{LAB}.ipynb", os.urandom(1000))
    with pytest.raises(GradingError) as err:
        C.collect(z, [LAB], tmp_path / "w1", limits=archive.ZipLimits(max_total_bytes=2500))
    assert str(err.value).startswith("class.zip: unpacks to 0.0 MiB in all, over the ")
    assert "limit (ZipLimits.max_total_bytes); to grade it anyway, unzip it" in str(err.value)
    with pytest.raises(GradingError) as err:
        C.collect(z, [LAB], tmp_path / "w2", limits=archive.ZipLimits(max_members=2))
    assert str(err.value) == f"class.zip: 3 members, over the limit of 2 (ZipLimits.max_members); {archive._LIMIT_HINT}"
    jobs = C.collect(z, [LAB], tmp_path / "w3", limits=archive.ZipLimits(max_member_bytes=999))
    assert [(j.student, j.notebook, j.problems) for j in jobs] == [
        (s, None, [f"zip member '{s}/{LAB}/{LAB}.ipynb' unpacks to 0.0 MiB, over the 0.000952721 MiB per-file "
                   "limit; not extracted"]) for s in "abc"]


def test_one_students_oversized_or_bomb_like_file_leaves_the_class_graded(tmp_path):
    """Red-team pass, 2026-12-07: one 65 MiB file beside a notebook, or one notebook compressed 512:1,
    stopped the whole run; now that file is refused on its student's row and everyone is graded."""
    z = tmp_path / "class.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for student in ("alice", "bob"):
            zf.writestr(f"{student}/{LAB}/{LAB}.ipynb", json.dumps(_nb()))
        zf.writestr(f"mallory/{LAB}/{LAB}.ipynb", json.dumps(_nb()))
        with zf.open(f"mallory/{LAB}/weights_backup.bin", "w") as out:
            for _ in range(65):
                out.write(os.urandom(MiB))
        zf.writestr(f"eve/{LAB}/{LAB}.ipynb", json.dumps(_nb()) + " " * (4 * MiB))  # compresses far past 100:1
    got = {j.student: _outcome(j) for j in C.collect(z, [LAB], tmp_path / "work")}
    assert got["alice"] == got["bob"] == (True, [])
    assert got["mallory"] == (True, [f"zip member 'mallory/{LAB}/weights_backup.bin' unpacks to 65.0 MiB, over the "
                                     "64 MiB per-file limit; not extracted"])
    assert got["eve"][0] is False and "over the 100:1 limit (a zip bomb?); not extracted" in got["eve"][1][0]


def _patch_central_header(path: Path, size: int, crc: int | None) -> None:
    """Make the central directory lie: declare ``size`` bytes (and ``crc``) for the only member."""
    data = bytearray(path.read_bytes())
    at = data.rfind(b"PK\x01\x02")
    if crc is not None:
        data[at + 16:at + 20] = crc.to_bytes(4, "little")
    data[at + 24:at + 28] = size.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def test_zip_member_lying_about_its_size_gets_only_what_it_declared(tmp_path):
    name = f"alice/{LAB}/{LAB}.ipynb"
    z = _bomb(tmp_path / "liar.zip", name, 300_000_000)
    _patch_central_header(z, 1000, crc=zlib.crc32(bytes(1000)))  # passes the declared-size checks
    job, = C.collect(z, [LAB], tmp_path / "a")
    assert _outcome(job) == (False, [_ZEROS])
    assert [p.stat().st_size for p in _files_under(tmp_path / "a")] == [1000]
    z = _bomb(tmp_path / "liar2.zip", name, 300_000_000)
    _patch_central_header(z, 1000, crc=None)  # the CRC of the whole member: zipfile notices
    job, = C.collect(z, [LAB], tmp_path / "b")
    assert _outcome(job) == (False, [f"zip member {name!r} unreadable: Bad CRC-32 for file {name!r}"])
    assert _files_under(tmp_path / "b") == []


class _Endless:
    """A stream that never ends (a decompressor fed a lying header), counting its reads."""

    reads = 0

    def read(self, n: int) -> bytes:
        self.reads += 1
        return bytes(n)


def test_copy_limited_counts_the_bytes_that_come_out(tmp_path):
    src = _Endless()
    with open(tmp_path / "out", "wb") as fh, pytest.raises(archive.MemberRefused, match="^header lie$"):
        archive._copy_limited(src, fh.fileno(), [(1000, "header lie", False), (64 * MiB, "member", False),
                                                 (512 * MiB, "total", True)])
    assert src.reads == 1 and (tmp_path / "out").stat().st_size == 0
    with open(tmp_path / "out2", "wb") as fh, pytest.raises(GradingError, match="^total$"):
        archive._copy_limited(src, fh.fileno(), [(64 * MiB, "member", False), (3 * MiB, "total", True)])
    assert (tmp_path / "out2").stat().st_size == 3 * MiB


def test_zip_skips_absolute_dotdot_and_macosx_members(tmp_path):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for name in (f"/abs/alice/{LAB}/{LAB}.ipynb", f"../evil/{LAB}.ipynb", f"alice/../../evil2/{LAB}.ipynb",
                     f"__MACOSX/alice/{LAB}/._{LAB}.ipynb"):
            info = zipfile.ZipInfo("x")
            info.filename = name  # ZipInfo() would clean the name up; a hostile zip does not
            zf.writestr(info, json.dumps(_nb()))
        zf.writestr(f"alice/{LAB}/{LAB}.ipynb", json.dumps(_nb()))
    assert [i.filename for i in zipfile.ZipFile(z).infolist()][0] == f"/abs/alice/{LAB}/{LAB}.ipynb"
    jobs = _collect(z, tmp_path)
    assert {s: _outcome(j) for s, j in jobs.items()} == {"alice": (True, [])}
    assert [p.relative_to(tmp_path) for p in _files_under(tmp_path) if p.suffix == ".ipynb"] == \
        [Path(jobs["alice"].notebook).relative_to(tmp_path)]


def test_corrupt_and_encrypted_members_are_their_jobs_problem(tmp_path):
    z = tmp_path / "class.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"alice/{LAB}/{LAB}.ipynb", json.dumps(_nb()))
        zf.writestr(f"bob/{LAB}/{LAB}.ipynb", b"x" * 10)
        zf.writestr(f"carol/{LAB}/{LAB}.ipynb", json.dumps(_nb()))
    data = bytearray(z.read_bytes())  # zipfile writes no encrypted members: set the flag by hand
    heads = [m.start() for m in re.finditer(re.escape(b"PK\x01\x02"), bytes(data))]
    data[heads[1] + 8] |= 0x1  # bob's general purpose flags: "encrypted"
    data[heads[2] + 16] ^= 0xFF  # carol's CRC: a corrupt member
    z.write_bytes(bytes(data))
    jobs = _collect(z, tmp_path)
    assert {s: _outcome(j) for s, j in jobs.items()} == {
        "alice": (True, []), "bob": (False, [f"zip member 'bob/{LAB}/{LAB}.ipynb' is encrypted; not read"]),
        "carol": (False, [f"zip member 'carol/{LAB}/{LAB}.ipynb' unreadable: Bad CRC-32 for file "
                          f"'carol/{LAB}/{LAB}.ipynb'"])}


# ------------------------------------------------------------------ 6. notebook files

def test_notebook_over_the_size_cap_is_not_read(tmp_path):
    path = tmp_path / "subs" / "alice" / LAB / f"{LAB}.ipynb"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as fh:
        fh.truncate(40 * MiB)  # sparse: no disk used; reading it would be the bug
    jobs = _collect(tmp_path / "subs", tmp_path)
    assert _outcome(jobs["alice"]) == (False, ["unreadable notebook: the file is 40.0 MiB, over the 32 MiB "
                                               "limit; not read"])
    small = _write(tmp_path / "small.ipynb", _nb())
    assert S.check_notebook(small, LAB, max_bytes=MiB // 1024).startswith("unreadable notebook: the file is 0.0 MiB")


@pytest.mark.parametrize("content, problem", [
    ("[1, 2]", "unreadable notebook: no 'cells' list (not a Jupyter notebook)"),
    ('{"cells": "x"}', "unreadable notebook: no 'cells' list (not a Jupyter notebook)"),
    ('{"cells": [], "nbformat": 3}', "unreadable notebook: nbformat '3' is not supported (Jupyter notebooks "
                                     "are version 4)"),
    ("[" * 100_000, "unreadable notebook: malformed JSON (nested too deeply)"),
    (b"\xff\xfe{}", "unreadable notebook: malformed JSON (UnicodeDecodeError: 'utf-8' codec can't decode byte "
                    "0xff in position 0: invalid start byte)"),
    ('{"cells": [], "nbformat": 4, "n": ' + "1" * 5000 + "}",
     "unreadable notebook: malformed JSON (ValueError: Exceeds the limit (4300 digits) for integer string "
     "conversion: value has 5000 di)"),
])
def test_unreadable_notebooks(tmp_path, content, problem):
    _write(tmp_path / "subs" / "alice" / LAB / f"{LAB}.ipynb", content)
    assert _outcome(_collect(tmp_path / "subs", tmp_path)["alice"]) == (False, [problem])


def test_fifo_and_empty_notebooks(tmp_path):
    subs = tmp_path / "subs"
    (subs / "alice" / LAB).mkdir(parents=True)
    os.mkfifo(subs / "alice" / LAB / f"{LAB}.ipynb")  # reading it would hang the grader
    _write(subs / "bob" / LAB / f"{LAB}.ipynb", {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    jobs = _collect(subs, tmp_path)
    assert _outcome(jobs["alice"]) == (False, [f"'alice/{LAB}/{LAB}.ipynb' is not a regular file; not read"])
    assert _outcome(jobs["bob"]) == (True, ["the notebook has no nbgrader cells (was it created from the "
                                            "released version?)"])


# ------------------------------------------------------------------ 7. another lab's notebook

def test_notebook_of_another_lab(tmp_path):
    nb = _nb()
    nb["cells"][0]["source"] = "# lab2_knowledge_distillation\nKnowledge distillation."
    _write(tmp_path / "subs" / "alice" / LAB / f"{LAB}.ipynb", nb)
    assert _outcome(_collect(tmp_path / "subs", tmp_path)["alice"]) == (
        True, [f"the notebook looks like lab2_knowledge_distillation, not {LAB}"])


# ------------------------------------------------------------------ one bad submission never raises

def test_one_bad_submission_never_raises(tmp_path, monkeypatch):
    subs = tmp_path / "subs"
    for student in ("alice", "bob", "carol"):
        gf.write_submission(subs, student, LAB, _nb())
    real_check, real_scan = C.check_notebook, C.scan

    def check(path, lab, **kw):
        if "bob" in str(path):
            raise RuntimeError("boom")
        return real_check(path, lab, **kw)

    def scan(folder, rejected):
        if folder.name == "carol":
            raise PermissionError(13, "Permission denied")
        return real_scan(folder, rejected)

    monkeypatch.setattr(C, "check_notebook", check)
    monkeypatch.setattr(C, "scan", scan)
    jobs = _collect(subs, tmp_path)
    assert {s: _outcome(j) for s, j in jobs.items()} == {
        "alice": (True, []),
        "bob": (False, ["unreadable notebook: RuntimeError: boom"]),
        "carol": (False, ["could not read the submission: PermissionError: [Errno 13] Permission denied"])}


def test_whole_input_errors(tmp_path):
    with pytest.raises(GradingError, match="does not exist"):
        C.collect(tmp_path / "nope", [LAB], tmp_path / "w")
    _write(tmp_path / "notes.txt", "hello")
    with pytest.raises(GradingError, match="neither a folder nor a zip file"):
        C.collect(tmp_path / "notes.txt", [LAB], tmp_path / "w")


# ----------------------------------------------------------------------------- the capstone's model.pt
CAPSTONE = "lab8_capstone"


def test_model_pt_beside_the_notebook_in_every_layout(tmp_path):
    # folder layout: <student>/<lab>/model.pt
    tree = tmp_path / "tree"
    _write(tree / "s1" / CAPSTONE / f"{CAPSTONE}.ipynb", _nb())
    _write(tree / "s1" / CAPSTONE / "model.pt", b"weights")
    _write(tree / "s2" / CAPSTONE / f"{CAPSTONE}.ipynb", _nb())
    jobs = {j.student: j for j in C.collect(tree, [CAPSTONE], tmp_path / "w1")}
    assert Path(jobs["s1"].model) == tree / "s1" / CAPSTONE / "model.pt" and jobs["s2"].model is None
    # Canvas: the model is renamed like the notebook; a re-submission (-1) with a later submission id wins
    flat = tmp_path / "canvas"
    _write(flat / f"doe_12345_300_{CAPSTONE}.ipynb", _nb())
    _write(flat / "doe_12345_300_model.pt", b"old")
    _write(flat / "doe_12345_301_model-1.pt", b"new")
    _write(flat / "roe_777_5_model.pt", b"only a model")
    jobs = {j.student: j for j in C.collect(flat, [CAPSTONE], tmp_path / "w2")}
    assert Path(jobs["12345"].model).name == "doe_12345_301_model-1.pt"
    assert jobs["12345"].problems == ["2 model files for this lab; evaluated the latest (doe_12345_301_model-1.pt)"]
    assert jobs["777"].notebook is None and jobs["777"].problems == ["nothing submitted"]
    # Moodle: any .pt in the student's folder
    z = tmp_path / "moodle.zip"
    folder = "Jane Doe_4242_assignsubmission_file_"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr(f"{folder}/{CAPSTONE}.ipynb", json.dumps(_nb()))
        zf.writestr(f"{folder}/model.pt", b"weights")
    job, = C.collect(z, [CAPSTONE], tmp_path / "w3")
    assert Path(job.model).name == "model.pt" and Path(job.model).read_bytes() == b"weights"


def test_model_pt_is_ignored_for_labs_without_a_model(tmp_path):
    flat = tmp_path / "canvas"
    _write(flat / f"doe_12345_300_{LAB}.ipynb", _nb())
    _write(flat / "doe_12345_300_model.pt", b"weights")
    job, = C.collect(flat, [LAB], tmp_path / "w")
    assert job.model is None and job.notebook


def test_a_symlinked_model_pt_is_refused(tmp_path):
    tree = tmp_path / "tree"
    _write(tree / "s1" / CAPSTONE / f"{CAPSTONE}.ipynb", _nb())
    (tree / "s1" / CAPSTONE / "model.pt").symlink_to("/etc/passwd")
    job, = C.collect(tree, [CAPSTONE], tmp_path / "w")
    assert job.model is None and any("model.pt" in p and "symlink" in p for p in job.problems), job.problems
