"""The API against a real PostgreSQL database and a real Redis broker (no worker)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from tests.conftest import Api, digits_images, zip_dataset
from tests.weights import weights as resnet18_weights

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def api(pg_env: dict[str, str], make_api: Callable[[], Api]) -> Api:
    return make_api()


@pytest.fixture
def queue_len(pg_env: dict[str, str]) -> Callable[[], int]:
    r = redis.Redis.from_url(pg_env["GRAFT_BROKER_URL"])
    return lambda: int(r.llen(pg_env["GRAFT_QUEUE"]))


def upload(api: Api, key: str, data: bytes, name: str = "digits") -> Any:
    files = {"file": ("digits.zip", data, "application/zip")}
    return api.as_team(key, "POST", "/v1/datasets", files=files, data={"name": name})


def small_zip() -> bytes:
    return zip_dataset(digits_images(per_class=12))


def job_spec(dataset_id: str, **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dataset_id": dataset_id,
        "base_model": "resnet18",
        "pretrained_weights": "none",
        "strategy": "full",
        "hyperparameters": {"epochs": 2, "batch_size": 16, "image_size": 16},
    }
    spec.update(over)
    return spec


def test_admin_routes_need_the_admin_key(api: Api) -> None:
    assert api.client.post("/v1/teams", json={"name": "x"}).status_code == 401
    wrong = api.client.post(
        "/v1/teams", json={"name": "x"}, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "unauthorized"
    key = api.new_team()
    as_team = api.as_team(key, "POST", "/v1/teams", json={"name": "y"})
    assert as_team.status_code == 403
    assert as_team.json()["error"]["code"] == "admin_only"


def test_key_is_shown_once_and_stored_hashed(api: Api, pg_url: str) -> None:
    key = api.new_team()
    from sqlalchemy import text

    from app.db.session import get_engine

    with get_engine(pg_url).connect() as conn:
        stored = [r[0] for r in conn.execute(text("SELECT key_hash FROM api_keys"))]
    assert key not in stored
    assert len(stored) == 1 and len(stored[0]) == 64


def test_requests_without_a_valid_key_are_401(api: Api) -> None:
    for method, url in [("GET", "/v1/datasets"), ("GET", "/v1/jobs"), ("GET", "/v1/models")]:
        r = api.client.request(method, url)
        assert r.status_code == 401
        assert set(r.json()["error"]) == {"code", "message", "param"}
        assert api.as_team("graft_wrong", method, url).status_code == 401


def test_upload_lists_classes_and_counts_and_dedupes(api: Api) -> None:
    key = api.new_team()
    r = upload(api, key, small_zip())
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["status"] == "ready"
    assert ds["id"].startswith("ds_")
    assert {c["name"]: c["count"] for c in ds["classes"]} == {
        "digit_0": 12,
        "digit_1": 12,
        "digit_2": 12,
    }
    assert ds["num_images"] == 36
    again = upload(api, key, small_zip())
    assert again.status_code == 200
    assert again.json()["id"] == ds["id"]


def test_upload_that_is_not_an_archive_is_a_clear_4xx(api: Api) -> None:
    key = api.new_team()
    r = upload(api, key, b"this is not an archive at all")
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "not_an_archive"
    r = upload(api, key, zip_dataset({"only_one": digits_images((1,), 5)["digit_1"]}))
    assert r.status_code == 422
    assert r.json()["error"]["code"] in ("too_few_classes", "no_class_folders")
    assert api.as_team(key, "GET", "/v1/datasets").json()["data"] == []


def test_upload_over_the_limit_is_413(pg_env: dict[str, str], make_api: Callable[[], Api]) -> None:
    from tests.conftest import configure

    configure({"GRAFT_MAX_UPLOAD_BYTES": "1000"})
    api = make_api()
    key = api.new_team()
    r = upload(api, key, small_zip())
    assert r.status_code == 413
    assert "1000" in r.json()["error"]["message"]


def test_pagination(api: Api) -> None:
    key = api.new_team()
    ids = []
    for i in range(3):
        data = zip_dataset(digits_images(per_class=6, offset=i * 6))
        ids.append(upload(api, key, data, name=f"d{i}").json()["id"])
    first = api.as_team(key, "GET", "/v1/datasets?limit=2").json()
    assert [d["id"] for d in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True
    second = api.as_team(key, "GET", f"/v1/datasets?limit=2&cursor={first['next_cursor']}").json()
    assert [d["id"] for d in second["data"]] == [ids[0]]
    assert second["has_more"] is False and second["next_cursor"] is None


def test_job_is_queued_after_commit_and_sent_to_redis(
    api: Api, queue_len: Callable[[], int]
) -> None:
    key = api.new_team()
    ds = upload(api, key, small_zip()).json()
    before = queue_len()
    r = api.as_team(key, "POST", "/v1/jobs", json=job_spec(ds["id"]))
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued" and job["id"].startswith("job_")
    assert job["spec"]["hyperparameters"]["learning_rate"] == 0.001  # defaults filled in
    assert queue_len() == before + 1
    got = api.as_team(key, "GET", f"/v1/jobs/{job['id']}").json()
    assert got["status"] == "queued"
    events = api.as_team(key, "GET", f"/v1/jobs/{job['id']}/events").json()
    assert [e["type"] for e in events] == ["job.queued"]


@pytest.mark.parametrize(
    ("change", "status", "param"),
    [
        ({"surprise": 1}, 422, "surprise"),
        ({"base_model": "resnet9000"}, 422, "base_model"),
        ({"base_model": "mdl_doesnotexist"}, 404, "base_model"),
        ({"hyperparameters": {"epochs": 0}}, 422, "hyperparameters.epochs"),
        ({"hyperparameters": {"epochs": 100000}}, 422, "hyperparameters.epochs"),
        ({"hyperparameters": {"batch_size": 0}}, 422, "hyperparameters.batch_size"),
        ({"hyperparameters": {"epochs": 2, "colour": "red"}}, 422, "hyperparameters.colour"),
        ({"strategy": "partial"}, 422, "unfreeze_last"),
        ({"hyperparameters": {"random_invert": 1.5}}, 422, "hyperparameters.random_invert"),
        (
            {"hyperparameters": {"random_invert": 0.5, "augmentation": "none"}},
            422,
            "hyperparameters.random_invert",
        ),
        (
            {"strategy": "linear_probe", "hyperparameters": {"random_invert": 0.5}},
            422,
            "hyperparameters.random_invert",
        ),
        ({"strategy": "sideways"}, 422, "strategy"),
        ({"dataset_id": "ds_missing"}, 404, "dataset_id"),
        ({"resources": {"devices": 0}}, 422, "resources.devices"),
        ({"resources": {"devices": -2}}, 422, "resources.devices"),
        ({"resources": {"devices": 9}}, 422, "resources.devices"),  # GRAFT_MAX_DEVICES_PER_JOB
        ({"resources": {"devices": 10_000}}, 422, "resources.devices"),
        ({"resources": {"gpus": 2}}, 422, "resources.gpus"),
    ],
)
def test_bad_job_specs_name_the_field_and_queue_nothing(
    api: Api,
    queue_len: Callable[[], int],
    change: dict[str, Any],
    status: int,
    param: str,
) -> None:
    key = api.new_team()
    ds = upload(api, key, small_zip()).json()
    before = queue_len()
    r = api.as_team(key, "POST", "/v1/jobs", json={**job_spec(ds["id"]), **change})
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
    assert queue_len() == before
    assert api.as_team(key, "GET", "/v1/jobs").json()["data"] == []


def test_a_job_on_two_devices_goes_to_the_queue_of_two_device_workers(
    api: Api, pg_env: dict[str, str], queue_len: Callable[[], int]
) -> None:
    r = redis.Redis.from_url(pg_env["GRAFT_BROKER_URL"])
    two = f"{pg_env['GRAFT_QUEUE']}.x2"
    key = api.new_team()
    ds = upload(api, key, small_zip()).json()
    before, before_two = queue_len(), r.llen(two)
    job = api.as_team(
        key, "POST", "/v1/jobs", json={**job_spec(ds["id"]), "resources": {"devices": 2}}
    )
    assert job.status_code == 201, job.text
    assert job.json()["spec"]["resources"] == {"devices": 2}
    assert (queue_len(), r.llen(two)) == (before, before_two + 1)
    too_many = api.as_team(
        key, "POST", "/v1/jobs", json={**job_spec(ds["id"]), "resources": {"devices": 9}}
    ).json()["error"]
    assert too_many["code"] == "too_many_devices"
    assert too_many["message"] == (
        "The job asks for 9 devices; a job may use at most 8 here (GRAFT_MAX_DEVICES_PER_JOB)."
    )


def test_teams_cannot_see_each_other(api: Api) -> None:
    a, b = api.new_team("a"), api.new_team("b")
    ds = upload(api, a, small_zip()).json()
    job = api.as_team(a, "POST", "/v1/jobs", json=job_spec(ds["id"])).json()
    for url in (
        f"/v1/datasets/{ds['id']}",
        f"/v1/jobs/{job['id']}",
        f"/v1/jobs/{job['id']}/events",
    ):
        assert api.as_team(a, "GET", url).status_code == 200
        r = api.as_team(b, "GET", url)
        assert r.status_code == 404, url
        assert r.json()["error"]["code"].endswith("_not_found")
    assert api.as_team(b, "POST", f"/v1/jobs/{job['id']}/cancel").status_code == 404
    assert api.as_team(b, "DELETE", f"/v1/datasets/{ds['id']}").status_code == 404
    r = api.as_team(b, "POST", "/v1/jobs", json=job_spec(ds["id"]))
    assert r.status_code == 404 and r.json()["error"]["param"] == "dataset_id"
    assert api.as_team(b, "GET", "/v1/datasets").json()["data"] == []
    assert api.as_team(b, "GET", "/v1/jobs").json()["data"] == []


def test_cancel_a_queued_job_and_delete_rules(api: Api) -> None:
    key = api.new_team()
    ds = upload(api, key, small_zip()).json()
    job = api.as_team(key, "POST", "/v1/jobs", json=job_spec(ds["id"])).json()
    busy = api.as_team(key, "DELETE", f"/v1/datasets/{ds['id']}")
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "dataset_in_use"
    r = api.as_team(key, "POST", f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    again = api.as_team(key, "POST", f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409
    listed = api.as_team(key, "GET", "/v1/jobs?status=cancelled").json()["data"]
    assert [j["id"] for j in listed] == [job["id"]]
    assert api.as_team(key, "DELETE", f"/v1/datasets/{ds['id']}").status_code == 204
    assert api.as_team(key, "GET", f"/v1/datasets/{ds['id']}").status_code == 404


def test_health_and_docs(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    assert api.client.get("/docs").status_code == 200
    schema = api.client.get("/openapi.json").json()
    job_create = schema["components"]["schemas"]["JobCreate"]
    assert job_create["examples"][0]["base_model"] == "resnet18"
    assert job_create["additionalProperties"] is False
    hp = schema["components"]["schemas"]["Hyperparameters"]["properties"]
    assert hp["epochs"]["minimum"] == 1 and hp["epochs"]["maximum"] == 500


class _Exploit:
    """A pickle that would create a file when unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_model_upload_takes_safetensors_only(api: Api, tmp_path: Any) -> None:
    import pickle

    key = api.new_team()
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"state_dict": _Exploit(str(marker))})
    r = api.as_team(
        key,
        "POST",
        "/v1/models",
        files={"file": ("model.pt", evil, "application/octet-stream")},
        data={"architecture": "resnet18", "classes": '["a", "b"]'},
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_checkpoint"
    assert not marker.exists()
    assert api.as_team(key, "GET", "/v1/models").json()["data"] == []
    weights = resnet18_weights()
    bad_classes = api.as_team(
        key,
        "POST",
        "/v1/models",
        files={"file": ("m.safetensors", weights)},
        data={"architecture": "resnet18", "classes": "cat,dog"},
    )
    assert bad_classes.status_code == 422 and bad_classes.json()["error"]["param"] == "classes"
    unknown = api.as_team(
        key,
        "POST",
        "/v1/models",
        files={"file": ("m.safetensors", weights)},
        data={"architecture": "resnet9000", "classes": '["a", "b"]'},
    )
    assert unknown.status_code == 422 and unknown.json()["error"]["param"] == "architecture"
    ok = api.as_team(
        key,
        "POST",
        "/v1/models",
        files={"file": ("m.safetensors", weights)},
        data={"architecture": "resnet18", "classes": '["a", "b"]', "name": "in-house"},
    )
    assert ok.status_code == 201, ok.text
    model = ok.json()
    assert model["source"] == "upload" and model["classes"] == ["a", "b"]
    raw = api.as_team(key, "GET", f"/v1/models/{model['id']}/artifacts/safetensors").content
    assert raw == weights


def test_bad_domain_adaptation_combinations(api: Api, queue_len: Callable[[], int]) -> None:
    key, other = api.new_team("a"), api.new_team("b")
    source = upload(api, key, small_zip()).json()["id"]
    labeled_target = upload(api, key, zip_dataset(digits_images(per_class=6, offset=20))).json()[
        "id"
    ]
    files = {"file": ("t.zip", zip_dataset(digits_images(per_class=5, offset=30)), "x")}
    unlabeled = api.as_team(key, "POST", "/v1/datasets", files=files, data={"kind": "unlabeled"})
    assert unlabeled.status_code == 201, unlabeled.text
    target = unlabeled.json()["id"]
    foreign = api.as_team(
        other, "POST", "/v1/datasets", files=files, data={"kind": "unlabeled"}
    ).json()["id"]
    odd = upload(api, key, zip_dataset(digits_images((7, 8), per_class=6))).json()["id"]
    before = queue_len()
    cases = [
        ({"target_dataset_id": labeled_target}, 422, "domain_adaptation.target_dataset_id"),
        ({"target_dataset_id": foreign}, 404, "domain_adaptation.target_dataset_id"),
        (
            {"target_dataset_id": target, "target_eval_dataset_id": target},
            422,
            "domain_adaptation.target_eval_dataset_id",
        ),
        (
            {"target_dataset_id": target, "target_eval_dataset_id": odd},
            422,
            "domain_adaptation.target_eval_dataset_id",
        ),
        ({"target_dataset_id": target, "surprise": 1}, 422, "domain_adaptation.surprise"),
        # auto keeps the best method on labelled target images: it needs them.
        (
            {"method": "auto", "target_dataset_id": target},
            422,
            "domain_adaptation.target_eval_dataset_id",
        ),
        (
            {"method": "auto", "target_dataset_id": target, "target_eval_dataset_id": odd},
            422,
            "domain_adaptation.target_eval_dataset_id",
        ),
        (
            {
                "method": "auto",
                "target_dataset_id": target,
                "target_eval_dataset_id": labeled_target,
                "time_budget_seconds": 0,
            },
            422,
            "domain_adaptation.time_budget_seconds",
        ),
    ]
    for adaptation, status, param in cases:
        spec = job_spec(source, domain_adaptation={"method": "tent", **adaptation})
        r = api.as_team(key, "POST", "/v1/jobs", json=spec)
        assert (r.status_code, r.json()["error"]["param"]) == (status, param), r.text
        if adaptation.get("method") == "auto" and "target_eval_dataset_id" not in adaptation:
            assert r.json()["error"]["code"] == "target_eval_required"
            assert "labeled dataset of the target domain" in r.json()["error"]["message"]
    no_bn = job_spec(
        source,
        base_model="convnext_tiny",
        hyperparameters={"image_size": 32},
        domain_adaptation={"method": "adabn", "target_dataset_id": target},
    )
    r = api.as_team(key, "POST", "/v1/jobs", json=no_bn)
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "adaptation_not_applicable"
    assert "BatchNorm" in r.json()["error"]["message"]
    assert queue_len() == before
    ok = job_spec(source, domain_adaptation={"method": "adabn", "target_dataset_id": target})
    assert api.as_team(key, "POST", "/v1/jobs", json=ok).status_code == 201
    # The target of a queued job cannot be deleted.
    assert api.as_team(key, "DELETE", f"/v1/datasets/{target}").status_code == 409


def test_ingestion_limits_come_from_the_settings(
    pg_env: dict[str, str], make_api: Callable[[], Api]
) -> None:
    from tests.conftest import configure

    configure({"GRAFT_MAX_IMAGE_PIXELS": "100"})  # the digits are 16 x 16 = 256 pixels
    api = make_api()
    key = api.new_team()
    r = upload(api, key, small_zip())
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_images"
    assert "too_many_pixels" in r.json()["error"]["message"]
    configure({"GRAFT_MAX_IMAGE_PIXELS": "40000000", "GRAFT_ARCHIVE_MAX_ENTRIES": "5"})
    r = upload(make_api(), key, small_zip())
    assert r.status_code == 422 and r.json()["error"]["code"] == "archive_too_large"
    assert "max_entries" in r.json()["error"]["message"]
