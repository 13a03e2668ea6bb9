"""Near-duplicate images of a dataset, by perceptual hash: the same picture under two
classes (a conflicting label) or in both train and val (leakage).

Each image's 64-bit pHash (`imagehash.phash`: DCT of the 32 x 32 grayscale image,
each of its 64 lowest frequencies against their median) is taken at ingestion. Two
images are near-duplicates when their hashes differ in at most `MAX_DISTANCE` bits:
resizing, recompression and small crops or colour changes stay under it, distinct
photos rarely do. Exact duplicates (same bytes) are rejected earlier, as `duplicate`.

Pairs are found without comparing every image with every other: split into
`MAX_DISTANCE + 1` blocks, two hashes within that distance agree on at least one
whole block (pigeonhole), so only images sharing a block are compared.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import imagehash
from PIL import Image

from app.services.layout import IngestWarning

MAX_DISTANCE = 4
# Reported pairs per dataset (the warning counts them all).
MAX_PAIRS = 1000
# A block value shared by more images than this (blank or flat images) is not used to
# find candidates: it would cost a comparison of every pair among them.
MAX_BUCKET = 2000
HASH_BITS = 64

Kind = Literal["conflicting_labels", "train_val_leakage"]


def phash(image: Image.Image) -> str:
    """The image's perceptual hash, 16 hex digits. The image is first box-filtered to
    64 x 64 grayscale (cheap), so imagehash's own Lanczos resize to 32 x 32 works on a
    small image: measured on a 256 px photo, 0.5 ms for the hash against about 1 ms
    for its decode (1.3-1.4 ms with imagehash resizing the full image)."""
    small = image.convert("L").resize((64, 64), Image.Resampling.BOX)
    return str(imagehash.phash(small))


@dataclass(frozen=True)
class Hashed:
    path: str
    label: str | None
    split: str | None
    phash: str


@dataclass(frozen=True)
class Pair:
    kind: Kind
    a: str
    b: str
    label_a: str | None
    label_b: str | None
    distance: int


_BOUNDS = [round(i * HASH_BITS / (MAX_DISTANCE + 1)) for i in range(MAX_DISTANCE + 2)]


def _blocks(value: int) -> list[int]:
    return [(value >> lo) & ((1 << (hi - lo)) - 1) for lo, hi in itertools.pairwise(_BOUNDS)]


def _kind(x: Hashed, y: Hashed) -> Kind | None:
    if x.label != y.label:
        return "conflicting_labels"
    if {x.split, y.split} == {"train", "val"}:
        return "train_val_leakage"
    return None


def find_pairs(images: Sequence[Hashed]) -> tuple[list[Pair], dict[Kind, int]]:
    """The conflicting and leaking pairs (at most MAX_PAIRS, closest first, then by path),
    and how many of each kind there are in all."""
    values = [int(image.phash, 16) for image in images]
    blocks = [_blocks(value) for value in values]
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, parts in enumerate(blocks):
        for b, part in enumerate(parts):
            buckets[(b, part)].append(i)

    def used(block: int, part: int) -> bool:
        return 2 <= len(buckets[(block, part)]) <= MAX_BUCKET

    found: list[Pair] = []
    for (b, part), members in buckets.items():
        if not used(b, part):
            continue
        for i, j in itertools.combinations(members, 2):
            # A pair agreeing on several blocks is compared once: in the first one used.
            if any(blocks[i][e] == blocks[j][e] and used(e, blocks[i][e]) for e in range(b)):
                continue
            distance = (values[i] ^ values[j]).bit_count()
            kind = _kind(images[i], images[j]) if distance <= MAX_DISTANCE else None
            if kind is not None:
                x, y = sorted((images[i], images[j]), key=lambda h: h.path)
                found.append(Pair(kind, x.path, y.path, x.label, y.label, distance))
    found.sort(key=lambda p: (p.distance, p.a, p.b))
    totals: dict[Kind, int] = {"conflicting_labels": 0, "train_val_leakage": 0}
    for pair in found:
        totals[pair.kind] += 1
    return found[:MAX_PAIRS], totals


def warnings(totals: dict[Kind, int], pairs: Sequence[Pair]) -> list[IngestWarning]:
    """One warning per kind found, with an example pair."""
    out = []
    for kind, total in totals.items():
        example = next((p for p in pairs if p.kind == kind), None)
        if not total or example is None:
            continue
        if kind == "conflicting_labels":
            message = (
                f"{total} pairs of near-identical images have different classes, e.g. "
                f"{example.a!r} ({example.label_a}) and {example.b!r} ({example.label_b}): "
                "check their labels (see near_duplicates)."
            )
        else:
            message = (
                f"{total} images of val have a near-identical image in train, e.g. "
                f"{example.a!r} and {example.b!r}: validation overstates accuracy on new "
                "images (see near_duplicates)."
            )
        out.append(IngestWarning(kind, message))
    return out
