"""The trusted judge: expected values from the reference, compared with a student's probe record.

Each autograded test cell's hidden region defines ``hidden_checks(rec)`` (see
:mod:`autograder.probe`). At release, :func:`build_expected` runs every hidden region over
the instructor's reference solution (setup cell + solution cells of the source notebook) and
stores the record in ``<course>/judge/<lab>.json``, outside anything a grading sandbox can
see. At grading, the same hidden regions run over the student's solution cells inside the
sandbox; :func:`judge_cells` compares the two records value by value, with the tolerances of
the *instructor's* record, and decides each test cell's points: all of them when every
check matches, none otherwise (as nbgrader scores a test cell).
"""
from __future__ import annotations

import builtins
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from autograder import notebook as nbu
from autograder.capstone import MODEL_CELLS

MODEL_CELL_IDS = frozenset(MODEL_CELLS.values())

PROBE_SCRIPT = Path(__file__).with_name("probe.py")
MAX_RECORD_BYTES = 32 * 1024 * 1024  # a probe output larger than this is not read
CHECKS_KEY = "hidden_checks"
_BUILTIN_EXCEPTIONS = {name for name, obj in vars(builtins).items()
                       if isinstance(obj, type) and issubclass(obj, BaseException)}


class JudgeError(RuntimeError):
    """The instructor's notebook cannot be judged (a release-time error; the message says why)."""


# ---------------------------------------------------------------------------- specs

def hidden_region(cell: dict) -> str | None:
    """The source between the hidden-test markers of a cell (marker lines excluded), or None."""
    src = nbu.cell_source(cell)
    if nbu.BEGIN_HIDDEN not in src:
        return None
    out, inside = [], False
    for line in src.splitlines(keepends=True):
        if nbu.BEGIN_HIDDEN in line:
            inside = True
        elif nbu.END_HIDDEN in line:
            inside = False
        elif inside:
            out.append(line)
    return "".join(out)


def autograded_tests(source_nb: dict) -> list[tuple[str, str]]:
    """``[(grade_id, hidden region)]`` of every autograded test cell of a source notebook.

    Raises :class:`JudgeError` for a test cell without ``hidden_checks``: it could not be judged.
    """
    tests = []
    for cell in source_nb["cells"]:
        meta = nbu.nbgrader_meta(cell)
        if cell.get("cell_type") != "code" or not meta.get("grade") or meta.get("solution"):
            continue
        if meta.get("grade_id") in MODEL_CELL_IDS:  # scored from the submitted model, not by hidden checks
            continue
        hidden = hidden_region(cell)
        if hidden is None or f"def {CHECKS_KEY}(" not in hidden:
            raise JudgeError(f"test cell {meta.get('grade_id')!r} has no hidden region defining "
                             f"{CHECKS_KEY}(rec): the judge could not score it (notebooks/README.md)")
        tests.append((meta["grade_id"], hidden))
    return tests


def setup_source(source_nb: dict) -> str:
    cell = next((c for c in source_nb["cells"] if nbu.grade_id(c) == "setup"), None)
    return nbu.cell_source(cell) if cell is not None else ""


def solution_sources(source_nb: dict, nb: dict) -> list[tuple[str, str]]:
    """``[(grade_id, code)]`` of the graded solution cells of ``nb``, in the source notebook's order.

    ``nb`` is the reference (markers removed) or a submission; a graded cell missing from it
    is simply absent (its name stays undefined and its tests fail).
    """
    by_id: dict[str, str] = {}
    for cell in nb.get("cells", []):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        meta = cell.get("metadata", {}).get("nbgrader") if isinstance(cell.get("metadata"), dict) else None
        gid = meta.get("grade_id") if isinstance(meta, dict) else None
        if isinstance(gid, str) and gid not in by_id:
            by_id[gid] = nbu.solution_code(nbu.cell_source(cell))
    return [(gid, by_id[gid]) for gid in nbu.graded_names(source_nb) if gid in by_id]


def probe_spec(source_nb: dict, nb: dict, test_timeout: float = 30.0, cell_timeout: float = 60.0) -> dict:
    """What the probe runs: the instructor's setup, ``nb``'s solution cells, the hidden regions."""
    return {"setup": setup_source(source_nb), "solutions": solution_sources(source_nb, nb),
            "tests": autograded_tests(source_nb), "test_timeout": test_timeout, "cell_timeout": cell_timeout}


