"""`POST /v1/models/{id}/evaluations` against PostgreSQL (no worker runs here: the
scoring itself is tests/e2e/test_evaluations.py). What is checked at the request, each
a clear 4xx naming the field with nothing queued; and where an evaluation lives
(its own ids and list, never among the jobs)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.db.session import session_scope
from app.repositories.datasets import DatasetRepository
from tests.conftest import Api
from tests.integration.test_datasets_api import assert_error, zip_bytes
from tests.integration.test_datasets_api import post as post_dataset
from tests.unit.archives import class_entries
from tests.weights import weights

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def api(pg_env: dict[str, str], make_api: Callable[[], Api]) -> Api:
    return make_api()


def dataset(api: Api, key: str, classes: dict[str, int], seed: int = 0) -> dict[str, Any]:
    r = post_dataset(api, key, zip_bytes(class_entries(classes, start_seed=seed)))
    assert r.status_code == 201 and r.json()["status"] == "ready", r.text
    return dict(r.json())


def model(api: Api, key: str, classes: str | None = '["cat", "dog"]') -> dict[str, Any]:
    """An uploaded resnet18 with these classes; a backbone (no head) when classes is None."""
    kind = "backbone" if classes is None else "model"
    n = 0 if classes is None else len(classes.split(","))
    form = {"architecture": "resnet18", "kind": kind, **({"classes": classes} if classes else {})}
    r = api.as_team(
        key,
        "POST",
        "/v1/models",
        files={"file": ("m.safetensors", weights(classes=n, kind=kind))},
        data=form,
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def evaluate(api: Api, key: str, model_id: str, **body: Any) -> Any:
    return api.as_team(key, "POST", f"/v1/models/{model_id}/evaluations", json=body)


def evaluations(api: Api, key: str) -> list[dict[str, Any]]:
    r = api.as_team(key, "GET", "/v1/evaluations")
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


def test_an_evaluation_is_queued_under_its_own_id_and_list(api: Api) -> None:
    key = api.new_team()
    ds = dataset(api, key, {"dog": 2, "cat": 3})  # the same classes, in another order
    mdl = model(api, key)
    r = evaluate(api, key, mdl["id"], dataset_id=ds["id"])
    assert r.status_code == 202, r.text
    ev = r.json()
    assert ev["id"].startswith("ev_") and r.headers["location"] == f"/v1/evaluations/{ev['id']}"
    assert ev["status"] == "queued" and ev["result"] is None and ev["progress"] is None
    assert (ev["model_id"], ev["dataset_id"], ev["artifact"]) == (
        mdl["id"],
        ds["id"],
        "safetensors",
    )

    got = api.as_team(key, "GET", r.headers["location"])
    assert got.status_code == 200 and got.json() == ev
    assert [e["id"] for e in evaluations(api, key)] == [ev["id"]]
    # Not a job: the jobs list and the job endpoints do not see it, nor it them.
    assert api.as_team(key, "GET", "/v1/jobs").json()["data"] == []
    assert_error(api.as_team(key, "GET", f"/v1/jobs/{ev['id']}"), 404, "job_not_found")
    assert_error(api.as_team(key, "POST", f"/v1/jobs/{ev['id']}/cancel"), 404, "job_not_found")
    # Another team sees nothing.
    other = api.new_team("other")
    err = assert_error(
        api.as_team(other, "GET", r.headers["location"]), 404, "evaluation_not_found"
    )
    assert err["param"] == "evaluation_id"
    assert evaluations(api, other) == []

    # The model cannot be deleted while an evaluation of it waits.
    assert_error(api.as_team(key, "DELETE", f"/v1/models/{mdl['id']}"), 409, "model_in_use")
    cancelled = api.as_team(key, "POST", f"/v1/evaluations/{ev['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = api.as_team(key, "POST", f"/v1/evaluations/{ev['id']}/cancel")
    assert "Evaluation" in assert_error(again, 409, "job_finished")["message"]
    assert api.as_team(key, "DELETE", f"/v1/models/{mdl['id']}").status_code == 204


def test_the_same_idempotency_key_gives_the_same_evaluation(api: Api) -> None:
    key = api.new_team()
    ds, mdl = dataset(api, key, {"cat": 2, "dog": 2}), model(api, key)
    headers = {"Idempotency-Key": "eval-1"}
    first = api.as_team(
        key, "POST", f"/v1/models/{mdl['id']}/evaluations", json={"dataset_id": ds["id"]},
        headers=headers,
    )  # fmt: skip
    second = api.as_team(
        key, "POST", f"/v1/models/{mdl['id']}/evaluations", json={"dataset_id": ds["id"]},
        headers=headers,
    )  # fmt: skip
    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert len(evaluations(api, key)) == 1


def test_classes_that_differ_by_name_are_a_422_that_lists_them(api: Api) -> None:
    key = api.new_team()
    mdl = model(api, key, '["cat", "dog", "bird"]')
    ds = dataset(api, key, {"cat": 2, "dog": 2, "fish": 2})
    err = assert_error(evaluate(api, key, mdl["id"], dataset_id=ds["id"]), 422, "class_mismatch")
    assert err["param"] == "dataset_id"
    assert "missing from the dataset: bird" in err["message"]
    assert "not classes of the model: fish" in err["message"]
    assert evaluations(api, key) == []


def test_what_cannot_be_evaluated_is_refused_and_nothing_is_queued(
    api: Api, pg_env: dict[str, str]
) -> None:
    key, other = api.new_team(), api.new_team("other")
    mdl = model(api, key)
    ds = dataset(api, key, {"cat": 2, "dog": 2})
    theirs = dataset(api, other, {"cat": 2, "dog": 2}, seed=50)
    their_model = model(api, other)

    good = {"dataset_id": ds["id"]}
    cases: list[tuple[Any, int, str, str]] = [
        (evaluate(api, key, mdl["id"], dataset_id=theirs["id"]), 404, "dataset_not_found",
         "dataset_id"),
        (evaluate(api, key, their_model["id"], **good), 404, "model_not_found", "model_id"),
        (evaluate(api, key, mdl["id"], **good, artifact="onnx-int8"), 422, "artifact_not_found",
         "artifact"),
        (evaluate(api, key, mdl["id"], **good, artifact="pickle"), 422, "validation_error",
         "artifact"),
        (evaluate(api, key, mdl["id"], **good, epochs=3), 422, "validation_error", "epochs"),
        (evaluate(api, key, mdl["id"]), 422, "validation_error", "dataset_id"),
    ]  # fmt: skip
    for response, status, code, param in cases:
        err = assert_error(response, status, code)
        assert err["param"] == param, err
    assert "it has: safetensors" in cases[2][0].json()["error"]["message"]

    backbone = model(api, key, None)
    err = assert_error(
        evaluate(api, key, backbone["id"], dataset_id=ds["id"]), 422, "model_has_no_head"
    )
    assert err["param"] == "model_id"

    unlabeled = post_dataset(
        api, key, zip_bytes(class_entries({"x": 3}, start_seed=90)), kind="unlabeled"
    ).json()
    err = assert_error(
        evaluate(api, key, mdl["id"], dataset_id=unlabeled["id"]), 422, "dataset_not_labeled"
    )
    with session_scope() as s:
        row = DatasetRepository(s).get(ds["id"])
        assert row is not None
        row.status = "processing"
    assert_error(evaluate(api, key, mdl["id"], dataset_id=ds["id"]), 422, "dataset_not_ready")
    with session_scope() as s:
        row = DatasetRepository(s).get(ds["id"])
        assert row is not None
        row.status = "ready"

    # A model whose files are gone from the store cannot be scored.
    shutil.rmtree(Path(pg_env["GRAFT_DATA_DIR"]) / "models" / mdl["id"])
    err = assert_error(
        evaluate(api, key, mdl["id"], dataset_id=ds["id"]), 409, "model_files_missing"
    )
    assert err["param"] == "model_id"
    assert evaluations(api, key) == []
