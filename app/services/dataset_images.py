"""A ready dataset's images, as the dashboard shows them: a page of them by class and
split, and a small PNG of one.

Both read the dataset's manifest (written once at ingestion and never changed), so a
few recently used manifests are kept parsed in memory. A thumbnail's path must be one
of the manifest's images: the path in the request is looked up, never joined blindly
onto the dataset's directory.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from app.db.models import Dataset
from app.errors import Conflict, InvalidInput, NotFound
from app.imaging import load_rgb
from app.repositories.base import Page
from app.storage import Storage

THUMBNAIL_MIN = 16
THUMBNAIL_MAX = 512
# Parsed manifests kept per API process; a manifest of the largest dataset
# (GRAFT_ARCHIVE_MAX_ENTRIES images) is tens of MB, so keep few.
MANIFESTS_CACHED = 4


@dataclass(frozen=True)
class DatasetImage:
    path: str
    class_name: str | None
    split: str | None
    width: int
    height: int


@dataclass(frozen=True)
class _Manifest:
    images: tuple[DatasetImage, ...]
    index: dict[str, int]


@lru_cache(maxsize=MANIFESTS_CACHED)
def _manifest(path: Path, mtime_ns: int) -> _Manifest:
    raw: dict[str, Any] = json.loads(path.read_text("utf-8"))
    classes: list[str] = raw.get("classes", [])
    images = tuple(
        DatasetImage(
            path=item["path"],
            class_name=None if item.get("label") is None else classes[item["label"]],
            split=item.get("split"),
            width=item["width"],
            height=item["height"],
        )
        for item in raw["items"]
    )
    return _Manifest(images, {image.path: i for i, image in enumerate(images)})


def _ready_manifest(storage: Storage, dataset: Dataset) -> tuple[Path, _Manifest]:
    if dataset.status != "ready":
        raise Conflict(
            f"Dataset {dataset.id} is {dataset.status}; its images can be read once it is ready.",
            code="dataset_not_ready",
            param="dataset_id",
        )
    root = storage.fetch(storage.dataset_dir(dataset.id))
    path = root / "manifest.json"
    return root, _manifest(path, path.stat().st_mtime_ns)


def _cursor(position: int) -> str:
    return f"img_{position:x}"


def _position(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not cursor.startswith("img_"):
        raise InvalidInput(
            f"Cursor {cursor!r} is not one of this list's; pass the next_cursor it gave.",
            code="invalid_cursor",
            param="cursor",
        )
    return int(cursor.removeprefix("img_"), 16) + 1


def list_images(
    storage: Storage,
    dataset: Dataset,
    *,
    class_name: str | None,
    split: str | None,
    limit: int,
    cursor: str | None,
) -> Page[DatasetImage]:
    """The dataset's images in manifest order (by class, then path), filtered; the
    cursor is the position of the previous page's last image."""
    _, manifest = _ready_manifest(storage, dataset)
    images = manifest.images
    start = _position(cursor)
    found: list[tuple[int, DatasetImage]] = []
    for position in range(start, len(images)):
        image = images[position]
        if (class_name is None or image.class_name == class_name) and (
            split is None or image.split == split
        ):
            found.append((position, image))
            if len(found) > limit:
                break
    page = found[:limit]
    has_more = len(found) > limit
    return Page(
        items=[image for _, image in page],
        has_more=has_more,
        next_cursor=_cursor(page[-1][0]) if has_more else None,
    )


def thumbnail(storage: Storage, dataset: Dataset, path: str, size: int) -> bytes:
    """One of the dataset's images as a PNG whose longest side is `size` (small images
    are scaled up without smoothing, so an 8 px digit stays legible)."""
    root, manifest = _ready_manifest(storage, dataset)
    if path not in manifest.index:
        raise NotFound(
            f"Dataset {dataset.id} has no image {path!r}; the paths are those of "
            f"GET /v1/datasets/{dataset.id}/images.",
            code="image_not_found",
            param="path",
        )
    image = load_rgb(str(root / path))
    image.thumbnail((size, size), Image.Resampling.BILINEAR)
    if max(image.size) < size:  # tiny images (8 px digits) scaled up, pixels kept sharp
        scale = size / max(image.size)
        target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(target, Image.Resampling.NEAREST)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
