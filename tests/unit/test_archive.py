"""Safe extraction: formats by content, hostile names and members, bombs, broken files."""

from __future__ import annotations

import io
import struct
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from app.errors import InvalidInput
from app.services.archive import (
    ArchiveLimits,
    detect_format,
    extract_archive,
    safe_name,
)
from tests.unit.archives import (
    archive_limits,
    assert_refused,
    class_entries,
    image_bytes,
    make_tar,
    make_tar_with_special,
    make_zip,
    make_zip_lying_sizes,
    make_zip_raw_name,
    make_zip_symlink,
    names_under,
)

GOOD = class_entries({"cat": 1, "dog": 1})


# --- formats ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("maker", "misleading_name", "fmt"),
    [
        (lambda p, e: make_zip(p, e), "data.tar.gz", "zip"),
        (lambda p, e: make_tar(p, e), "data.zip", "tar.gz"),
        (lambda p, e: make_tar(p, e, gz=False), "data.zip", "tar"),
    ],
)
def test_format_is_read_from_content_not_name(tmp_path, maker, misleading_name, fmt):
    archive = maker(tmp_path / misleading_name, GOOD)
    assert detect_format(archive) == fmt
    files = extract_archive(archive, tmp_path / "out", ArchiveLimits())
    assert sorted(f.name for f in files) == ["cat/0.jpg", "dog/0.jpg"]
    assert (tmp_path / "out" / "cat" / "0.jpg").read_bytes() == GOOD["cat/0.jpg"]
    assert [f.size for f in files] == [len(GOOD[f.name]) for f in files]


def test_names_are_normalised_and_folders_skipped(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("./cat/", b"")
        zf.writestr("./cat/0.jpg", GOOD["cat/0.jpg"])
        zf.writestr("dog//sub/./0.jpg", GOOD["dog/0.jpg"])
    files = extract_archive(archive, tmp_path / "out", ArchiveLimits())
    assert [f.name for f in files] == ["cat/0.jpg", "dog/sub/0.jpg"]
    assert names_under(tmp_path / "out") == ["cat/0.jpg", "dog/sub/0.jpg"]


@pytest.mark.parametrize(
    "content",
    [b"just some text\n", image_bytes(), b"\x1f\x8b" + b"not gzip at all" * 10, b""],
    ids=["text", "jpeg", "fake-gzip", "empty-file"],
)
def test_not_an_archive(tmp_path, content):
    archive = tmp_path / "upload.zip"
    archive.write_bytes(content)
    assert_refused(archive, tmp_path, "not_an_archive")


@pytest.mark.parametrize("maker", [make_zip, make_tar], ids=["zip", "tar.gz"])
def test_truncated_archive_is_corrupt(tmp_path, maker):
    whole = maker(tmp_path / "whole", class_entries({"cat": 3, "dog": 3}))
    archive = tmp_path / "cut"
    archive.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    error = assert_refused(archive, tmp_path, "not_an_archive")
    assert "corrupt" in error.message


@pytest.mark.parametrize(
    "maker",
    [
        lambda p: make_zip(p, {}),
        lambda p: make_tar(p, {}),
        lambda p: make_zip(p, {"cat/": b"", "dog/": b""}),
    ],
    ids=["zip", "tar.gz", "only-folders"],
)
def test_empty_archive(tmp_path, maker):
    assert_refused(maker(tmp_path / "a"), tmp_path, "empty_archive")


def test_encrypted_zip_entry_is_refused(tmp_path):
    raw = bytearray(make_zip(tmp_path / "plain.zip", GOOD).read_bytes())
    central = raw.find(b"PK\x01\x02")
    struct.pack_into("<H", raw, central + 8, 0x1)  # general purpose flags: encrypted
    archive = tmp_path / "a.zip"
    archive.write_bytes(bytes(raw))
    (tmp_path / "plain.zip").unlink()
    assert "encrypted" in assert_refused(archive, tmp_path, "not_an_archive").message


def test_lzma_zip_entry_is_refused(tmp_path):
    archive = make_zip(tmp_path / "a.zip", GOOD, compression=zipfile.ZIP_LZMA)
    error = assert_refused(archive, tmp_path, "unsupported_compression")
    assert "'cat/0.jpg' is compressed with LZMA (zip method 14)" in error.message


# --- hostile names -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../evil.jpg", "'..'"),
        ("cat/../../evil.jpg", "'..'"),
        ("C:\\evil.jpg", "backslash"),
        ("C:/evil.jpg", "drive letter"),
        ("cat\\evil.jpg", "backslash"),
        ("/etc/evil.jpg", "absolute"),
        ("cat/" + "x" * 300 + ".jpg", "longer than 255"),
    ],
)
def test_safe_name_refuses(name, problem):
    with pytest.raises(InvalidInput) as caught:
        safe_name(name)
    assert caught.value.code == "unsafe_archive_entry"
    assert problem in caught.value.message
    assert repr(name) in caught.value.message


