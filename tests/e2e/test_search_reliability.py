"""Model searches that survive what a job survives: a worker SIGKILLed mid-trial, the
broker down when a trial is created. Real workers on PostgreSQL and a Redis server of
the test's own (tests/e2e/test_reliability.py's stack).

A module of their own: the module-scoped worker of tests/e2e/test_searches.py shares
the database, and its maintenance pass would advance these searches too, sending
their trials to its own queue and data directory.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.e2e.test_reliability import (  # noqa: F401  (fixtures)
    redis_server,
    stack,
    start,
)
from tests.e2e.test_searches import FIXED, study_states

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]


def test_a_sigkilled_worker_mid_trial_leaves_no_lost_and_no_doubled_trial(
    stack: dict[str, Any],  # noqa: F811
) -> None:
    a = start(stack, "a")
    api, key = stack["api"], stack["key"]
    body = {
        "dataset_id": stack["dataset_id"],
        "space": {"learning_rate": {"low": 1e-3, "high": 1e-2}},
        "fixed": {**FIXED, "strategy": "full", "batch_size": 8, "epochs": 3},
        "budget": {"max_trials": 2, "max_parallel": 1},
        "pruner": "none",
    }
    search = api.as_team(key, "POST", "/v1/searches", json=body).json()
    first = search["leaderboard"][0]["job_id"]

    def job(job_id: str) -> dict[str, Any]:
        return dict(api.as_team(key, "GET", f"/v1/jobs/{job_id}").json())

    def in_epoch_two() -> bool:
        p = job(first)["progress"] or {}
        return p.get("epoch") == 2 and p.get("step", 0) >= 1

    wait_for(in_epoch_two, 180, "trial 0 to be in epoch 2", interval=0.1)
    a.stop(signal.SIGKILL)
    start(stack, "b")

    def ended() -> dict[str, Any] | None:
        s = api.as_team(key, "GET", f"/v1/searches/{search['id']}").json()
        return s if s["status"] != "running" else None

    done = wait_for(ended, 300, "the search to end", interval=0.5)
    assert done["status"] == "succeeded", done
    numbers = sorted(t["number"] for t in done["leaderboard"])
    assert len(numbers) == 2 and numbers[0] == 0 and len(set(numbers)) == 2
    resumed = job(first)
    assert resumed["status"] == "succeeded" and resumed["attempt"] == 2
    assert [m["epoch"] for m in resumed["metrics"]] == [1, 2, 3]
    # Each epoch counted once, though trial 0 ran part of epoch 2 twice.
    assert done["budget_used"] == {"trials": 2, "epochs": 6}
    jobs = api.as_team(key, "GET", "/v1/jobs").json()["data"]
    assert sorted(j["id"] for j in jobs) == sorted(t["job_id"] for t in done["leaderboard"])
    # Optuna: each stored trial complete. Two advances may race for slot 1 (this
    # worker's, after trial 0, and its maintenance pass's): the loser's ask is told
    # failed at once and never becomes a job, so no trial is left running.
    states = study_states(search["id"])
    assert {n: states[n] for n in numbers} == {n: "COMPLETE" for n in numbers}
    assert {s for n, s in states.items() if n not in numbers} <= {"FAIL"}


def test_a_search_started_while_the_broker_is_down_runs_once_it_is_back(
    stack: dict[str, Any],  # noqa: F811
) -> None:
    api, key = stack["api"], stack["key"]
    stack_redis = stack["redis"]
    stack_redis.stop()
    body = {
        "dataset_id": stack["dataset_id"],
        "space": {"learning_rate": {"low": 1e-3, "high": 1e-2}},
        "fixed": {**FIXED, "epochs": 1},
        "budget": {"max_trials": 2, "max_parallel": 1},
    }
    r = api.as_team(key, "POST", "/v1/searches", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["trials"] == {"queued": 1}
    stack_redis.start()
    start(stack, "a")

    def ended() -> dict[str, Any] | None:
        s = api.as_team(key, "GET", f"/v1/searches/{r.json()['id']}").json()
        return s if s["status"] != "running" else None

    done = wait_for(ended, 300, "the search to end", interval=0.5)
    assert done["status"] == "succeeded" and done["trials"] == {"succeeded": 2}, done
