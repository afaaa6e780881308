"""autograder.runner: running a notebook under a profile, and the kernel-warning filter."""
from __future__ import annotations

import subprocess
import sys

from autograder.runner import KERNEL_TCP_WARNING, environ, without_kernel_tcp_warning


def test_the_filter_drops_only_the_kernel_tcp_warning_from_child_processes(capfd):
    warning = KERNEL_TCP_WARNING.decode()
    with without_kernel_tcp_warning():
        subprocess.run([sys.executable, "-c", f"import sys; sys.stderr.write('[IPKernelApp] WARNING | {warning}.\\n'"
                        f" 'a real error line\\n')"], check=True)
    err = capfd.readouterr().err
    assert "a real error line" in err and warning not in err


def test_environ_restores_what_was_there(monkeypatch):
    monkeypatch.setenv("LABKIT_X", "old")
    monkeypatch.delenv("LABKIT_Y", raising=False)
    import os

    with environ(LABKIT_X="new", LABKIT_Y="set"):
        assert (os.environ["LABKIT_X"], os.environ["LABKIT_Y"]) == ("new", "set")
    assert os.environ["LABKIT_X"] == "old" and "LABKIT_Y" not in os.environ