def probe_env() -> dict[str, str]:
    """Environment of a probe run: the grading profile, one thread, no progress bars or warnings."""
    return {"NBGRADER_EXECUTION": "autograde", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1", "PYTHONDONTWRITEBYTECODE": "1"}


# ---------------------------------------------------------------------------- expected values

def run_probe(spec: dict, workdir: Path, timeout: float = 600) -> tuple[dict[str, dict], str]:
    """Run :mod:`autograder.probe` over ``spec`` in a child process, unsandboxed (trusted code only).

    Returns the records and the child's stderr. Used for the reference and by tests.
    """
    (records,), stderr = run_probes([spec], workdir, timeout)
    return records, stderr


def run_probes(specs: list[dict], workdir: Path, timeout: float = 600) -> tuple[list[dict[str, dict]], str]:
    """Several trusted specs in one child process (one interpreter start); their records, in order."""
    workdir.mkdir(parents=True, exist_ok=True)
    args = []
    for i, spec in enumerate(specs):
        spec_path, rec_path = workdir / f"probe-spec-{i}.json", workdir / f"probe-out-{i}.jsonl"
        nbu.write_json_atomic(spec_path, spec)
        rec_path.unlink(missing_ok=True)
        args += [str(spec_path), str(rec_path)]
    env = dict(os.environ, **probe_env())
    env.pop("LABKIT_ARTIFACTS", None)
    proc = subprocess.run([sys.executable, str(PROBE_SCRIPT), *args], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=timeout)
    return [read_records(Path(out)) for out in args[1::2]], proc.stderr


def build_expected(source_path: Path, out_path: Path, workdir: Path, timeout: float = 600) -> dict:
    """Run the hidden checks over the reference solution of ``source_path``; write ``out_path``.

    Runs in a child process (same interpreter and settings as the sandboxed probes, so both
    sides compute with one thread); the reference is trusted, so no sandbox. Raises
    :class:`JudgeError` when the reference does not get through its own checks.
    """
    source_nb = nbu.read_nb(source_path)
    spec = probe_spec(source_nb, reference_nb(source_nb))
    records, stderr = run_probe(spec, workdir, timeout)
    bad = [f"{gid}: {r['error']}" for gid, r in records.items() if r.get("error")]
    bad += [f"{gid}: no record" for gid, _ in spec["tests"] if gid not in records]
    if bad or stderr.strip():
        detail = "; ".join(bad) or stderr.strip()[-400:]
        raise JudgeError(f"{source_path.name}: the reference solution does not pass its hidden checks cleanly: {detail}")
    expected = {"lab": source_path.stem, "records": records}
    nbu.write_json_atomic(out_path, expected)
    return expected


def reference_nb(source_nb: dict) -> dict:
    """The source notebook with the solution markers removed (a perfect submission)."""
    nb = json.loads(json.dumps(source_nb))
    for cell in nb["cells"]:
        if nbu.BEGIN_SOLUTION in nbu.cell_source(cell):
            cell["source"] = nbu.solution_code(nbu.cell_source(cell))
    return nb


def read_records(path: Path, max_bytes: int = MAX_RECORD_BYTES) -> dict[str, dict]:
    """``{grade_id: record}`` from a probe's JSON-lines output; malformed lines are ignored.

    The file was written by untrusted code: it is size-capped, parsed as JSON only, and every
    record is checked for shape before use. The first record of a grade_id wins.
    """
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > max_bytes:
            return {}
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    records: dict[str, dict] = {}
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not (isinstance(rec, dict) and isinstance(rec.get("grade_id"), str)
                and isinstance(rec.get("values"), dict)):
            continue
        records.setdefault(rec["grade_id"], {"values": rec["values"], "tolerances": rec.get("tolerances") or {},
                                             "error": rec.get("error") if isinstance(rec.get("error"), str) else None})
    return records


# ---------------------------------------------------------------------------- comparison

def _kind(v: Any) -> str:
    if isinstance(v, dict):
        for key in ("__tensor__", "__raised__", "__tuple__", "__dict__", "__float__", "__dtype__", "__object__"):
            if key in v:
                return key.strip("_")
        return "unknown"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if v is None:
        return "none"
    return type(v).__name__  # str, list


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, dict) and "__float__" in v:
        return float(v["__float__"]) if v["__float__"] in ("nan", "inf", "-inf") else None
    if isinstance(v, dict) and "__tensor__" in v and v["__tensor__"][1] == [] and len(v["__tensor__"][2]) == 1:
        return _number(v["__tensor__"][2][0])
    return None


def _close(a: float, b: float, atol: float, rtol: float) -> bool:
    if math.isnan(b):
        return math.isnan(a)
    if math.isinf(b):
        return a == b
    return abs(a - b) <= atol + rtol * abs(b)


def _describe(v: Any) -> str:
    k = _kind(v)
    return {"tensor": "a tensor", "raised": f"raised {v['__raised__'][0]}" if k == "raised" else "",
            "tuple": "a tuple", "list": "a list", "dict": "a dict", "number": "a number", "bool": "a bool",
            "none": "None", "str": "a string", "object": "an object"}.get(k, k)


def _exception_name(v: dict) -> str:
    """The class name of a recorded exception, only if it is a builtin one (names are student text)."""
    names = v.get("__raised__")
    name = names[0] if isinstance(names, list) and names and isinstance(names[0], str) else ""
    return name if name in _BUILTIN_EXCEPTIONS else "an exception"


