"""``python -m bench [--smoke] [--only NAME ...] [--out DIR]``: run the benchmarks, write the results.

Writes ``DIR/results.json`` (every measured number) and ``DIR/results.md`` (the same as tables),
``DIR`` defaulting to ``bench/``. Each section's rows compare two things measured side by side in
this one run; a section that fails is recorded with its error and the others still run (the exit
status is then 1). ``--smoke`` uses tiny sizes so every code path runs in under a minute; its
numbers prove the plumbing, not the speed.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from bench import REPO, SECTIONS, command, log, machine_info, write_json
from labkit.files import write_text
from labkit.tables import markdown_table

NOISE_NOTE = ("Timings come from one run on the machine described; on a machine shared with other "
              "processes (see load_avg_1min) they are noisy. Ratios are of numbers measured in the same "
              "run, alternating the two sides, keeping the best of the rounds of each.")


def _grading(smoke: bool) -> list[dict]:
    """Grading throughput from :func:`bench.grading.run` (1 worker vs one per core)."""
    import os

    row: dict[str, Any] = {"section": "grading", "name": "autograde throughput",
                           "command": command("grading", smoke), "machine": machine_info()}
    t0 = time.perf_counter()
    if smoke:
        row.update(status="skipped", note="skipped under --smoke: grading 20 submissions takes minutes")
    else:
        from bench import grading  # imported here: it loads the autograder, which the other sections do not need

        n = os.cpu_count() or 1
        row.update(status="ok", workers=[1, n], n_submissions=20,
                   result=grading.run(n_submissions=20, workers=(1, n)))
    row["wall_s"] = round(time.perf_counter() - t0, 2)
    return [row] if smoke else [row, _grading_launcher(), _grading_dask()]


def _grading_launcher() -> dict:
    """1 worker: jobs forked by a launcher vs a fresh interpreter per job (:func:`bench.grading.run_launcher`)."""
    from bench import grading

    row: dict[str, Any] = {"section": "grading", "name": "worker start: forked by a launcher vs a fresh process",
                           "command": command("grading", False), "machine": machine_info(),
                           "goal": "ratio > 1, identical CSVs"}
    t0 = time.perf_counter()
    try:
        result = grading.run_launcher(n_submissions=20)
        row.update(status="ok", result=result, goal_met=result["ratio"] > 1 and result["same_csv"])
    except Exception as e:  # noqa: BLE001 - the other rows' numbers are kept
        log(traceback.format_exc())
        row.update(status="error", error=f"{type(e).__name__}: {e}".splitlines()[0][:500])
    row["wall_s"] = round(time.perf_counter() - t0, 2)
    return row


def _grading_dask() -> dict:
    """The same class graded by 1 local worker and by 2 Dask workers (:func:`bench.grading.run_dask`)."""
    from bench import grading

    row: dict[str, Any] = {"section": "grading", "name": "autograde on Dask: 1 local worker vs 2 Dask workers",
                           "command": command("grading", False), "machine": machine_info(), "goal": "ratio >= 1.8"}
    t0 = time.perf_counter()
    try:
        result = grading.run_dask(n_submissions=20, dask_workers=2)
        row.update(status="ok", result=result, goal_met=result["ratio"] >= 1.8 and result["same_csv"])
    except Exception as e:  # noqa: BLE001 - the local row's numbers are kept
        log(traceback.format_exc())
        row.update(status="error", error=f"{type(e).__name__}: {e}".splitlines()[0][:500])
    row["wall_s"] = round(time.perf_counter() - t0, 2)
    return row


def _runners() -> dict[str, Callable[[bool], list[dict]]]:
    from bench import allocator, pruning, throughput

    return {"throughput": lambda smoke: throughput.run(smoke=smoke),
            "allocator": lambda smoke: allocator.run(smoke=smoke),
            "structured": lambda smoke: pruning.run_structured(smoke=smoke),
            "unstructured": lambda smoke: pruning.run_unstructured(smoke=smoke),
            "grading": _grading}


# --------------------------------------------------------------------------- markdown
def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(rows: list[dict], cols: list[tuple[str, str]]) -> list[str]:
    """``rows`` as the lines of a Markdown table of ``cols`` ``(header, key)``."""
    cells = ([_fmt(r.get(k)) for _, k in cols] for r in rows)
    return markdown_table([h for h, _ in cols], cells).splitlines()


def to_markdown(result: dict) -> str:
    """The results as Markdown: header (command, machine, wall time) and one table per section."""
    m = result["machine"]
    out = ["# Benchmark results", "",
           f"- command: `{result['command']}`{' (smoke sizes: plumbing check, not speed)' if result['smoke'] else ''}",
           f"- machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, device {m['device']}"
           + (f" ({m['gpu']})" if m.get("gpu") else "") + f", load avg {m.get('load_avg_1min', '?')}",
           f"- started (UTC): {result['started_utc']}; total wall time {result['wall_s']:.1f} s",
           f"- {NOISE_NOTE}", ""]
    for name, sec in result["sections"].items():
        out += [f"## {name}", "", f"status: {sec['status']}; wall time {sec['wall_s']:.1f} s", ""]
        rows = sec["rows"]
        if sec["status"] == "error":
            out += [f"error: `{sec['error']}`", ""]
            continue
        if name == "throughput":
            out += _table(rows, [("benchmark", "name"), ("data", "dataset"), ("images", "images_per_epoch"),
                                 ("torchvision img/s", "baseline_images_per_s"),
                                 ("labkit img/s", "candidate_images_per_s"), ("ratio", "ratio"),
                                 ("loader alone (NCHW) img/s", "loader_only_images_per_s"),
                                 ("loader-alone ratio", "loader_only_ratio"),
                                 ("goal", "goal"), ("met", "goal_met"), ("wall s", "wall_s"),
                                 ("command", "command")])
            for r in rows:
                out += ["", f"- baseline: {r['baseline']}", f"- labkit: {r['candidate']}",
                        f"- images: {r['images_source']}; decoding them once took {r['decode_once_s']} s "
                        f"(paid once per course, not per epoch)"]
        elif name == "allocator":
            out += _table(rows, [("training (NHWC, random images)", "name"),
                                 ("default img/s", "default_images_per_s"), ("kept img/s", "kept_images_per_s"),
                                 ("ratio", "ratio"), ("faults/step default → kept", "_faults"),
                                 ("peak MB default → kept", "_rss"), ("goal met", "goal_met"),
                                 ("wall s", "wall_s"), ("command", "command")])
            out += ["", "- kept: `labkit.allocator.keep_freed_memory()` (what `fit` and every notebook call); "
                        "default: glibc's own thresholds. Each side runs in a fresh process."]
        elif name == "structured":
            out += _table(rows, [("pruned", "percent"), ("params ratio", "params_ratio"),
                                 ("FLOPs ratio", "flops_ratio"), ("latency b1 ratio", "latency_b1_ratio"),
                                 ("latency b64 ratio", "latency_b64_ratio"),
                                 ("b1 ms (unpruned → pruned)", "_b1"), ("b64 ms", "_b64"),
                                 ("goal met", "goal_met"), ("wall s", "wall_s"), ("command", "command")])
            if rows:
                out += ["", f"- goal: {rows[0]['goal']}; ratios are pruned / unpruned",
                        f"- gamma: {rows[0]['gamma_source']}"]
        elif name == "unstructured":
            out += _table(rows, [("pruned", "amount"), ("sparsity", "sparsity"),
                                 ("nonzero ratio", "nonzero_ratio"), ("FLOPs ratio", "flops_ratio"),
                                 ("latency b1 ratio", "latency_b1_ratio"),
                                 ("latency b64 ratio", "latency_b64_ratio"),
                                 ("b1 ms (dense → pruned)", "_b1"), ("b64 ms", "_b64"),
                                 ("wall s", "wall_s"), ("command", "command")])
            out += ["", "- masks leave dense tensors: the same FLOPs, the same latency (ratios near 1)"]
        else:
            for r in rows:
                out += [f"- {k}: `{_fmt(v)}`" for k, v in r.items() if k != "machine"]
        out.append("")
    return "\n".join(out)


def _with_ms_pairs(rows: list[dict]) -> list[dict]:
    """Add display-only "a → b" columns for the Markdown tables: ``_b1`` / ``_b64`` (milliseconds),
    ``_faults`` / ``_rss`` (the allocator rows)."""
    out = []
    for r in rows:
        r = dict(r)
        for b in (1, 64):
            a = r.get(f"latency_b{b}_unpruned_ms", r.get(f"latency_b{b}_dense_ms"))
            p = r.get(f"latency_b{b}_pruned_ms")
            if a is not None and p is not None:
                r[f"_b{b}"] = f"{a:.3g} → {p:.3g}"
        for key, col in (("faults_per_step", "_faults"), ("peak_rss_mb", "_rss")):
            if f"default_{key}" in r and f"kept_{key}" in r:
                r[col] = f"{r[f'default_{key}']:,} → {r[f'kept_{key}']:,}"
        out.append(r)
    return out


# --------------------------------------------------------------------------- main
HAND_MARK = "written by hand"


def kept_by_hand(path: Path) -> str:
    """The sections of an existing results.md whose heading says they are written by hand (e.g. the
    issue-10 pipeline and its curve plot), so that a new ``python -m bench`` run keeps them."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except OSError:
        return ""
    kept, keep = [], False
    for line in lines:
        if line.startswith("## "):
            keep = HAND_MARK in line
            if keep:
                kept.append("\n")
        if keep:
            kept.append(line)
    return "".join(kept)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: every code path in < 60 s")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="NAME",
                        help=f"run only these sections ({', '.join(SECTIONS)})")
    parser.add_argument("--out", type=Path, default=REPO / "bench",
                        help="folder for results.json and results.md (default: bench/)")
    args = parser.parse_args(argv)

    wanted = list(dict.fromkeys(args.only)) if args.only else list(SECTIONS)
    cmd = "python -m bench" + (" " + shlex.join(argv if argv is not None else sys.argv[1:])
                               if (argv if argv is not None else sys.argv[1:]) else "")
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    runners = _runners()
    sections: dict[str, dict] = {}
    failed = False
    for name in wanted:
        log(f"[bench] {name} ...")
        ts = time.perf_counter()
        try:
            rows = runners[name](args.smoke)
            status = rows[0].get("status", "ok") if name == "grading" else "ok"
            sections[name] = {"status": status, "rows": rows}
        except Exception as e:  # one broken section must not lose the others' numbers
            failed = True
            log(traceback.format_exc())
            sections[name] = {"status": "error", "error": f"{type(e).__name__}: {e}".splitlines()[0][:500],
                              "rows": []}
        sections[name]["wall_s"] = round(time.perf_counter() - ts, 2)
        log(f"[bench] {name}: {sections[name]['status']} in {sections[name]['wall_s']:.1f} s")

    result = {"command": cmd, "smoke": args.smoke, "started_utc": started,
              "machine": machine_info(), "wall_s": round(time.perf_counter() - t0, 2),
              "note": NOISE_NOTE, "sections": sections}
    out: Path = args.out
    write_json(out / "results.json", result)
    md_result = dict(result, sections={k: dict(v, rows=_with_ms_pairs(v["rows"])) for k, v in sections.items()})
    write_text(out / "results.md", to_markdown(md_result) + "\n" + kept_by_hand(out / "results.md"))
    print(f"wrote {out / 'results.json'} and {out / 'results.md'} ({result['wall_s']:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
