"""Render committed `intl-bench --json` results as the README's Performance tables.

    python benchmarks/readme_table.py benchmarks/results/*.json --update README.md

replaces the text between the `<!-- results:start -->` and `<!-- results:end -->` markers, so that
the README's numbers are never typed by hand; without --update it prints the tables.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _kernel_table(rows: list[dict[str, Any]]) -> list[str]:
    timed = [r for r in rows if r.get("mode") == "forward+backward"]
    backends = list(dict.fromkeys(r["backend"] for r in timed))
    lines = [
        "| case (N x D) | axis | "
        + " | ".join(f"{b} ms" for b in backends)
        + " | best vs reference | best vs compile |",
        "|---" * (len(backends) + 4) + "|",
    ]
    for case, axis in dict.fromkeys((r["case"], r["axis"]) for r in timed):
        mine = {r["backend"]: r for r in timed if (r["case"], r["axis"]) == (case, axis)}
        times = " | ".join(f"{mine[b]['median_s'] * 1e3:.2f}" if b in mine else "-" for b in backends)
        staged = [r for b, r in mine.items() if b not in ("reference", "compile")]
        best = min(staged, key=lambda r: r["median_s"])
        versus_compile = f"{best['speedup_vs_compile']:.1f}x" if best.get("speedup_vs_compile") else "-"
        versus_reference = f"{best['speedup_vs_reference']:.1f}x ({best['backend']})"
        lines.append(f"| {case} | {axis} | {times} | {versus_reference} | {versus_compile} |")
    return lines


def _train_step_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| backend | ms / step | images / s | whitening + loss share |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['step_s'] * 1e3:.1f} | {r['images_per_s']:.1f} | "
                     f"{r['whitening_share'] * 100:.1f}% |")  # fmt: skip
    return lines


def render(paths: list[Path]) -> str:
    """Markdown: for each results file its command, machine and versions, then its table."""
    lines: list[str] = []
    for path in paths:
        data = json.loads(path.read_text())
        meta = data["meta"]
        machine = meta.get("gpu") or f"{meta['cpu']} CPU, {meta['threads']} threads"
        versions = f"torch {meta['torch']}" + (f", triton {meta['triton']}" if meta.get("triton") else "")
        lines += [
            f"`{meta['command']}` ({meta['date']}; {machine}; {versions}; {meta['dtype']}):",
            "",
        ]
        lines += (
            _train_step_table(data["train_step"]) if "train_step" in data else _kernel_table(data["rows"])
        )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--update", type=Path, help="README to rewrite between the markers")
    args = parser.parse_args()
    table = render(args.results)
    if args.update is None:
        print(table, end="")
        return
    text = args.update.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{args.update}: markers {START} ... {END} not found")
    args.update.write_text(pattern.sub(lambda _: f"{START}\n{table}{END}", text))


if __name__ == "__main__":
    main()
