"""The OpenAPI spec as a contract a client generator can use.

Every field of every schema says what it is and shows an example; `required` and the
enums say what the server enforces; the Bearer scheme is on every operation that takes
a key; and a client generated from the spec by a standard generator
(openapi-python-client, a dev extra) creates a job and reads it back from the real API,
served by uvicorn.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import uvicorn
from pydantic import BaseModel

from app.schemas.datasets import DatasetForm
from app.schemas.models import ModelForm, PredictForm
from tests.conftest import Api, digits_images, wait_for
from tests.e2e.helpers import free_port, upload, upload_model
from tests.weights import weights as resnet18_weights

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

# Fields that may lack a description or an example, each with the reason (none now;
# the test fails while an exempt field is documented, so the list cannot go stale).
EXEMPT: dict[str, str] = {}
FORMATS = ["safetensors", "metadata", "onnx", "onnx-int8", "onnx-fp16", "bundle"]
# Operations that take no key.
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz")}
CLIENT_PACKAGE = "graft_api_client"


@pytest.fixture
def api(pg_env: dict[str, str], make_api: Callable[[], Api]) -> Api:
    return make_api()


@pytest.fixture
def spec(api: Api) -> dict[str, Any]:
    r = api.client.get("/openapi.json")
    assert r.status_code == 200, r.text
    return dict(r.json())


def _lacks(prop: dict[str, Any]) -> list[str]:
    lacking = [] if prop.get("description") else ["description"]
    # A file part (or a list of them) has no example a JSON document could hold.
    binary = prop.get("format") == "binary" or prop.get("items", {}).get("format") == "binary"
    if not (prop.get("examples") or "example" in prop or binary):
        lacking.append("example")
    return lacking


def undocumented(spec: dict[str, Any]) -> dict[str, list[str]]:
    """Each schema property (components, and the inline multipart bodies) that lacks a
    description or an example, with what it lacks."""
    found: dict[str, list[str]] = {}
    for name, schema in spec["components"]["schemas"].items():
        for prop, value in schema.get("properties", {}).items():
            if lacking := _lacks(value):
                found[f"{name}.{prop}"] = lacking
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            for content in op.get("requestBody", {}).get("content", {}).values():
                for prop, value in content.get("schema", {}).get("properties", {}).items():
                    if lacking := _lacks(value):
                        found[f"{method.upper()} {path} body.{prop}"] = lacking
    return found


def multipart(spec: dict[str, Any], path: str) -> dict[str, Any]:
    schema = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]
    return dict(schema["schema"])


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    return dict(spec["components"]["schemas"][ref.removeprefix("#/components/schemas/")])


def required_fields(form: type[BaseModel]) -> set[str]:
    return {name for name, field in form.model_fields.items() if field.is_required()}


def test_every_schema_field_has_a_description_and_an_example(spec: dict[str, Any]) -> None:
    found = undocumented(spec)
    missing = {name: lacking for name, lacking in found.items() if name not in EXEMPT}
    assert missing == {}, "fields without a description or example:\n" + "\n".join(
        f"{name}: no {' and no '.join(lacking)}" for name, lacking in sorted(missing.items())
    )
    stale = sorted(set(EXEMPT) - set(found))
    assert stale == [], f"documented now, drop them from EXEMPT: {stale}"


def test_multipart_bodies_require_what_the_server_requires(spec: dict[str, Any]) -> None:
    for path, file_field, form in (
        ("/v1/models", "file", ModelForm),
        ("/v1/datasets", "file", DatasetForm),
        ("/v1/models/{model_id}/predict", "files", PredictForm),
    ):
        body = multipart(spec, path)
        assert set(body["properties"]) == {file_field, *form.model_fields}, path
        assert set(body["required"]) == {file_field, *required_fields(form)}, path
    # `classes` is required for kind=model only (the server says so: the next test).
    assert set(multipart(spec, "/v1/models")["required"]) == {"file", "architecture"}


def test_the_artifact_format_is_an_enum_of_what_the_server_serves(spec: dict[str, Any]) -> None:
    from worker.export.artifacts import FORMATS as ONNX_FORMATS

    op = spec["paths"]["/v1/models/{model_id}/artifacts/{format}"]["get"]
    param = {p["name"]: p for p in op["parameters"]}["format"]
    assert param["required"] is True and param["in"] == "path"
    enum = resolve(spec, param["schema"])["enum"]
    assert enum == FORMATS and set(ONNX_FORMATS) <= set(enum)
    assert all(f"`{fmt}`" in param["description"] for fmt in FORMATS)
    assert {"application/octet-stream", "application/zip", "application/json"} <= set(
        op["responses"]["200"]["content"]
    )
    predict = multipart(spec, "/v1/models/{model_id}/predict")
    assert predict["properties"]["artifact"]["enum"] == list(ONNX_FORMATS)


def test_every_operation_that_takes_a_key_declares_the_bearer_scheme(
    spec: dict[str, Any],
) -> None:
    scheme = spec["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            if (method.upper(), path) in PUBLIC:
                assert "security" not in op, (method, path)
            else:
                assert {"bearer": []} in op.get("security", []), (method, path)


def test_the_server_enforces_the_required_fields_and_the_format_enum(api: Api) -> None:
    key = api.new_team()
    weights = resnet18_weights()
    for missing in ("architecture", "classes"):
        data = {"architecture": "resnet18", "classes": '["a", "b"]'}
        del data[missing]
        files = {"file": ("m.safetensors", weights)}
        r = api.as_team(key, "POST", "/v1/models", files=files, data=data)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["param"] == missing
        assert r.json()["error"]["message"] == f"Missing required field `{missing}`."
    model = upload_model(api, key, weights, '["a", "b"]')
    url = f"/v1/models/{model['id']}/artifacts"
    unknown = api.as_team(key, "GET", f"{url}/pickle")
    assert unknown.status_code == 422, unknown.text
    error = unknown.json()["error"]
    assert error["param"] == "format" and error["code"] == "validation_error"
    assert error["message"].startswith("Invalid `format`: Input should be 'safetensors'")
    lacking = api.as_team(key, "GET", f"{url}/onnx")
    assert lacking.status_code == 404, lacking.text
    assert lacking.json()["error"]["code"] == "artifact_not_found"
    assert lacking.json()["error"]["param"] == "format"
    weights_file = api.as_team(key, "GET", f"{url}/safetensors")
    assert weights_file.status_code == 200 and weights_file.content == weights
    assert weights_file.headers["content-type"] == "application/octet-stream"
    metadata = api.as_team(key, "GET", f"{url}/metadata")
    assert metadata.status_code == 200 and metadata.json()["model_id"] == model["id"]


# -- a generated client ------------------------------------------------------


def generate_client(spec: dict[str, Any], root: Path) -> ModuleType:
    """Generate a client package from `spec` under `root` and import it. A warning of
    the generator (a construct it cannot map) fails the test: it is a spec bug."""
    pytest.importorskip("openapi_python_client", reason="needs the dev extra")
    spec_path = root / "openapi.json"
    spec_path.write_text(json.dumps(spec))
    config = root / "openapi-python-client.yaml"
    # No ruff run over the generated code; a thumbnail's image/png is bytes like any file
    # (the generator knows octet-stream only, and its documented override maps the type).
    config.write_text(
        "post_hooks: []\ncontent_type_overrides:\n  image/png: application/octet-stream\n"
    )
    run = subprocess.run(
        [
            *(sys.executable, "-m", "openapi_python_client", "generate"),
            *("--path", str(spec_path), "--output-path", str(root / CLIENT_PACKAGE)),
            *("--meta", "none", "--config", str(config), "--fail-on-warning"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    sys.path.insert(0, str(root))
    return importlib.import_module(CLIENT_PACKAGE)


def operation(package: ModuleType, spec: dict[str, Any], method: str, path: str) -> Any:
    """The generated module of an operation: api/<tag>/<operationId>, snake-cased as the
    generator names them."""
    from openapi_python_client.strings import snake_case

    op = spec["paths"][path][method]
    name = f"{package.__name__}.api.{snake_case(op['tags'][0])}.{snake_case(op['operationId'])}"
    return importlib.import_module(name)


@pytest.fixture
def client_package(spec: dict[str, Any], tmp_path: Path) -> Iterator[ModuleType]:
    try:
        yield generate_client(spec, tmp_path)
    finally:
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.partition(".")[0] == CLIENT_PACKAGE]:
            del sys.modules[name]


@pytest.fixture
def served(api: Api) -> Iterator[str]:
    """The application (configured as `api`'s), served over HTTP by uvicorn in a thread."""
    from app.main import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, f"uvicorn on port {port}", interval=0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_a_generated_client_creates_a_job_and_reads_it_back(
    api: Api, spec: dict[str, Any], client_package: ModuleType, served: str
) -> None:
    key = api.new_team("generated-client")
    dataset = upload(api, key, digits_images(per_class=6))
    models = importlib.import_module(f"{CLIENT_PACKAGE}.models")
    create_job = operation(client_package, spec, "post", "/v1/jobs")
    get_job = operation(client_package, spec, "get", "/v1/jobs/{job_id}")

    with client_package.AuthenticatedClient(
        base_url=served, token=key, raise_on_unexpected_status=True
    ) as client:
        body = models.JobCreate(
            dataset_id=dataset["id"],
            base_model="resnet18",
            pretrained_weights=models.JobCreatePretrainedWeights.NONE,
            strategy=models.JobCreateStrategy.FULL,
            hyperparameters=models.Hyperparameters(epochs=1, batch_size=16, image_size=16),
        )
        created = create_job.sync_detailed(client=client, body=body)
        assert created.status_code == 201, created.content
        job = created.parsed
        assert isinstance(job, models.JobRead), created.content
        assert job.status == models.JobReadStatus.QUEUED and job.id.startswith("job_")

        read = get_job.sync(job.id, client=client)
        assert isinstance(read, models.JobRead)
        assert read.id == job.id and read.status == models.JobReadStatus.QUEUED
        assert read.spec.to_dict()["dataset_id"] == dataset["id"]
        assert read.spec.to_dict()["hyperparameters"]["image_size"] == 16

        # An error answers in the documented shape, parsed as the generated ErrorBody.
        missing = get_job.sync_detailed("job_0000", client=client)
        assert missing.status_code == 404
        assert isinstance(missing.parsed, models.ErrorBody)
        assert missing.parsed.error.param == "job_id"
