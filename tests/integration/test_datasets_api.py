"""`POST /v1/datasets` and friends against a real PostgreSQL database (no worker).

Archives are built in each test (zip or tar.gz of small noise images) so that every
layout, rejection reason and refusal is the one the test names.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Api, configure
from tests.unit.archives import class_entries, image_bytes, make_tar

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def api(pg_env: dict[str, str], make_api: Callable[[], Api]) -> Api:
    return make_api()


@pytest.fixture
def data_dir(pg_env: dict[str, str]) -> Path:
    return Path(pg_env["GRAFT_DATA_DIR"])


def post(api: Api, key: str, archive: bytes, filename: str = "d.zip", **form: str) -> Any:
    files = {"file": (filename, archive, "application/octet-stream")}
    return api.as_team(key, "POST", "/v1/datasets", files=files, data=form or {"name": "ds"})


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def files_under(root: Path) -> list[str]:
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def entries_under(root: Path) -> list[str]:
    """Files and folders, hidden temp directories included."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def assert_error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "param"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return dict(body["error"])


def test_tar_gz_upload(api: Api, tmp_path: Path) -> None:
    key = api.new_team()
    archive = make_tar(tmp_path / "d.tar.gz", class_entries({"cat": 6, "dog": 7})).read_bytes()
    r = post(api, key, archive, "pets.tar.gz", name="pets")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["status"] == "ready" and ds["kind"] == "labeled" and ds["name"] == "pets"
    assert ds["classes"] == [{"name": "cat", "count": 6}, {"name": "dog", "count": 7}]
    assert ds["num_images"] == 13
    assert ds["splits"] is None
    assert ds["rejected"] == [] and ds["warnings"] == []
    assert ds["sha256"] == hashlib.sha256(archive).hexdigest()
    assert ds["size_bytes"] == len(archive)
    assert api.as_team(key, "GET", f"/v1/datasets/{ds['id']}").json() == ds


def test_explicit_train_val_layout_reports_splits(api: Api, data_dir: Path) -> None:
    key = api.new_team()
    entries = {
        **class_entries({"cat": 6, "dog": 5}, prefix="train/"),
        **class_entries({"cat": 2, "dog": 3}, prefix="val/", start_seed=100),
    }
    r = post(api, key, zip_bytes(entries))
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["splits"] == {"train": 11, "val": 5}
    assert ds["classes"] == [{"name": "cat", "count": 8}, {"name": "dog", "count": 8}]
    assert ds["num_images"] == 16
    stored = files_under(data_dir / "datasets" / ds["id"] / "images")
    assert len(stored) == 16
    assert "train/cat/0.jpg" in stored and "val/dog/2.jpg" in stored


def test_unlabeled_nested_tree_is_accepted(api: Api) -> None:
    key = api.new_team()
    entries = {
        "photos/2023/summer/a.jpg": image_bytes(seed=1),
        "photos/2023/b.png": image_bytes("PNG", seed=2),
        "photos/2024/deep/er/still/c.jpg": image_bytes(seed=3),
        "photos/d.jpg": image_bytes(seed=4),
    }
    r = post(api, key, zip_bytes(entries), kind="unlabeled", name="raw")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["kind"] == "unlabeled" and ds["status"] == "ready"
    assert ds["classes"] == []
    assert ds["num_images"] == 4
    assert ds["rejected"] == []
    # The same tree as a labeled upload has no two class folders with images.
    labeled = post(api, key, zip_bytes({"x/a.jpg": image_bytes(seed=1)}))
    assert_error(labeled, 422, "too_few_classes")


