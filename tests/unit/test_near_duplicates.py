"""Near-duplicate images by perceptual hash: the block index finds exactly the pairs a
comparison of every pair finds, and ingestion reports planted ones."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
from PIL import Image

from app.services import near_duplicates as nd
from tests.unit.archives import class_entries
from tests.unit.test_ingest import run


def brute_force(images: list[nd.Hashed]) -> set[tuple[str, str, str]]:
    found = set()
    for x, y in itertools.combinations(images, 2):
        distance = (int(x.phash, 16) ^ int(y.phash, 16)).bit_count()
        kind = nd._kind(x, y)
        if distance <= nd.MAX_DISTANCE and kind is not None:
            a, b = sorted((x.path, y.path))
            found.add((kind, a, b))
    return found


def test_the_block_index_finds_what_every_pair_compared_finds() -> None:
    rng = np.random.default_rng(0)
    images = []
    for i in range(400):
        value = int(rng.integers(0, 2**63)) | (int(rng.integers(0, 2)) << 63)
        if i % 10 == 1:  # a near copy of the previous image: 0 to 6 bits flipped
            value = int(images[-1].phash, 16)
            for bit in rng.choice(64, int(rng.integers(0, 7)), replace=False):
                value ^= 1 << int(bit)
        label = ["cat", "dog"][int(rng.integers(0, 2))]
        split = ["train", "val"][int(rng.integers(0, 2))]
        images.append(nd.Hashed(f"images/{i:03d}.png", label, split, f"{value:016x}"))
    pairs, totals = nd.find_pairs(images)
    expected = brute_force(images)
    assert expected  # the planted copies include both kinds, within and past the distance
    assert {(p.kind, p.a, p.b) for p in pairs} == expected
    assert sum(totals.values()) == len(expected)
    assert [p.distance for p in pairs] == sorted(p.distance for p in pairs)


def _png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=90)
    return buf.getvalue()


def photo(seed: int, size: int = 64) -> Image.Image:
    """A smooth random picture (a few blobs), so its hash is stable under resizing."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3))
    for _ in range(4):
        cx, cy, r = rng.random(3)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.02 + 0.05 * r))
        img += blob[..., None] * rng.random(3)
    return Image.fromarray((255 * img / img.max()).astype(np.uint8))


def test_ingestion_reports_a_conflicting_label_and_train_val_leakage(tmp_path: Path) -> None:
    same = photo(7)
    entries = {
        **class_entries({"cat": 5, "dog": 5}, prefix="train/"),
        **class_entries({"cat": 3, "dog": 3}, prefix="val/", start_seed=50),
        # One picture under both classes (PNG and JPEG: not the same bytes)...
        "train/cat/planted.png": _png(same),
        "train/dog/planted.jpg": _png(same, "JPEG"),
        # ...and another, resized, in both train and val of one class.
        "train/cat/leak.png": _png(photo(8)),
        "val/cat/leak.png": _png(photo(8).resize((48, 48))),
    }
    report, manifest, _ = run(tmp_path, entries)
    pairs = {(p["kind"], p["a"], p["b"]) for p in manifest["near_duplicates"]}
    assert pairs == {
        ("conflicting_labels", "images/train/cat/planted.png", "images/train/dog/planted.jpg"),
        ("train_val_leakage", "images/train/cat/leak.png", "images/val/cat/leak.png"),
    }
    codes = [w.code for w in report.warnings]
    assert "conflicting_labels" in codes and "train_val_leakage" in codes
    conflict = next(w for w in report.warnings if w.code == "conflicting_labels")
    assert "images/train/cat/planted.png" in conflict.message
    assert report.near_duplicates == manifest["near_duplicates"]
