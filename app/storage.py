"""The artifact store: where each object's files live, and how they are written.

Everything is written to a temporary name in the same directory, fsynced, then
renamed: a reader (or a row pointing at the file) never sees half a file.
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
from typing import IO, Any

CHUNK = 1024 * 1024


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

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

    def remove_tree(self, path: Path) -> None:
        """Remove a directory of ours; rename first so a crash never leaves half of it."""
        if not path.exists():
            return
        # Unique: names repeat across jobs (attempt-1), and a failed rmtree leaves one.
        trash = self.tmp_dir() / f"trash-{path.name}-{uuid.uuid4().hex}"
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


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
