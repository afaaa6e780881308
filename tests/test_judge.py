"""The judge: hidden checks as probes, compared with the reference outside the student's process.

For every lab: the reference passes every test cell, and each plausible mistake (one per graded
name, ``grading_fixtures.PLAUSIBLY_WRONG``) fails exactly its own test cells. The probes run in a
child process here (no sandbox: the code is ours); grading runs the same probe in the sandbox.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import grading_fixtures as gf
from autograder import judge as J
from autograder import notebook as nbu
from autograder import probe as P

LABS = [lab for lab in nbu.available_labs() if lab in nbu.LAB_IDS]



# ---------------------------------------------------------------------------- comparison rules

def test_compare_numbers_tensors_and_exceptions():
    import torch

    enc = P.encode
    assert J.compare(enc(3), enc(3)) is None
    assert J.compare(enc(3.0), enc(3)) is None                     # numbers compare by value
    assert "not the expected" in J.compare(enc(4), enc(3))
    assert J.compare(enc(0.30000001), enc(0.3), atol=1e-6) is None
    assert J.compare(enc(torch.tensor([1.0, float("nan")])), enc(torch.tensor([1.0, float("nan")]))) is None
    assert "1 of 2 values differ" in J.compare(enc(torch.tensor([1.0, 2.0])), enc(torch.tensor([1.0, float("nan")])))
    assert "shape" in J.compare(enc(torch.zeros(2, 3)), enc(torch.zeros(3, 2)))
    assert "1 of 2 values differ" in J.compare(enc(torch.tensor([1.5, 1.0])), enc(torch.tensor([1.0, 1.0])), atol=0.1)
    assert J.compare(enc(torch.tensor(2.0)), enc(2.0)) is None      # a 0-d tensor is a number
    assert "tuple" in J.compare(enc([1, 2]), enc((1, 2)))           # tuple vs list is a difference
    err = P.raised(ValueError("bad"))
    assert J.compare(P.raised(type("Sub", (ValueError,), {})("x")), err) is None  # a subclass is fine
    assert "expected an exception" in J.compare(enc(1), err)
    assert J.compare(P.raised(TypeError("t")), enc(1)) == "raised TypeError"
    # names and messages are student text: only builtin exception names are repeated
    assert J.compare(P.raised(type("LEAK_abc", (Exception,), {})("secret")), enc(1)) == "raised an exception"
    assert J.compare({"__raised__": "xxValueErrorxx"}, err) is not None  # not a list: no substring match
    assert J.compare(enc(10 ** 400), enc(1)) is not None
    assert "keys" in J.compare(enc({"a": 1}), enc({"b": 1}))


def test_compare_never_states_the_expected_value():
    import torch

    secret = 123456.789
    for got, want in ((7.0, secret), (torch.tensor([7.0]), torch.tensor([secret])), ([7.0], [secret])):
        why = J.compare(P.encode(got), P.encode(want))
        assert why and "123456" not in why and "1.23e+05" not in why


def test_malformed_student_records_score_zero_without_crashing(tmp_path):
    want = {"values": {"a": 1, "t": P.encode([1.0])}, "tolerances": {}, "error": None}
    out = tmp_path / "out.jsonl"
    out.write_text("\n".join([
        "not json", json.dumps([1, 2]), json.dumps({"grade_id": 5}),
        "[" * 100_000 + "]" * 100_000,                               # deeply nested: RecursionError
        json.dumps({"grade_id": "t1", "values": {"a": {"__tensor__": "x"}, "t": {"__tensor__": [1]}}}),
        json.dumps({"grade_id": "t1", "values": {"a": 1, "t": [1.0]}}),  # a second record: ignored
    ]))
    recs = J.read_records(out)
    assert set(recs) == {"t1"}
    ok, message = J.judge_record(recs["t1"], want)
    assert not ok and "malformed" in message or "expected" in message
    big = tmp_path / "big.jsonl"
    big.write_bytes(b" " * (J.MAX_RECORD_BYTES + 1))
    assert J.read_records(big) == {}
    link = tmp_path / "link.jsonl"
    link.symlink_to(out)
    assert J.read_records(link) == {}


def test_judge_record_needs_every_check_and_no_early_stop():
    want = {"values": {"a": 1, "b": 2}, "tolerances": {"a": [0, 0], "b": [0, 0]}, "error": None}
    assert J.judge_record({"values": {"a": 1, "b": 2}, "error": None}, want) == (True, "all 2 hidden checks passed")
    ok, msg = J.judge_record({"values": {"a": 1}, "error": "SECRET text the probe wrote"}, want)
    assert not ok and "b: the checks stopped" in msg and "SECRET" not in msg  # never echoed
    assert not J.judge_record({"values": {"a": 1, "b": 2, "extra": 0}, "error": "boom"}, want)[0]
    assert not J.judge_record(None, want)[0]


def test_probe_records_values_exceptions_and_timeouts(tmp_path):
    spec = {"setup": "import math", "solutions": [["f", "def f(x):\n    return math.sqrt(x)"],
                                                  ["g", "def g():\n    while True:\n        pass"],
                                                  ["h", "raise RuntimeError('broken cell')"]],
            "tests": [["t_f", "def hidden_checks(rec):\n    rec.check('f(4)', lambda: f(4))\n"
                              "    rec.check('f(-1)', lambda: f(-1))"],
                      ["t_g", "def hidden_checks(rec):\n    rec.check('g', lambda: g())"],
                      ["t_missing", "x = 1"]],
            "test_timeout": 1, "cell_timeout": 5}
    recs, stderr = J.run_probe(spec, tmp_path)
    assert recs["t_f"]["values"]["f(4)"] == 2.0
    assert recs["t_f"]["values"]["f(-1)"]["__raised__"][0] == "ValueError"
    assert "longer than 1 s" in recs["t_g"]["error"]
    assert "hidden_checks" in recs["t_missing"]["error"]
    assert "broken cell" in stderr


def test_every_test_cell_of_every_lab_has_hidden_checks():
    for lab in LABS:
        tests = J.autograded_tests(nbu.read_nb(nbu.source_path(lab)))
        assert tests, lab


@pytest.mark.parametrize("lab", LABS)
def test_reference_passes_and_each_plausible_mistake_fails_exactly_its_own_cells(lab, tmp_path):
    src = nbu.read_nb(nbu.source_path(lab))
    expected = J.build_expected(nbu.source_path(lab), tmp_path / "expected.json", tmp_path / "ref")
    points = {gid: 1.0 for gid in expected["records"]}
    names = nbu.graded_names(src)
    variants = [gf.reference(src), _release_like(src)] + [gf.plausibly_wrong(src, name) for name in names]
    records, _ = J.run_probes([J.probe_spec(src, nb) for nb in variants], tmp_path / "variants")
    verdicts = [J.judge_cells(expected, recs, points) for recs in records]
    assert all(v["points"] == 1.0 for v in verdicts[0].values())          # the reference, run again
    assert all(v["points"] == 0 for v in verdicts[1].values())            # the blank student version
    for name, verdict in zip(names, verdicts[2:]):
        failed = {gid for gid, v in verdict.items() if v["points"] == 0}
        assert failed == {nbu.grade_id(c) for c in gf.test_cells(src, name)}, (name, failed)


def _release_like(src: dict) -> dict:
    """The student version's solution cells (solution region replaced by the stub)."""
    nb = json.loads(json.dumps(src))
    for cell in nb["cells"]:
        text = nbu.cell_source(cell)
        if nbu.BEGIN_SOLUTION in text:
            cell["source"] = nbu.strip_region(text, nbu.BEGIN_SOLUTION, nbu.END_SOLUTION,
                                              "raise NotImplementedError()")
    return nb