@pytest.mark.parametrize("maker", [make_zip, make_tar], ids=["zip", "tar.gz"])
@pytest.mark.parametrize("name", ["../evil.jpg", "cat/../../evil.jpg", "C:\\evil.jpg", "c\\e.jpg"])
def test_traversal_refuses_the_archive(tmp_path, maker, name):
    archive = maker(tmp_path / "in" / "a", {**GOOD, name: image_bytes(seed=9)})
    error = assert_refused(archive, tmp_path, "unsafe_archive_entry")
    assert repr(name) in error.message


@pytest.mark.parametrize("maker", [make_zip, make_tar], ids=["zip", "tar.gz"])
def test_absolute_path_refuses_the_archive(tmp_path, maker):
    # An absolute name that points inside tmp_path: the snapshot would see a write.
    target = str(tmp_path / "escaped.jpg")
    archive = maker(tmp_path / "a", {**GOOD, target: image_bytes(seed=9)})
    assert_refused(archive, tmp_path, "unsafe_archive_entry")
    assert not Path(target).exists()


def test_nul_byte_in_zip_name(tmp_path):
    archive = make_zip_raw_name(tmp_path / "a.zip", "cat/aXb.jpg", b"cat/a\x00b.jpg")
    assert "NUL" in assert_refused(archive, tmp_path, "unsafe_archive_entry").message


def test_nul_byte_in_tar_name(tmp_path):
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("cat/placeholder.jpg")
        info.pax_headers = {"path": "cat/a\x00b.jpg"}
        data = image_bytes()
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    assert "NUL" in assert_refused(archive, tmp_path, "unsafe_archive_entry").message


def test_duplicate_names_refuse_the_archive(tmp_path):
    archive = tmp_path / "a.zip"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("cat/0.jpg", image_bytes(seed=1))
            zf.writestr("cat/0.jpg", image_bytes(seed=2))
    assert "twice" in assert_refused(archive, tmp_path, "unsafe_archive_entry").message


def test_file_and_folder_of_one_name_refuse_the_archive(tmp_path):
    archive = make_tar(tmp_path / "a", {"cat": b"x", "cat/0.jpg": image_bytes()})
    assert_refused(archive, tmp_path, "unsafe_archive_entry")


# --- links and special members -------------------------------------------------------


@pytest.mark.parametrize(
    ("member_type", "linkname", "problem"),
    [
        (tarfile.SYMTYPE, "../../../etc/passwd", "symbolic link"),
        (tarfile.LNKTYPE, "cat/0.jpg", "hard link"),
        (tarfile.CHRTYPE, "", "device"),
        (tarfile.BLKTYPE, "", "device"),
        (tarfile.FIFOTYPE, "", "fifo"),
    ],
)
def test_tar_links_and_devices_refuse_the_archive(tmp_path, member_type, linkname, problem):
    archive = make_tar_with_special(tmp_path / "a.tgz", member_type, linkname=linkname)
    error = assert_refused(archive, tmp_path, "unsafe_archive_entry")
    assert problem in error.message
    assert "cat/special.jpg" in error.message


def test_zip_symlink_refuses_the_archive(tmp_path):
    archive = make_zip_symlink(tmp_path / "a.zip", "cat/link.jpg", "/etc/passwd")
    error = assert_refused(archive, tmp_path, "unsafe_archive_entry")
    assert "symbolic link" in error.message


# --- bombs and caps --------------------------------------------------------------------

