"""Render committed results as the docs' tables: `intl-bench --json` timings and
`benchmarks/precision_study.py --json` accuracies.

    python benchmarks/readme_table.py benchmarks/results/*.json --update docs/backends.md

replaces the text between the `<!-- results:start -->` and `<!-- results:end -->` markers with the
IterNorm timings, between `<!-- spectral:start -->` and `<!-- spectral:end -->` with the timings of
other transformations (`--transform`), and between `<!-- precision:start -->` and
`<!-- precision:end -->` with the accuracies,
so that the published numbers are never typed by hand; without --update it prints the tables.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from precision_study import table as precision_table

BLOCKS = ("results", "spectral", "precision")


def _kernel_table(rows: list[dict[str, Any]], fastest_runs: bool = False) -> list[str]:
    """Median times and speedups; `fastest_runs` adds the speedup of the fastest runs (min over
    the repeats), the steadier figure when other jobs share the machine."""
    timed = [r for r in rows if r.get("mode") == "forward+backward"]
    backends = list(dict.fromkeys(r["backend"] for r in timed))
    extra = " best vs reference, fastest runs |" if fastest_runs else ""
    lines = [
        "| case (N x D) | axis | "
        + " | ".join(f"{b} ms" for b in backends)
        + f" | best vs reference | best vs compile |{extra}",
        "|---" * (len(backends) + 4 + fastest_runs) + "|",
    ]
    for case, axis in dict.fromkeys((r["case"], r["axis"]) for r in timed):
        mine = {r["backend"]: r for r in timed if (r["case"], r["axis"]) == (case, axis)}
        times = " | ".join(f"{mine[b]['median_s'] * 1e3:.2f}" if b in mine else "-" for b in backends)
        staged = [r for b, r in mine.items() if b not in ("reference", "compile")]
        best = min(staged, key=lambda r: r["median_s"])
        versus_compile = f"{best['speedup_vs_compile']:.1f}x" if best.get("speedup_vs_compile") else "-"
        versus_reference = f"{best['speedup_vs_reference']:.1f}x ({best['backend']})"
        row = f"| {case} | {axis} | {times} | {versus_reference} | {versus_compile} |"
        if fastest_runs:
            row += f" {mine['reference']['min_s'] / best['min_s']:.1f}x |" if "reference" in mine else " - |"
        lines.append(row)
    return lines


def _train_step_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| backend | ms / step | images / s | whitening + loss share |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['step_s'] * 1e3:.1f} | {r['images_per_s']:.1f} | "
                     f"{r['whitening_share'] * 100:.1f}% |")  # fmt: skip
    return lines


def _timings(data: dict[str, Any], fastest_runs: bool = False) -> list[str]:
    meta = data["meta"]
    machine = meta.get("gpu") or f"{meta['cpu']} CPU, {meta['threads']} threads"
    versions = f"torch {meta['torch']}" + (f", triton {meta['triton']}" if meta.get("triton") else "")
    if "train_step" in data:
        table = _train_step_table(data["train_step"])
    else:
        table = _kernel_table(data["rows"], fastest_runs)
    # A note added to the file by hand after the run (how loaded the machine was, a renamed file).
    note = [f"Note: {meta['note']}", ""] if meta.get("note") else []
    header = f"`{meta['command']}` ({meta['date']}; {machine}; {versions}; {meta['dtype']}):"
    return [header, "", *note, *table]


def _accuracies(data: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in data["versions"].items())
    header = f"`{data['command']}` ({data['date']}; {data['device']}; {versions}):"
    return [header, "", precision_table(data["rows"])]


def _block(data: dict[str, Any]) -> str | None:
    """Which block a results file feeds: intl-bench timings of IterNorm ("results") or of another
    transformation ("spectral"), precision-study accuracies ("precision"); None for other files."""
    if "meta" in data and ("rows" in data or "train_step" in data):
        transforms = {row.get("transform", "iternorm") for row in data.get("rows", [])}
        return "results" if all(t.startswith("iternorm") for t in transforms) else "spectral"
    if "meta" not in data and "rows" in data:
        return "precision"
    return None


def render(paths: list[Path]) -> dict[str, str]:
    """Markdown per README block: for each results file its command, machine and versions, then
    its table (see `_block` for which file feeds which block)."""
    blocks: dict[str, list[str]] = {name: [] for name in BLOCKS}
    for path in paths:
        data = json.loads(path.read_text())
        block = _block(data)
        if block is None:
            print(f"{path}: not an intl-bench or precision-study file, left out", file=sys.stderr)
        elif block == "precision":
            blocks[block] += [*_accuracies(data), ""]
        else:  # the spectral runs so far shared a loaded machine: show the fastest runs too
            blocks[block] += [*_timings(data, fastest_runs=block == "spectral"), ""]
    return {name: "\n".join(lines).rstrip() + "\n" for name, lines in blocks.items() if lines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--update", type=Path, help="README to rewrite between the markers")
    args = parser.parse_args()
    blocks = render(args.results)
    if args.update is None:
        print("\n".join(blocks.values()), end="")
        return
    text = args.update.read_text()
    for name, markdown in blocks.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        found = re.search(re.escape(start) + ".*?" + re.escape(end), text, re.DOTALL)
        if not found:
            raise SystemExit(f"{args.update}: markers {start} ... {end} not found")
        text = f"{text[: found.start()]}{start}\n{markdown}{end}{text[found.end() :]}"
    args.update.write_text(text)


if __name__ == "__main__":
    main()
