"""Safe extraction of an uploaded dataset archive: zip, tar.gz or plain tar.

An upload is hostile until proven otherwise. Every name is checked before anything
is written; links, devices and fifos refuse the whole archive; and every cap counts
the bytes actually written, because the sizes an archive declares are the
uploader's to choose.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

from app.errors import InvalidInput
from app.storage import CHUNK

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

MiB = 1 << 20
GiB = 1 << 30

ArchiveFormat = Literal["zip", "tar", "tar.gz"]
MemberKind = Literal["file", "dir", "symlink", "hardlink", "special"]

# tarfile reads a pax or long-name header whole into memory, whatever size it
# declares; what it reads beyond the file data we write may not exceed this.
HEADER_BYTES_ALLOWANCE = 1 * MiB
HEADER_BYTES_PER_ENTRY = 4096

# Below this many bytes a high compression ratio is harmless (a flat-colour BMP, a
# text file) and refusing the whole upload for it would only annoy.
RATIO_GRACE_BYTES = 1 * MiB

# Deflate and stored only: LZMA and bzip2 entries let a few bytes of header make
# the decompressor allocate up to gigabytes before a single byte is counted.
_ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
# The names of the other methods zip tools write (APPNOTE.TXT section 4.4.5).
_ZIP_METHOD_NAMES = {
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "LZMA",
    9: "Deflate64",
    93: "Zstandard",
    95: "XZ",
    98: "PPMd",
    99: "AES encryption",
}

# What a damaged archive raises while being read. OSError is left out on purpose:
# a full disk while writing is our failure, not a corrupt upload.
_READ_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    zlib.error,
    EOFError,
    gzip.BadGzipFile,
    ValueError,
)

_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_MAX_NAME_COMPONENT_BYTES = 255
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps on what one archive may expand to; going over any refuses the archive.

    - max_total_bytes: 8 GiB, the sum of all extracted files.
    - max_file_bytes: 64 MiB, one extracted file.
    - max_entries: 200_000 members, directories included.
    - max_ratio: 200, extracted bytes per compressed byte, for each zip entry and
      for the archive as a whole (ignored below 1 MiB written, RATIO_GRACE_BYTES).
    """

    max_total_bytes: int = 8 * GiB
    max_file_bytes: int = 64 * MiB
    max_entries: int = 200_000
    max_ratio: float = 200.0


@dataclass(frozen=True)
class ExtractedFile:
    name: str  # normalised archive path: '/'-separated, no '.' or empty parts
    path: Path  # where it lies on disk
    size: int


@dataclass(frozen=True)
class _Member:
    raw_name: str
    kind: MemberKind
    open: Callable[[], IO[bytes]]
    compressed_size: int | None  # None where the format keeps no per-entry size (tar)


def detect_format(path: Path) -> ArchiveFormat:
    """Tell zip from tar from tar.gz by magic bytes; the file name proves nothing."""
    with path.open("rb") as fh:
        head = fh.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head[257:262] == b"ustar":
        return "tar"
    raise not_an_archive("The file is not a zip, tar.gz or tar archive.")


def extract_archive(archive: Path, into: Path, limits: ArchiveLimits) -> list[ExtractedFile]:
    """Extract the regular files of `archive` under the new directory `into`.

    Raises InvalidInput (not_an_archive, unsupported_compression, empty_archive,
    unsafe_archive_entry, archive_too_large). On error, what was written stays under
    `into`: the caller owns that directory and removes it.
    """
    fmt = detect_format(archive)
    into.mkdir()
    writer = _Writer(into, limits, archive.stat().st_size)
    try:
        with _members(archive, fmt, writer) as members:
            for member in members:
                writer.add(member)
    except _READ_ERRORS as exc:
        detail = str(exc) or type(exc).__name__
        raise not_an_archive(f"The archive is corrupt: {detail}") from exc
    if not writer.files:
        raise InvalidInput("The archive contains no files.", code="empty_archive", param="file")
    return writer.files


def safe_name(raw: str) -> str:
    """Normalise an entry name, or refuse it when it could land outside the archive."""
    problem = _name_problem(raw)
    if problem is not None:
        raise unsafe_entry(raw, problem)
    return "/".join(part for part in raw.split("/") if part not in ("", "."))


