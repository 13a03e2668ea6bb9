"""schemathesis over the whole OpenAPI spec, against the real API on PostgreSQL.

Each operation gets a bounded, seeded set of generated requests (valid and invalid),
sent with a team key that owns a small dataset, a queued job and a model (the admin
key on the admin routes). Every answer must be a documented status, with a documented
content type, headers and body schema, and never a 5xx.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import (
    ADMIN_KEY,
    REDIS_URL,
    api_factory,
    base_env,
    digits_images,
    require_server,
)
from tests.e2e.helpers import train_job, upload, upload_model
from tests.weights import weights as resnet18_weights

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Valid requests, then invalid ones, per operation: a few hundred cases in all.
MODES = [(GenerationMode.POSITIVE, 8), (GenerationMode.NEGATIVE, 6)]
sent = [0]  # requests sent by the fuzz test, counted to show it ran


@pytest.fixture(scope="module")
def stack(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One API with a team that owns a dataset, a queued job and a model."""
    require_server("Redis", "127.0.0.1", 6379)
    saved = dict(os.environ)
    env = base_env(
        tmp_path_factory.mktemp("fuzz"),
        GRAFT_DATABASE_URL=pg_server_url,
        GRAFT_BROKER_URL=REDIS_URL,
        GRAFT_METRICS_TOKEN="metrics-token",
    )
    with api_factory(env) as make_api:
        api = make_api()
        key = api.new_team(f"fuzz-{uuid.uuid4().hex[:6]}")
        ds = upload(api, key, digits_images(per_class=6))
        job = train_job(api, key, ds["id"], hyperparameters={"epochs": 1, "image_size": 16})
        weights = resnet18_weights()
        model = upload_model(api, key, weights, '["a", "b"]')
        yield {"api": api, "key": key, "ids": (ds["id"], job["id"], model["id"])}
    os.environ.clear()
    os.environ.update(saved)


def fuzz(operation: Any, mode: GenerationMode, examples: int, headers: dict[str, str]) -> None:
    """Send `examples` seeded requests of `mode` to one operation; raise at the first
    that fails a check."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        sent[0] += 1
        case.call_and_validate(headers=headers, checks=CHECKS)

    run()


def test_every_operation_answers_as_documented(stack: dict[str, Any]) -> None:
    # schemathesis's own pytest loader (from_fixture) does not run on pytest 9, so each
    # operation's strategy is driven by Hypothesis here, with the same checks.
    schema = schemathesis.openapi.from_asgi("/openapi.json", stack["api"].client.app)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        if operation.path.startswith("/v1/teams"):
            token = ADMIN_KEY
        elif operation.path == "/metrics":
            token = "metrics-token"
        else:
            token = stack["key"]
        for mode, examples in MODES:
            try:
                fuzz(operation, mode, examples, {"Authorization": f"Bearer {token}"})
            except Unsatisfiable:
                continue  # no parameter or body to make invalid (GET /healthz)
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(
                    f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}"
                )
    assert operations >= 25
    assert sent[0] >= 200, sent
    assert not failures, "\n\n".join(failures)


def test_the_spec_declares_the_bearer_key_and_bounds(stack: dict[str, Any]) -> None:
    spec = stack["api"].client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    job = spec["components"]["schemas"]["JobCreate"]["properties"]
    assert job["export"]["maxItems"] >= 1
    assert job["dataset_id"]["maxLength"] == 64
    for path in ("/v1/jobs", "/v1/datasets"):
        assert "413" in spec["paths"][path]["post"]["responses"]
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
