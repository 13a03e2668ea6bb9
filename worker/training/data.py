"""Datasets as the engine sees them: images decoded once into uint8 arrays.

The first job that needs a dataset at a given image size decodes every image (with
app.imaging, the same steps the API's predict uses) into one array on disk,
`<dataset>/cache/<size>.npy`, written atomically. Every later epoch and job memory-maps
it: no JPEG decoding and no resizing beyond the random augmentation.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from app.imaging import load_rgb, to_array
from app.services.splits import stratified_split
from app.storage import fsync_dir, read_json
from worker.errors import DatasetError
from worker.training.types import ImageSet


def load_manifest(dataset_dir: Path) -> dict[str, Any]:
    path = dataset_dir / "manifest.json"
    if not path.exists():
        raise DatasetError(f"dataset files are missing: {path} does not exist")
    manifest: dict[str, Any] = read_json(path)
    return manifest


def decoded_images(dataset_dir: Path, manifest: dict[str, Any], size: int) -> np.ndarray:
    """All images of the manifest at size x size, uint8 NHWC, memory-mapped from the cache."""
    cache = dataset_dir / "cache" / f"{size}.npy"
    items = manifest["items"]
    if cache.exists():
        arr = np.load(cache, mmap_mode="r")
        if arr.shape == (len(items), size, size, 3):
            return arr
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{size}.", suffix=".npy", dir=cache.parent)
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(items), size, size, 3)
        )
        for i, item in enumerate(items):
            try:
                out[i] = to_array(load_rgb(str(dataset_dir / item["path"])), size)
            except (OSError, ValueError) as exc:
                raise DatasetError(f"cannot read {item['path']}: {exc}") from exc
        out.flush()
        del out
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, cache)
        fsync_dir(cache.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return np.load(cache, mmap_mode="r")


def split_indices(
    manifest: dict[str, Any], validation_split: float, seed: int
) -> tuple[list[int], list[int]]:
    """The archive's own train/val split when it has one, else a stratified seeded split."""
    items = manifest["items"]
    if any(item.get("split") for item in items):
        train = [i for i, it in enumerate(items) if it.get("split") != "val"]
        val = [i for i, it in enumerate(items) if it.get("split") == "val"]
        return train, val
    labels = [int(item["label"]) for item in items]
    return stratified_split(labels, validation_split, seed)


def all_images(dataset_dir: Path, size: int) -> np.ndarray:
    """Every image of a dataset (say an unlabeled target domain), decoded once."""
    return decoded_images(dataset_dir, load_manifest(dataset_dir), size)


def labeled_set(dataset_dir: Path, size: int, class_names: list[str]) -> ImageSet:
    """Every image of a labeled dataset, its labels renumbered to `class_names`' order."""
    manifest = load_manifest(dataset_dir)
    images = decoded_images(dataset_dir, manifest, size)
    index = {name: i for i, name in enumerate(class_names)}
    own = list(manifest["classes"])
    try:
        labels = [index[own[int(it["label"])]] for it in manifest["items"]]
    except KeyError as exc:
        raise DatasetError(f"class {exc} is not one of the model's classes") from exc
    return ImageSet(
        images=np.asarray(images),
        labels=np.asarray(labels, dtype=np.int64),
        paths=[str(it["path"]) for it in manifest["items"]],
    )


def image_sets(
    dataset_dir: Path, size: int, validation_split: float, seed: int
) -> tuple[ImageSet, ImageSet, list[str]]:
    manifest = load_manifest(dataset_dir)
    images = decoded_images(dataset_dir, manifest, size)
    labels = np.asarray([int(it["label"]) for it in manifest["items"]], dtype=np.int64)
    paths = [str(it["path"]) for it in manifest["items"]]
    train_idx, val_idx = split_indices(manifest, validation_split, seed)
    if not train_idx or not val_idx:
        raise DatasetError("the dataset is too small for a train and a validation split")

    def subset(idx: list[int]) -> ImageSet:
        # Fancy indexing copies the selected rows out of the memory map once.
        return ImageSet(images=images[idx], labels=labels[idx], paths=[paths[i] for i in idx])

    return subset(train_idx), subset(val_idx), list(manifest["classes"])
