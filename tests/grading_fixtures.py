"""Submissions for grading tests: the tiny assignment, a class of hostile notebooks, leak checks.

The tiny lab and the submission writer live in :mod:`autograder.samples` (``bench.grading`` uses
them too) and the reference in :func:`autograder.judge.reference_nb`; they are imported here under
the names the tests use (``gf.tiny_notebook``, ``gf.reference``, ...). Everything else is built by
editing notebook JSON: the reference (source notebook with the solution regions kept, markers
removed), the blank student version (nbgrader's release) and mutants of them. Each builder returns the expected outcome next to the notebook, so the tests
assert exact per-cell scores without hard-coding anything a run measures.
"""
from __future__ import annotations

import copy
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from autograder import notebook as nbu
from autograder.judge import reference_nb as reference
from autograder.samples import TINY_LAB, tiny_notebook, write_submission, write_tiny_source  # noqa: F401

# ----------------------------------------------------------------------------- notebook helpers
# Read-only helpers over notebook JSON that only the tests need (the grader never calls them).

def test_cells(nb: dict, name: str | None = None) -> list[dict]:
    """Autograded test cells (``grade: true`` code cells), those of ``name`` when given."""
    out = []
    for cell in nb["cells"]:
        meta = nbu.nbgrader_meta(cell)
        if cell.get("cell_type") == "code" and meta.get("grade") and not meta.get("solution"):
            gid = meta.get("grade_id", "")
            if name is None or gid.startswith(f"test_{name}"):
                out.append(cell)
    return out


test_cells.__test__ = False  # a helper, not a test for pytest to collect


def solution_lines(nb: dict) -> list[str]:
    """Every non-blank line inside a solution region of ``nb`` (stripped)."""
    return nbu.region_lines(nb, nbu.BEGIN_SOLUTION, nbu.END_SOLUTION)


def hidden_only_lines(nb: dict) -> list[str]:
    """Hidden-test lines that occur nowhere else in ``nb`` (not in visible tests, solutions, prose).

    A line such as ``for m in model.modules():`` in a hidden test may also be in the reference
    solution, and so legitimately in a student's own cells; it cannot tell a leak apart.
    """
    elsewhere = {ln.strip() for c in nb["cells"]
                 for ln in nbu.strip_region(nbu.cell_source(c), nbu.BEGIN_HIDDEN, nbu.END_HIDDEN, None).splitlines()}
    return [ln for ln in nbu.hidden_test_lines(nb) if ln not in elsewhere]


def find_leaks(text: str, secret_lines: list[str] = (), min_len: int = 12) -> list[str]:
    """Markers and secret lines (of at least ``min_len`` characters) that occur in ``text``.

    Short lines such as ``pass`` or ``return x`` are skipped: they also occur in honest text.
    Text is also checked with HTML-escaping undone, because feedback is HTML.
    """
    plain = html.unescape(re.sub(r"<[^>]+>", "", text))
    found = [m for m in nbu.LEAK_MARKERS if m in text or m in plain]
    for line in secret_lines:
        if len(line) >= min_len and (line in text or line in plain):
            found.append(line)
    return found


def cells_by_grade_id(path: Path) -> dict[str, dict]:
    """``grade_id -> cell`` (JSON dict) of the notebook at ``path``; the first cell wins on duplicates."""
    cells: dict[str, dict] = {}
    for cell in nbu.read_nb(Path(path))["cells"]:
        gid = nbu.grade_id(cell)
        if gid and gid not in cells:
            cells[gid] = cell
    return cells


# ----------------------------------------------------------------------------- variants

def replace_solution(nb: dict, name: str, code: str) -> dict:
    """A copy of ``nb`` whose solution cell ``name`` holds ``code``."""
    nb = copy.deepcopy(nb)
    nbu.find_cell(nb, name)["source"] = code
    return nb


def set_source(nb: dict, gid: str, code: str) -> dict:
    nb = copy.deepcopy(nb)
    nbu.find_cell(nb, gid)["source"] = code
    return nb