def _name_problem(raw: str) -> str | None:
    if "\x00" in raw:
        return "the name contains a NUL byte"
    if "\\" in raw:
        return "the name contains a backslash"
    if raw.startswith("/"):
        return "the name is an absolute path"
    if _DRIVE_LETTER.match(raw):
        return "the name starts with a drive letter"
    parts = raw.split("/")
    if ".." in parts:
        return "the name climbs out of the archive with '..'"
    try:
        sizes = [len(part.encode("utf-8")) for part in parts]
    except UnicodeEncodeError:
        return "the name is not valid UTF-8"
    if max(sizes) > _MAX_NAME_COMPONENT_BYTES:
        return f"a path component is longer than {_MAX_NAME_COMPONENT_BYTES} bytes"
    return None


def not_an_archive(message: str) -> InvalidInput:
    return InvalidInput(message, code="not_an_archive", param="file")


def unsupported_compression(raw_name: str, method: int) -> InvalidInput:
    name = _ZIP_METHOD_NAMES.get(method, "an unknown method")
    return InvalidInput(
        f"Entry {raw_name!r} is compressed with {name} (zip method {method}); Graft reads "
        "only deflate (what zip tools write by default) and stored entries. Re-create the "
        "zip with deflate, or upload a tar.gz.",
        code="unsupported_compression",
        param="file",
    )


def unsafe_entry(raw_name: str, problem: str) -> InvalidInput:
    return InvalidInput(
        f"Unsafe archive entry {raw_name!r}: {problem}; the archive was refused.",
        code="unsafe_archive_entry",
        param="file",
    )


def too_large(what: str, limit: str, value: float) -> InvalidInput:
    return InvalidInput(
        f"{what} is over the limit {limit}={_number(value)}{_human(value, limit)}; "
        "the archive was refused.",
        code="archive_too_large",
        param="file",
    )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _human(value: float, limit: str) -> str:
    if not limit.endswith("_bytes") or value < MiB:
        return ""
    unit, size = ("GiB", GiB) if value >= GiB else ("MiB", MiB)
    return f" ({_number(round(value / size, 2))} {unit})"


def _ratio_cap(compressed: int, max_ratio: float) -> float:
    return max(compressed * max_ratio, RATIO_GRACE_BYTES)


