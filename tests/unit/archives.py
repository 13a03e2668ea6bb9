"""Helpers that craft dataset archives, good and hostile, for the ingestion tests."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.errors import InvalidInput
from app.services.archive import ArchiveLimits
from app.services.ingest import IngestLimits, ingest

Entries = Mapping[str, bytes]


def image_bytes(
    fmt: str = "JPEG", *, size: tuple[int, int] = (16, 16), mode: str = "RGB", seed: int = 0
) -> bytes:
    """A small noise image; a different seed gives different bytes (no accidental duplicate)."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    img = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def class_entries(
    classes: Mapping[str, int], *, prefix: str = "", start_seed: int = 0
) -> dict[str, bytes]:
    """`count` distinct JPEGs per class folder: {"cat": 3} -> cat/0.jpg ... cat/2.jpg."""
    entries: dict[str, bytes] = {}
    seed = start_seed
    for name, count in classes.items():
        for i in range(count):
            entries[f"{prefix}{name}/{i}.jpg"] = image_bytes(seed=seed)
            seed += 1
    return entries


def make_zip(path: Path, entries: Entries, *, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def make_tar(path: Path, entries: Entries, *, gz: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz" if gz else "w") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def make_tar_with_special(path: Path, member_type: bytes, *, linkname: str = "") -> Path:
    """A tar.gz with one good file and one link, device or fifo member."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = image_bytes()
    with tarfile.open(path, "w:gz") as tf:
        good = tarfile.TarInfo("cat/0.jpg")
        good.size = len(data)
        tf.addfile(good, io.BytesIO(data))
        special = tarfile.TarInfo("cat/special.jpg")
        special.type = member_type
        special.linkname = linkname
        tf.addfile(special)
    return path


def make_zip_symlink(path: Path, name: str, target: str) -> Path:
    """A zip whose entry is a Unix symbolic link (mode in the external attributes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("cat/0.jpg", image_bytes())
        info = zipfile.ZipInfo(name)
        info.create_system = 3
        info.external_attr = (0o120777 << 16) & 0xFFFF0000
        zf.writestr(info, target)
    return path


def make_zip_raw_name(path: Path, placeholder: str, raw: bytes) -> Path:
    """A zip with an entry name zipfile will not write (a NUL byte): patch the bytes."""
    assert len(placeholder.encode()) == len(raw)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("cat/0.jpg", image_bytes())
        zf.writestr(placeholder, image_bytes(seed=1))
    patched = buf.getvalue().replace(placeholder.encode(), raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(patched)
    return path


def make_zip_lying_sizes(
    path: Path,
    data: bytes,
    *,
    file_size: int | None = None,
    compress_size: int | None = None,
    padding: bytes = b"",
) -> Path:
    """A zip whose first entry's central directory record declares sizes other than the
    real ones; `padding`, stored after it, gives a reader something to over-read."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cat/bomb.bmp", data)
        if padding:
            zf.writestr("cat/padding.bin", padding, zipfile.ZIP_STORED)
    raw = bytearray(buf.getvalue())
    central = raw.find(b"PK\x01\x02")
    # Central directory record: compressed size at +20, uncompressed size at +24.
    if compress_size is not None:
        struct.pack_into("<I", raw, central + 20, compress_size)
    if file_size is not None:
        struct.pack_into("<I", raw, central + 24, file_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(raw))
    return path


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height: a decompression bomb's calling card."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def snapshot(root: Path) -> dict[str, int]:
    """Every path under root with its size, to prove a failed ingest left nothing."""
    return {
        str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1)
        for p in sorted(root.rglob("*"))
    }


def names_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def assert_refused(
    archive: Path, tmp_path: Path, code: str, limits: IngestLimits | None = None
) -> InvalidInput:
    """Ingest must fail with `code` and leave every file under tmp_path as it was."""
    before = snapshot(tmp_path)
    dest = tmp_path / "datasets" / "ds_1"
    with pytest.raises(InvalidInput) as caught:
        ingest(archive, dest, kind="labeled", limits=limits or IngestLimits())
    assert caught.value.code == code, caught.value.message
    assert caught.value.status_code == 422
    after = snapshot(tmp_path)
    # Only the (empty) parent of dest may appear; no dest, no temp dir, nothing else.
    assert {k: v for k, v in after.items() if k != "datasets"} == before
    assert not dest.exists()
    assert not any((tmp_path / "datasets").iterdir())
    return caught.value


def archive_limits(**caps: int | float) -> IngestLimits:
    """Default ingest limits with some archive caps lowered."""
    return IngestLimits(archive=ArchiveLimits(**caps))  # type: ignore[arg-type]