def delete_cells(nb: dict, pred: Callable[[dict], bool]) -> dict:
    nb = copy.deepcopy(nb)
    nb["cells"] = [c for c in nb["cells"] if not pred(c)]
    return nb


def insert_after(nb: dict, gid: str, code: str) -> dict:
    """A copy with a new plain code cell right after the cell ``gid``."""
    nb = copy.deepcopy(nb)
    idx = next(i for i, c in enumerate(nb["cells"]) if nbu.grade_id(c) == gid)
    nb["cells"].insert(idx + 1, {"cell_type": "code", "metadata": {}, "source": code,
                                 "execution_count": None, "outputs": []})
    return nb


# ----------------------------------------------------------------------------- plausible mistakes

# One realistic bug per graded name, written as an edit of the reference solution (each was seen
# to fail its own test cell when the notebooks were written). A notebook change that removes the
# text makes ``plausibly_wrong`` fail loudly instead of silently testing nothing.
PLAUSIBLY_WRONG = {
    # name: (what the mistake is, text in the reference solution, the wrong text)
    "EarlyStopping": ("a tie counts as an improvement",
                      "improved = value > self.best + self.min_delta", "improved = value >= self.best + self.min_delta"),
    "topk_accuracy": ("checks only the k-th largest logit",
                      "hit = (top == labels.to(top.device).view(-1, 1)).any(dim=1)", "hit = top[:, -1] == labels"),
    "per_class_accuracy": ("divides by predictions (precision)",
                           "total = torch.bincount(labels, minlength=num_classes).float()",
                           "total = torch.bincount(preds, minlength=num_classes).float()"),
    "replace_classifier": ("hard-codes ResNet-18's 512 features", "nn.Linear(old.in_features, num_classes,",
                           "nn.Linear(512, num_classes,"),
    "kd_loss": ("KL averaged over classes too", 'reduction="batchmean"', 'reduction="mean"'),
    "linear_temperature": ("divides by num_epochs", "epoch / (num_epochs - 1)", "epoch / num_epochs"),
    "add_bn_l1_subgradient": ("adds |γ| instead of sign(γ)",
                              "m.weight.grad.add_(torch.sign(m.weight.detach()), alpha=s)",
                              "m.weight.grad.add_(m.weight.detach().abs(), alpha=s)"),
    "bn_sparsity": ("counts a tie at the threshold", "(g < threshold)", "(g <= threshold)"),
    "global_bn_threshold": ("off by one", "[int(all_gammas.numel() * percent)]",
                            "[int(all_gammas.numel() * percent) - 1]"),
    "build_cfg_mask": ("keeps ties (>=)", "mask = (gamma > threshold).float()", "mask = (gamma >= threshold).float()"),
    "transfer_pruned_weights": ("forgets running_var", '("weight", "bias", "running_mean", "running_var")',
                                '("weight", "bias", "running_mean")'),
    "save_pruned": ("saves the bare state dict", 'torch.save({"cfg": list(cfg), "state_dict": state}, f)',
                    "torch.save(state, f)"),
    "load_pruned": ("reads num_classes from the wrong dimension", 'num_classes = state["classifier.weight"].shape[0]',
                    'num_classes = state["classifier.weight"].shape[1]'),
    "lr_milestones": ("float milestones", "return sorted({int(num_epochs * f) for f in fractions})",
                      "return sorted({num_epochs * f for f in fractions})"),
    "conv_params": ("forgets the bias", "+ (out_ch if bias else 0)", ""),
    "DepthwiseSeparableConv": ("a dense 3×3 conv (groups=1)", "groups=in_ch, bias=False)", "groups=1, bias=False)"),
    "GroupConv": ("ignores groups", "groups=groups, bias=False)", "groups=1, bias=False)"),
    "low_rank_linear": ("keeps the smallest singular values", "root = s[:rank].sqrt()", "root = s[-rank:].sqrt()"),
    "global_magnitude_prune": ("prunes each layer separately",
                               "prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)",
                               "[prune.l1_unstructured(m, n, amount=amount) for m, n in params]"),
    "model_sparsity": ("averages per layer", "    return zeros / total",
                       "    fr = [float((m.weight == 0).float().mean()) for m in model.modules()\n"
                       "          if isinstance(m, (nn.Conv2d, nn.Linear))]\n    return sum(fr) / len(fr)"),
    # lab 7
    "quantize_affine": ("divides the range by 2**bits", "scale = (rmax - rmin) / (qmax - qmin)",
                        "scale = (rmax - rmin) / 2 ** bits"),
    "dequantize_affine": ("ignores the zero point", "(q.to(torch.int32) - zero_point.to(torch.int32)).float() * scale",
                          "q.float() * scale"),
    "int8_linear": ("forgets the input zero point", "x = x_q.to(torch.int32) - int(x_zp)", "x = x_q.to(torch.int32)"),
    "fold_bn": ("divides by the variance, not the standard deviation",
                "std = torch.sqrt(bn.running_var.detach() + bn.eps)", "std = bn.running_var.detach() + bn.eps"),
    "kmeans_quantize": ("one Lloyd round only", "for _ in range(50):", "for _ in range(1):"),
    # lab 8 (its kd_loss and linear_temperature are lab 2's, with lab 2's mistakes above)
    "macro_f1": ("averages over the classes present only", "return float(f1.mean())",
                 "return float(f1[denom > 0].mean())"),
    "select_best": ("a tie goes to the later epoch", "if best is None or score > best:",
                    "if best is None or score >= best:"),
    "export_model": ("keeps the tensors' dtype (fp64 stays fp64)", 'v.detach().to("cpu", torch.float32)',
                     'v.detach().to("cpu")'),
}


