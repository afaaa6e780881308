"""Probes: run hidden checks on a namespace and record plain values (never a verdict).

Why: a hidden test that runs in the student's kernel can be defeated from inside that
kernel (patched comparators, input transformers, reading ``expected`` from a frame). Here
the hidden-test region of every test cell defines ``hidden_checks(rec)``, which *calls* the
graded names on fixed inputs and records what comes back with ``rec.check(name, value)``.
It runs twice on the same inputs:

* in a sandbox (:mod:`autograder.sandbox`), over the student's setup + solution cells;
* in the trusted grader, over the instructor's reference solution (:mod:`autograder.judge`).

The judge compares the two records; the student's process never holds an expected value.

This file is copied into each job's probe folder and run as a script inside the sandbox,
so it uses the standard library only (torch / numpy are imported lazily to encode values).
Values cross as JSON lines (no pickle): tensors become ``{"__tensor__": [dtype, shape, data]}``.

Usage (inside the sandbox)::

    python probe.py SPEC.json OUT.jsonl

``SPEC.json``: ``{"setup": src, "solutions": [[grade_id, src], ...], "tests": [[grade_id, src], ...],
"test_timeout": seconds}``. ``OUT.jsonl`` gets one line per test cell, written as soon as it
is done, so a probe killed half-way keeps what it finished.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import signal
import sys
import traceback
from typing import Any, Callable

# Size limits: a record that large is not a honest answer to a tiny hidden check.
MAX_ELEMENTS = 1_000_000       # numbers in one recorded value
MAX_CHECKS = 2_000             # checks in one test cell
SEED = 0


class ProbeTimeout(BaseException):
    """Raised by the alarm when one test cell's checks run too long (not an ``Exception``)."""


# ---------------------------------------------------------------------------- encoding

def encode(x: Any, _depth: int = 0) -> Any:
    """A JSON-able plain value for ``x``: tensors and arrays keep dtype, shape and data.

    Objects that are not plain data (modules, functions) become ``{"__object__": type name}``:
    hidden checks record the numbers they care about, never whole objects.
    """
    if _depth > 20:
        return {"__object__": "nested too deep"}
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, int):
        return x if abs(x) < 2 ** 63 else {"__object__": "int too large"}
    if isinstance(x, float):
        return x if math.isfinite(x) else {"__float__": repr(x)}
    mod = type(x).__module__ or ""
    if mod.startswith("torch") and type(x).__name__ in ("Tensor", "Parameter"):
        return _encode_array(str(x.dtype).replace("torch.", ""), list(x.shape), x.detach().cpu().reshape(-1).tolist())
    if mod.startswith("torch") and type(x).__name__ == "dtype":
        return {"__dtype__": str(x).replace("torch.", "")}
    if mod.startswith("numpy"):
        if type(x).__name__ == "ndarray":
            return _encode_array(str(x.dtype), list(x.shape), x.reshape(-1).tolist())
        if hasattr(x, "item"):
            return encode(x.item(), _depth + 1)
    if isinstance(x, tuple):
        return {"__tuple__": [encode(v, _depth + 1) for v in x]}
    if isinstance(x, list):
        return [encode(v, _depth + 1) for v in x]
    if isinstance(x, dict):
        return {"__dict__": [[encode(k, _depth + 1), encode(v, _depth + 1)] for k, v in x.items()]}
    return {"__object__": type(x).__qualname__}


def _encode_array(dtype: str, shape: list[int], data: list) -> dict:
    if len(data) > MAX_ELEMENTS:
        return {"__object__": f"array of {len(data)} elements (over {MAX_ELEMENTS})"}
    data = [v if not isinstance(v, float) or math.isfinite(v) else {"__float__": repr(v)} for v in data]
    return {"__tensor__": [dtype, shape, data]}


def raised(exc: BaseException) -> dict:
    """How an exception is recorded: its class names (for ``isinstance``-like matching) and message."""
    names = [k.__name__ for k in type(exc).__mro__ if k not in (object, BaseException)]
    return {"__raised__": names, "message": str(exc)[:200]}


# ---------------------------------------------------------------------------- recording

