"""A job whose webhook_url points at a private address is refused at creation (422),
unless GRAFT_WEBHOOK_ALLOW_PRIVATE=true; the API against PostgreSQL and Redis, no worker."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import Api, configure
from tests.integration.test_api import job_spec, small_zip, upload

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def team_with_dataset(make_api: Callable[[], Api], allow_private: str) -> tuple[Api, str, str]:
    configure({"GRAFT_WEBHOOK_ALLOW_PRIVATE": allow_private})
    api = make_api()
    key = api.new_team(f"team-allow-{allow_private}")
    ds = upload(api, key, small_zip())
    assert ds.status_code == 201, ds.text
    return api, key, str(ds.json()["id"])


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/",
        "http://2130706433:9/",
        "http://[::ffff:127.0.0.1]:9/",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost:9/",
        "http://metadata.google.internal/",
    ],
)
def test_a_private_webhook_url_is_a_422(
    pg_env: dict[str, str], make_api: Callable[[], Api], url: str
) -> None:
    api, key, dataset_id = team_with_dataset(make_api, "false")
    r = api.as_team(key, "POST", "/v1/jobs", json=job_spec(dataset_id, webhook_url=url))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == "webhook_url"
    assert error["code"] == "webhook_url_not_allowed"
    assert "public hosts" in error["message"]
    assert "GRAFT_WEBHOOK_ALLOW_PRIVATE=true" in error["message"]
    assert api.as_team(key, "GET", "/v1/jobs").json()["data"] == []


def test_the_message_names_the_address(pg_env: dict[str, str], make_api: Callable[[], Api]) -> None:
    api, key, dataset_id = team_with_dataset(make_api, "false")
    spec = job_spec(dataset_id, webhook_url="http://127.0.0.1:9/")
    message = api.as_team(key, "POST", "/v1/jobs", json=spec).json()["error"]["message"]
    assert message.startswith("`webhook_url` points at a private address (127.0.0.1)")


def test_public_webhook_urls_and_allowed_private_ones_are_accepted(
    pg_env: dict[str, str], make_api: Callable[[], Api]
) -> None:
    api, key, dataset_id = team_with_dataset(make_api, "false")
    for url in ("http://93.184.216.34/hook", "https://hooks.example.com/graft"):
        r = api.as_team(key, "POST", "/v1/jobs", json=job_spec(dataset_id, webhook_url=url))
        assert r.status_code == 201, r.text
    api, key, dataset_id = team_with_dataset(make_api, "true")
    spec = job_spec(dataset_id, webhook_url="http://127.0.0.1:9/")
    assert api.as_team(key, "POST", "/v1/jobs", json=spec).status_code == 201


def test_a_webhook_url_over_2000_characters_is_a_422(
    pg_env: dict[str, str], make_api: Callable[[], Api]
) -> None:
    api, key, dataset_id = team_with_dataset(make_api, "false")
    # Bounded as stored: 700 "é" are 4,200 characters once percent-encoded.
    for url in (
        "https://hooks.example.com/" + "a" * 2000,
        "https://hooks.example.com/" + "é" * 700,
    ):
        r = api.as_team(key, "POST", "/v1/jobs", json=job_spec(dataset_id, webhook_url=url))
        assert r.status_code == 422, r.text
        assert r.json()["error"]["param"] == "webhook_url"
