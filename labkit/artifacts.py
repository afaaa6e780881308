"""Checkpoints that one lab writes and a later lab reads.

``artifact_path("lab3", "vgg_sparse")`` names a file in the profile's artifacts
folder: ``<artifacts>/lab3-vgg_sparse-<profile>-<dataset>.pt``. A later lab calls
:func:`find_artifact`, which looks there first and then in ``checkpoints/`` next
to the notebook, where ``python -m autograder release`` puts copies it built by
running the source notebooks. Nothing is trained silently in place of a missing file.
"""
from __future__ import annotations

from pathlib import Path

from labkit.profile import Profile, get_profile

SHIPPED_DIR = "checkpoints"


def artifact_name(lab: str, name: str, profile: Profile | None = None) -> str:
    prof = profile or get_profile()
    return f"{lab}-{name}-{prof.name}-{prof.dataset}.pt"


def artifact_path(lab: str, name: str, profile: Profile | None = None) -> Path:
    """Where ``lab`` writes its artifact ``name`` under the current profile (folder created)."""
    prof = profile or get_profile()
    prof.artifacts.mkdir(parents=True, exist_ok=True)
    return prof.artifacts / artifact_name(lab, name, prof)


def find_artifact(lab: str, name: str, profile: Profile | None = None,
                  search: list[Path] | None = None) -> Path:
    """The artifact ``name`` of ``lab``: the artifacts folder first, then shipped copies.

    Prints which copy it uses. Raises ``FileNotFoundError`` with a one-line fix.
    """
    prof = profile or get_profile()
    fname = artifact_name(lab, name, prof)
    candidates = [prof.artifacts / fname]
    for folder in (search if search is not None else [Path.cwd() / SHIPPED_DIR]):
        candidates.append(Path(folder) / fname)
    for i, path in enumerate(candidates):
        if path.is_file():
            origin = "your own run" if i == 0 else "the copy shipped with the assignment"
            print(f"using {fname} from {origin} ({path})")
            return path
    raise FileNotFoundError(
        f"{fname} not found in {prof.artifacts} or ./{SHIPPED_DIR}: run {lab} first under "
        f"profile={prof.name}, dataset={prof.dataset} (or use the release's checkpoints)")
