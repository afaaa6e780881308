"""``python -m bench.lessons``: does every lesson of the course hold on the run a student makes?

    python -m bench.lessons --profile fast [--only LAB ...] [--seeds N] [--out PATH] [--artifacts DIR]

Runs the source notebooks in lab order with nbclient (:func:`autograder.runner.run_notebook`)
under the profile, on CIFAR-10 for ``fast`` / ``full`` (a missing cache stops with one line naming
the import command) and on the embedded digits for ``smoke``, all in one artifacts folder (labs 4,
5 and 7 read what labs 3, 4 and 5 wrote); labs 1 and 2 start from the models the release ships
(:mod:`autograder.shipped`, built once and cached), as students do. It times each notebook, reads the numbers the notebooks
record with :func:`labkit.artifacts.record_headline` (``<artifacts>/headlines.json``) and
evaluates every claim of :data:`CLAIMS` (issue 11: L1.1 … L6.4; issue 13: L7.1 … L7.5).

Writes ``--out`` (JSON: ``claims``, ``notebooks``, ``machine``, ``command``, …; default
``bench/lessons.json`` under ``fast``, ``bench/lessons-<profile>.json`` under the others) and the
same as Markdown beside it (``bench/lessons.md``). The artifacts folder (default
``build/lessons/<profile>``) is kept, so ``--only lab5_finetune_pruned`` reuses lab 4's models.

``measured`` is exactly the quantity a claim names: accuracy differences in points (0–100 scale),
ratios as plain ratios, yes/no claims as JSON booleans. A quantity the notebooks do not record yet
is ``measured: null, holds: false`` with a ``note`` naming the missing headline key, never a
guess. Labs with a claim that asks for several seeds (labs 2 and 6) run once per seed (``LABKIT_SEED``
0 … N-1, each seed but 0 in its own artifacts folder ``<artifacts>/seed<k>``); their claims use the
mean over the seeds, or the worst seed where the claim says so. Every other lab runs with seed 0.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from autograder import notebook as nbu
from bench import REPO, log, machine_info, write_json

from bench.claims import CLAIMS, LAB7, Record, evaluate

LABS: tuple[str, ...] = tuple(nbu.LAB_IDS) + ((LAB7,) if LAB7 not in nbu.LAB_IDS else ())
PROFILES = ("smoke", "fast", "full")
BUDGET_S = {"fast": 15 * 60}  # issue 11: each notebook <= 15 min under fast on 2 cores


# --------------------------------------------------------------------------- running the notebooks
def seeds_for(lab: str, n_seeds: int) -> list[int]:
    """Seeds 0 … n_seeds-1 for a lab with a claim that asks for several seeds, else [0]."""
    wants = any(c.min_seeds > 1 for c in CLAIMS if c.lab == lab)
    return list(range(max(1, n_seeds))) if wants else [0]


def cifar10_missing() -> str | None:
    """One line naming the import command when the CIFAR-10 cache is not prepared, else None."""
    from labkit.data import cache_path
    from labkit.profile import default_data_root

    path = cache_path("cifar10", default_data_root())
    if path.is_file():
        return None
    return (f"bench.lessons: CIFAR-10 is not prepared ({path} not found): run `python -m data_scripts cifar10 "
            f"--from cifar-10-python.tar.gz` (or --from cifar10-jpeg.tar.gz, or no --from to download it), "
            f"or use --profile smoke")


def _headline_entry(artifacts: Path, lab: str, drop: bool = False) -> dict | None:
    """``lab``'s entry of ``<artifacts>/headlines.json`` (removed from the file when ``drop``)."""
    from labkit.artifacts import HEADLINES
    from labkit.files import write_text

    path, key = artifacts / HEADLINES, lab.split("_")[0]
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    entry = data.pop(key, None)
    if drop and entry is not None:  # a failed rerun must not leave the last run's numbers behind
        write_text(path, json.dumps(data, indent=2, sort_keys=True))
    return entry


def starting_checkpoints(labs: list[str], profile: str, dataset: str) -> dict[str, list[Path]]:
    """What the release ships for ``labs`` to start from (lab 1's backbone, lab 2's teachers), built
    once and cached by :mod:`autograder.shipped`, so the notebooks are timed as a student runs them.

    The lab 3 -> 4 -> 5 chain is not taken from the release: those notebooks run here in turn.
    """
    from autograder import shipped

    starters = [lab for lab in labs if any(i.starter and lab in i.ships_to for i in shipped.ITEMS)]
    if not starters:
        return {}
    _, files = shipped.build(starters, profile, dataset, log=log)
    return files


def run_lab(lab: str, seed: int, artifacts: Path, profile: str, dataset: str, timeout: int,
            checkpoints: list[Path] | None = None) -> dict[str, Any]:
    """Run one notebook under ``profile`` / ``dataset`` / ``seed``: its ``notebooks`` row plus ``record``.

    ``checkpoints`` go into the notebook's ``checkpoints/`` folder, as the release ships them.
    """
    import tempfile

    from autograder import shipped
    from autograder.runner import run_notebook

    path = nbu.source_path(lab)
    row: dict[str, Any] = {"lab": lab, "seed": seed, "wall_s": None}
    if not path.is_file():
        log(f"[lessons] {lab}: no notebook at {path.relative_to(REPO)}; its claims are not evaluated")
        return dict(row, status="no notebook", record=None)
    artifacts.mkdir(parents=True, exist_ok=True)
    _headline_entry(artifacts, lab, drop=True)
    log(f"[lessons] {lab} (seed {seed}) ...")
    with tempfile.TemporaryDirectory(prefix=f"lessons-{lab}-") as tmp:
        shipped.ship({lab: checkpoints or []}, Path(tmp))
        res = run_notebook(path, artifacts, timeout=timeout, profile=profile, workdir=Path(tmp) / lab,
                           LABKIT_DATASET=dataset, LABKIT_SEED=str(seed))
    row["wall_s"] = round(res.seconds, 1)
    if profile in BUDGET_S:
        row["within_budget"] = res.seconds <= BUDGET_S[profile]
    entry = _headline_entry(artifacts, lab)
    if res.error:
        row.update(status="failed", error=res.error, record=None)
    elif entry is None or (entry.get("profile"), entry.get("dataset")) != (profile, dataset):
        row.update(status="failed", error=f"no headline numbers for {profile} / {dataset} in {artifacts}",
                   record=None)
    else:
        row.update(status="ok", record=Record(lab, entry))
    log(f"[lessons] {lab} (seed {seed}): {row['status']} in {row['wall_s']} s"
        + (f": {row['error']}" if row.get("error") else ""))
    return row


