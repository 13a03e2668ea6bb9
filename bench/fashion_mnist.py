"""Fashion-MNIST archives for Graft, from Debian's `dataset-fashion-mnist` package.

Zalando's 70,000 grayscale 28 x 28 product photos (MIT), as idx files under
/usr/share/datasets/fashion-mnist/ (`apt-get install dataset-fashion-mnist`), written
as zip archives of class folders named by class. The official split is kept: `train`
draws `--per-class` images per class from the 60,000 training images (seeded), and
`test` holds the 10,000 test images, for evaluation only.

    python bench/fashion_mnist.py train --per-class 100 -o fmnist-100.zip
    python bench/fashion_mnist.py test -o fmnist-test.zip
"""

from __future__ import annotations

import argparse
import gzip
import io
import struct
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "t-shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)  # fmt: skip
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    _, dtype, dims = struct.unpack(">HBB", data[:4])
    if dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(split: str, root: Path = ROOT) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 28 x 28 uint8, labels N) of the official `train` or `test` split."""
    images, labels = FILES[split]
    if not (root / images).exists():
        raise FileNotFoundError(
            f"{root / images} is missing: apt-get install dataset-fashion-mnist"
        )
    return _idx(root / images), _idx(root / labels)


def pick(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """`per_class` indices of each class, drawn without replacement, in index order."""
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
        for c in range(len(CLASSES))
    ]
    return np.sort(np.concatenate(chosen))


def write_zip(images: np.ndarray, labels: np.ndarray, out: Path) -> int:
    """Class folders of PNGs (`coat/00042.png`), with a fixed timestamp so the same
    images give the same bytes."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            buf = io.BytesIO()
            Image.fromarray(image, "L").save(buf, format="PNG")
            info = zipfile.ZipInfo(f"{CLASSES[label]}/{i:05d}.png", (2020, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue())
    return len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("split", choices=["train", "test"])
    parser.add_argument("--per-class", type=int, default=None, help="train: images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    images, labels = load(args.split)
    if args.per_class:
        keep = pick(labels, args.per_class, args.seed)
        images, labels = images[keep], labels[keep]
    print(f"wrote {args.output}: {write_zip(images, labels, args.output)} images")


if __name__ == "__main__":
    main()
