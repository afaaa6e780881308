"""The per-submission grading process (``python -m autograder.worker``) keeps its imports lean."""
from __future__ import annotations

import subprocess
import sys

from autograder import notebook as nbu


def test_worker_skips_the_slow_optional_import_and_still_validates_notebooks():
    """``rfc3987_syntax`` (1.2 s of grammar building at import) stays unloaded in a grading process, and
    nbformat's schema validation, which nbgrader runs on every submission, works without it."""
    lab = nbu.available_labs()[0]
    code = (
        "import sys, autograder.worker, nbformat, jsonschema\n"
        "assert sys.modules['rfc3987_syntax'] is None, sys.modules['rfc3987_syntax']\n"
        f"nb = nbformat.read({str(nbu.source_path(lab))!r}, as_version=4)\n"
        "nbformat.validate(nb)\n"
        "nb.cells[0]['cell_type'] = 'no such type'\n"
        "try:\n"
        "    nbformat.validate(nb)\n"
        "except nbformat.ValidationError:\n"
        "    print('invalid notebook rejected')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "invalid notebook rejected"