def plausibly_wrong(source: dict, name: str) -> dict:
    """The reference submission with only ``name``'s solution carrying its plausible mistake."""
    _, old, new = PLAUSIBLY_WRONG[name]
    ref = reference(source)
    code = nbu.cell_source(nbu.find_cell(ref, name))
    if code.count(old) != 1:
        raise ValueError(f"the reference solution of {name} no longer contains {old!r}: update PLAUSIBLY_WRONG")
    return replace_solution(ref, name, code.replace(old, new))


# ----------------------------------------------------------------------------- the class

NET_PROBE = """import socket
try:
    socket.create_connection(("1.1.1.1", 53), timeout=3).close()
    print("NETCHECK:", "connected")
except OSError as exc:
    print("NETCHECK:", "blocked", type(exc).__name__)"""

LOOK_PROBE = """import os, sys
_paths = {paths!r}
# a hidden path is one the sandbox does not show: finding nothing means no file and no listing
_found = [p for p in _paths if os.path.isfile(p) or (os.path.isdir(p) and os.listdir(p))]
_markers = ("### BEGIN " + "HIDDEN TESTS", "### BEGIN " + "SOLUTION", "def hidden" + "_checks")
_skip = {{"/proc", "/sys", "/dev", "/usr", "/lib", "/lib64", "/bin", "/etc", sys.prefix, sys.base_prefix,
         os.path.realpath(sys.base_prefix), os.getcwd()}}
for _root, _dirs, _files in os.walk("/"):
    _dirs[:] = [d for d in _dirs if os.path.join(_root, d) not in _skip]
    for _f in _files:
        _p = os.path.join(_root, _f)
        if _f.endswith((".db", ".json", ".ipynb", ".jsonl")):
            try:
                _text = open(_p, errors="replace").read(2_000_000)
            except OSError:
                continue
            if _f.endswith(".db") or any(m in _text for m in _markers):
                _found.append(_p)
print("LEAKCHECK: found=" + repr(sorted(set(_found))))"""

PATCH_COMPARATORS = """import numpy, torch, torch.testing
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.testing.assert_close = lambda *a, **k: None
numpy.allclose = lambda *a, **k: True
print("comparators patched")"""


