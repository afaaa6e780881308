"""pyproject.toml and environment.yml pin exactly the same packages and versions.

environment.yml is parsed with a few lines of text handling (no YAML dependency): it only
has to read the ``- name==version`` entries of its ``pip:`` list.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)$")


def _parse_pins(entries: list[str], where: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for entry in entries:
        m = PIN.match(entry.strip())
        assert m, f"{where}: {entry!r} is not an exact pin 'name==version'"
        name = re.sub(r"[-_.]+", "-", m.group(1)).lower()  # PEP 503 normalized
        assert name not in pins, f"{where}: {name} is pinned twice"
        pins[name] = m.group(2)
    return pins


def pyproject_pins(repo: Path = REPO) -> dict[str, str]:
    project = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    entries = list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])
    return _parse_pins(entries, "pyproject.toml")


def environment_yml(repo: Path = REPO) -> tuple[dict[str, str], str | None]:
    """(pip pins, python version) of environment.yml."""
    pip_entries: list[str] = []
    python = None
    in_pip, pip_indent = False, 0
    for raw in (repo / "environment.yml").read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        item = line.strip()
        if in_pip and indent <= pip_indent:
            in_pip = False
        if item == "- pip:":
            in_pip, pip_indent = True, indent
        elif in_pip and item.startswith("- "):
            pip_entries.append(item[2:])
        elif item.startswith("- python="):
            python = item.split("=", 1)[1]
    return _parse_pins(pip_entries, "environment.yml"), python


def pin_differences(repo: Path = REPO) -> str:
    """'' when both files pin the same versions, else a description of the differences."""
    ours, (theirs, _) = pyproject_pins(repo), environment_yml(repo)
    only_py = {k: v for k, v in ours.items() if k not in theirs}
    only_env = {k: v for k, v in theirs.items() if k not in ours}
    differ = {k: (ours[k], theirs[k]) for k in ours.keys() & theirs.keys() if ours[k] != theirs[k]}
    if not (only_py or only_env or differ):
        return ""
    return (f"pins disagree: only in pyproject {only_py}, only in environment.yml {only_env}, "
            f"different versions (pyproject, environment.yml) {differ}")


def test_environment_yml_repeats_pyproject_pins():
    problem = pin_differences()
    assert not problem, problem


@pytest.mark.parametrize("name, version", [("torch", "2.14.1"), ("torchvision", "0.29.1"),
                                           ("nbgrader", "0.9.6"), ("nbval", "0.11.0")])
def test_toolchain_versions(name, version):
    assert pyproject_pins()[name] == version
    assert environment_yml()[0][name] == version


def test_environment_python_satisfies_requires_python():
    _, python = environment_yml()
    assert python is not None, "environment.yml must pin python"
    spec = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    lo = re.search(r">=\s*(\d+)\.(\d+)", spec)
    hi = re.search(r"<\s*(\d+)\.(\d+)", spec)
    ver = tuple(int(x) for x in python.split(".")[:2])
    assert lo and ver >= (int(lo[1]), int(lo[2])), f"python={python} below {spec}"
    assert hi is None or ver < (int(hi[1]), int(hi[2])), f"python={python} above {spec}"


def test_comparison_notices_a_changed_or_missing_pin(tmp_path):
    # the comparison is only worth something if a difference is actually seen
    for name in ("pyproject.toml", "environment.yml"):
        (tmp_path / name).write_text((REPO / name).read_text(encoding="utf-8"), encoding="utf-8")
    assert pin_differences(tmp_path) == ""
    env = tmp_path / "environment.yml"
    text = env.read_text(encoding="utf-8")
    env.write_text(text.replace("torch==2.14.1", "torch==2.14.0"), encoding="utf-8")
    assert "'torch': ('2.14.1', '2.14.0')" in pin_differences(tmp_path)
    env.write_text(text.replace("      - nbval==0.11.0\n", ""), encoding="utf-8")
    assert "only in pyproject {'nbval': '0.11.0'}" in pin_differences(tmp_path)
