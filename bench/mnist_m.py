"""An MNIST-M-style target built from scikit-learn's digits, the published way.

MNIST-M (Ganin & Lempitsky, ICML 2015; Ganin et al., JMLR 2016, section 5.2.2) blends
each MNIST digit over a patch cut at random from a colour photo: out = |patch - digit|
per channel, with the digit binarised to 0 or 255. Where the stroke is, the patch's
colours are inverted; elsewhere the patch is left as it is. The photos there are
BSDS500's; here they are the colour photos that scikit-image ships, each CC0 or in the
public domain (their licences are in skimage.data's docstrings):

- astronaut (NASA, public domain), chelsea (CC0, Stefan van der Walt), coffee (CC0,
  Rachel Michetti), rocket (SpaceX, public domain), hubble_deep_field (NASA, public
  domain).

The digits are scikit-learn's UCI digits (8 x 8) upscaled to `size` px, binarised at
half intensity, as the published recipe binarises MNIST. Everything derives from
`seed`: the permutation into splits, each image's photo and patch position.

    .venv/bin/python bench/mnist_m.py -o out/mnist-m     # writes the four archives

writes, as zip archives of class folders: `source-train.zip` and `source-val.zip`
(plain digits, labelled), `target-unlabeled.zip` (MNIST-M renderings of other digits,
one folder, for domain adaptation) and `target-test.zip` (MNIST-M renderings of the
remaining digits, labelled, for evaluation only).
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")


@cache
def photos() -> tuple[np.ndarray, ...]:
    """The colour photos, uint8 (H, W, 3), as scikit-image bundles them (no download)."""
    import skimage.data

    return tuple(np.asarray(getattr(skimage.data, name)())[..., :3] for name in PHOTOS)


def render(digits: np.ndarray, seed: int) -> np.ndarray:
    """MNIST-M renderings of uint8 (N, S, S) or (N, S, S, 3) digits (white on black):
    uint8 (N, S, S, 3), |patch - 255 * (digit > 127)|."""
    gray = digits[..., 0] if digits.ndim == 4 else digits
    n, size = gray.shape[0], gray.shape[1]
    mask = np.where(gray > 127, 255, 0).astype(np.int16)[..., None]
    rng = np.random.default_rng([seed, 7])
    out = np.empty((n, size, size, 3), np.uint8)
    sources = photos()
    for i in range(n):
        photo = sources[int(rng.integers(len(sources)))]
        y = int(rng.integers(photo.shape[0] - size + 1))
        x = int(rng.integers(photo.shape[1] - size + 1))
        patch = photo[y : y + size, x : x + size].astype(np.int16)
        out[i] = np.abs(patch - mask[i]).astype(np.uint8)
    return out


def write_zip(images: np.ndarray, labels: np.ndarray | None, out: Path) -> int:
    """Class folders of PNGs (`7/00042.png`), or one folder when unlabeled."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, image in enumerate(images):
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            folder = "images" if labels is None else str(int(labels[i]))
            zf.writestr(
                zipfile.ZipInfo(f"{folder}/{i:05d}.png", (2020, 1, 1, 0, 0, 0)), buf.getvalue()
            )
    return len(images)


def main() -> None:
    from bench.domain_shift import build

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, required=True, help="a folder")
    args = parser.parse_args()
    d = build(args.size, args.seed, polarity="mnist_m")
    parts = {
        "source-train.zip": (d.source_train, True),
        "source-val.zip": (d.source_val, True),
        "target-unlabeled.zip": (d.target_train, False),
        "target-test.zip": (d.target_test, True),
    }
    for name, (part, labelled) in parts.items():
        n = write_zip(part.images, part.labels if labelled else None, args.output / name)
        print(f"wrote {args.output / name}: {n} images")


if __name__ == "__main__":
    main()