class Recorder:
    """What ``hidden_checks(rec)`` calls: ``rec.check(name, value_or_callable, atol=0, rtol=0)``.

    A callable is called and its exception, if any, recorded as the value (so "raises
    ValueError" is checked like any other value). ``atol`` / ``rtol`` matter only on the
    judge's side, where the instructor's record says how close a value must be.
    """

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.tolerances: dict[str, list[float]] = {}

    def check(self, name: str, value: Any, atol: float = 0.0, rtol: float = 0.0) -> None:
        if len(self.values) >= MAX_CHECKS:
            raise RuntimeError(f"more than {MAX_CHECKS} checks in one test cell")
        key, n = str(name), 2
        while key in self.values:  # the same name twice: keep both
            key, n = f"{name} #{n}", n + 1
        if callable(value):
            try:
                value = value()
            except Exception as exc:  # noqa: BLE001 - the exception is the recorded value
                value = raised(exc)
                self.values[key] = value
                self.tolerances[key] = [float(atol), float(rtol)]
                return
        self.values[key] = encode(value)
        self.tolerances[key] = [float(atol), float(rtol)]


def _seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    with contextlib.suppress(ImportError):
        import numpy as np
        np.random.seed(seed)
    with contextlib.suppress(ImportError):
        import torch
        torch.manual_seed(seed)


def _alarm(seconds: float) -> None:
    def on_alarm(signum, frame):  # noqa: ARG001
        raise ProbeTimeout()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(0.0, seconds))


def build_namespace(setup: str, solutions: list[tuple[str, str]], log: Callable[[str], None] = print,
                    cell_timeout: float = 60.0) -> dict:
    """Run the setup cell, then each solution cell, in one fresh namespace.

    A solution cell that raises or runs too long is logged and skipped: only its own name
    (and whatever depends on it) goes missing.
    """
    ns: dict = {"__name__": "__main__"}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(setup, "<setup>", "exec"), ns)  # noqa: S102 - the instructor's setup cell
    for gid, src in solutions:
        try:
            _alarm(cell_timeout)
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(src, f"<solution {gid}>", "exec"), ns)  # noqa: S102 - sandboxed or trusted
        except ProbeTimeout:
            log(f"solution cell {gid}: longer than {cell_timeout:g} s, skipped")
        except BaseException as exc:  # noqa: BLE001 - SystemExit / KeyboardInterrupt from a cell too
            log(f"solution cell {gid}: {type(exc).__name__}: {exc}"[:300])
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    return ns


def probe_cell(ns: dict, gid: str, hidden: str, timeout: float = 30.0) -> dict:
    """Run one test cell's hidden region over ``ns``; ``{"grade_id", "values", "tolerances", "error"}``.

    ``error`` is None, or why the checks stopped early (the values recorded so far are kept).
    """
    local = dict(ns)
    rec = Recorder()
    error = None
    try:
        _seed_everything()
        _alarm(timeout)
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(hidden, f"<hidden {gid}>", "exec"), local)  # noqa: S102
            fn = local.get("hidden_checks")
            if not callable(fn):
                raise RuntimeError("the hidden region does not define hidden_checks(rec)")
            fn(rec)
    except ProbeTimeout:
        error = f"the checks took longer than {timeout:g} s"
    except BaseException as exc:  # noqa: BLE001 - anything a student's object raises outside rec.check
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return {"grade_id": gid, "values": rec.values, "tolerances": rec.tolerances, "error": error}


def run_spec(spec: dict, out_path: str, log: Callable[[str], None] = print) -> None:
    """Build the namespace from ``spec`` and append one JSON line per test cell to ``out_path``."""
    ns = build_namespace(spec["setup"], [tuple(s) for s in spec["solutions"]], log,
                         float(spec.get("cell_timeout", 60)))
    for gid, hidden in spec["tests"]:
        record = probe_cell(ns, gid, hidden, float(spec.get("test_timeout", 30)))
        line = json.dumps(record, allow_nan=False) + "\n"
        fd = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def main(argv: list[str]) -> int:
    """``python probe.py SPEC.json OUT.jsonl [SPEC2.json OUT2.jsonl ...]``: each spec in a fresh namespace.

    Several pairs share one interpreter start (the trusted side: the reference and test variants);
    a grading sandbox always runs one pair.
    """
    if not argv or len(argv) % 2:
        print("usage: python probe.py SPEC.json OUT.jsonl [SPEC.json OUT.jsonl ...]", file=sys.stderr)
        return 2
    rc = 0
    for spec_path, out_path in zip(argv[::2], argv[1::2]):
        with open(spec_path, encoding="utf-8") as fh:
            spec = json.load(fh)
        try:
            run_spec(spec, out_path, log=lambda m: print(m, file=sys.stderr))
        except BaseException:  # noqa: BLE001 - the setup cell failing is logged; the judge sees no records
            traceback.print_exc()
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
