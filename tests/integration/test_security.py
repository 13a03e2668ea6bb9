"""A service many teams share: key lifecycle and scopes, quotas and usage, deletes,
rate limits, per-job event ids and webhook secret rotation, against the real API on
PostgreSQL and Redis (the probes of bodies, names and images are in test_input_bounds,
webhook targets in test_webhook_urls and tests/e2e/test_webhook_ssrf)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from app.db.base import utcnow
from app.db.models import ApiKey, Job, JobEvent
from app.db.session import session_scope
from tests.conftest import ADMIN_KEY, Api, configure, digits_images
from tests.e2e.helpers import train_job, upload, upload_model
from tests.weights import weights as resnet18_weights

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def api(pg_env: dict[str, str], make_api: Callable[[], Api]) -> Api:
    return make_api()


def new_team(api: Api, name: str = "team", **body: Any) -> str:
    r = api.admin("POST", "/v1/teams", json={"name": name, **body})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def new_key(api: Api, team_id: str, **body: Any) -> dict[str, Any]:
    r = api.admin("POST", f"/v1/teams/{team_id}/keys", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def weights() -> bytes:
    return resnet18_weights()


@pytest.fixture
def team(api: Api) -> dict[str, Any]:
    """A team with a write key, a read key, a dataset, a queued job and a model."""
    team_id = new_team(api)
    write = new_key(api, team_id, name="ci")["key"]
    read = new_key(api, team_id, name="dashboard", scopes=["read"])["key"]
    ds = upload(api, write, digits_images(per_class=6))
    job = train_job(api, write, ds["id"], hyperparameters={"epochs": 1, "image_size": 16})
    model = upload_model(api, write, weights(), '["a", "b"]')
    return {"id": team_id, "write": write, "read": read, "ds": ds, "job": job, "model": model}


# ---------------------------------------------------------------- keys


def test_keys_are_listed_without_secrets_and_carry_a_recognisable_prefix(
    api: Api, team: dict[str, Any]
) -> None:
    keys = api.admin("GET", f"/v1/teams/{team['id']}/keys").json()
    assert [k["name"] for k in keys] == ["ci", "dashboard"]
    assert [k["scopes"] for k in keys] == [["read", "write"], ["read"]]
    for k, secret in zip(keys, (team["write"], team["read"]), strict=True):
        assert secret.startswith("graft_") and k["prefix"] == secret[:12]
        assert set(k) == {
            "id",
            "team_id",
            "name",
            "prefix",
            "scopes",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
        }
        assert secret not in str(keys)
        # Both keys were used by the fixture's requests.
        assert k["last_used_at"] is not None or k["name"] == "dashboard"


def test_a_revoked_key_fails_at_once_on_every_api_process(
    api: Api, team: dict[str, Any], make_api: Callable[[], Api]
) -> None:
    other_process = make_api()
    url = f"/v1/jobs/{team['job']['id']}"
    for a in (api, other_process):
        assert a.as_team(team["write"], "GET", url).status_code == 200
    key_id = api.admin("GET", f"/v1/teams/{team['id']}/keys").json()[0]["id"]
    revoked = api.admin("DELETE", f"/v1/teams/{team['id']}/keys/{key_id}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    for a in (api, other_process):
        r = a.as_team(team["write"], "GET", url)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["message"] == "Unknown or revoked API key."
    # The other key of the team still works; an unknown key id is a 404.
    assert api.as_team(team["read"], "GET", url).status_code == 200
    missing = api.admin("DELETE", f"/v1/teams/{team['id']}/keys/key_nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "key_not_found"


def test_an_expired_key_answers_401_saying_so(api: Api, team: dict[str, Any]) -> None:
    soon = (utcnow() + timedelta(days=1)).isoformat()
    made = new_key(api, team["id"], expires_at=soon)
    poll = f"/v1/jobs/{team['job']['id']}"  # the async path on PostgreSQL
    assert api.as_team(made["key"], "GET", "/v1/jobs").status_code == 200
    assert api.as_team(made["key"], "GET", poll).status_code == 200
    with session_scope() as s:
        s.execute(
            update(ApiKey)
            .where(ApiKey.id == made["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    for url in ("/v1/jobs", poll):
        r = api.as_team(made["key"], "GET", url)
        assert r.status_code == 401 and r.json()["error"]["code"] == "key_expired"
        assert made["key"][:12] in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": "2030-01-01T00:00:00"}, "expires_at"),  # no time zone
        ({"scopes": ["admin"]}, "scopes.0"),
        ({"scopes": []}, "scopes"),
    ],
)
def test_bad_key_requests_name_the_field(
    api: Api, team: dict[str, Any], body: dict[str, Any], param: str
) -> None:
    r = api.admin("POST", f"/v1/teams/{team['id']}/keys", json=body)
    assert r.status_code == 422 and r.json()["error"]["param"] == param, r.text


def write_requests(team: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    job, model, ds = team["job"]["id"], team["model"]["id"], team["ds"]["id"]
    spec = {"dataset_id": ds, "base_model": "resnet18", "pretrained_weights": "none"}
    archive = {"file": ("d.zip", b"PK\x05\x06" + bytes(18), "application/zip")}
    return [
        ("POST", "/v1/jobs", {"json": spec}),
        ("POST", f"/v1/jobs/{job}/cancel", {}),
        ("DELETE", f"/v1/jobs/{job}", {}),
        ("POST", "/v1/datasets", {"files": archive}),
        ("DELETE", f"/v1/datasets/{ds}", {}),
        ("POST", "/v1/models", {"files": {"file": ("m.safetensors", weights())}}),
        ("DELETE", f"/v1/models/{model}", {}),
        ("POST", "/v1/team/webhook-secret/rotate", {}),
    ]


def test_a_read_key_reads_and_downloads_but_every_write_is_403(
    api: Api, team: dict[str, Any]
) -> None:
    for method, url, kw in write_requests(team):
        r = api.as_team(team["read"], method, url, **kw)
        assert r.status_code == 403, (method, url, r.text)
        assert r.json()["error"]["code"] == "insufficient_scope"
    model = team["model"]["id"]
    for url in (
        "/v1/jobs",
        f"/v1/jobs/{team['job']['id']}",
        f"/v1/jobs/{team['job']['id']}/events",
        f"/v1/datasets/{team['ds']['id']}",
        f"/v1/models/{model}",
        f"/v1/models/{model}/artifacts/safetensors",
        "/v1/usage",
        "/v1/team",
    ):
        assert api.as_team(team["read"], "GET", url).status_code == 200, url
    # Nothing was written by the refused requests: the job is still queued.
    job = api.as_team(team["read"], "GET", f"/v1/jobs/{team['job']['id']}").json()
    assert job["status"] == "queued"


def test_every_endpoint_answers_404_for_another_teams_objects(
    api: Api, team: dict[str, Any]
) -> None:
    other = new_key(api, new_team(api, "other"))["key"]
    job, model, ds = team["job"]["id"], team["model"]["id"], team["ds"]["id"]
    png = {"files": {"files": ("a.png", b"\x89PNG\r\n\x1a\n", "image/png")}}
    probes = [
        ("GET", f"/v1/jobs/{job}", {}),
        ("GET", f"/v1/jobs/{job}/events", {}),
        ("GET", f"/v1/jobs/{job}/events", {"headers": {"Accept": "text/event-stream"}}),
        ("POST", f"/v1/jobs/{job}/cancel", {}),
        ("DELETE", f"/v1/jobs/{job}", {}),
        ("GET", f"/v1/datasets/{ds}", {}),
        ("DELETE", f"/v1/datasets/{ds}", {}),
        ("GET", f"/v1/models/{model}", {}),
        ("GET", f"/v1/models/{model}/artifacts/safetensors", {}),
        ("POST", f"/v1/models/{model}/predict", png),
        ("DELETE", f"/v1/models/{model}", {}),
        ("POST", "/v1/jobs", {"json": {"dataset_id": ds, "base_model": "resnet18"}}),
        ("POST", "/v1/jobs", {"json": {"dataset_id": "ds_x", "base_model": model}}),
    ]
    for method, url, kw in probes:
        r = api.as_team(other, method, url, **kw)
        assert r.status_code == 404, (method, url, r.text)
    # The other team's lists hold none of the first team's objects.
    for url in ("/v1/jobs", "/v1/datasets", "/v1/models"):
        assert api.as_team(other, "GET", url).json()["data"] == []


def test_team_keys_on_admin_routes_are_403_and_the_admin_key_is_not_a_team_key(
    api: Api, team: dict[str, Any]
) -> None:
    for method, url in [("POST", "/v1/teams"), ("GET", f"/v1/teams/{team['id']}/keys")]:
        r = api.as_team(team["write"], method, url, json={"name": "x"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_only"
    assert api.as_team(ADMIN_KEY, "GET", "/v1/jobs").status_code == 401


# ---------------------------------------------------------------- quotas and deletes


def count(model: Any) -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_queued_jobs_quota_refuses_the_next_job_and_queues_nothing(
    api: Api, team: dict[str, Any]
) -> None:
    patched = api.admin("PATCH", f"/v1/teams/{team['id']}", json={"quotas": {"queued_jobs": 1}})
    assert patched.status_code == 200 and patched.json()["quotas"] == {"queued_jobs": 1}
    before = count(Job)
    spec = {"dataset_id": team["ds"]["id"], "base_model": "resnet18", "pretrained_weights": "none"}
    r = api.as_team(team["write"], "POST", "/v1/jobs", json=spec)
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "quota_exceeded" and "`queued_jobs`" in error["message"]
    assert "may use 1 and has 1" in error["message"]
    assert count(Job) == before
    usage = api.as_team(team["read"], "GET", "/v1/usage").json()["quotas"]
    assert usage["queued_jobs"] == {"used": 1, "limit": 1}
    # Back to the default: the next job is accepted.
    api.admin("PATCH", f"/v1/teams/{team['id']}", json={"quotas": {"queued_jobs": None}})
    assert api.as_team(team["write"], "POST", "/v1/jobs", json=spec).status_code == 201


def test_dataset_and_storage_quotas_refuse_uploads_and_store_nothing(
    api: Api, team: dict[str, Any], pg_env: dict[str, str]
) -> None:
    datasets_dir = Path(pg_env["GRAFT_DATA_DIR"]) / "datasets"
    stored = sorted(p.name for p in datasets_dir.iterdir())
    api.admin("PATCH", f"/v1/teams/{team['id']}", json={"quotas": {"datasets": 1}})
    r = api.as_team(
        team["write"],
        "POST",
        "/v1/datasets",
        files={"file": ("d.zip", _zip(offset=20), "application/zip")},
    )
    assert r.status_code == 403 and "`datasets`" in r.json()["error"]["message"], r.text
    usage = api.as_team(team["write"], "GET", "/v1/usage").json()["quotas"]
    api.admin(
        "PATCH",
        f"/v1/teams/{team['id']}",
        json={"quotas": {"datasets": 10, "stored_bytes": usage["stored_bytes"]["used"] + 10}},
    )
    r = api.as_team(
        team["write"],
        "POST",
        "/v1/datasets",
        files={"file": ("d.zip", _zip(offset=20), "application/zip")},
    )
    assert r.status_code == 403 and "`stored_bytes`" in r.json()["error"]["message"], r.text
    assert r.json()["error"]["param"] == "file"
    models = api.as_team(
        team["write"],
        "POST",
        "/v1/models",
        files=_model_form(),
        data={"architecture": "resnet18", "classes": '["a", "b"]'},
    )
    assert models.status_code == 403 and "`stored_bytes`" in models.text, models.text
    assert sorted(p.name for p in datasets_dir.iterdir()) == stored
    assert (
        api.as_team(team["write"], "GET", "/v1/datasets").json()["data"][0]["id"]
        == (team["ds"]["id"])
    )


def test_a_teams_upload_quota_is_a_413_before_the_body_is_stored(
    api: Api, team: dict[str, Any]
) -> None:
    api.admin("PATCH", f"/v1/teams/{team['id']}", json={"quotas": {"upload_bytes": 500}})
    r = api.as_team(
        team["write"], "POST", "/v1/datasets", files={"file": ("d.zip", _zip(offset=20))}
    )
    assert r.status_code == 413 and "500 bytes" in r.json()["error"]["message"], r.text
    usage = api.as_team(team["write"], "GET", "/v1/usage").json()["quotas"]
    assert usage["upload_bytes"]["limit"] == 500


def _zip(offset: int) -> bytes:
    from tests.conftest import zip_dataset

    return zip_dataset(digits_images(per_class=6, offset=offset))


def _model_form() -> dict[str, Any]:
    return {"file": ("m.safetensors", weights())}


def test_usage_counts_what_the_team_stores_and_deletes_give_it_back(
    api: Api, team: dict[str, Any], pg_env: dict[str, str]
) -> None:
    usage = api.as_team(team["read"], "GET", "/v1/usage").json()
    assert usage["team_id"] == team["id"]
    quotas = usage["quotas"]
    assert set(quotas) == {
        "running_jobs",
        "queued_jobs",
        "stored_bytes",
        "datasets",
        "upload_bytes",
    }
    assert quotas["datasets"]["used"] == 1 and quotas["queued_jobs"]["used"] == 1
    model_bytes = sum(a["size_bytes"] for a in team["model"]["artifacts"])
    assert quotas["stored_bytes"]["used"] == team["ds"]["size_bytes"] + model_bytes
    data = Path(pg_env["GRAFT_DATA_DIR"])
    model_dir = data / "models" / team["model"]["id"]
    assert model_dir.is_dir()

    # A queued job cannot be deleted; a cancelled one can, with its events.
    job = team["job"]["id"]
    busy = api.as_team(team["write"], "DELETE", f"/v1/jobs/{job}")
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "job_active"
    assert api.as_team(team["write"], "POST", f"/v1/jobs/{job}/cancel").status_code == 200
    assert api.as_team(team["write"], "DELETE", f"/v1/jobs/{job}").status_code == 204
    assert api.as_team(team["write"], "GET", f"/v1/jobs/{job}").status_code == 404
    with session_scope() as s:
        assert s.scalar(select(func.count()).where(JobEvent.job_id == job)) == 0

    gone = api.as_team(team["write"], "DELETE", f"/v1/models/{team['model']['id']}")
    assert gone.status_code == 204
    assert not model_dir.exists()
    assert api.as_team(team["write"], "GET", f"/v1/models/{team['model']['id']}").status_code == 404
    after = api.as_team(team["read"], "GET", "/v1/usage").json()["quotas"]
    assert after["stored_bytes"]["used"] == team["ds"]["size_bytes"]
    assert after["queued_jobs"]["used"] == 0


def test_a_model_a_queued_job_continues_from_cannot_be_deleted(
    api: Api, team: dict[str, Any]
) -> None:
    spec = {
        "dataset_id": team["ds"]["id"],
        "base_model": team["model"]["id"],
        "hyperparameters": {"image_size": 224},
    }
    made = api.as_team(team["write"], "POST", "/v1/jobs", json=spec)
    assert made.status_code == 201, made.text
    r = api.as_team(team["write"], "DELETE", f"/v1/models/{team['model']['id']}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "model_in_use"


def test_the_running_jobs_quota_holds_a_job_back_at_claim(api: Api, team: dict[str, Any]) -> None:
    from app.services import job_runs

    api.admin("PATCH", f"/v1/teams/{team['id']}", json={"quotas": {"running_jobs": 1}})
    spec = {"dataset_id": team["ds"]["id"], "base_model": "resnet18", "pretrained_weights": "none"}
    second = api.as_team(team["write"], "POST", "/v1/jobs", json=spec).json()["id"]
    first = team["job"]["id"]

    def claim(job_id: str) -> Any:
        with session_scope() as s:
            return job_runs.claim(
                s, job_id, "w", lease_seconds=30, max_attempts=3, running_jobs_quota=5
            )

    assert claim(first) is not None
    assert claim(second) is None  # the team's own quota (1), not the default (5)
    with session_scope() as s:
        held = s.get(Job, second)
        assert held is not None and held.status == "queued" and held.dispatched_at is None


# ---------------------------------------------------------------- rate limits


@pytest.fixture
def tight_limits(pg_env: dict[str, str]) -> Iterator[None]:
    configure(
        {
            "GRAFT_RATE_LIMIT_PER_KEY": "60",
            "GRAFT_RATE_LIMIT_BURST": "3",
            "GRAFT_RATE_LIMIT_FAILED_AUTH": "4",
        }
    )
    yield


def test_a_key_over_its_rate_answers_429_with_retry_after_on_every_process(
    tight_limits: None, make_api: Callable[[], Api]
) -> None:
    one, two = make_api(), make_api()
    key = new_key(one, new_team(one))["key"]
    # Both processes spend one bucket in Redis: 3 requests in all, then 429. The
    # list reads in a thread, the poll (a missing id: 404) in the event loop, on the
    # async Redis client: one bucket all the same.
    poll = "/v1/jobs/job_missing"
    answers = [
        a.as_team(key, "GET", url).status_code
        for a, url in ((one, "/v1/jobs"), (two, poll), (one, poll))
    ]
    assert answers == [200, 404, 404]
    for url in (poll, "/v1/jobs"):
        r = two.as_team(key, "GET", url)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert int(r.headers["Retry-After"]) >= 1
        assert "60 per minute" in r.json()["error"]["message"]


def test_failed_authentication_from_one_address_is_slowed_down(
    tight_limits: None, make_api: Callable[[], Api]
) -> None:
    api = make_api()
    # The list and the poll (the async path) count against the same address.
    urls = ["/v1/jobs", "/v1/jobs/job_x"] * 3
    wrong = [api.as_team("graft_guess", "GET", url).status_code for url in urls]
    assert wrong[:4] == [401] * 4 and wrong[4:] == [429, 429]
    admin_guesses = [
        api.client.post(
            "/v1/teams", json={"name": "x"}, headers={"Authorization": "Bearer guess"}
        ).status_code
        for _ in range(2)
    ]
    assert admin_guesses == [429, 429]
    # Even the right admin key is not compared while the address is blocked.
    right = api.admin("POST", "/v1/teams", json={"name": "x"})
    assert right.status_code == 429 and int(right.headers["Retry-After"]) >= 1


# ---------------------------------------------------------------- events and secrets


def test_event_ids_count_within_each_job(api: Api, team: dict[str, Any]) -> None:
    spec = {"dataset_id": team["ds"]["id"], "base_model": "resnet18", "pretrained_weights": "none"}
    second = api.as_team(team["write"], "POST", "/v1/jobs", json=spec).json()["id"]
    api.as_team(team["write"], "POST", f"/v1/jobs/{second}/cancel")
    first = api.as_team(team["read"], "GET", f"/v1/jobs/{team['job']['id']}/events").json()
    events = api.as_team(team["read"], "GET", f"/v1/jobs/{second}/events").json()
    assert [e["id"] for e in first] == [1]
    assert [e["id"] for e in events] == [1, 2]
    assert [e["type"] for e in events] == ["job.queued", "job.cancelled"]
    after = api.as_team(team["read"], "GET", f"/v1/jobs/{second}/events?after=1").json()
    assert [e["id"] for e in after] == [2]


@pytest.mark.parametrize(
    ("query", "headers", "param"),
    [
        ("?after=100000000000000000000000", {}, "after"),
        ("?after=-1", {}, "after"),
        ("", {"Accept": "text/event-stream", "Last-Event-ID": str(2**70)}, "Last-Event-ID"),
        ("", {"Accept": "text/event-stream", "Last-Event-ID": "x"}, "Last-Event-ID"),
    ],
)
def test_out_of_range_event_positions_are_422_not_500(
    api: Api, team: dict[str, Any], query: str, headers: dict[str, str], param: str
) -> None:
    url = f"/v1/jobs/{team['job']['id']}/events{query}"
    r = api.as_team(team["read"], "GET", url, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param


def test_a_team_rotates_its_webhook_secret_with_a_grace_period(
    api: Api, team: dict[str, Any]
) -> None:
    from app.db.models import Team
    from app.services.teams import signing_secrets

    before = api.as_team(team["read"], "GET", "/v1/team").json()
    assert before["id"] == team["id"] and before["webhook_secret"].startswith("whsec_")
    assert before["previous_secret_expires_at"] is None
    rotated = api.as_team(team["write"], "POST", "/v1/team/webhook-secret/rotate").json()
    assert rotated["webhook_secret"] != before["webhook_secret"]
    assert api.as_team(team["read"], "GET", "/v1/team").json() == rotated
    with session_scope() as s:
        row = s.get(Team, team["id"])
        assert row is not None and row.previous_secret_expires_at is not None
        grace = row.previous_secret_expires_at - utcnow()
        assert timedelta(hours=23) < grace <= timedelta(hours=24)
        assert signing_secrets(row) == [rotated["webhook_secret"], before["webhook_secret"]]
        later = row.previous_secret_expires_at + timedelta(seconds=1)
        assert signing_secrets(row, later) == [rotated["webhook_secret"]]


def test_what_the_fuzzer_found_answers_4xx(api: Api, team: dict[str, Any]) -> None:
    # A NUL in a cursor reached PostgreSQL (500); a malformed multipart header was a 500.
    r = api.as_team(team["read"], "GET", "/v1/jobs?cursor=%00")
    assert r.status_code == 422 and r.json()["error"]["param"] == "cursor"
    bad = api.as_team(
        team["write"],
        "POST",
        "/v1/datasets",
        content=b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n'
        b"[: x\r\n\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=xx"},
    )
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["code"] == "invalid_multipart"
