"""Every request is bounded, and every refusal says what to fix: body sizes (read or
not), list and string lengths, names, images sent to predict, archives, 405s and the
metrics token. Against the real API on PostgreSQL (no worker)."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image
from sqlalchemy import func, select

from tests.conftest import ADMIN_KEY, Api, configure, digits_images, zip_dataset
from tests.unit.test_inference import write_model
from tests.weights import weights

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

MiB = 1024 * 1024
JSON = {"content-type": "application/json"}


@pytest.fixture
def api(pg_env: dict[str, str], make_api: Callable[[], Api]) -> Api:
    return make_api()


@pytest.fixture
def key(api: Api) -> str:
    return api.new_team()


def assert_error(r: Any, status: int, code: str, param: str | None) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error
    return str(error["message"])


def spec(**over: Any) -> dict[str, Any]:
    return {"dataset_id": "ds_0193a1b2c3d4e5f6a7b8c9d0", "base_model": "resnet18", **over}


def count_jobs() -> int:
    from app.db.models import Job
    from app.db.session import session_scope

    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def drive(api: Api, path: str, headers: dict[str, str], chunks: Iterator[bytes]) -> tuple[int, int]:
    """Send a chunked body straight to the ASGI app (the TestClient would join the chunks
    into one message first): the status, and how many chunks the app pulled."""
    pulled = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    anyio.run(api.client.app, scope, receive, send)
    return status, pulled


# -- body sizes ---------------------------------------------------------------------


def test_a_40_mb_job_spec_is_413_and_stores_nothing(api: Api, key: str) -> None:
    body = json.dumps(spec(padding="x" * (40 * MiB))).encode()
    before = count_jobs()
    r = api.as_team(key, "POST", "/v1/jobs", content=body, headers=JSON)
    message = assert_error(r, 413, "payload_too_large", None)
    assert "1048576 bytes (GRAFT_MAX_JSON_BODY_BYTES)" in message
    assert count_jobs() == before


def test_a_5_mb_body_without_a_key_is_413_not_401(api: Api) -> None:
    r = api.client.post("/v1/jobs", content=b"{" + b" " * (5 * MiB) + b"}", headers=JSON)
    assert_error(r, 413, "payload_too_large", None)


def test_a_chunked_body_is_stopped_at_the_limit(api: Api, key: str) -> None:
    chunk = b" " * (64 * 1024)
    chunks = iter([chunk] * 64)  # 4 MiB, no Content-Length
    headers = {**JSON, "authorization": f"Bearer {key}"}
    status, pulled = drive(api, "/v1/jobs", headers, chunks)
    assert status == 413
    assert pulled == 17  # 16 chunks are the limit exactly: the one past it stops the read


def test_a_keyless_upload_is_never_read_before_the_401(api: Api) -> None:
    """50 MB to predict without a key: 401, and not one chunk of the body pulled."""
    chunks = iter([b"\x00" * MiB] * 50)
    headers = {"content-type": "multipart/form-data; boundary=x", "content-length": str(50 * MiB)}
    status, pulled = drive(api, "/v1/models/mdl_x/predict", headers, chunks)
    assert (status, pulled) == (401, 0)


def test_multipart_is_held_to_the_upload_limit_by_content_length_before_the_key(
    pg_env: dict[str, str], make_api: Callable[[], Api]
) -> None:
    configure({"GRAFT_MAX_UPLOAD_BYTES": "4000"})
    api = make_api()
    files = {"file": ("d.zip", b"\x00" * (2 * MiB), "application/zip")}
    r = api.client.post("/v1/datasets", files=files)
    message = assert_error(r, 413, "upload_too_large", "file")
    assert "4000 bytes (GRAFT_MAX_UPLOAD_BYTES)" in message
    # A multipart body to a route that takes no upload gets the JSON limit.
    r = api.client.post("/v1/jobs", files={"file": ("x", b"\x00" * (2 * MiB))})
    assert_error(r, 413, "payload_too_large", None)


# -- lists, strings, names ------------------------------------------------------------


def test_export_with_5_items_is_422(api: Api, key: str) -> None:
    r = api.as_team(key, "POST", "/v1/jobs", json=spec(export=["onnx"] * 5))
    assert "at most 4 items" in assert_error(r, 422, "validation_error", "export")
    r = api.as_team(key, "POST", "/v1/jobs", json=spec(quantization=["int8", "int8"]))
    message = assert_error(r, 422, "validation_error", "quantization")
    assert message == "`quantization` lists int8 more than once."


def test_ids_are_bounded(api: Api, key: str) -> None:
    r = api.as_team(key, "POST", "/v1/jobs", json=spec(dataset_id="ds_" + "0" * 100))
    assert "at most 64 characters" in assert_error(r, 422, "validation_error", "dataset_id")
    r = api.as_team(key, "GET", "/v1/datasets/" + "d" * 65)
    assert_error(r, 422, "validation_error", "dataset_id")


def upload_dataset(api: Api, key: str, data: bytes, **form: str) -> Any:
    files = {"file": ("d.zip", data, "application/zip")}
    return api.as_team(key, "POST", "/v1/datasets", files=files, data=form)


def test_a_300_character_dataset_name_is_422(api: Api, key: str) -> None:
    r = upload_dataset(api, key, zip_dataset(digits_images(per_class=4)), name="n" * 300)
    assert "at most 200 characters" in assert_error(r, 422, "validation_error", "name")


@pytest.mark.parametrize(
    ("name", "char"),
    [("bad\x00name", "U+0000"), ("\x1b[31mred", "U+001B"), ("abc\u202egpj.exe", "U+202E")],
    ids=["nul", "ansi-escape", "rtl-override"],
)
def test_names_with_control_characters_are_refused(
    api: Api, key: str, name: str, char: str
) -> None:
    r = upload_dataset(api, key, zip_dataset(digits_images(per_class=4)), name=name)
    message = assert_error(r, 422, "validation_error", "name")
    assert message.startswith("`name` contains a")
    assert f"({char}); names must be printable text." in message
    assert api.as_team(key, "GET", "/v1/datasets").json()["data"] == []


# -- bodies that are not JSON -----------------------------------------------------------


def test_broken_json_is_400_invalid_json(api: Api, key: str) -> None:
    r = api.as_team(key, "POST", "/v1/jobs", content=b"{bad", headers=JSON)
    message = assert_error(r, 400, "invalid_json", None)
    assert message == (
        "The request body is not valid JSON: Expecting property name enclosed in double "
        "quotes at line 1, column 2."
    )


def test_a_body_that_is_not_utf8_is_400(api: Api, key: str) -> None:
    r = api.as_team(key, "POST", "/v1/jobs", content=b'{"dataset_id": "\xff"}', headers=JSON)
    message = assert_error(r, 400, "invalid_json", None)
    assert "not valid UTF-8 (byte 0xff at position 16)" in message


def test_a_missing_or_non_object_body_is_named_plainly(api: Api, key: str) -> None:
    r = api.as_team(key, "POST", "/v1/jobs")
    assert assert_error(r, 422, "validation_error", None) == (
        "The request body is missing: send a JSON object."
    )
    r = api.as_team(key, "POST", "/v1/jobs", json=["resnet18"])
    assert "must be a JSON object" in assert_error(r, 422, "validation_error", None)


# -- predict ----------------------------------------------------------------------------


@pytest.fixture
def served_model(api: Api, key: str, pg_env: dict[str, str]) -> str:
    """An uploaded model given a tiny hand-built ONNX variant (no training)."""
    from app.db.models import Model
    from app.db.session import session_scope
    from app.storage import Storage, describe_file

    r = api.as_team(
        key,
        "POST",
        "/v1/models",
        files={"file": ("m.safetensors", weights(classes=3))},
        data={
            "architecture": "resnet18",
            "classes": '["red", "green", "blue"]',
            "image_size": "16",
        },
    )
    assert r.status_code == 201, r.text
    model_id = str(r.json()["id"])
    onnx = write_model(
        Storage(Path(pg_env["GRAFT_DATA_DIR"]).resolve()).model_dir(model_id) / "model.onnx"
    )
    with session_scope() as session:
        model = session.get(Model, model_id)
        assert model is not None
        model.artifacts = [*model.artifacts, describe_file(onnx, "onnx")]
    return model_id


def png(size: tuple[int, int], colour: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_predict_refuses_too_many_pixels_before_decoding(
    api: Api, key: str, served_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.services import inference

    decoded: list[int] = []
    real = inference.decode_rgb
    monkeypatch.setattr(
        inference, "decode_rgb", lambda data: decoded.append(len(data)) or real(data)
    )
    huge = png((9000, 9000))  # about 80 KB of PNG, 81 million pixels
    files = [("files", ("huge.png", huge, "image/png")), ("files", ("ok.png", png((20, 20))))]
    r = api.as_team(key, "POST", f"/v1/models/{served_model}/predict", files=files)
    assert r.status_code == 200, r.text
    refused, answered = r.json()["results"]
    assert refused["error"] == {
        "code": "too_many_pixels",
        "message": "`files`: huge.png: 9000x9000 is 81000000 pixels, over the limit of "
        "40000000 (GRAFT_MAX_IMAGE_PIXELS).",
    }
    assert len(answered["predictions"]) == 3
    assert len(decoded) == 1  # only ok.png was decoded


def test_predict_names_an_unreadable_image_plainly(api: Api, key: str, served_model: str) -> None:
    files = [("files", ("photo.png", b"certainly not an image", "image/png"))]
    r = api.as_team(key, "POST", f"/v1/models/{served_model}/predict", files=files)
    assert r.status_code == 200, r.text
    [result] = r.json()["results"]
    assert result["error"] == {
        "code": "invalid_image",
        "message": "`files`: photo.png: not an image Graft can read (JPEG, PNG, WebP, BMP, GIF).",
    }


def test_predict_form_fields_are_bounded(api: Api, key: str, served_model: str) -> None:
    url = f"/v1/models/{served_model}/predict"
    files = [("files", ("ok.png", png((20, 20))))]
    r = api.as_team(key, "POST", url, files=files, data={"top_k": "1000"})
    assert_error(r, 422, "validation_error", "top_k")
    r = api.as_team(key, "POST", url, files=files, data={"artifact": "a" * 100})
    assert_error(r, 422, "validation_error", "artifact")
    many = [("files", (f"{i}.png", png((20, 20)))) for i in range(33)]
    r = api.as_team(key, "POST", url, files=many)
    assert "at most 32 `files`" in assert_error(r, 422, "invalid_input", "files")


# -- archives, 405, metrics -------------------------------------------------------------


def test_an_lzma_zip_is_unsupported_compression(api: Api, key: str) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_LZMA) as zf:
        for i, data in enumerate([png((16, 16)), png((16, 16), 255)]):
            zf.writestr(f"class_{i}/0.png", data)
    r = upload_dataset(api, key, buf.getvalue(), name="lzma")
    message = assert_error(r, 422, "unsupported_compression", "file")
    assert "'class_0/0.png' is compressed with LZMA (zip method 14)" in message
    assert api.as_team(key, "GET", "/v1/datasets").json()["data"] == []


def test_405_carries_allow_with_every_method_of_the_path(api: Api, key: str) -> None:
    r = api.as_team(key, "DELETE", "/v1/jobs")
    assert_error(r, 405, "method_not_allowed", None)
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "POST"}
    assert "DELETE is not allowed on /v1/jobs" in r.json()["error"]["message"]


def test_metrics_needs_the_metrics_token_or_the_admin_key(
    pg_env: dict[str, str], make_api: Callable[[], Api], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.config import get_settings

    monkeypatch.setenv("GRAFT_METRICS_TOKEN", "scrape-token")
    get_settings.cache_clear()
    client = make_api().client
    message = assert_error(client.get("/metrics"), 401, "unauthorized", None)
    assert "GRAFT_METRICS_TOKEN" in message
    wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert_error(wrong, 401, "unauthorized", None)
    for token in ("scrape-token", ADMIN_KEY):
        r = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")


def test_metrics_are_disabled_without_any_token(
    pg_env: dict[str, str], make_api: Callable[[], Api], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GRAFT_METRICS_TOKEN", raising=False)
    configure({"GRAFT_ADMIN_KEY": ""})
    r = make_api().client.get("/metrics", headers={"Authorization": "Bearer anything"})
    message = assert_error(r, 403, "metrics_disabled", None)
    assert message == "Metrics are disabled: set GRAFT_METRICS_TOKEN."


def test_the_spec_documents_the_bounds(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    job = doc["components"]["schemas"]["JobCreate"]["properties"]
    assert job["export"]["maxItems"] == 4 and job["export"]["uniqueItems"] is True
    assert job["dataset_id"]["maxLength"] == 64
    create = doc["paths"]["/v1/jobs"]["post"]
    assert {"400", "413", "429"} <= set(create["responses"])
    assert "Retry-After" in create["responses"]["429"]["headers"]
    metrics = doc["paths"]["/metrics"]["get"]["responses"]
    assert "text/plain" in metrics["200"]["content"]