def evaluate_all(labs: list[str], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every claim of ``labs`` from the notebook ``runs`` (rows of :func:`run_lab`)."""
    out = []
    for lab in labs:
        mine = [r for r in runs if r["lab"] == lab]
        records = {r["seed"]: r["record"] for r in mine if r["record"] is not None}
        why = None
        if not records:
            why = ("its notebook does not exist yet" if any(r["status"] == "no notebook" for r in mine)
                   else "; ".join(f"seed {r['seed']}: {r.get('error')}" for r in mine) or "not run")
        out += [evaluate(c, records, why) for c in CLAIMS if c.lab == lab]
    return out


# --------------------------------------------------------------------------- report
def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "true" if v else "false"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def to_markdown(result: dict[str, Any]) -> str:
    """The claims table, the notes, the notebooks' wall times, machine and command."""
    from labkit.tables import markdown_table

    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731 - |γ| inside a table cell
    m = result["machine"]
    claims = result["claims"]
    out = [f"# Lessons: does each claim hold? (`{result['profile']}`, {result['dataset']})", "",
           f"- command: `{result['command']}`",
           f"- machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, device {m['device']}"
           + (f" ({m['gpu']})" if m.get("gpu") else "") + f", load avg {m.get('load_avg_1min', '?')}",
           f"- started (UTC) {result['started_utc']}; total wall time {result['wall_s']:.0f} s",
           f"- {sum(c['holds'] for c in claims)} of {len(claims)} claims hold; "
           f"{sum(c['measured'] is None for c in claims)} not measured", ""]

    def measured(c: dict) -> str:
        seeds = c.get("per_seed")
        return _cell(c["measured"]) + (f" ({c['seeds']} of seeds " + ", ".join(
            f"{s}: {_cell(v)}" for s, v in seeds.items()) + ")" if seeds else "")

    out.append(markdown_table(["id", "claim", "measured", "threshold", "holds"],
                              [[c["id"], esc(c["claim"]), measured(c), c["threshold"],
                                "✓" if c["holds"] else "✗"] for c in claims]))
    notes = [f"- {c['id']}: {esc(c['note'])}" for c in claims if c.get("note")]
    out += (["", "Notes:", ""] + notes if notes else []) + ["", "## Notebooks", ""]
    out.append(markdown_table(["lab", "seed", "wall time (s)", "status"],
                              [[n["lab"], str(n["seed"]), _cell(n["wall_s"]),
                                n["status"] + (f": {esc(n['error'])}" if n.get("error") else "")
                                + ("" if n.get("within_budget", True) else " (over the 15 min budget)")]
                               for n in result["notebooks"]]))
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.lessons", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILES, default="fast")
    parser.add_argument("--only", nargs="+", choices=LABS, metavar="LAB",
                        help=f"run only these labs ({', '.join(LABS)})")
    parser.add_argument("--seeds", type=int, default=2,
                        help="seeds for labs whose claims ask for several (default 2)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the JSON (default bench/lessons.json under fast, bench/lessons-<profile>.json "
                             "otherwise); the Markdown goes beside it (.md)")
    parser.add_argument("--artifacts", type=Path, default=None,
                        help="the shared artifacts folder (default build/lessons/<profile>)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds one cell may run (default 3600)")
    args = parser.parse_args(argv)

    dataset = "digits" if args.profile == "smoke" else "cifar10"
    if dataset == "cifar10" and (line := cifar10_missing()):
        print(line, file=sys.stderr)
        return 2
    labs = [lab for lab in LABS if not args.only or lab in args.only]
    out: Path = args.out or REPO / "bench" / ("lessons.json" if args.profile == "fast"
                                              else f"lessons-{args.profile}.json")
    artifacts = (args.artifacts or REPO / "build" / "lessons" / args.profile).resolve()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    from autograder.runner import without_kernel_tcp_warning

    with without_kernel_tcp_warning():
        shipped = starting_checkpoints(labs, args.profile, dataset)
        runs = [run_lab(lab, seed, artifacts if seed == 0 else artifacts / f"seed{seed}", args.profile, dataset,
                        args.timeout, shipped.get(lab))
                for lab in labs for seed in seeds_for(lab, args.seeds)]
    result = {"claims": evaluate_all(labs, runs),
              "notebooks": [{k: v for k, v in r.items() if k != "record"} for r in runs],
              "machine": machine_info(), "command": shlex.join(["python", "-m", "bench.lessons", *argv]),
              "profile": args.profile, "dataset": dataset, "started_utc": started,
              "wall_s": round(time.perf_counter() - t0, 1)}
    write_json(out, result)
    md = out.with_suffix(".md")
    from labkit.files import write_text

    write_text(md, to_markdown(result))
    held = sum(c["holds"] for c in result["claims"])
    print(f"{held} of {len(result['claims'])} claims hold; wrote {out} and {md}")
    return 1 if any(r["status"] == "failed" for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