def test_per_file_report_lists_each_rejected_file_and_keeps_the_rest(
    api: Api, data_dir: Path
) -> None:
    key = api.new_team()
    good = class_entries({"cat": 5, "dog": 5})
    png = image_bytes("PNG", seed=50)
    entries = {
        **good,
        "cat/broken.png": png[: len(png) // 2],
        "dog/notes.jpg": b"these are my notes, not a photo\n" * 4,
        "__MACOSX/cat/._0.jpg": b"\x00\x05\x16\x07 resource fork",
        "dog/copy.jpg": good["cat/0.jpg"],
    }
    r = post(api, key, zip_bytes(entries))
    assert r.status_code == 201, r.text
    ds = r.json()
    reasons = {item["path"]: item["reason"] for item in ds["rejected"]}
    assert reasons == {
        "cat/broken.png": "corrupt_image",
        "dog/notes.jpg": "not_an_image",
        "__MACOSX/cat/._0.jpg": "hidden_file",
        "dog/copy.jpg": "duplicate",
    }
    duplicate = next(i for i in ds["rejected"] if i["reason"] == "duplicate")
    assert "cat/0.jpg" in duplicate["detail"]
    assert ds["classes"] == [{"name": "cat", "count": 5}, {"name": "dog", "count": 5}]
    assert ds["num_images"] == 10
    stored = files_under(data_dir / "datasets" / ds["id"] / "images")
    assert stored == sorted(good)


def test_small_class_warning(api: Api) -> None:
    key = api.new_team()
    r = post(api, key, zip_bytes(class_entries({"big": 8, "tiny": 3})))
    assert r.status_code == 201, r.text
    warnings = r.json()["warnings"]
    small = [w for w in warnings if w["code"] == "small_class"]
    assert len(small) == 1 and "'tiny'" in small[0]["message"]
    assert "'big'" not in small[0]["message"]


def test_hostile_archive_is_refused_and_leaves_nothing(api: Api, data_dir: Path) -> None:
    key = api.new_team()
    entries = {**class_entries({"cat": 3, "dog": 3}), "../evil.png": image_bytes("PNG")}
    r = post(api, key, zip_bytes(entries))
    error = assert_error(r, 422, "unsafe_archive_entry")
    assert error["param"] == "file" and "../evil.png" in error["message"]
    assert entries_under(data_dir / "datasets") == []
    assert entries_under(data_dir / "tmp") == []
    assert not (data_dir.parent / "evil.png").exists()
    assert not (data_dir / "evil.png").exists()
    assert api.as_team(key, "GET", "/v1/datasets").json()["data"] == []


@pytest.mark.parametrize("size", [5_000, 1_200_000], ids=["streamed", "declared"])
def test_upload_over_the_limit_is_413_and_leaves_no_partial_file(
    pg_env: dict[str, str], make_api: Callable[[], Api], data_dir: Path, size: int
) -> None:
    """Over the limit by a little (caught while copying) or by over the 1 MiB framing
    allowance (caught from Content-Length before reading)."""
    configure({"GRAFT_MAX_UPLOAD_BYTES": "4000"})
    api = make_api()
    key = api.new_team()
    r = post(api, key, b"\x00" * size)
    error = assert_error(r, 413, "upload_too_large")
    assert "4000" in error["message"] and error["param"] == "file"
    assert files_under(data_dir) == []
    small = post(api, key, zip_bytes(class_entries({"a": 2, "b": 2})))
    assert small.status_code == 201, small.text  # under the limit: accepted as usual


@pytest.mark.parametrize(
    ("archive", "status", "code"),
    [
        (zip_bytes({}), 422, "empty_archive"),
        (zip_bytes({"cat/": b"", "dog/": b""}), 422, "empty_archive"),
        (b"GIF89a but certainly not an archive" * 10, 422, "not_an_archive"),
        (zip_bytes(class_entries({"cat": 4}))[:-30], 422, "not_an_archive"),
        (zip_bytes(class_entries({"only_one": 6})), 422, "too_few_classes"),
        (
            zip_bytes({"a.jpg": image_bytes(), "b.jpg": image_bytes(seed=1)}),
            422,
            "no_class_folders",
        ),
        (zip_bytes({"cat/a.txt": b"text", "dog/b.txt": b"more"}), 422, "no_images"),
    ],
    ids=["empty", "only-folders", "not-archive", "truncated", "one-class", "flat", "no-images"],
)
def test_unusable_archives_are_clear_4xx(
    api: Api, data_dir: Path, archive: bytes, status: int, code: str
) -> None:
    key = api.new_team()
    error = assert_error(post(api, key, archive), status, code)
    assert error["param"] == "file"
    assert entries_under(data_dir / "datasets") == []
    assert files_under(data_dir / "tmp") == []
    assert api.as_team(key, "GET", "/v1/datasets").json()["data"] == []


def test_bad_kind_is_a_validation_error(api: Api) -> None:
    key = api.new_team()
    r = post(api, key, zip_bytes(class_entries({"a": 2, "b": 2})), kind="sideways")
    error = assert_error(r, 422, "validation_error")
    assert error["param"] == "kind"


def test_same_archive_twice_is_200_with_the_same_id(api: Api, data_dir: Path) -> None:
    key = api.new_team()
    archive = zip_bytes(class_entries({"cat": 4, "dog": 4}))
    first = post(api, key, archive, name="first")
    assert first.status_code == 201, first.text
    again = post(api, key, archive, name="second")
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["name"] == "first"
    other = post(api, key, zip_bytes(class_entries({"cat": 4, "dog": 5})))
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    listed = api.as_team(key, "GET", "/v1/datasets").json()["data"]
    assert len(listed) == 2
    assert sorted(p.name for p in (data_dir / "datasets").iterdir()) == sorted(
        [first.json()["id"], other.json()["id"]]
    )
    # Another team uploading the same bytes gets a dataset of its own.
    key_b = api.new_team("b")
    theirs = post(api, key_b, archive)
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]


