"""Render committed `intl-bench --json` results as the README's Performance table.

    python benchmarks/readme_table.py benchmarks/results/*-cpu-*.json --update README.md

replaces the text between the `<!-- results:start -->` and `<!-- results:end -->` markers, so the
README's numbers are never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

START, END = "<!-- results:start -->", "<!-- results:end -->"


def render(paths: list[Path]) -> str:
    """A markdown table: one row per (shape, axis) with every backend's median and speedup."""
    lines = []
    for path in paths:
        data = json.loads(path.read_text())
        meta = data["meta"]
        lines.append(
            f"`{meta['command']}` ({meta['date']}, {meta['cpu']}, {meta['threads']} threads, "
            f"torch {meta['torch']}, {meta['dtype']}, T={meta['T']}):"
        )
        lines.append("")
        backends = list(dict.fromkeys(row["backend"] for row in data["rows"]))
        lines.append("| shape (N x D) | axis | " + " | ".join(f"{b} ms" for b in backends) + " | speedup |")
        lines.append("|---" * (len(backends) + 3) + "|")
        cases = dict.fromkeys((row["shape"], row["axis"]) for row in data["rows"])
        for shape, axis in cases:
            rows = {r["backend"]: r for r in data["rows"] if (r["shape"], r["axis"]) == (shape, axis)}
            times = " | ".join(f"{rows[b]['median'] * 1e3:.2f}" for b in backends)
            best = max(r["speedup_vs_reference"] for b, r in rows.items() if b != "reference")
            lines.append(f"| {shape} | {axis} | {times} | {best:.1f}x |")
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
