"""Reads the folder layout of a dataset archive: which class and split each file has.

Labeled archives hold one folder per class, at the root (`cat/001.jpg`) or under
one top folder (`pets/cat/001.jpg`), or an explicit split (`train/cat/001.jpg`,
`val/cat/002.jpg`, `validation/` accepted too), optionally under one top folder.
Subfolders of a class folder belong to that class. Unlabeled archives are any tree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from app.errors import InvalidInput

Kind = Literal["labeled", "unlabeled"]
LayoutName = Literal["class_folders", "train_val", "unlabeled"]
Split = Literal["train", "val"]

SMALL_CLASS_IMAGES = 5
MAX_IMBALANCE = 10.0

_SPLIT_FOLDERS: dict[str, Split] = {"train": "train", "val": "val", "validation": "val"}

Parts = tuple[str, ...]
# Given the path below the top folder: (class, split), or None for a file in no class.
_Placer = Callable[[Parts], tuple[str | None, Split | None] | None]


@dataclass(frozen=True)
class Placement:
    name: str  # the path in the archive
    rel: str  # the path under the dataset's images/ folder (top folder removed)
    label: str | None
    split: Split | None


@dataclass(frozen=True)
class Layout:
    name: LayoutName
    placements: list[Placement]
    outside: list[str]  # labeled only: archive paths that are in no class folder

    @property
    def classes(self) -> list[str]:
        return sorted({p.label for p in self.placements if p.label is not None})


@dataclass(frozen=True)
class IngestWarning:
    code: str
    message: str


def detect_layout(names: Sequence[str], kind: Kind) -> Layout:
    """Place every file; for a labeled archive, refuse one without two class folders."""
    paths = [tuple(name.split("/")) for name in names]
    if kind == "unlabeled":
        depth = 1 if _share_one_top_folder(paths) else 0
        return _place("unlabeled", names, paths, depth, lambda rest: (None, None))
    depth = 1 if _is_top_folder(paths) else 0
    if _has_split_folders(paths, depth):
        layout = _place("train_val", names, paths, depth, _train_val_place)
    else:
        layout = _place("class_folders", names, paths, depth, _class_folder_place)
    if not layout.placements:
        raise InvalidInput(
            "No class folders found. A labeled archive holds one folder per class "
            "(cat/001.jpg), at the root or under one top folder, or train/<class>/ "
            "and val/<class>/.",
            code="no_class_folders",
            param="file",
        )
    require_classes(layout.classes)
    return layout


def require_classes(classes: Collection[str], *, with_images: bool = False) -> None:
    """A labeled dataset needs two classes to learn anything."""
    if len(classes) >= 2:
        return
    found = ", ".join(repr(c) for c in sorted(classes)) or "none"
    qualifier = " with valid images" if with_images else ""
    raise InvalidInput(
        f"A labeled dataset needs at least 2 class folders{qualifier}; found {found}.",
        code="too_few_classes",
        param="file",
    )


def class_warnings(
    kept: Sequence[tuple[str, Split | None]], empty: Collection[str]
) -> list[IngestWarning]:
    """Warnings on the (class, split) of every kept image and on classes left empty."""
    counts = Counter(label for label, _ in kept)
    found = [
        IngestWarning(
            "empty_class", f"Class {name!r} has no valid image and was left out of the dataset."
        )
        for name in sorted(empty)
    ]
    found += [
        IngestWarning(
            "small_class", f"Class {name!r} has {n} images; fewer than {SMALL_CLASS_IMAGES}."
        )
        for name, n in sorted(counts.items())
        if n < SMALL_CLASS_IMAGES
    ]
    if counts and max(counts.values()) > MAX_IMBALANCE * min(counts.values()):
        (big, n_big), (small, n_small) = _extremes(counts)
        found.append(
            IngestWarning(
                "class_imbalance",
                f"The largest class ({big!r}, {n_big}) has over {MAX_IMBALANCE:g} times "
                f"the images of the smallest ({small!r}, {n_small}): a ratio of "
                f'{n_big / n_small:.1f} to 1. Consider `class_weighting: "balanced"`.',
            )
        )
    if any(split is not None for _, split in kept):
        found += _split_warnings(kept)
    return found


def _extremes(counts: Counter[str]) -> tuple[tuple[str, int], tuple[str, int]]:
    ordered = sorted(counts.items(), key=lambda item: (item[1], item[0]))
    return ordered[-1], ordered[0]


def _split_warnings(kept: Sequence[tuple[str, Split | None]]) -> list[IngestWarning]:
    train = {label for label, split in kept if split == "train"}
    val = {label for label, split in kept if split == "val"}
    missing_val = [
        IngestWarning("missing_in_val", f"Class {name!r} has train images but none in val.")
        for name in sorted(train - val)
    ]
    missing_train = [
        IngestWarning("missing_in_train", f"Class {name!r} has val images but none in train.")
        for name in sorted(val - train)
    ]
    return missing_val + missing_train


def _place(
    layout: LayoutName, names: Sequence[str], paths: list[Parts], depth: int, placer: _Placer
) -> Layout:
    placements: list[Placement] = []
    outside: list[str] = []
    for name, parts in zip(names, paths, strict=True):
        rest = parts[depth:]
        where = placer(rest)
        if where is None:
            outside.append(name)
            continue
        label, split = where
        placements.append(Placement(name, "/".join(rest), label, split))
    return Layout(layout, placements, outside)


def _class_folder_place(rest: Parts) -> tuple[str | None, Split | None] | None:
    return (rest[0], None) if len(rest) >= 2 else None


def _train_val_place(rest: Parts) -> tuple[str | None, Split | None] | None:
    split = _SPLIT_FOLDERS.get(rest[0].lower())
    return (rest[1], split) if split is not None and len(rest) >= 3 else None


def _share_one_top_folder(paths: list[Parts]) -> bool:
    return bool(paths) and all(len(p) >= 2 and p[0] == paths[0][0] for p in paths)


def _is_top_folder(paths: list[Parts]) -> bool:
    # One folder at the root that itself holds folders; files beside it (a README)
    # do not stop it being the top folder, they are just outside any class.
    folders = {p[0] for p in paths if len(p) >= 2}
    return len(folders) == 1 and any(len(p) >= 3 for p in paths)


def _has_split_folders(paths: list[Parts], depth: int) -> bool:
    # A split folder counts only if it holds class folders: `train/x.jpg` alone is
    # a class named "train".
    found = {_SPLIT_FOLDERS.get(p[depth].lower()) for p in paths if len(p) >= depth + 3}
    return {"train", "val"} <= found