def test_delete_removes_the_dataset_directory(api: Api, data_dir: Path) -> None:
    key = api.new_team()
    ds = post(api, key, zip_bytes(class_entries({"cat": 3, "dog": 3}))).json()
    keep = post(api, key, zip_bytes(class_entries({"cat": 3, "dog": 4}))).json()
    directory = data_dir / "datasets" / ds["id"]
    assert (directory / "manifest.json").is_file()
    assert len(files_under(directory / "images")) == 6
    r = api.as_team(key, "DELETE", f"/v1/datasets/{ds['id']}")
    assert r.status_code == 204, r.text
    assert not directory.exists()
    assert files_under(data_dir / "tmp") == []  # the trash is emptied too
    assert (data_dir / "datasets" / keep["id"] / "manifest.json").is_file()
    assert_error(api.as_team(key, "GET", f"/v1/datasets/{ds['id']}"), 404, "dataset_not_found")
    assert_error(api.as_team(key, "DELETE", f"/v1/datasets/{ds['id']}"), 404, "dataset_not_found")


def test_list_paginates_with_limit_and_cursor(api: Api) -> None:
    key = api.new_team()
    ids = []
    for i in range(5):
        r = post(api, key, zip_bytes(class_entries({"a": 2, "b": 2}, start_seed=10 * i)))
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    seen: list[str] = []
    pages = 0
    url = "/v1/datasets?limit=2"
    while True:
        page = api.as_team(key, "GET", url).json()
        pages += 1
        seen += [d["id"] for d in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        assert len(page["data"]) == 2 and page["next_cursor"]
        url = f"/v1/datasets?limit=2&cursor={page['next_cursor']}"
    assert pages == 3
    assert seen == ids[::-1]  # newest first, each once
    everything = api.as_team(key, "GET", "/v1/datasets?limit=100").json()
    assert [d["id"] for d in everything["data"]] == ids[::-1] and everything["has_more"] is False
    for bad in ("limit=0", "limit=101"):
        error = assert_error(
            api.as_team(key, "GET", f"/v1/datasets?{bad}"), 422, "validation_error"
        )
        assert error["param"] == "limit"


def test_deleting_a_processing_dataset_removes_its_pending_archive(
    pg_env: dict[str, str], make_api: Callable[[], Api], data_dir: Path
) -> None:
    configure({"GRAFT_INLINE_INGEST_BYTES": "1"})
    api = make_api()
    key = api.new_team()
    ds = post(api, key, zip_bytes(class_entries({"cat": 3, "dog": 3}))).json()
    assert ds["status"] == "processing"
    assert files_under(data_dir / "uploads") == [f"{ds['id']}.archive"]
    assert api.as_team(key, "DELETE", f"/v1/datasets/{ds['id']}").status_code == 204
    assert files_under(data_dir / "uploads") == []
