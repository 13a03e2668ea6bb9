"""Turns an uploaded archive into a dataset directory: the whole pipeline, no database.

Extract safely into a temporary directory beside `dest`, check every image, read
the layout, drop duplicates, write manifest.json, fsync, and only then rename the
directory to `dest`. Any error removes the temporary directory: `dest` either
holds a complete dataset or does not exist.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from app.errors import InvalidInput
from app.services import near_duplicates
from app.services.archive import ArchiveLimits, ExtractedFile, MiB, extract_archive
from app.services.images import ImageInfo, ImageRejected, Rejection, inspect_image, is_hidden
from app.services.layout import (
    IngestWarning,
    Kind,
    Layout,
    LayoutName,
    Placement,
    class_warnings,
    detect_layout,
    require_classes,
)
from app.storage import fsync_dir, sha256_file

MANIFEST_VERSION = 1

# Pillow and hashlib release the GIL, so a few threads overlap decoding on the
# cores there are, without the cost of processes.
DEFAULT_THREADS = min(4, os.cpu_count() or 1)

# fsync waits on the disk, not the CPU, and concurrent fsyncs share journal
# commits: on ext4 sixteen at once cost a tenth of the same calls one by one.
FSYNC_THREADS = 16

_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True)
class IngestLimits:
    """Everything an upload may not exceed.

    - archive: caps on extraction, over which the whole archive is refused
      (archive_too_large): max_total_bytes 8 GiB extracted in all, max_file_bytes
      64 MiB for one entry, max_entries 200_000, max_ratio 200 (extracted bytes per
      compressed byte, per zip entry and overall, once over 1 MiB).
    - max_image_pixels: 40_000_000; a larger image (width x height read from its
      header, before decoding) is rejected as too_many_pixels.
    - min_image_side: 8 px; an image with a shorter side is rejected as too_small.
    - max_file_bytes: 32 MiB; a larger file is rejected as file_too_large and the
      rest of the dataset kept.
    """

    archive: ArchiveLimits = field(default_factory=ArchiveLimits)
    max_image_pixels: int = 40_000_000
    min_image_side: int = 8
    max_file_bytes: int = 32 * MiB


@dataclass(frozen=True)
class ClassCount:
    name: str
    count: int


@dataclass(frozen=True)
class IngestReport:
    """What ingestion found; mirrors manifest.json, plus the archive's sha256.

    splits holds train and val counts only when the archive gives an explicit split;
    otherwise it is None and the job's validation_split decides.
    """

    kind: Kind
    layout: LayoutName
    num_images: int
    classes: list[ClassCount]
    splits: dict[str, int] | None
    rejected: list[Rejection]
    warnings: list[IngestWarning]
    near_duplicates: list[dict[str, Any]]
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Accepted:
    placement: Placement
    sha256: str
    info: ImageInfo


def ingest(
    archive_path: Path,
    dest: Path,
    *,
    kind: Kind,
    limits: IngestLimits,
    threads: int = DEFAULT_THREADS,
) -> IngestReport:
    """Build the dataset directory `dest` from an archive (see the module docstring).

    `threads` check images in parallel (Pillow decodes without the GIL). Raises
    InvalidInput for an archive that cannot become a dataset, and FileExistsError
    if `dest` exists already.
    """
    if dest.exists():
        raise FileExistsError(f"{dest} exists already")
    archive_sha256 = sha256_file(archive_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as dest: the final rename stays on one filesystem, hence atomic.
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(8)}.tmp"
    tmp.mkdir()
    try:
        files = extract_archive(archive_path, tmp / "extracted", limits.archive)
        manifest = _build_dataset(files, tmp, kind, limits, threads)
        shutil.rmtree(tmp / "extracted")
        (tmp / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False), "utf-8")
        _fsync_tree(tmp)
        os.rename(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _report(manifest, archive_sha256)


def _build_dataset(
    files: list[ExtractedFile], tmp: Path, kind: Kind, limits: IngestLimits, threads: int
) -> dict[str, Any]:
    rejected: list[Rejection] = []
    visible: dict[str, ExtractedFile] = {}
    for f in files:
        if is_hidden(f.name):
            rejected.append(Rejection(f.name, "hidden_file", "operating system or hidden file"))
        else:
            visible[f.name] = f
    if not visible:
        raise _no_images(rejected)
    layout = detect_layout(sorted(visible), kind)
    rejected += [
        Rejection(name, "outside_class_folder", "the file is in no class folder")
        for name in layout.outside
    ]
    checked = _parallel_map(
        lambda p: _check(p, visible[p.name], limits), layout.placements, threads
    )
    accepted = _dedupe(checked, rejected)
    if not accepted:
        raise _no_images(rejected)
    for item in accepted:
        _move(visible[item.placement.name].path, tmp / "images" / item.placement.rel)
    return _manifest(kind, layout, accepted, rejected)


def _check(
    placement: Placement, file: ExtractedFile, limits: IngestLimits
) -> _Accepted | Rejection:
    if file.size > limits.max_file_bytes:
        detail = f"{file.size} bytes, over max_file_bytes={limits.max_file_bytes}"
        return Rejection(placement.name, "file_too_large", detail)
    data = file.path.read_bytes()
    try:
        info = inspect_image(
            data, max_pixels=limits.max_image_pixels, min_side=limits.min_image_side
        )
    except ImageRejected as exc:
        return Rejection(placement.name, exc.reason, exc.detail)
    return _Accepted(placement, hashlib.sha256(data).hexdigest(), info)


def _dedupe(checked: Iterable[_Accepted | Rejection], rejected: list[Rejection]) -> list[_Accepted]:
    """Keep the first of identical files, in archive path order; reject the others."""
    first_with: dict[str, str] = {}
    accepted: list[_Accepted] = []
    for result in checked:
        if isinstance(result, Rejection):
            rejected.append(result)
        elif result.sha256 in first_with:
            detail = f"same content as {first_with[result.sha256]}"
            rejected.append(Rejection(result.placement.name, "duplicate", detail))
        else:
            first_with[result.sha256] = result.placement.name
            accepted.append(result)
    return accepted


def _manifest(
    kind: Kind, layout: Layout, accepted: list[_Accepted], rejected: list[Rejection]
) -> dict[str, Any]:
    classes = sorted({a.placement.label for a in accepted if a.placement.label is not None})
    if kind == "labeled":
        require_classes(classes, with_images=True)
    index = {name: i for i, name in enumerate(classes)}
    kept = [(a.placement.label, a.placement.split) for a in accepted if a.placement.label]
    warnings = class_warnings(kept, set(layout.classes) - set(classes))
    items = sorted(accepted, key=lambda a: (a.placement.label or "", a.placement.rel))
    pairs, totals = near_duplicates.find_pairs(
        [
            near_duplicates.Hashed(
                f"images/{a.placement.rel}", a.placement.label, a.placement.split, a.info.phash
            )
            for a in items
            if a.info.phash is not None
        ]
    )
    warnings += near_duplicates.warnings(totals, pairs)
    return {
        "version": MANIFEST_VERSION,
        "kind": kind,
        "layout": layout.name,
        "classes": classes,
        "items": [_item(a, index) for a in items],
        "rejected": [dataclasses.asdict(r) for r in sorted(rejected, key=lambda r: r.path)],
        "warnings": [dataclasses.asdict(w) for w in warnings],
        "near_duplicates": [dataclasses.asdict(p) for p in pairs],
        "num_images": len(items),
    }


def _item(accepted: _Accepted, index: dict[str, int]) -> dict[str, Any]:
    placement = accepted.placement
    return {
        "path": f"images/{placement.rel}",
        "label": None if placement.label is None else index[placement.label],
        "split": placement.split,
        "sha256": accepted.sha256,
        "width": accepted.info.width,
        "height": accepted.info.height,
    }


def _report(manifest: dict[str, Any], archive_sha256: str) -> IngestReport:
    items: list[dict[str, Any]] = manifest["items"]
    classes: list[str] = manifest["classes"]
    per_class = Counter(item["label"] for item in items)
    per_split = Counter(item["split"] for item in items)
    return IngestReport(
        kind=manifest["kind"],
        layout=manifest["layout"],
        num_images=manifest["num_images"],
        classes=[ClassCount(name, per_class[i]) for i, name in enumerate(classes)],
        splits=(
            {"train": per_split["train"], "val": per_split["val"]}
            if manifest["layout"] == "train_val"
            else None
        ),
        rejected=[Rejection(**r) for r in manifest["rejected"]],
        warnings=[IngestWarning(**w) for w in manifest["warnings"]],
        near_duplicates=list(manifest["near_duplicates"]),
        sha256=archive_sha256,
    )


def _no_images(rejected: Sequence[Rejection]) -> InvalidInput:
    reasons = Counter(r.reason for r in rejected)
    summary = ", ".join(f"{reason}: {n}" for reason, n in sorted(reasons.items()))
    return InvalidInput(
        f"The archive holds no valid image ({len(rejected)} files rejected: {summary or 'none'}).",
        code="no_images",
        param="file",
    )


def _parallel_map(fn: Callable[[_T], _R], items: Sequence[_T], threads: int) -> list[_R]:
    if threads <= 1 or len(items) < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ingest") as pool:
        return list(pool.map(fn, items))


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.rename(src, dst)


def _fsync_tree(root: Path) -> None:
    """Make every file and folder durable before the rename publishes them."""
    files: list[Path] = []
    for folder, _, names in os.walk(root):
        files += (Path(folder, name) for name in names)
        fsync_dir(Path(folder))
    # fsync_dir opens read-only and fsyncs, which is what a file needs too.
    _parallel_map(fsync_dir, files, FSYNC_THREADS)
