"""`POST /v1/searches` and the search loop without a worker, on PostgreSQL and on
SQLite, with Optuna's real RDB storage in each: what the request refuses (a 422 or 404
naming the field, with no search, job or study created), the first trials queued as
jobs, the slot lock under concurrent advances, and cancel. Trials that really train
are tests/e2e/test_searches.py."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import optuna
import pytest

from app.config import get_settings
from app.db.session import read_scope
from app.repositories.jobs import JobRepository
from app.repositories.searches import SearchRepository
from app.services import searches, studies
from tests.conftest import Api
from tests.integration.test_datasets_api import assert_error
from tests.integration.test_evaluations_api import dataset, model


@pytest.fixture(params=["postgres", "sqlite"])
def api(request: pytest.FixtureRequest, make_api: Callable[[], Api]) -> Api:
    # Either database, with Optuna's tables from the same migrations.
    request.getfixturevalue("pg_env" if request.param == "postgres" else "sqlite_env")
    return make_api()


def body(dataset_id: str, **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dataset_id": dataset_id,
        "space": {
            "base_model": ["resnet18", "mobilenet_v3_small"],
            "learning_rate": {"low": 1e-4, "high": 3e-2, "log": True},
        },
        "fixed": {"pretrained_weights": "none", "image_size": 32, "epochs": 4},
        "budget": {"max_trials": 6, "max_parallel": 2},
    }
    spec.update(over)
    return spec


def post(api: Api, key: str, spec: dict[str, Any]) -> Any:
    return api.as_team(key, "POST", "/v1/searches", json=spec)


def nothing_created() -> None:
    with read_scope() as session:
        assert SearchRepository(session).running_ids() == []
        assert session.query(JobRepository.model).count() == 0
    summaries = optuna.get_all_study_summaries(studies.storage(get_settings().sqlalchemy_url))
    assert summaries == []


def test_a_search_queues_its_first_trials_as_jobs(api: Api) -> None:
    key = api.new_team()
    ds = dataset(api, key, {"cat": 3, "dog": 3})
    r = post(api, key, body(ds["id"]))
    assert r.status_code == 201, r.text
    search = r.json()
    assert search["id"].startswith("srch_") and search["status"] == "running"
    assert search["budget_used"] == {"trials": 2, "epochs": 0}
    assert search["trials"] == {"queued": 2}
    assert search["recommended_model_id"] is None
    assert search["recommendation"] == "No trial has succeeded yet."
    board = search["leaderboard"]
    assert [t["number"] for t in board] == [0, 1]
    jobs = api.as_team(key, "GET", "/v1/jobs").json()["data"]
    assert {j["id"] for j in jobs} == {t["job_id"] for t in board}
    for job, trial in zip(sorted(jobs, key=lambda j: j["id"]), board, strict=True):
        assert job["search_id"] == search["id"] and job["status"] == "queued"
        spec = job["spec"]
        # The trial's job is the fixed settings with the sampled params over them.
        assert trial["params"] == {
            "base_model": spec["base_model"],
            "learning_rate": spec["hyperparameters"]["learning_rate"],
        }
        assert 1e-4 <= spec["hyperparameters"]["learning_rate"] <= 3e-2
        assert spec["hyperparameters"]["epochs"] == 4 and spec["pretrained_weights"] == "none"
    got = api.as_team(key, "GET", f"/v1/searches/{search['id']}")
    assert got.status_code == 200 and got.json() == search
    page = api.as_team(key, "GET", "/v1/searches").json()
    assert [s["id"] for s in page["data"]] == [search["id"]]
    # Another team sees none of it.
    other = api.new_team("other")
    assert_error(api.as_team(other, "GET", f"/v1/searches/{search['id']}"), 404, "search_not_found")


def test_the_same_seed_asks_for_the_same_first_trials(api: Api) -> None:
    key = api.new_team()
    ds = dataset(api, key, {"cat": 3, "dog": 3})
    params = []
    for _ in range(2):
        search = post(api, key, body(ds["id"], seed=7)).json()
        params.append([t["params"] for t in search["leaderboard"]])
    assert params[0] == params[1]
    # Each slot draws anew: the two first trials differ.
    assert params[0][0] != params[0][1]
    third = post(api, key, body(ds["id"], seed=8)).json()
    assert [t["params"] for t in third["leaderboard"]] != params[0]


@pytest.mark.parametrize(
    ("change", "status", "code", "param"),
    [
        ({"space": {}}, 422, "empty_space", "space"),
        ({"space": {"base_model": ["resnet18"]}}, 422, "empty_space", "space"),
        ({"space": {"base_model": []}}, 422, "validation_error", "space.base_model"),
        (
            {"space": {"base_model": ["resnet18", "resnet9000"]}},
            422,
            "unknown_base_model",
            "space.base_model[1]",
        ),
        (
            {"space": {"base_model": ["resnet18"], "learning_rate": {"low": 0.1, "high": 0.01}}},
            422,
            "invalid_input",
            "space.learning_rate",
        ),
        (
            {"space": {"base_model": ["resnet18"], "learning_rate": {"low": 0.1, "high": 0.1}}},
            422,
            "invalid_input",
            "space.learning_rate",
        ),
        ({"budget": {"max_trials": 0}}, 422, "validation_error", "budget.max_trials"),
        ({"budget": {"max_trials": 101}}, 422, "over_quota", "budget.max_trials"),
        (
            {"budget": {"max_trials": 4, "max_epochs_total": 3}},
            422,
            "invalid_input",
            "budget.max_epochs_total",
        ),
        (
            {"constraints": {"max_latency_ms": 5}},
            422,
            "constraint_not_measurable",
            "constraints.quantization",
        ),
        (
            {
                "space": {"base_model": ["resnet18", "vit_b_16"]},
                "fixed": {"pretrained_weights": "none", "image_size": 40},
            },
            422,
            "invalid_input",
            "fixed.image_size",
        ),
        (
            {
                "space": {"base_model": ["resnet18", "vgg16"], "strategy": ["partial"]},
                "fixed": {"unfreeze_last": 9, "image_size": 32},
            },
            422,
            "invalid_input",
            "fixed.unfreeze_last",
        ),
        (
            {"space": {"base_model": ["resnet18", "x"]}, "bogus": 1},
            422,
            "validation_error",
            "bogus",
        ),
        ({"dataset_id": "ds_missing"}, 404, "dataset_not_found", "dataset_id"),
    ],
)
def test_bad_requests_name_the_field_and_create_nothing(
    api: Api, change: dict[str, Any], status: int, code: str, param: str
) -> None:
    key = api.new_team()
    ds = dataset(api, key, {"cat": 3, "dog": 3})
    r = post(api, key, {**body(ds["id"]), **change})
    error = assert_error(r, status, code)
    assert error["param"] == param, error
    nothing_created()


def test_more_parallel_trials_than_the_team_may_run_is_a_422(api: Api) -> None:
    team = api.admin("POST", "/v1/teams", json={"name": "small"}).json()
    quota = api.admin("PATCH", f"/v1/teams/{team['id']}", json={"quotas": {"running_jobs": 2}})
    assert quota.status_code == 200, quota.text
    key = api.admin("POST", f"/v1/teams/{team['id']}/keys").json()["key"]
    ds = dataset(api, key, {"cat": 3, "dog": 3})
    r = post(api, key, body(ds["id"], budget={"max_trials": 6, "max_parallel": 3}))
    error = assert_error(r, 422, "over_quota")
    assert error["param"] == "budget.max_parallel" and "running_jobs quota" in error["message"]
    nothing_created()


def test_another_teams_dataset_or_model_in_the_space_is_a_404(api: Api) -> None:
    key, other = api.new_team(), api.new_team("other")
    theirs = dataset(api, other, {"cat": 3, "dog": 3})
    mine = dataset(api, key, {"cat": 3, "dog": 3})
    their_model = model(api, other)
    error = assert_error(post(api, key, body(theirs["id"])), 404, "dataset_not_found")
    assert error["param"] == "dataset_id"
    spec = body(mine["id"], space={"base_model": ["resnet18", their_model["id"]]})
    error = assert_error(post(api, key, spec), 404, "model_not_found")
    assert error["param"] == "space.base_model[1]"
    with read_scope() as session:
        assert SearchRepository(session).running_ids() == []


def test_concurrent_advances_never_give_one_slot_two_trials(api: Api) -> None:
    key = api.new_team()
    ds = dataset(api, key, {"cat": 3, "dog": 3})
    spec = body(ds["id"], budget={"max_trials": 6, "max_parallel": 1})
    search = post(api, key, spec).json()
    search_id = search["id"]
    # The only trial ends (as a worker would end it), then eight advances race for
    # its successor's single slot.
    with read_scope() as session:
        (first,) = JobRepository(session).for_search(search_id)
    cancelled = api.as_team(key, "POST", f"/v1/jobs/{first.id}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def race() -> None:
        barrier.wait()
        try:
            searches.advance(search_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with read_scope() as session:
        jobs = JobRepository(session).for_search(search_id)
        row = SearchRepository(session).get(search_id)
        assert row is not None and row.trials_created == 2
    assert [j.status for j in jobs] == ["cancelled", "queued"]
    # Optuna: the cancelled trial told failed; the losers' asks told failed too, so no
    # trial is left running but the one a job holds.
    url = get_settings().sqlalchemy_url
    study = optuna.load_study(study_name=search_id, storage=studies.storage(url))
    running = [t.number for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert running == [jobs[1].trial_number]


def test_cancel_stops_every_trial_and_no_new_one_starts(api: Api) -> None:
    key = api.new_team()
    ds = dataset(api, key, {"cat": 3, "dog": 3})
    search = post(api, key, body(ds["id"])).json()
    r = api.as_team(key, "POST", f"/v1/searches/{search['id']}/cancel")
    assert r.status_code == 200, r.text
    cancelled = r.json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    assert cancelled["trials"] == {"cancelled": 2}
    searches.advance(search["id"])  # no new trial for a cancelled search
    again = api.as_team(key, "GET", f"/v1/searches/{search['id']}").json()
    assert again["budget_used"]["trials"] == 2 and again["trials"] == {"cancelled": 2}
    url = get_settings().sqlalchemy_url
    study = optuna.load_study(study_name=search["id"], storage=studies.storage(url))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    assert_error(
        api.as_team(key, "POST", f"/v1/searches/{search['id']}/cancel"), 409, "search_finished"
    )
