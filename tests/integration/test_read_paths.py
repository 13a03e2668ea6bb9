"""What the fast read paths must keep: the same JSON, and keys checked on every request.

The GET endpoints read outside a transaction and serialize their answer once; these
tests pin each answer's shape (field names and JSON types), that it is exactly what the
response schema makes of the object, and that a revoked key fails on the next request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from app.db.base import utcnow
from app.db.models import ApiKey
from app.db.session import session_scope
from app.schemas.common import PageOf
from app.schemas.datasets import DatasetRead
from app.schemas.jobs import JobRead
from app.schemas.models import ModelRead
from tests.conftest import Api, digits_images
from tests.e2e.helpers import train_job, upload, upload_model
from tests.weights import weights as resnet18_weights

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

PAGE = {"data": "list", "has_more": "bool", "next_cursor": "null"}
JOB = {
    "id": "str",
    "status": "str",
    "spec": "dict",
    "created_at": "str",
    "started_at": "null",
    "finished_at": "null",
    "progress": "null",
    "metrics": "list",
    "report": "null",
    "result": "null",
    "error": "null",
    "attempt": "int",
    "cancel_requested": "bool",
    "search_id": "null",
}


@pytest.fixture
def api(pg_env: dict[str, str], make_api: Callable[[], Api]) -> Api:
    return make_api()


def shape(value: dict[str, Any]) -> dict[str, str]:
    names = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}
    return {k: "null" if v is None else names[type(v)] for k, v in value.items()}


@pytest.fixture
def objects(api: Api) -> dict[str, Any]:
    key = api.new_team()
    ds = upload(api, key, digits_images(per_class=6))
    job = train_job(api, key, ds["id"], hyperparameters={"epochs": 1, "image_size": 16})
    weights = resnet18_weights()
    model = upload_model(api, key, weights, '["a", "b"]')
    return {"key": key, "dataset": ds, "job": job, "model": model}


def test_each_read_answers_the_schema_of_its_object(api: Api, objects: dict[str, Any]) -> None:
    key = objects["key"]
    cases = [
        (f"/v1/jobs/{objects['job']['id']}", JobRead),
        (f"/v1/models/{objects['model']['id']}", ModelRead),
        (f"/v1/datasets/{objects['dataset']['id']}", DatasetRead),
    ]
    for url, schema in cases:
        r = api.as_team(key, "GET", url)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        body = r.json()
        # Exactly what the response schema makes of it: every field, no extra one.
        assert body == schema.model_validate(body).model_dump(mode="json")
        assert set(body) == set(schema.model_fields)
    job = api.as_team(key, "GET", f"/v1/jobs/{objects['job']['id']}").json()
    assert shape(job) == JOB
    assert job == objects["job"]  # the same JSON as the POST that created it
    for url, schema in [
        ("/v1/jobs", JobRead),
        ("/v1/models", ModelRead),
        ("/v1/datasets", DatasetRead),
    ]:
        page = api.as_team(key, "GET", url + "?limit=5").json()
        assert shape(page) == PAGE and len(page["data"]) == 1
        assert page == PageOf[schema].model_validate(page).model_dump(mode="json")  # type: ignore[valid-type]


def test_a_revoked_key_fails_on_the_next_request(api: Api, objects: dict[str, Any]) -> None:
    key, url = objects["key"], f"/v1/jobs/{objects['job']['id']}"
    assert api.as_team(key, "GET", url).status_code == 200
    with session_scope() as s:
        for row in s.query(ApiKey).filter(ApiKey.prefix == key[:12]):
            row.revoked_at = utcnow()
    r = api.as_team(key, "GET", url)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert api.as_team(key, "GET", "/v1/jobs").status_code == 401


def test_the_poll_writes_last_used_at_at_most_once_a_minute(
    api: Api, objects: dict[str, Any]
) -> None:
    key, url = objects["key"], f"/v1/jobs/{objects['job']['id']}"
    with session_scope() as s:
        for row in s.query(ApiKey).filter(ApiKey.prefix == key[:12]):
            row.last_used_at = None
    assert api.as_team(key, "GET", url).status_code == 200

    def last_used() -> Any:
        with session_scope() as s:
            return s.query(ApiKey).filter(ApiKey.prefix == key[:12]).one().last_used_at

    first = last_used()
    assert first is not None
    assert api.as_team(key, "GET", url).status_code == 200
    assert last_used() == first  # within the minute: no second write


def test_a_burst_of_polls_writes_last_used_at_once(api: Api, objects: dict[str, Any]) -> None:
    """32 polls in flight at once with a key due a last_used_at write: one request
    writes, the others go on (on PostgreSQL's event-loop path), instead of 32 UPDATEs
    of one row queued on the read threads."""
    import asyncio

    import httpx
    from sqlalchemy import Engine, event

    from app.db.async_reads import close_readers

    key, url = objects["key"], f"/v1/jobs/{objects['job']['id']}"
    with session_scope() as s:
        for row in s.query(ApiKey).filter(ApiKey.prefix == key[:12]):
            row.last_used_at = None
    updates: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE API_KEYS"):
            updates.append(statement)

    # On every engine: the read threads' sessionmaker may hold one made before the
    # test's settings were (re)applied.
    event.listen(Engine, "before_cursor_execute", count)

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=api.client.app)
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://graft") as client:
            answers = await asyncio.gather(*[client.get(url, headers=headers) for _ in range(32)])
        await close_readers()  # this loop's pool, before the loop closes
        return [r.status_code for r in answers]

    try:
        codes = asyncio.run(burst())
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    assert codes == [200] * 32
    # One, or two where a read that ran before the write committed was answered just
    # after it ended; never one per request.
    assert 1 <= len(updates) <= 2, updates


def test_wrong_keys_and_missing_ids_answer_as_before(api: Api, objects: dict[str, Any]) -> None:
    url = f"/v1/jobs/{objects['job']['id']}"
    assert api.as_team("graft_wrong", "GET", url).status_code == 401
    assert api.client.get(url).status_code == 401
    missing = api.as_team(objects["key"], "GET", "/v1/jobs/job_missing")
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "code": "job_not_found",
        "message": "No job job_missing in this team.",
        "param": "job_id",
    }
    other = api.new_team("other")
    assert api.as_team(other, "GET", url).status_code == 404


@pytest.mark.parametrize("env", ["sqlite_env", "pg_env"])
def test_the_poll_answers_what_the_orm_object_makes_on_both_databases(
    env: str, request: pytest.FixtureRequest, make_api: Callable[[], Api]
) -> None:
    """The poll reads plain columns (in the event loop on PostgreSQL, in a read thread
    on SQLite): its JSON must be exactly the ORM object's, datetimes and JSON included."""
    from app.api.jobs import to_read
    from app.db.models import Job
    from app.services.teams import get_team
    from tests.integration.test_repositories import a_dataset, a_job

    request.getfixturevalue(env)
    api = make_api()
    key = api.new_team()
    team_id = api.as_team(key, "GET", "/v1/team").json()["id"]
    spec = {"dataset_id": "ds_poll", "base_model": "resnet18", "hyperparameters": {"epochs": 2}}
    job = a_job("job_0a", team_id, status="running", spec=spec)
    job.dataset_id, job.kind = "ds_poll", "training"
    job.started_at = utcnow()
    job.progress = {"epoch": 1, "total_epochs": 2, "step": 3, "fraction": 0.25, "eta_seconds": 12.5}
    job.metrics = [{"epoch": 1, "val_accuracy": 0.5}]
    with session_scope() as s:
        get_team(s, team_id)
        s.add(a_dataset("ds_poll", team_id))
        s.flush()
        s.add(job)
    with session_scope() as s:
        expected = to_read(s.get_one(Job, "job_0a")).model_dump(mode="json")
    r = api.as_team(key, "GET", "/v1/jobs/job_0a")
    assert r.status_code == 200, r.text
    assert r.json() == expected
    assert r.json()["started_at"].endswith("Z")  # UTC, as the ORM gives it
    assert api.as_team("graft_wrong", "GET", "/v1/jobs/job_0a").status_code == 401
    assert api.as_team(api.new_team("b"), "GET", "/v1/jobs/job_0a").status_code == 404
    # The list (one LATERAL statement on PostgreSQL): the same JSON, pages and filters.
    with session_scope() as s:
        for n in ("b", "c"):
            s.add(a_job(f"job_0{n}", team_id, spec=spec))
            s.get_one(Job, f"job_0{n}").dataset_id = "ds_poll"
    page = api.as_team(key, "GET", "/v1/jobs?limit=2").json()
    assert [j["id"] for j in page["data"]] == ["job_0c", "job_0b"]
    assert page["has_more"] and page["next_cursor"] == "job_0b"
    rest = api.as_team(key, "GET", "/v1/jobs?limit=2&cursor=job_0b").json()
    assert rest == {"data": [expected], "has_more": False, "next_cursor": None}
    running = api.as_team(key, "GET", "/v1/jobs?status=running").json()
    assert running["data"] == [expected]
    empty = api.as_team(api.new_team("c"), "GET", "/v1/jobs").json()
    assert empty == {"data": [], "has_more": False, "next_cursor": None}
    assert api.as_team("graft_wrong", "GET", "/v1/jobs").status_code == 401
