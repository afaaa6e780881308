"""``python -m autograder.worker TICKET``: grade one (student, lab) job described by ``TICKET``.

Started by :func:`autograder.grade.grade` once per submission, so that a crash, a hang or
a memory blow-up of the grading machinery stays inside this process. Writes
``TICKET`` with the suffix ``.result.json``.
"""
import sys

from autograder.job import run_ticket

if __name__ == "__main__":
    sys.exit(run_ticket(sys.argv[1]))
