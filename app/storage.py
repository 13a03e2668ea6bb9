"""The artifact store: where each object's files live, and how they are written.

Everything is written to a temporary name in the same directory, fsynced, then
renamed: a reader (or a row pointing at the file) never sees half a file.

With a bucket (GRAFT_STORAGE_URL=s3://…, app/object_store.py) the same paths are this
process's cache of it: a writer finishes the files here, then `publish`es them (before
the row points at them); a reader `fetch`es a dataset's or model's directory (a miss
downloads it, checks every file's sha256 against its manifest and renames it into
place) and the least recently used directories go once the cache passes its size.
Without a bucket publish and fetch do nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.config import Settings
    from app.object_store import ObjectStore

CHUNK = 1024 * 1024
MANIFEST = ".complete.json"  # a directory's files and their sha256 (app/object_store.py)
# The cached directories (what a bucket-backed process may evict and fetch again).
CACHED_KINDS = ("datasets", "models")


class CorruptDownload(Exception):
    """A file fetched from the bucket does not match its manifest."""


class Storage:
    def __init__(
        self, root: Path, remote: ObjectStore | None = None, cache_max_bytes: int = 0
    ) -> None:
        self.root = root.resolve()
        self.remote = remote
        self.cache_max_bytes = cache_max_bytes

    @property
    def is_remote(self) -> bool:
        return self.remote is not None

    def dataset_dir(self, dataset_id: str) -> Path:
        return self.root / "datasets" / dataset_id

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def model_dir(self, model_id: str) -> Path:
        return self.root / "models" / model_id

    def tmp_dir(self) -> Path:
        path = self.root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def rel(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    def remove_tree(self, path: Path) -> None:
        """Remove a directory of ours, here and in the bucket."""
        self.remove_local(path)
        if self.remote is not None:
            self.remote.remove(self.rel(path))

    def remove_local(self, path: Path) -> None:
        """Remove a directory here; rename first so a crash never leaves half of it."""
        if not path.exists():
            return
        # Unique: names repeat across jobs (attempt-1), and a failed rmtree leaves one.
        trash = self.tmp_dir() / f"trash-{path.name}-{uuid.uuid4().hex}"
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def remove_file(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        if self.remote is not None:
            self.remote.remove(self.rel(path))

    # ------------------------------------------------------------ the bucket

    def publish(self, path: Path) -> None:
        """Make a finished file, or a directory with its manifest, durable in the bucket."""
        if self.remote is None:
            return
        if path.is_dir():
            manifest = {"files": tree_files(path)}
            self.remote.put_tree(path, self.rel(path), manifest)
            write_json(path / MANIFEST, manifest)
        else:
            self.remote.put_file(path, self.rel(path))

    def fetch(self, path: Path) -> Path:
        """A dataset's or model's directory, here: downloaded on a miss (nothing is
        done when the bucket has none: the caller finds it missing, as without one)."""
        if self.remote is None:
            return path
        marker = path / MANIFEST
        if marker.exists():
            os.utime(marker)  # the cache evicts by last use
            return path
        manifest = self.remote.read_json(f"{self.rel(path)}/{MANIFEST}")
        if manifest is None:
            return path
        files: dict[str, dict[str, Any]] = manifest["files"]
        staging = self.tmp_dir() / f"fetch-{path.name}-{uuid.uuid4().hex}"
        try:
            self.remote.get_tree(self.rel(path), sorted(files), staging)
            for name, expected in files.items():
                if sha256_file(staging / name) != expected["sha256"]:
                    raise CorruptDownload(
                        f"{self.rel(path)}/{name}: sha256 differs from the manifest"
                    )
            write_json(staging / MANIFEST, manifest)
            if not marker.exists():  # else another process of this host fetched it first
                self.remove_local(path)
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging, path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.evict(keep=path)
        return path

    def download(self, path: Path) -> bool:
        """The bucket's copy of one file, here (replacing any); False if it has none."""
        if self.remote is None:
            return path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        try:
            self.remote.get_file(self.rel(path), tmp)
        except FileNotFoundError:
            return False
        os.replace(tmp, path)
        return True

    def listdir_remote(self, path: Path) -> list[str]:
        return [] if self.remote is None else self.remote.listdir(self.rel(path))

    def evict(self, keep: Path) -> None:
        """Least recently used cached directories go until the cache fits its size."""
        cached = [
            d
            for kind in CACHED_KINDS
            for d in (self.root / kind).glob("*")
            if (d / MANIFEST).exists() and d != keep
        ]
        sizes = {d: tree_size(d) for d in cached}
        total = sum(sizes.values()) + tree_size(keep)
        for d in sorted(cached, key=lambda d: (d / MANIFEST).stat().st_mtime):
            if total <= self.cache_max_bytes:
                break
            self.remove_local(d)
            total -= sizes[d]


def storage_for(settings: Settings) -> Storage:
    """The artifact store of these settings (with its bucket, if GRAFT_STORAGE_URL has one)."""
    if not settings.is_remote_storage:
        return Storage(settings.storage_root)
    from app.object_store import object_store

    return Storage(settings.storage_root, object_store(settings), settings.cache_max_bytes)


def tree_files(root: Path) -> dict[str, dict[str, Any]]:
    """Every file under `root` (not the manifest) with its size and sha256."""
    return {
        p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; on success fsync and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    with atomic_writer(path, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)


def read_json(path: Path) -> Any:
    with path.open() as fh:
        return json.load(fh)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def artifacts_size(artifacts: list[dict[str, Any]]) -> int:
    """The bytes a model's artifact entries take on disk."""
    return sum(int(a.get("size_bytes", 0)) for a in artifacts)


def describe_file(path: Path, fmt: str) -> dict[str, Any]:
    """The artifact entry stored on a model row."""
    return {
        "format": fmt,
        "file": path.name,
        "size_bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }
