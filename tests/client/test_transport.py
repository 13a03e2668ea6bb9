"""Retries, backoff and the mapping of answers to exceptions, on a mocked network
(httpx.MockTransport stands in for the wire between the client and a server)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import pytest

from graft import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequest,
    Client,
    Conflict,
    GraftError,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    ServerError,
    ValidationError,
)
from tests.conftest import REPO


def error(status: int, code: str, param: str | None = None, **kw: Any) -> httpx.Response:
    body = {"error": {"code": code, "message": f"{code} happened", "param": param}}
    return httpx.Response(status, json=body, **kw)


def scripted(*answers: httpx.Response | Exception) -> tuple[Client, list[httpx.Request]]:
    """A client whose server gives `answers` in turn, and the requests it received."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[len(seen) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    client = Client(
        "http://graft.test/", "graft_key", http=httpx.Client(transport=httpx.MockTransport(handler))
    )
    client._sleep = lambda _: None
    return client, seen


USAGE = {"team_id": "team_1", "quotas": {"datasets": {"used": 1, "limit": 10}}}


def test_the_url_and_key_come_from_arguments_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GRAFT_API_URL", raising=False)
    monkeypatch.delenv("GRAFT_API_KEY", raising=False)
    with pytest.raises(GraftError, match="GRAFT_API_URL"):
        Client(api_key="graft_key")
    with pytest.raises(GraftError, match="GRAFT_API_KEY"):
        Client("http://graft.test")
    monkeypatch.setenv("GRAFT_API_URL", "http://env.test/")
    monkeypatch.setenv("GRAFT_API_KEY", "graft_env")
    with Client() as client:
        assert client.base_url == "http://env.test"


def test_every_request_carries_the_key_to_the_base_url() -> None:
    client, seen = scripted(httpx.Response(200, json=USAGE))
    assert client.usage().quotas["datasets"].limit == 10
    assert str(seen[0].url) == "http://graft.test/v1/usage"
    assert seen[0].headers["Authorization"] == "Bearer graft_key"


def test_busy_answers_and_broken_connections_are_retried_with_growing_backoff() -> None:
    client, seen = scripted(
        error(503, "unavailable"),
        httpx.ReadError("reset"),
        error(502, "bad_gateway"),
        httpx.Response(200, json=USAGE),
    )
    waits: list[float] = []
    client._sleep = waits.append
    client.retry_backoff = 1.0
    assert client.usage().team_id == "team_1"
    assert len(seen) == 4
    # Exponential (1, 2, 4) with jitter: between half and all of each step.
    assert [0.5 <= w / 2**i <= 1.0 for i, w in enumerate(waits)] == [True] * 3


def test_the_last_busy_answer_is_raised_once_the_retries_are_spent() -> None:
    client, seen = scripted(*[error(504, "gateway_timeout")] * 4)
    with pytest.raises(ServerError) as failed:
        client.usage()
    assert failed.value.status_code == 504 and len(seen) == 4


def test_retry_after_is_honoured_and_capped() -> None:
    client, seen = scripted(
        error(429, "rate_limited", headers={"Retry-After": "3"}),
        error(429, "rate_limited", headers={"Retry-After": "3600"}),
        httpx.Response(200, json=USAGE),
    )
    waits: list[float] = []
    client._sleep = waits.append
    client.usage()
    assert waits == [3.0, 60.0] and len(seen) == 3


def test_a_500_is_not_retried() -> None:
    client, seen = scripted(error(500, "internal_error"))
    with pytest.raises(ServerError, match="internal_error happened"):
        client.usage()
    assert len(seen) == 1


def test_a_creation_without_idempotency_is_retried_only_when_it_never_reached_the_server() -> None:
    team = {"id": "team_1", "name": "t", "quotas": {}, "created_at": "2025-01-01T00:00:00Z"}
    client, seen = scripted(httpx.ConnectError("refused"), httpx.Response(201, json=team))
    assert client.teams.create("t").id == "team_1" and len(seen) == 2

    client, seen = scripted(httpx.ReadError("reset"), httpx.Response(201, json=team))
    with pytest.raises(APIConnectionError, match="may or may not have been done"):
        client.teams.create("t")
    assert len(seen) == 1

    client, seen = scripted(error(503, "unavailable"), httpx.Response(201, json=team))
    with pytest.raises(ServerError):
        client.teams.create("t")
    assert len(seen) == 1


def test_max_retries_zero_sends_once() -> None:
    client, seen = scripted(httpx.ConnectError("refused"))
    client.max_retries = 0
    with pytest.raises(APIConnectionError, match="Could not connect"):
        client.usage()
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "invalid_json", BadRequest),
        (401, "unauthorized", AuthenticationError),
        (403, "forbidden", PermissionDenied),
        (403, "quota_exceeded", QuotaExceeded),
        (404, "job_not_found", NotFound),
        (409, "job_active", Conflict),
        (413, "payload_too_large", PayloadTooLarge),
        (422, "validation_error", ValidationError),
        (429, "rate_limited", RateLimited),
        (500, "internal_error", ServerError),
        (507, "insufficient_storage", ServerError),
        (405, "method_not_allowed", APIError),
    ],
)
def test_each_status_maps_to_its_exception(status: int, code: str, cls: type[APIError]) -> None:
    client, _ = scripted(error(status, code, param="job_id"))
    client.max_retries = 0
    with pytest.raises(cls) as raised:
        client.jobs.get("job_1")
    assert type(raised.value) is cls
    assert (raised.value.status_code, raised.value.code, raised.value.param) == (
        status,
        code,
        "job_id",
    )
    assert str(raised.value) == f"{code} happened"


def test_an_error_without_the_error_shape_still_says_what_came_back() -> None:
    client, _ = scripted(httpx.Response(502, text="<html>Bad Gateway</html>"))
    client.max_retries = 0
    with pytest.raises(ServerError, match="Bad Gateway") as raised:
        client.usage()
    assert raised.value.code == "http_502" and raised.value.param is None


def test_the_client_loads_no_server_dependency() -> None:
    probe = (
        "import sys, graft; assert not [m for m in sys.modules if m.startswith('app')]; "
        "from graft import _models; _models.JobRead, _models.UsageRead; "
        "print(' '.join({m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    loaded = set(out.split())
    assert not loaded & {"fastapi", "starlette", "sqlalchemy", "torch", "celery", "redis"}
