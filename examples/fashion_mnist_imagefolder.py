"""Write part of Fashion-MNIST as an ImageFolder tree of PNG files (train/<class>/*.png, val/<class>/*.png).

    python examples/fashion_mnist_imagefolder.py /usr/share/datasets/fashion-mnist DIR --train 3000 --val 1000

Reads the original IDX .gz files with torchvision's own FashionMNIST reader (no download); takes the first N
images of each split, which are close to class-balanced.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
from pathlib import Path

from torchvision.datasets import FashionMNIST


def _reader(idx_dir: Path, scratch: Path, train: bool) -> FashionMNIST:
    raw = scratch / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in idx_dir.glob("*-ubyte.gz"):  # torchvision reads the decompressed files
        with gzip.open(gz) as src, open(raw / gz.name.removesuffix(".gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    return FashionMNIST(str(scratch), train=train, download=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("idx_dir", type=Path, help="folder with the four *-ubyte.gz files")
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--val", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        for split, train, count in (("train", True, args.train), ("val", False, args.val)):
            data = _reader(args.idx_dir, Path(scratch), train)
            for i in range(min(count, len(data))):
                image, label = data[i]
                folder = args.out / split / data.classes[label].replace("/", "-")
                folder.mkdir(parents=True, exist_ok=True)
                image.save(folder / f"{i:05d}.png")
    print(f"wrote {args.out}/train and {args.out}/val")


if __name__ == "__main__":
    main()
