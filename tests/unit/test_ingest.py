"""The whole pipeline: archive in, dataset directory with manifest.json out."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.imaging import load_rgb
from app.services import ingest as ingest_module
from app.services.ingest import IngestLimits, IngestReport, ingest
from tests.unit.archives import (
    assert_refused,
    class_entries,
    image_bytes,
    make_tar,
    make_zip,
    names_under,
    png_declaring,
)


def run(
    tmp_path: Path,
    entries: dict[str, bytes],
    kind: str = "labeled",
    limits: IngestLimits | None = None,
) -> tuple[IngestReport, dict, Path]:
    archive = make_zip(tmp_path / "in" / "upload.bin", entries)
    dest = tmp_path / "datasets" / "ds_1"
    report = ingest(archive, dest, kind=kind, limits=limits or IngestLimits())  # type: ignore[arg-type]
    manifest = json.loads((dest / "manifest.json").read_text())
    assert sorted(p.name for p in dest.parent.iterdir()) == ["ds_1"]  # no temp dir left
    return report, manifest, dest


# --- layouts end to end -------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "pets/"], ids=["root", "top-folder"])
def test_class_folders(tmp_path, prefix):
    entries = class_entries({"dog": 6, "cat": 5}, prefix=prefix)
    report, manifest, dest = run(tmp_path, entries)

    assert manifest["version"] == 1
    assert manifest["kind"] == "labeled"
    assert manifest["layout"] == "class_folders"
    assert manifest["classes"] == ["cat", "dog"]
    assert manifest["num_images"] == 11
    items = manifest["items"]
    assert [i["path"] for i in items] == [f"images/cat/{n}.jpg" for n in range(5)] + [
        f"images/dog/{n}.jpg" for n in range(6)
    ]
    assert [i["label"] for i in items] == [0] * 5 + [1] * 6
    assert {i["split"] for i in items} == {None}
    first = items[0]
    original = entries[f"{prefix}cat/0.jpg"]
    assert (dest / first["path"]).read_bytes() == original
    assert first["sha256"] == hashlib.sha256(original).hexdigest()
    assert (first["width"], first["height"]) == (16, 16)
    assert names_under(dest) == sorted(["manifest.json", *(i["path"] for i in items)])

    assert report.layout == "class_folders"
    assert report.num_images == 11
    assert [(c.name, c.count) for c in report.classes] == [("cat", 5), ("dog", 6)]
    assert report.splits is None
    assert report.rejected == [] and report.warnings == []
    archive = tmp_path / "in" / "upload.bin"
    assert report.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()


def test_train_val(tmp_path):
    entries = class_entries({"train/cat": 6, "train/dog": 6, "validation/cat": 2}, prefix="d/")
    report, manifest, _ = run(tmp_path, entries)
    assert manifest["layout"] == "train_val"
    assert manifest["classes"] == ["cat", "dog"]
    splits = [(i["path"], i["label"], i["split"]) for i in manifest["items"]]
    assert splits[:2] == [
        ("images/train/cat/0.jpg", 0, "train"),
        ("images/train/cat/1.jpg", 0, "train"),
    ]
    assert ("images/validation/cat/1.jpg", 0, "val") in splits
    assert report.splits == {"train": 12, "val": 2}
    assert [w.code for w in report.warnings] == ["missing_in_val"]


def test_unlabeled_tree(tmp_path):
    entries = class_entries({"photos/a": 2, "photos/b/c": 1})
    entries["photos/d.png"] = image_bytes("PNG", seed=99)
    report, manifest, dest = run(tmp_path, entries, kind="unlabeled")
    assert manifest["layout"] == "unlabeled"
    assert manifest["classes"] == []
    assert [i["path"] for i in manifest["items"]] == [
        "images/a/0.jpg",
        "images/a/1.jpg",
        "images/b/c/0.jpg",
        "images/d.png",
    ]
    assert {(i["label"], i["split"]) for i in manifest["items"]} == {(None, None)}
    assert names_under(dest / "images") == ["a/0.jpg", "a/1.jpg", "b/c/0.jpg", "d.png"]
    assert report.classes == [] and report.splits is None and report.num_images == 4


def test_tar_gz_gives_the_same_dataset_as_zip(tmp_path):
    entries = class_entries({"cat": 3, "dog": 3})
    _, from_zip, _ = run(tmp_path / "z", entries)
    archive = make_tar(tmp_path / "t" / "upload.tgz", entries)
    ingest(archive, tmp_path / "t" / "ds", kind="labeled", limits=IngestLimits())
    from_tar = json.loads((tmp_path / "t" / "ds" / "manifest.json").read_text())
    assert from_tar == from_zip


def test_every_accepted_format_is_kept_and_decodes_to_rgb(tmp_path):
    entries = {
        "cat/a.jpg": image_bytes("JPEG", seed=1),
        "cat/b.png": image_bytes("PNG", seed=2),
        "cat/c.webp": image_bytes("WEBP", seed=3),
        "cat/d.bmp": image_bytes("BMP", seed=4),
        "cat/e.gif": image_bytes("GIF", seed=5),
        "dog/f.png": image_bytes("PNG", mode="L", seed=6),
        "dog/g.png": image_bytes("PNG", mode="RGBA", seed=7),
        "dog/h.png": image_bytes("PNG", mode="P", seed=8),
        "dog/i.png": _png16(seed=9),
        "dog/j": image_bytes("JPEG", seed=10),  # no extension: content decides
    }
    report, manifest, dest = run(tmp_path, entries)
    assert report.rejected == []
    assert report.num_images == len(entries)
    for item in manifest["items"]:
        arr = np.asarray(load_rgb(dest / item["path"]))
        assert arr.dtype == np.uint8 and arr.shape == (16, 16, 3)


def _png16(seed: int) -> bytes:
    values = np.random.default_rng(seed).integers(0, 65536, (16, 16), dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, "PNG")
    return buf.getvalue()


# --- rejections keep the rest ---------------------------------------------------------------


def test_each_rejection_reason_is_reported_and_the_rest_kept(tmp_path):
    entries = class_entries({"cat": 5, "dog": 5})
    good = entries["cat/0.jpg"]
    tiff = io.BytesIO()
    Image.new("RGB", (16, 16)).save(tiff, "TIFF")
    bad = {
        "__MACOSX/cat/._0.jpg": b"\x00\x05\x16\x07",
        "cat/.DS_Store": b"\x00\x00\x00\x01Bud1",
        "dog/Thumbs.db": b"\xd0\xcf\x11\xe0",
        "cat/notes.jpg": b"this is not a picture",
        "cat/scan.tif": tiff.getvalue(),
        "cat/broken.jpg": good[: len(good) // 2],
        "dog/bomb.png": png_declaring(30000, 30000),
        "dog/tiny.png": image_bytes("PNG", size=(4, 4)),
        "dog/copy.jpg": good,
        "dog/huge.png": image_bytes("PNG", size=(200, 200), seed=50),
        "README.txt": b"my dataset",
    }
    report, manifest, dest = run(
        tmp_path, {**entries, **bad}, limits=IngestLimits(max_file_bytes=20_000)
    )

    reasons = {r.path: r.reason for r in report.rejected}
    assert reasons == {
        "__MACOSX/cat/._0.jpg": "hidden_file",
        "cat/.DS_Store": "hidden_file",
        "dog/Thumbs.db": "hidden_file",
        "cat/notes.jpg": "not_an_image",
        "cat/scan.tif": "unsupported_format",
        "cat/broken.jpg": "corrupt_image",
        "dog/bomb.png": "too_many_pixels",
        "dog/tiny.png": "too_small",
        "dog/copy.jpg": "duplicate",
        "dog/huge.png": "file_too_large",
        "README.txt": "outside_class_folder",
    }
    duplicate = next(r for r in report.rejected if r.reason == "duplicate")
    assert duplicate.detail == "same content as cat/0.jpg"
    assert manifest["rejected"] == [
        {"path": r.path, "reason": r.reason, "detail": r.detail} for r in report.rejected
    ]
    assert [r["path"] for r in manifest["rejected"]] == sorted(reasons)
    assert report.num_images == 10
    assert names_under(dest / "images") == sorted(entries)


def test_a_class_with_no_valid_image_is_dropped_with_a_warning(tmp_path):
    entries = class_entries({"cat": 5, "dog": 5})
    entries["owl/0.jpg"] = b"not an image"
    report, manifest, _ = run(tmp_path, entries)
    assert manifest["classes"] == ["cat", "dog"]
    assert [w.code for w in report.warnings] == ["empty_class"]


def test_warnings_reach_the_manifest(tmp_path):
    report, manifest, _ = run(tmp_path, class_entries({"cat": 44, "dog": 4}))
    assert [w["code"] for w in manifest["warnings"]] == ["small_class", "class_imbalance"]
    assert manifest["warnings"] == report.to_dict()["warnings"]


def test_report_to_dict_is_json_ready(tmp_path):
    report, _, _ = run(tmp_path, class_entries({"cat": 5, "dog": 5}))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["classes"] == [{"name": "cat", "count": 5}, {"name": "dog", "count": 5}]
    assert set(data) == {
        "kind",
        "layout",
        "num_images",
        "classes",
        "splits",
        "rejected",
        "warnings",
        "near_duplicates",
        "sha256",
    }


# --- errors leave nothing behind --------------------------------------------------------------


def test_single_class(tmp_path):
    archive = make_zip(tmp_path / "a.zip", class_entries({"cat": 5}))
    assert "'cat'" in assert_refused(archive, tmp_path, "too_few_classes").message


def test_single_class_left_after_validation(tmp_path):
    entries = class_entries({"cat": 5})
    entries["dog/0.jpg"] = b"not an image"
    archive = make_zip(tmp_path / "a.zip", entries)
    error = assert_refused(archive, tmp_path, "too_few_classes")
    assert "with valid images" in error.message


def test_no_class_folders(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"0.jpg": image_bytes(), "1.jpg": image_bytes(seed=1)})
    assert_refused(archive, tmp_path, "no_class_folders")


def test_no_images(tmp_path):
    entries = {"cat/0.jpg": b"text", "dog/0.jpg": b"more text", "__MACOSX/x": b""}
    archive = make_zip(tmp_path / "a.zip", entries)
    error = assert_refused(archive, tmp_path, "no_images")
    assert "hidden_file: 1" in error.message and "not_an_image: 2" in error.message


def test_only_hidden_files(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"__MACOSX/._0.jpg": image_bytes()})
    assert_refused(archive, tmp_path, "no_images")


def test_a_failure_after_extraction_removes_the_temp_dir(tmp_path, monkeypatch):
    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ingest_module, "_fsync_tree", fail)
    archive = make_zip(tmp_path / "a.zip", class_entries({"cat": 2, "dog": 2}))
    with pytest.raises(OSError, match="disk full"):
        ingest(archive, tmp_path / "datasets" / "ds_1", kind="labeled", limits=IngestLimits())
    assert list((tmp_path / "datasets").iterdir()) == []


def test_existing_dest_is_not_overwritten(tmp_path):
    archive = make_zip(tmp_path / "a.zip", class_entries({"cat": 2, "dog": 2}))
    dest = tmp_path / "ds"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(FileExistsError):
        ingest(archive, dest, kind="labeled", limits=IngestLimits())
    assert names_under(dest) == ["keep"]


def test_threads_do_not_change_the_result(tmp_path):
    entries = class_entries({"cat": 6, "dog": 6})
    entries["dog/copy.jpg"] = entries["cat/3.jpg"]
    archive = make_zip(tmp_path / "a.zip", entries)
    manifests = []
    for threads in (1, 4):
        dest = tmp_path / f"ds{threads}"
        ingest(archive, dest, kind="labeled", limits=IngestLimits(), threads=threads)
        manifests.append((dest / "manifest.json").read_text())
    assert manifests[0] == manifests[1]


def test_default_limits():
    limits = IngestLimits()
    assert (limits.max_image_pixels, limits.min_image_side) == (40_000_000, 8)
    assert limits.max_file_bytes == 32 << 20
    assert limits.archive.max_total_bytes == 8 << 30
    assert limits.archive.max_file_bytes == 64 << 20
    assert (limits.archive.max_entries, limits.archive.max_ratio) == (200_000, 200)


def test_ingestion_never_imports_torch():
    code = "import sys, app.services.ingest; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
