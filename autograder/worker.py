"""``python -m autograder.worker JOB_DIR``: autograde one prepared (student, lab) job.

Started by :func:`autograder.grade.grade` once per submission, so that a crash, a hang or
a memory blow-up stays inside this process. Writes ``JOB_DIR/result.json``.
"""
import sys

from autograder.grade import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
