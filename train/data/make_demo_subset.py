"""Build train/data/cifar10-demo.tar.gz, the bundled CIFAR-10 subset of the offline demo.

    python train/data/make_demo_subset.py ../shared/data/cifar10/cifar10-jpg.tar.gz

Takes the first 500 training and 100 test images of every class (sorted by file name) from the
CIFAR-10 JPEG copy (ImageFolder layout, train/<class>/*.jpg and test/<class>/*.jpg) and writes them,
byte for byte, into a reproducible gzip'd tar (fixed order, mtimes and owners).
"""

from __future__ import annotations

import argparse
import gzip
import io
import tarfile
from pathlib import Path

PER_CLASS = {"train": 500, "test": 100}
OUTPUT = Path(__file__).parent / "cifar10-demo.tar.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="cifar10-jpg.tar.gz (ImageFolder layout)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    chosen: dict[str, bytes] = {}
    with tarfile.open(args.source) as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")), key=lambda m: m.name
        )
        counts: dict[tuple[str, str], int] = {}
        for member in members:
            split, label = Path(member.name).parts[-3:-1]
            if split in PER_CLASS and counts.get((split, label), 0) < PER_CLASS[split]:
                counts[(split, label)] = counts.get((split, label), 0) + 1
                chosen[f"{split}/{label}/{Path(member.name).name}"] = tar.extractfile(member).read()
    with open(args.output, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w") as out:
            for name in sorted(chosen):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(chosen[name]), 0, 0o644
                out.addfile(info, io.BytesIO(chosen[name]))
    print(f"{args.output}: {len(chosen)} images, {args.output.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
