"""``python -m autograder demo``: where grading cannot run, it stops before any notebook, in one line."""
from __future__ import annotations

import pytest

from autograder import demo as demo_mod
from autograder import runner
from autograder import sandbox


def test_demo_without_sandbox_stops_at_once_with_one_line(monkeypatch, capsys):
    line = "bubblewrap is not installed: apt-get install bubblewrap, or pass --no-sandbox for trusted submissions"
    monkeypatch.setattr(sandbox, "sandbox_check", lambda: line)

    def no_notebooks(*a, **k):
        raise AssertionError("the demo ran a notebook although it could not grade")

    monkeypatch.setattr(runner, "run_notebook", no_notebooks)
    assert demo_mod.demo(profile="smoke") == 1
    out = capsys.readouterr()
    assert out.out == f"demo: cannot grade here: {line}\n"
    assert out.err == ""


def test_demo_cli_defaults_to_the_learning_profile(monkeypatch):
    from autograder import __main__ as cli

    seen = {}
    monkeypatch.setattr(demo_mod, "demo", lambda **kw: seen.update(kw) or 0)
    assert cli.main(["demo"]) == 0
    assert seen == {"workers": None, "profile": "fast", "sandbox": True}
    assert cli.main(["demo", "--profile", "smoke", "--no-sandbox"]) == 0
    assert seen == {"workers": None, "profile": "smoke", "sandbox": False}


def test_demo_rejects_an_unknown_profile():
    from autograder import __main__ as cli

    with pytest.raises(SystemExit):
        cli.main(["demo", "--profile", "full"])