ZEROS = b"\x00" * (8 << 20)


def test_zip_entry_ratio_bomb(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {**GOOD, "cat/bomb.bmp": ZEROS})
    error = assert_refused(archive, tmp_path, "archive_too_large")
    assert "max_ratio=200" in error.message
    assert "cat/bomb.bmp" in error.message


def test_tar_gz_overall_ratio_bomb(tmp_path):
    archive = make_tar(tmp_path / "a.tgz", {**GOOD, "cat/bomb.bmp": ZEROS})
    error = assert_refused(archive, tmp_path, "archive_too_large")
    assert "max_ratio=200" in error.message


def test_zip_declaring_a_small_size_cannot_write_more(tmp_path):
    # The central directory says 100 bytes; the data inflates to 8 MiB. Reading stops
    # at the declared size and the CRC no longer matches: a corrupt archive.
    archive = make_zip_lying_sizes(tmp_path / "a.zip", ZEROS, file_size=100)
    assert "corrupt" in assert_refused(archive, tmp_path, "not_an_archive").message


def test_zip_declaring_a_huge_compressed_size_still_meets_the_ratio(tmp_path):
    # A lie the other way makes the entry's own ratio look harmless; the archive's
    # real size on disk still bounds what it may expand to.
    padding = np.random.default_rng(0).bytes(1 << 20)
    archive = make_zip_lying_sizes(
        tmp_path / "a.zip", ZEROS, compress_size=100_000_000, padding=padding
    )
    error = assert_refused(archive, tmp_path, "archive_too_large", archive_limits(max_ratio=4))
    assert "compression ratio of the archive is over the limit max_ratio=4" in error.message


@pytest.mark.parametrize("maker", [make_zip, make_tar], ids=["zip", "tar.gz"])
def test_total_bytes_cap(tmp_path, maker):
    archive = maker(tmp_path / "a", class_entries({"cat": 5, "dog": 5}))
    total = sum(len(v) for v in class_entries({"cat": 5, "dog": 5}).values())
    error = assert_refused(
        archive, tmp_path, "archive_too_large", archive_limits(max_total_bytes=total - 1)
    )
    assert f"max_total_bytes={total - 1}" in error.message


@pytest.mark.parametrize("maker", [make_zip, make_tar], ids=["zip", "tar.gz"])
def test_per_file_cap(tmp_path, maker):
    big = image_bytes(size=(64, 64), fmt="PNG")
    archive = maker(tmp_path / "a", {**GOOD, "cat/big.png": big})
    error = assert_refused(
        archive, tmp_path, "archive_too_large", archive_limits(max_file_bytes=len(big) - 1)
    )
    assert "'cat/big.png'" in error.message
    assert "max_file_bytes" in error.message


@pytest.mark.parametrize("maker", [make_zip, make_tar], ids=["zip", "tar.gz"])
def test_entries_cap(tmp_path, maker):
    archive = maker(tmp_path / "a", class_entries({"cat": 4, "dog": 4}))
    error = assert_refused(archive, tmp_path, "archive_too_large", archive_limits(max_entries=7))
    assert "max_entries=7" in error.message


def test_human_sizes_in_limit_messages(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {**GOOD, "cat/bomb.bmp": ZEROS})
    with pytest.raises(InvalidInput) as caught:
        extract_archive(archive, tmp_path / "out", ArchiveLimits(max_file_bytes=1 << 20))
    assert "max_file_bytes=1048576 (1 MiB)" in caught.value.message


def test_tar_header_bomb(tmp_path):
    # tarfile would read this 64 MiB pax header whole into memory before any member.
    archive = tmp_path / "a.tgz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("cat/0.jpg")
        info.pax_headers = {"comment": "x" * (64 << 20)}
        data = image_bytes()
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    assert "headers" in assert_refused(archive, tmp_path, "archive_too_large").message


def test_long_names_in_tar_are_fine(tmp_path):
    long_name = f"{'c' * 150}/{'f' * 200}.jpg"
    archive = make_tar(tmp_path / "a.tgz", {**GOOD, long_name: image_bytes(seed=5)})
    files = extract_archive(archive, tmp_path / "out", ArchiveLimits())
    assert long_name in {f.name for f in files}
