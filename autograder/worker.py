"""``python -m autograder.worker TICKET``: grade one (student, lab) job described by ``TICKET``.

Started by :func:`autograder.grade.grade` once per submission, so that a crash, a hang or
a memory blow-up of the grading machinery stays inside this process. Writes
``TICKET`` with the suffix ``.result.json``.
"""
import sys

# A fresh process per submission pays every import again. jsonschema (under nbformat) imports the
# optional ``rfc3987_syntax`` when it is installed (jupyter-events pulls it in), and that module builds
# a Lark grammar at import: 1.2 of the 3.0 s this process spent importing, measured on 2 cores. It only
# adds jsonschema's "iri" / "iri-reference" format checks, which no notebook or nbgrader schema uses;
# marking it missing makes jsonschema skip them (its import sits in ``suppress(ImportError)``).
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

from autograder.job import run_ticket  # noqa: E402 - after the guard above

if __name__ == "__main__":
    sys.exit(run_ticket(sys.argv[1]))
