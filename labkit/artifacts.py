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


HEADLINES = "headlines.json"


def record_headline(lab: str, profile: Profile | None = None, **numbers: float | int | str) -> Path:
    """Record a lab's headline numbers in ``<artifacts>/headlines.json`` (merged, atomic write).

    ``make demo`` prints them after running the notebooks; keys are short labels such as
    ``test_acc`` or ``params_ratio``.
    """
    import json

    from labkit.files import write_text

    prof = profile or get_profile()
    prof.artifacts.mkdir(parents=True, exist_ok=True)
    path = prof.artifacts / HEADLINES
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    def plain(v):  # numpy / torch scalars -> Python numbers, so json can write them
        v = v.item() if hasattr(v, "item") else v
        return float(f"{v:.5g}") if isinstance(v, float) else v  # significant digits: 2.9e-06 stays

    data[lab] = {"profile": prof.name, "dataset": prof.dataset, **{k: plain(v) for k, v in numbers.items()}}
    text = json.dumps(data, indent=2, sort_keys=True)  # fails before any file is touched
    return write_text(path, text)
