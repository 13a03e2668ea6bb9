"""Deterministic stratified train/validation split of a labeled dataset."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def stratified_split(
    labels: Sequence[int], validation_split: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split item indices into (train, val), both sorted, class by class.

    Each class gets round(n * validation_split) items in val, but at least one in
    val and one in train when it has two or more; a class of one goes to train.
    Each class is shuffled by its own generator seeded with (seed, label), so the
    split depends only on the labels and the seed: the same on every machine, and
    a class's split does not move when another class gains images.
    """
    if not 0.0 < validation_split < 1.0:
        raise ValueError(f"validation_split must be in (0, 1), got {validation_split}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        if label < 0:
            raise ValueError(f"labels must be >= 0, got {label} at index {index}")
        by_class[label].append(index)
    train: list[int] = []
    val: list[int] = []
    for label, indices in by_class.items():
        n_val = _val_count(len(indices), validation_split)
        order = np.random.default_rng([seed, label]).permutation(len(indices))
        val.extend(indices[i] for i in order[:n_val])
        train.extend(indices[i] for i in order[n_val:])
    return sorted(train), sorted(val)


def _val_count(n: int, validation_split: float) -> int:
    if n < 2:
        return 0
    return min(max(round(n * validation_split), 1), n - 1)
