"""Shared pytest fixtures for the data tests: tiny archives in each real format and their caches."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def fixture_archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny archives of ``data_scripts.fixtures``: cifar10 pickle / image-folder, food11 zip / folder."""
    from data_scripts import fixtures

    d = tmp_path_factory.mktemp("archives")
    return {
        "cifar10-pickle": fixtures.cifar10_pickle_archive(d / "cifar-10-python.tar.gz"),
        "cifar10-folder": fixtures.cifar10_folder_archive(d / "cifar10-jpeg.tar.gz"),
        "food11-zip": fixtures.food11_archive(d / "food-11.zip", kind="zip"),
        "food11-dir": fixtures.food11_archive(d / "food-11", kind="dir"),
    }


@pytest.fixture(scope="session")
def prepared_root(tmp_path_factory: pytest.TempPathFactory, fixture_archives: dict[str, Path]) -> Path:
    """A data root with cifar10 (from the pickle fixture) and food11 at size 32 prepared by the CLI."""
    from data_scripts.__main__ import main

    root = tmp_path_factory.mktemp("data_root")
    assert main(["cifar10", "--from", str(fixture_archives["cifar10-pickle"]), "--root", str(root)]) == 0
    assert main(["food11", "--from", str(fixture_archives["food11-zip"]), "--root", str(root), "--size", "32"]) == 0
    return root


@pytest.fixture
def bwrap_ok() -> None:
    """Skip, with the reason, where :func:`autograder.sandbox.sandbox_check` says the sandbox cannot run."""
    from autograder import sandbox as sb

    problem = sb.sandbox_check()
    if problem:
        pytest.skip(problem)
