"""The study tables of train/README.md, generated from the committed results: `python -m
train.study_tables [--check]`.

Every block `<!-- study-table NAME -->` ... `<!-- /study-table -->` in the README is replaced by
`train.study.markdown` of train/results/studies/NAME/study.json (the table `python -m train.study`
writes to study.md), so the README never holds a typed number. `--check` only reports whether the
README is up to date (exit status 1 if not).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from train.study import markdown

TRAIN_DIR = Path(__file__).parent
README = TRAIN_DIR / "README.md"
RESULTS = TRAIN_DIR / "results" / "studies"
BLOCK = re.compile(r"(<!-- study-table (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /study-table -->)", re.S)


def table(name: str, results: Path = RESULTS) -> str:
    """The markdown of one committed study (its study.md as train.study writes it)."""
    path = results / name / "study.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no committed study {name!r}: {path} is missing (run python -m train.study {name})"
        )
    return markdown(json.loads(path.read_text()))


def render(text: str, results: Path = RESULTS) -> str:
    """`text` with every study-table block regenerated."""
    return BLOCK.sub(lambda m: m.group(1) + table(m.group("name"), results) + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.study_tables", description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is not up to date")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    text = args.readme.read_text()
    updated = render(text)
    if args.check:
        if updated != text:
            print(
                f"{args.readme}: study tables out of date; run python -m train.study_tables", file=sys.stderr
            )
            return 1
        return 0
    args.readme.write_text(updated)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
