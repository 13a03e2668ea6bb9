"""The endpoints and pages the dashboard needs, against PostgreSQL (no worker): a
dataset's images by class and split, their thumbnails, and the offline pages."""

from __future__ import annotations

import io
import re
from collections.abc import Callable

import pytest
from PIL import Image

from app.ui.routes import CONTENT_SECURITY_POLICY
from tests.conftest import Api, configure
from tests.integration.test_datasets_api import assert_error, post, zip_bytes
from tests.unit.archives import class_entries, image_bytes

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def api(pg_env: dict[str, str], make_api: Callable[[], Api]) -> Api:
    return make_api()


def images(api: Api, key: str, dataset_id: str, **query: str | int) -> dict[str, object]:
    r = api.as_team(key, "GET", f"/v1/datasets/{dataset_id}/images", params=query)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_images_by_class_and_split_page_through_the_whole_dataset(api: Api) -> None:
    key = api.new_team()
    entries = {
        **class_entries({"cat": 3, "dog": 2}, prefix="train/"),
        **class_entries({"cat": 2, "dog": 2}, prefix="val/", start_seed=10),
    }
    ds = post(api, key, zip_bytes(entries)).json()
    assert ds["status"] == "ready", ds

    everything = images(api, key, ds["id"], limit=100)
    assert everything["has_more"] is False and everything["next_cursor"] is None
    rows = everything["data"]
    assert isinstance(rows, list) and len(rows) == ds["num_images"] == 9
    assert {(r["class_name"], r["split"]) for r in rows} == {
        ("cat", "train"), ("cat", "val"), ("dog", "train"), ("dog", "val"),
    }  # fmt: skip
    assert all(r["width"] == 16 and r["height"] == 16 for r in rows)

    cats_in_train = images(api, key, ds["id"], class_name="cat", split="train")["data"]
    assert isinstance(cats_in_train, list) and len(cats_in_train) == 3
    assert {(r["class_name"], r["split"]) for r in cats_in_train} == {("cat", "train")}

    # Pages of 2 cover every image once, in the same order as one page of 100.
    seen, cursor = [], None
    while True:
        page = images(api, key, ds["id"], limit=2, **({"cursor": cursor} if cursor else {}))
        seen += [r["path"] for r in page["data"]]  # type: ignore[attr-defined]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert seen == [r["path"] for r in rows]
    assert images(api, key, ds["id"], class_name="bird")["data"] == []


def test_a_thumbnail_is_a_png_of_the_image_scaled_to_its_longest_side(api: Api) -> None:
    key = api.new_team()
    entries = {"cat/wide.png": image_bytes("PNG", size=(64, 32)), "dog/0.jpg": image_bytes()}
    ds = post(api, key, zip_bytes(entries)).json()
    wide = next(r for r in images(api, key, ds["id"])["data"] if r["class_name"] == "cat")  # type: ignore[attr-defined]
    r = api.as_team(
        key, "GET", f"/v1/datasets/{ds['id']}/thumbnail", params={"path": wide["path"], "size": 32}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert "private" in r.headers["cache-control"]
    assert Image.open(io.BytesIO(r.content)).size == (32, 16)
    # A small image is scaled up, pixels kept.
    r = api.as_team(key, "GET", f"/v1/datasets/{ds['id']}/thumbnail", params={"path": wide["path"]})
    assert Image.open(io.BytesIO(r.content)).size == (128, 64)


def test_thumbnails_read_only_the_datasets_own_images_of_its_own_team(api: Api) -> None:
    key, other = api.new_team(), api.new_team()
    ds = post(api, key, zip_bytes(class_entries({"cat": 2, "dog": 2}))).json()
    url = f"/v1/datasets/{ds['id']}/thumbnail"
    for path in ("manifest.json", "images/../manifest.json", "/etc/passwd", "images/cat"):
        err = assert_error(
            api.as_team(key, "GET", url, params={"path": path}), 404, "image_not_found"
        )
        assert err["param"] == "path"
    path = images(api, key, ds["id"])["data"][0]["path"]  # type: ignore[index]
    assert_error(api.as_team(other, "GET", url, params={"path": path}), 404, "dataset_not_found")
    assert_error(
        api.as_team(other, "GET", f"/v1/datasets/{ds['id']}/images"), 404, "dataset_not_found"
    )
    err = assert_error(
        api.as_team(key, "GET", url, params={"path": path, "size": 4}), 422, "validation_error"
    )
    assert err["param"] == "size"
    err = assert_error(
        api.as_team(key, "GET", f"/v1/datasets/{ds['id']}/images", params={"cursor": "ds_1"}),
        422,
        "invalid_cursor",
    )
    assert err["param"] == "cursor"
    assert api.client.get(url, params={"path": path}).status_code == 401


def test_a_processing_dataset_has_no_images_yet(
    pg_env: dict[str, str], make_api: Callable[[], Api]
) -> None:
    configure({"GRAFT_INLINE_INGEST_BYTES": "1"})  # ingestion waits for a worker
    api = make_api()
    key = api.new_team()
    ds = post(api, key, zip_bytes(class_entries({"cat": 2, "dog": 2}))).json()
    assert ds["status"] == "processing"
    err = assert_error(
        api.as_team(key, "GET", f"/v1/datasets/{ds['id']}/images"), 409, "dataset_not_ready"
    )
    assert "processing" in err["message"]


def test_the_pages_come_from_this_origin_only(api: Api) -> None:
    root = api.client.get("/", follow_redirects=False)
    assert root.status_code in (302, 307) and root.headers["location"] == "/ui/"
    for path in ("/ui/", "/docs", "/docs/init.js", "/docs/assets/swagger-ui-bundle.js"):
        r = api.client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert r.headers["x-content-type-options"] == "nosniff"
    docs = api.client.get("/docs").text
    # Every script and stylesheet of the reference is served here, none from a CDN.
    sources = re.findall(r'(?:src|href)="([^"]+)"', docs)
    assert sources and all(s.startswith("/docs/") for s in sources), sources
    assert (
        api.client.get("/docs/assets/swagger-ui.css").headers["content-type"].startswith("text/css")
    )
    assert api.client.get("/redoc").status_code == 404