def compare(got: Any, want: Any, atol: float = 0.0, rtol: float = 0.0) -> str | None:
    """None when ``got`` matches ``want`` (the reference's value); else why not, in a few words.

    The reason never states the expected value, and never repeats a string or number the
    student's process wrote (it could carry anything out, e.g. the hidden checks themselves):
    only fixed words, kinds of value and builtin exception names.
    """
    kw, kg = _kind(want), _kind(got)
    if kw == "raised":
        names = got.get("__raised__") if kg == "raised" else None
        if isinstance(names, list) and all(isinstance(n, str) for n in names) and want["__raised__"][0] in names:
            return None
        return f"expected an exception here, got {_describe(got)}" if kg != "raised" else \
            f"raised {_exception_name(got)}, which is not the expected exception"
    if kg == "raised":
        return f"raised {_exception_name(got)}"
    if kw == "tensor":
        return _compare_tensor(got, want, atol, rtol)
    if kw in ("number", "float"):
        g = _number(got)
        if g is None:
            return f"expected a number, got {_describe(got)}"
        w = _number(want)
        return None if _close(g, w, atol, rtol) else \
            f"not the expected value (tolerance atol={atol:g}, rtol={rtol:g})"
    if kw in ("tuple", "list"):
        gl = got.get("__tuple__") if kg == "tuple" else got if kg == "list" else None
        wl = want["__tuple__"] if kw == "tuple" else want
        if kg != kw or gl is None:
            return f"expected {_describe(want)}, got {_describe(got)}"
        if len(gl) != len(wl):
            return "not the expected length"
        for i, (g, w) in enumerate(zip(gl, wl)):
            why = compare(g, w, atol, rtol)
            if why:
                return f"item {i}: {why}"
        return None
    if kw == "dict":
        if kg != "dict":
            return f"expected a dict, got {_describe(got)}"
        gd = {json.dumps(k, sort_keys=True): v for k, v in got["__dict__"]}
        wd = {json.dumps(k, sort_keys=True): v for k, v in want["__dict__"]}
        if set(gd) != set(wd):
            return "the keys are not the expected ones"
        for k, w in wd.items():
            why = compare(gd[k], w, atol, rtol)
            if why:
                return f"key {json.loads(k)!r}: {why}"  # a key of the reference's record
        return None
    if kg != kw:
        return f"expected {_describe(want)}, got {_describe(got)}"
    return None if got == want else "not the expected value"


def _compare_tensor(got: Any, want: dict, atol: float, rtol: float) -> str | None:
    wdt, wshape, wdata = want["__tensor__"]
    if _kind(got) == "tensor":
        _, gshape, gdata = got["__tensor__"]
    elif _number(got) is not None and wshape == []:
        gshape, gdata = [], [got]
    else:
        return f"expected a tensor, got {_describe(got)}"
    if list(gshape) != list(wshape):
        return "not the expected shape"
    if not isinstance(gdata, list) or len(gdata) != len(wdata):
        return "malformed tensor"
    wrong = 0
    for g, w in zip(gdata, wdata):
        gv, wv = _number(g) if not isinstance(g, bool) else float(g), _number(w) if not isinstance(w, bool) else float(w)
        if gv is None or wv is None:
            return "malformed tensor"
        if not _close(gv, wv, atol, rtol):
            wrong += 1
    if wrong:  # how many, never by how much: with the student's own values that would give the answer
        return f"{wrong} of {len(wdata)} values differ from the expected ones (tolerance atol={atol:g}, rtol={rtol:g})"
    return None


def judge_record(got: dict | None, want: dict) -> tuple[bool, str]:
    """Whether a student's record of one test cell matches the reference's; a message for feedback.

    The message is built from the reference's check names and fixed words only.
    """
    n = len(want["values"])
    if got is None:
        return False, "the checks did not run (the notebook's solution cells never got that far)"
    stopped = "the checks stopped before this one (an exception outside a check, or the time limit)"
    for name, w in want["values"].items():
        if name not in got["values"]:
            return False, f"hidden check failed: {name}: {stopped if got.get('error') else 'not recorded'}"
        atol, rtol = want["tolerances"].get(name, [0.0, 0.0])
        try:
            why = compare(got["values"][name], w, float(atol), float(rtol))
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError, OverflowError):
            why = "malformed value"
        if why:
            return False, f"hidden check failed: {name}: {why}"
    if got.get("error"):
        return False, stopped.replace(" before this one", "")
    return True, f"all {n} hidden checks passed"


def judge_cells(expected: dict, got_records: dict[str, dict], max_points: dict[str, float]) -> dict[str, dict]:
    """``{grade_id: {"points", "max_points", "message"}}`` for every autograded test cell."""
    out = {}
    for gid, want in expected["records"].items():
        ok, message = judge_record(got_records.get(gid), want)
        mx = float(max_points.get(gid, 0.0))
        out[gid] = {"points": mx if ok else 0.0, "max_points": mx, "message": message}
    return out
