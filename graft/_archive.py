"""What `datasets.upload` sends: an archive file as it is, or a folder zipped on the fly."""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from graft._exceptions import GraftError

# The server refuses these as `hidden_file`; leaving them out saves sending them.
HIDDEN_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})
# Already compressed: deflating them again costs time and saves nothing.
STORED_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif"})


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name in HIDDEN_NAMES


def visible_files(folder: Path) -> list[Path]:
    """The folder's files, hidden ones and hidden folders left out, in a stable order."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        found.extend(Path(root, f) for f in sorted(files) if not is_hidden(f))
    return found


def zip_folder(folder: Path, files: list[Path], dest: Path) -> None:
    """Write `files` (under `folder`) into the zip `dest`, one file at a time from disk."""
    with zipfile.ZipFile(dest, "w") as archive:
        for path in files:
            stored = path.suffix.lower() in STORED_SUFFIXES
            kind = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            archive.write(path, path.relative_to(folder).as_posix(), compress_type=kind)


@contextmanager
def archive_of(path: Path) -> Iterator[Path]:
    """The file to upload for `path`: the archive itself, or a temporary zip of the
    folder (named after it), removed on exit. Refuses a folder with no files."""
    if path.is_file():
        yield path
        return
    if not path.is_dir():
        raise GraftError(f"No such file or folder: {path}")
    files = visible_files(path)
    if not files:
        raise GraftError(f"The folder {path} holds no files to upload (hidden files are skipped).")
    with tempfile.TemporaryDirectory(prefix="graft-upload-") as tmp:
        dest = Path(tmp) / f"{path.resolve().name or 'dataset'}.zip"
        zip_folder(path, files, dest)
        yield dest