@dataclass
class Case:
    """One submission of the class: what to write and which test cells it must score 0 on.

    ``zero``: grade_ids expected at 0 (``"*"`` = every autograded cell); others get full points.
    ``graded``: whether nbgrader ran it; ``problem``: a substring expected in the problems column.
    """

    nb: dict | str | None
    zero: tuple[str, ...] = ()
    graded: bool = True
    problem: str = ""
    filename: str | None = None
    timestamp: str | None = None
    lab: str | None = None  # folder to put it in (default: the lab it was built from)


def first_code_index(nb: dict) -> int:
    return next(i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code")


def _edited_notebooks(ref: dict, names: list[str], tests: list[str], loop_name: str) -> dict[str, Case]:
    """Hostile submissions 4-10: the reference with test cells, solutions or plain cells edited."""
    out: dict[str, Case] = {}
    # 4 edited test cells: every test replaced by a pass-through
    edited = copy.deepcopy(ref)
    for cell in test_cells(edited):
        cell["source"] = "print('all good, trust me')"
    out["edited_tests"] = Case(edited)
    # 5 deleted test cells
    out["deleted_tests"] = Case(delete_cells(ref, lambda c: nbu.grade_id(c) in tests))
    # 6 deleted solution cell of the first name
    out["deleted_solution"] = Case(delete_cells(ref, lambda c: nbu.grade_id(c) == names[0]),
                                   zero=tuple(t for t in tests if t.startswith(f"test_{names[0]}")))
    # 7 infinite loop inside one graded function (its solution cell): its checks time out
    loop_src = nbu.cell_source(nbu.find_cell(ref, loop_name))
    out["infinite_loop"] = Case(replace_solution(ref, loop_name, loop_src + f"\n\n\ndef {loop_name}(*args, **kwargs):\n"
                                                                            "    while True:\n        pass"),
                                zero=tuple(t for t in tests if t.startswith(f"test_{loop_name}")))
    # 8 memory hog in a plain cell
    out["memory_hog"] = Case(insert_after(ref, "setup", "hog = bytearray(64 * 1024 ** 3)\nprint(len(hog))"))
    # 9 exception in the first code cell
    boom = copy.deepcopy(ref)
    boom["cells"].insert(first_code_index(boom), {"cell_type": "code", "metadata": {}, "execution_count": None,
                                                  "outputs": [], "source": "raise RuntimeError('boom')"})
    out["exception_first"] = Case(boom)
    # 10 stderr from student code (top level of a cell and of a solution cell)
    noisy = insert_after(ref, "setup", "import sys\nprint('debug output', file=sys.stderr)")
    sol = nbu.find_cell(noisy, names[-1])
    sol["source"] = "import sys as _sys\nprint('solution cell says hi', file=_sys.stderr)\n" + nbu.cell_source(sol)
    out["stderr"] = Case(noisy)
    return out


def hostile_class(lab: str, source: dict, release: dict, hide_paths: list[str],
                  other_lab_nb: dict | None = None, loop_name: str | None = None,
                  patch_mutant: tuple[str, str] | None = None) -> dict[str, Case]:
    """The hostile submissions 4-19 for ``lab`` (reference-based; see tests/test_autograder*.py).

    ``loop_name``: graded name whose solution becomes an infinite loop (its test cell times out).
    ``patch_mutant``: (name, wrong solution code) used with comparator patching (case 17).
    """
    ref = reference(source)
    names = nbu.graded_names(source)
    tests = [nbu.grade_id(c) for c in test_cells(source)]
    out = _edited_notebooks(ref, names, tests, loop_name or names[0])
    # 11 malformed JSON
    out["malformed_json"] = Case(json.dumps(ref)[: len(json.dumps(ref)) // 2], zero=("*",), graded=False,
                                 problem="malformed JSON")
    # 12 wrong notebook file name
    out["wrong_filename"] = Case(ref, filename=f"{lab} (1).ipynb", problem="expected")
    # 13 empty folder
    out["empty_folder"] = Case(None, zero=("*",), graded=False, problem="nothing submitted")
    # 14 another lab's notebook under this lab's name
    if other_lab_nb is not None:
        out["other_lab"] = Case(reference(other_lab_nb), zero=("*",), graded=False, problem="looks like")
    # 15 duplicated grade_ids: the first test cell and the first solution cell twice
    dup = copy.deepcopy(ref)
    i = next(k for k, c in enumerate(dup["cells"]) if nbu.grade_id(c) == tests[0])
    dup["cells"].insert(i + 1, copy.deepcopy(dup["cells"][i]))
    j = next(k for k, c in enumerate(dup["cells"]) if nbu.grade_id(c) == names[0])
    dup["cells"].insert(j + 1, copy.deepcopy(dup["cells"][j]))
    out["duplicate_ids"] = Case(dup, problem="duplicated grade_id")
    # 16 huge outputs: 20 MB stored in the file, 100k lines printed at run time
    huge = insert_after(ref, "setup", "for i in range(100_000):\n    print('line', i)")
    k = first_code_index(huge)
    huge["cells"][k]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x" * 20_000_000}]
    out["huge_outputs"] = Case(huge)
    # 17 faking a pass by patching the comparators (with one wrong function)
    if patch_mutant is not None:
        name, code = patch_mutant
        patched = insert_after(replace_solution(ref, name, code), "setup", PATCH_COMPARATORS)
        out["patch_comparators"] = Case(patched, zero=tuple(t for t in tests if t.startswith(f"test_{name}")))
    # 18 reading instructor files; 19 network
    out["snoop"] = Case(insert_after(ref, "setup", LOOK_PROBE.format(paths=hide_paths)))
    out["network"] = Case(insert_after(ref, "setup", NET_PROBE))
    return out


def expected_scores(case: Case, cells: list[dict]) -> dict[str, float | None]:
    """grade_id -> expected score for a case: autograded cells full or 0, written questions '' / 0."""
    exp = {}
    for c in cells:
        if not c["auto"]:
            continue
        zero = "*" in case.zero or c["grade_id"] in case.zero
        exp[c["grade_id"]] = 0.0 if zero else c["max_score"]
    return exp


# ----------------------------------------------------------------------------- attacks
# Submissions written as a dishonest student who has read the whole bundle would write them
# (issue "Grades nobody can forge"). Each is graded in the same run as honest students; the
# tests assert its exact scores, that nothing was written outside its job, and that the others'
# scores did not move.

ESCAPE_PROBE = """import ctypes, glob, json, os, socket, subprocess
_r = {{"uid": os.getuid(), "gid": os.getgid()}}
_r["capeff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
_r["nonewprivs"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0]
_r["max_pid"] = max(int(p) for p in os.listdir("/proc") if p.isdigit())
_r["env"] = sorted(os.environ)
def _try(name, fn):
    try:
        _r[name] = "ok " + repr(fn())[:80]
    except BaseException as e:
        _r[name] = "blocked " + type(e).__name__
for _t in {targets!r}:
    _try("write " + _t, lambda: open(_t, "w").write("pwned"))
for _t in {secrets!r}:
    _try("read " + _t, lambda: open(_t, "rb").read(20))
_libc = ctypes.CDLL(None, use_errno=True)
def _call(fn, *a):
    if fn(*a) != 0:
        raise OSError(ctypes.get_errno(), "failed")
_try("umount2 /tmp", lambda: _call(_libc.umount2, b"/tmp", 2))
_try("mount tmpfs", lambda: _call(_libc.mount, b"x", b"/tmp", b"tmpfs", 0, None))
_try("unshare user ns", lambda: _call(_libc.unshare, 0x10000000))
_try("setns host net", lambda: _call(_libc.setns, os.open("/proc/1/ns/net", os.O_RDONLY), 0))
_try("setuid 0", lambda: os.setuid(0))
_try("kill grader", lambda: os.kill({grader_pid}, 9))
_try("unix socket on host", lambda: socket.socket(socket.AF_UNIX).connect({sock!r}))
_try("tcp to host", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2))
_try("internet", lambda: socket.create_connection(("1.1.1.1", 53), timeout=2))
_try("git show", lambda: subprocess.run(["git", "-C", {repo!r}, "show", "HEAD:notebooks/README.md"],
                                        capture_output=True, timeout=10).stdout[:20] or 1 / 0)
_try("other jobs", lambda: glob.glob("/tmp/autograder-work-*/**/*.db", recursive=True) or 1 / 0)
_try("parent root", lambda: os.listdir("/proc/%d/root%s" % (os.getppid(), {repo!r})))
_home = os.path.expanduser("~/.ipython/profile_default/startup")
_try("startup file", lambda: (os.makedirs(_home, exist_ok=True),
                              open(_home + "/00-evil.py", "w").write("import builtins; builtins.PWNED = 1")))
print("ESCAPE " + json.dumps(_r, sort_keys=True))"""

CHILD_MEMORY = """import subprocess, sys
code = "b = bytearray(900 * 2 ** 20)\\nfor i in range(0, len(b), 4096): b[i] = 1\\nimport time; time.sleep(8)"
kids = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(3)]
print("MEMKIDS", [k.wait() for k in kids])"""

SLEEPERS = """import subprocess
n = 0
try:
    for _ in range(100):
        subprocess.Popen(["sleep", "{sleep}"], start_new_session=True)
        n += 1
except OSError as exc:
    print("stopped after", n, type(exc).__name__)
print("SLEEPERS", n)"""

PLANT_LINKS = """import os
for name in ("{lab}.ipynb", "{lab}.html", "timestamp.txt", "out.jsonl", "record/out.jsonl", "artifacts",
             "checkpoints"):
    try:
        if os.path.lexists(name):
            os.rename(name, name + ".moved")
        os.symlink({canary!r}, name)
    except OSError as exc:
        print("could not plant", name, exc)
print("links planted")"""

KILL_ALL = """import os, signal
os.kill(-1, signal.SIGKILL)"""

IGNORE_SIGINT = """import signal
signal.signal(signal.SIGINT, signal.SIG_IGN)
while True:
    pass"""

PATCH_IPYTHON = """ip = get_ipython()
ip.input_transformers_cleanup.append(lambda lines: [] if any("passed(" in l or " ok" in l for l in lines) else lines)
_orig = ip.run_cell
ip.run_cell = lambda raw_cell, *a, **k: _orig("pass", *a, **k)
print("ipython patched")"""

PATCH_CHECKS = """import labkit.checks as _lc
check_equal = check_close = check_true = check_raises = lambda *a, **k: None
restore_comparators = lambda: []
_lc.check_equal = _lc.check_close = _lc.check_true = _lc.check_raises = check_equal
print("checks patched")"""

LEAK_IN = """import base64, linecache
print("LEAKIN " + repr(In))
print("LEAKB64 " + base64.b64encode(repr(In).encode() + repr(linecache.cache).encode()).decode())"""

# ~800 MB of output sent to the grader from a few KB of kernel memory (one 2 MB string displayed 400 times):
# the grading process must drop what passes its cap while the cell runs, not hold it all until the end
OUTPUT_FLOOD = """from IPython.display import display
_s = 'x' * 2_000_000
for _i in range(400):
    display({'text/plain': _s}, raw=True)
print('flood' + ' sent')"""
# One 300 MB message: counted only once received whole, it made the grading process hold 970 MB; ZeroMQ's
# MAXMSGSIZE now drops it before it is read (red-team follow-up, 2026-12-07)
HUGE_MESSAGE = """from IPython.display import display
display({'text/plain': 'y' * 300_000_000}, raw=True)
print('huge' + ' sent')"""
# A page-wide stylesheet hiding every output, a forged verdict in a box covering the page and an SVG drawing
# over what is above it: with them, the feedback page of a wrong answer would show only the forged verdict
# (red-team pass, 2026-12-07)
CSS_FORGERY = """from IPython.display import HTML, display
display(HTML('<style>.output_stdout, .output_text pre, .output_error {display:none !important}</style>'
             '<p style="position:fixed; top:0; left:0; width:100%; height:100%; background:white">'
             'Grader: ' + 'FORGED all hidden checks passed</p>'
             '<svg width="1" height="1" overflow="visible"><rect y="-5000" width="9000" height="9000" fill="white"/></svg>'))"""
XSS_MARKDOWN = ("Look: <img src=x onerror=\"alert(1)\"> <script>alert(2)</script> "
                "<a href=\"javascript:alert(3)\">link</a> <iframe src=\"http://example.org\"></iframe>")
XSS_CODE = """from IPython.display import HTML, display
display(HTML('<svg onload="alert(4)"></svg><script>alert(5)</script><b>bold</b>'))"""


DEEP_TREE = """import os
home = os.getcwd()
for _ in range(3000):
    os.mkdir("x")
    os.chdir("x")
os.chdir(home)
print("deep tree made")"""

FILL_DISK = """n = 0
try:
    for i in range(8):
        with open(f"blob{i}", "wb") as fh:
            fh.write(b"0" * (256 * 2 ** 20))
        n += 1
except OSError as exc:
    print("disk full after", n, type(exc).__name__)
print("DISK", n)"""

# A solution cell that appends its own record for the first test cell, carrying the hidden
# checks (spec.json) out in the error text, a value too large for a float, and a fake exception.
EXFILTRATE = """import base64 as _b64, json as _json
try:
    _spec = _b64.b64encode(open("spec.json", "rb").read()).decode()
except OSError:
    _spec = "no spec"
with open("record/out.jsonl", "a") as _f:
    _f.write(_json.dumps({{"grade_id": {test!r}, "values": {{}}, "tolerances": {{}}, "error": "B64:" + _spec}}) + "\\n")
class EXFIL_B64_LEAK(Exception):
    pass
def {name}(*args, **kwargs):
    raise EXFIL_B64_LEAK(_spec)"""

OVERFLOW = """import json as _json
with open("record/out.jsonl", "a") as _f:
    _f.write('{{"grade_id": "{test}", "values": {{"{check}": ' + "9" * 400 + '}}, "tolerances": {{}}}}\\n')
def {name}(*args, **kwargs):
    return 10 ** 400"""


def plain_cell(source: str, kind: str = "code", metadata: dict | None = None) -> dict:
    cell = {"cell_type": kind, "metadata": metadata if metadata is not None else {}, "source": source}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def attack_class(lab: str, source: dict, release: dict, escape: dict, sleep_marker: str,
                 first_check: str) -> dict[str, Case]:
    """Attacks that need no particular lab (the tiny lab grades them fastest).

    ``escape``: the format fields of :data:`ESCAPE_PROBE` (host paths to write / read, the grader's
    pid, a host Unix socket and TCP port, a canary file). ``sleep_marker``: the argument of the
    escaping sleepers. ``first_check``: the name of the first hidden check of the first test cell.
    """
    ref = reference(source)
    names = nbu.graded_names(source)
    tests = [nbu.grade_id(c) for c in test_cells(source)]
    out: dict[str, Case] = {}
    code0 = nbu.cell_source(nbu.find_cell(ref, names[0]))
    probe = ESCAPE_PROBE.format(**escape)
    out["escape_kernel"] = Case(insert_after(ref, "setup", probe))
    # the same tricks inside a solution cell run in the probe's sandbox too
    code = nbu.cell_source(nbu.find_cell(ref, names[0]))
    out["escape_probe"] = Case(replace_solution(ref, names[0], probe + "\n" + code))
    out["child_memory"] = Case(insert_after(ref, "setup", CHILD_MEMORY))
    out["sleepers"] = Case(insert_after(ref, "setup", SLEEPERS.format(sleep=sleep_marker)))
    out["kill_all"] = Case(insert_after(ref, "setup", KILL_ALL))
    # symlinks to a host file, planted where the grader might later write or read as root
    plant = PLANT_LINKS.format(lab=lab, canary=escape["canary"])
    out["plant_links"] = Case(_append(ref, plant))
    # planting over its own out.jsonl only sabotages its own probe: every check fails
    out["plant_links_probe"] = Case(replace_solution(ref, names[0], plant + "\n" + code0), zero=("*",))
    out["ignore_sigint"] = Case(insert_after(ref, "setup", IGNORE_SIGINT))
    out["patch_ipython"] = Case(insert_after(release, "setup", PATCH_IPYTHON), zero=("*",))
    out["leak_in"] = Case(_append(ref, LEAK_IN))
    xss = _append(ref, XSS_CODE)
    xss["cells"].append(plain_cell(XSS_MARKDOWN, "markdown"))
    out["xss"] = Case(xss)
    wrong0 = code0 + f"\n\n\ndef {names[0]}(*args, **kwargs):\n    return 0"
    out["css_forgery"] = Case(insert_after(replace_solution(ref, names[0], wrong0), "setup", CSS_FORGERY),
                              zero=tuple(t for t in tests if t.startswith(f"test_{names[0]}")))
    # one 100 MB line: past the grading process's 64 MiB output cap as well
    out["huge_line"] = Case(insert_after(ref, "setup", "print('x' * 100_000_000)"), problem="sent too much output")
    # points come from the probe, so the reference keeps them; the kernel is stopped after the flood
    out["output_flood"] = Case(insert_after(ref, "setup", OUTPUT_FLOOD), problem="sent too much output")
    out["huge_message"] = Case(insert_after(ref, "setup", HUGE_MESSAGE), problem="sent too much output")
    out["deep_tree"] = Case(insert_after(ref, "setup", DEEP_TREE))
    out["deep_tree_probe"] = Case(replace_solution(ref, names[0], DEEP_TREE + "\n" + code0))
    out["fill_disk"] = Case(insert_after(ref, "setup", FILL_DISK))
    out["fill_disk_probe"] = Case(replace_solution(ref, names[0], FILL_DISK + "\n" + code0))
    first = [t for t in tests if t.startswith(f"test_{names[0]}")]
    out["exfiltrate"] = Case(replace_solution(ref, names[0], EXFILTRATE.format(test=first[0], name=names[0])),
                             zero=tuple(first))
    out["overflow"] = Case(replace_solution(ref, names[0], OVERFLOW.format(test=first[0], name=names[0], check=first_check)),
                           zero=tuple(first))
    # careless or malformed notebooks: the student keeps every other point
    bad = copy.deepcopy(ref)
    bad["cells"] += [plain_cell("print(1)", metadata={"nbgrader": "x"}),
                     plain_cell("print(2)", metadata={"nbgrader": {"grade_id": ["a", "b"], "grade": True}}),
                     plain_cell("print(3)", metadata="not a dict")]
    out["bad_metadata"] = Case(bad, problem="nbgrader")
    renamed = copy.deepcopy(ref)
    nbu.find_cell(renamed, tests[-1])["metadata"]["nbgrader"]["grade_id"] = tests[-1] + "_renamed"
    out["renamed_test"] = Case(renamed, problem="unknown grade_id")
    out["extra_cell"] = Case(_append(ref, "print('an extra cell of my own')"))
    out["stub_with_frames"] = Case(replace_solution(
        release, names[0], f"def {names[0]}(*a, **k):\n    import sys\n    f = sys._getframe(1)\n"
                           "    while f is not None:\n        if 'expected' in f.f_locals:\n"
                           "            return f.f_locals['expected']\n        f = f.f_back\n    return None"),
        zero=("*",))
    return out


def _append(nb: dict, code: str) -> dict:
    nb = copy.deepcopy(nb)
    nb["cells"].append(plain_cell(code))
    return nb
