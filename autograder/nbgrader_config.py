"""nbgrader config for running the nbgrader command line by hand in a course folder.

    cd build/course && nbgrader autograde lab1_early_stopping_transfer --config ../../autograder/nbgrader_config.py

``python -m autograder`` does not read this file: it builds the same settings in
:func:`autograder.config.make_config` (plus the sandboxed kernel and per-job gradebooks).
"""
import os

from autograder.config import make_config

c = get_config()  # noqa: F821 - provided by nbgrader when it loads this file
c.merge(make_config(os.getcwd(), db_url=os.environ.get("NBGRADER_DB_URL")))