class _Writer:
    """Writes members under one root, counting what it writes against the limits."""

    def __init__(self, root: Path, limits: ArchiveLimits, archive_size: int) -> None:
        self.root = root
        self.root_real = os.path.realpath(root)
        self.limits = limits
        self.archive_size = archive_size
        self.entries = 0
        self.total = 0
        self.files: list[ExtractedFile] = []
        self._checked_dirs: set[str] = set()

    def add(self, member: _Member) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise too_large("The number of entries", "max_entries", self.limits.max_entries)
        name = safe_name(member.raw_name)
        if member.kind == "dir":
            return
        if member.kind != "file":
            raise unsafe_entry(member.raw_name, _KIND_PROBLEMS[member.kind])
        if not name:
            raise unsafe_entry(member.raw_name, "a file without a name")
        path = os.path.join(self.root, *name.split("/"))
        fd = self._create(path, member.raw_name)
        with os.fdopen(fd, "wb") as out, member.open() as src:
            size = self._copy(src, out, name, member.compressed_size)
        self.files.append(ExtractedFile(name=name, path=Path(path), size=size))

    def _create(self, path: str, raw_name: str) -> int:
        parent = os.path.dirname(path)
        if parent not in self._checked_dirs:
            try:
                os.makedirs(parent, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise unsafe_entry(raw_name, "a folder of that name is also a file") from None
            real = os.path.realpath(parent)
            if real != self.root_real and not real.startswith(self.root_real + os.sep):
                raise unsafe_entry(raw_name, "it resolves outside the archive")
            self._checked_dirs.add(parent)
        try:
            return os.open(path, _NEW_FILE_FLAGS, 0o644)
        except (FileExistsError, IsADirectoryError):
            raise unsafe_entry(raw_name, "the name appears twice in the archive") from None

    def _copy(self, src: IO[bytes], out: IO[bytes], name: str, compressed: int | None) -> int:
        # A declared compressed size can lie upwards to pass this check; the check on
        # the whole archive below, against its real size on disk, cannot be fooled.
        entry_cap = None
        if compressed is not None:
            entry_cap = _ratio_cap(compressed, self.limits.max_ratio)
        written = 0
        while chunk := src.read(CHUNK):
            written += len(chunk)
            self.total += len(chunk)
            self._enforce(name, written, entry_cap)
            out.write(chunk)
        return written

    def _enforce(self, name: str, written: int, entry_cap: float | None) -> None:
        limits = self.limits
        if written > limits.max_file_bytes:
            raise too_large(f"Entry {name!r}", "max_file_bytes", limits.max_file_bytes)
        if entry_cap is not None and written > entry_cap:
            what = f"The compression ratio of entry {name!r}"
            raise too_large(what, "max_ratio", limits.max_ratio)
        if self.total > limits.max_total_bytes:
            what = "The extracted size of the archive"
            raise too_large(what, "max_total_bytes", limits.max_total_bytes)
        if self.total > _ratio_cap(self.archive_size, limits.max_ratio):
            raise too_large("The compression ratio of the archive", "max_ratio", limits.max_ratio)


class _MeteredStream(io.RawIOBase):
    """The bytes tarfile reads, checked against what was written: headers are the rest."""

    def __init__(self, raw: io.BufferedIOBase, writer: _Writer) -> None:
        super().__init__()
        self.raw = raw
        self.writer = writer
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.raw.read(min(len(view), CHUNK))
        view[: len(data)] = data
        self.consumed += len(data)
        allowance = HEADER_BYTES_ALLOWANCE + HEADER_BYTES_PER_ENTRY * self.writer.entries
        if self.consumed - self.writer.total > allowance:
            raise InvalidInput(
                f"The headers of the archive are over {allowance} bytes, "
                "far more than its names need; the archive was refused.",
                code="archive_too_large",
                param="file",
            )
        return len(data)


_KIND_PROBLEMS: dict[MemberKind, str] = {
    "symlink": "symbolic links are not allowed",
    "hardlink": "hard links are not allowed",
    "special": "device files, fifos and sockets are not allowed",
}


@contextmanager
def _members(archive: Path, fmt: ArchiveFormat, writer: _Writer) -> Iterator[Iterator[_Member]]:
    if fmt == "zip":
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            # The central directory gives the count up front: refuse before writing.
            if len(infos) > writer.limits.max_entries:
                raise too_large("The number of entries", "max_entries", writer.limits.max_entries)
            yield (_zip_member(zf, info) for info in infos)
        return
    with archive.open("rb") as raw:
        # Decompressing here rather than in tarfile lets the meter see real bytes.
        stream: io.BufferedIOBase = gzip.GzipFile(fileobj=raw) if fmt == "tar.gz" else raw
        # Stream mode: members are read in order, never seeking back through gzip.
        with tarfile.open(fileobj=_MeteredStream(stream, writer), mode="r|") as tf:
            yield (_tar_member(tf, info) for info in tf)


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Member:
    # orig_filename: zipfile cuts `filename` at a NUL byte, hiding it from the check.
    raw = info.orig_filename
    mode = info.external_attr >> 16
    kind = _zip_kind(info, mode)
    if kind == "file":
        if info.flag_bits & 0x1:
            raise not_an_archive(f"Entry {raw!r} is encrypted; upload an unencrypted archive.")
        if info.compress_type not in _ZIP_METHODS:
            raise unsupported_compression(raw, info.compress_type)
    return _Member(raw, kind, lambda: zf.open(info), info.compress_size)


def _zip_kind(info: zipfile.ZipInfo, mode: int) -> MemberKind:
    # Unix zips keep st_mode in the high 16 bits of the external attributes; other
    # systems leave them zero, which reads as "no type": a plain file or folder.
    file_type = stat.S_IFMT(mode)
    if file_type == stat.S_IFLNK:
        return "symlink"
    if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "special"
    if info.is_dir() or file_type == stat.S_IFDIR:
        return "dir"
    return "file"


def _tar_member(tf: tarfile.TarFile, info: tarfile.TarInfo) -> _Member:
    def open_member() -> IO[bytes]:
        fh = tf.extractfile(info)
        if fh is None:
            raise not_an_archive(f"Entry {info.name!r} has no data.")
        return fh

    return _Member(info.name, _tar_kind(info), open_member, None)


def _tar_kind(info: tarfile.TarInfo) -> MemberKind:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    return "special"
