"""Model searches that really train: real worker processes, Optuna's real storage on
PostgreSQL (and on SQLite under `graft serve`), trials that run, get pruned and get
cancelled (a SIGKILL and a broker outage: tests/e2e/test_search_reliability.py).

The pruning tests are built so that their outcome is certain: with seed 4 the
sampler's first two draws are learning rates 0.013 and 9.3e-6 (the tests check this
premise). Both trials start from the same weights; in epoch 1's 40 steps trial 0 learns
to tell the four digits apart while trial 1's head barely moves from where it started,
so trial 1 is far behind at the first rung, where successive halving keeps only the
best, and is pruned.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest

from app.config import get_settings
from app.services import studies
from tests.conftest import Api, digits_images, wait_for, zip_dataset
from tests.e2e.helpers import embedded_service

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

SIZE = 16
FIXED = {
    "base_model": "resnet18",
    "pretrained_weights": "none",
    "strategy": "linear_probe",
    "image_size": SIZE,
    "batch_size": 4,
    "augmentation": "none",
}
PRUNING_SPACE = {"learning_rate": {"low": 1e-6, "high": 0.1, "log": True}}


def digits_zip() -> bytes:
    return zip_dataset(digits_images((0, 1, 2, 3), 50, SIZE))


@pytest.fixture(scope="module")
def team(make_api_module: Callable[[], Api]) -> Iterator[dict[str, Any]]:
    api = make_api_module()
    key = api.new_team("searchers")
    files = {"file": ("d.zip", digits_zip(), "application/zip")}
    ds = api.as_team(key, "POST", "/v1/datasets", files=files).json()
    assert ds["status"] == "ready", ds
    yield {"api": api, "key": key, "dataset_id": ds["id"]}


def create(team: dict[str, Any], **body: Any) -> dict[str, Any]:
    r = team["api"].as_team(
        team["key"], "POST", "/v1/searches", json={"dataset_id": team["dataset_id"], **body}
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def get(team: dict[str, Any], path: str) -> dict[str, Any]:
    r = team["api"].as_team(team["key"], "GET", path)
    assert r.status_code == 200, r.text
    return dict(r.json())


def wait_search(team: dict[str, Any], search_id: str, timeout: float = 420) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        s = get(team, f"/v1/searches/{search_id}")
        return s if s["status"] != "running" else None

    return dict(wait_for(ended, timeout, f"search {search_id} to end", interval=0.5))


def study_states(search_id: str) -> dict[int, str]:
    url = get_settings().sqlalchemy_url
    study = optuna.load_study(study_name=search_id, storage=studies.storage(url))
    return {t.number: t.state.name for t in study.trials}


def assert_matches_jobs(team: dict[str, Any], search: dict[str, Any]) -> None:
    """Every leaderboard row says what its trial's own job record says."""
    epochs = 0
    for row in search["leaderboard"]:
        job = get(team, f"/v1/jobs/{row['job_id']}")
        assert job["search_id"] == search["id"]
        assert row["status"] == job["status"]
        assert row["epochs"] == len(job["metrics"])
        assert [m["epoch"] for m in job["metrics"]] == list(range(1, row["epochs"] + 1))
        epochs += row["epochs"]
        model_id = (job["result"] or {}).get("model_id")
        assert row["model_id"] == model_id
        if model_id:
            model = get(team, f"/v1/models/{model_id}")
            assert row["value"] == model["metrics"]["val_accuracy"]
        elif job["metrics"]:
            assert row["value"] == max(m["val_accuracy"] for m in job["metrics"])
    assert search["budget_used"] == {"trials": len(search["leaderboard"]), "epochs": epochs}


def test_a_search_runs_to_completion_with_pruning(team: dict[str, Any]) -> None:
    search = create(
        team,
        space=PRUNING_SPACE,
        fixed={**FIXED, "epochs": 3},
        constraints={"quantization": "int8", "max_size_mb": 100},
        budget={"max_trials": 3, "max_parallel": 1},
        seed=4,
    )
    done = wait_search(team, search["id"])
    assert done["status"] == "succeeded", done
    # In the order the trials were created (a trial number may skip one: an ask that
    # lost its slot to another process's is told failed and never becomes a job).
    ordered = sorted(done["leaderboard"], key=lambda t: t["number"])
    assert len(ordered) == 3
    # The premise: the seed's first two draws.
    first, pruned = ordered[0], ordered[1]
    assert first["params"]["learning_rate"] == pytest.approx(0.012956, rel=1e-3)
    assert pruned["params"]["learning_rate"] == pytest.approx(9.305e-6, rel=1e-3)
    assert first["status"] == "succeeded" and first["epochs"] == 3
    assert pruned["status"] == "pruned" and pruned["pruned"] and pruned["epochs"] == 1
    assert pruned["model_id"] is None and pruned["value"] is not None  # its metrics stay
    job = get(team, f"/v1/jobs/{pruned['job_id']}")
    assert job["status"] == "pruned" and job["result"] is None and job["error"] is None
    kinds = [
        e["type"]
        for e in team["api"]
        .as_team(team["key"], "GET", f"/v1/jobs/{pruned['job_id']}/events")
        .json()
    ]
    assert kinds[-1] == "job.pruned" and kinds.count("job.progress") == 1
    assert_matches_jobs(team, done)
    # The recommended model: the best succeeded trial's, a normal model with its report.
    best = max(
        (t for t in done["leaderboard"] if t["status"] == "succeeded"), key=lambda t: t["value"]
    )
    assert done["recommended_model_id"] == best["model_id"]
    assert f"Trial {best['number']}" in done["recommendation"]
    model = get(team, f"/v1/models/{best['model_id']}")
    assert "onnx-int8" in {a["format"] for a in model["artifacts"]}
    assert best["artifact"]["format"] == "onnx-int8" and best["meets_constraints"] is True
    assert done["pareto_front"] and done["pareto_front"][0]["number"] == best["number"]
    # Optuna's study holds the same story.
    states = study_states(done["id"])
    assert states[pruned["number"]] == "PRUNED"
    stored = {t["number"]: "COMPLETE" if t["status"] == "succeeded" else "PRUNED"
              for t in done["leaderboard"]}  # fmt: skip
    assert {n: states[n] for n in stored} == stored
    assert {state for n, state in states.items() if n not in stored} <= {"FAIL"}


def test_constraints_exclude_a_model_that_misses_them_and_say_so(team: dict[str, Any]) -> None:
    # Seed 4 draws resnet18 (int8: about 11 MB) then mobilenet_v3_small (about 1.5 MB).
    search = create(
        team,
        space={"base_model": ["resnet18", "mobilenet_v3_small"]},
        fixed={**FIXED, "epochs": 1},
        constraints={"quantization": "int8", "max_size_mb": 5},
        budget={"max_trials": 2, "max_parallel": 2},
        sampler="random",
        pruner="none",
        seed=4,
    )
    done = wait_search(team, search["id"])
    assert done["status"] == "succeeded", done
    rows = {t["params"]["base_model"]: t for t in done["leaderboard"]}
    big, small = rows["resnet18"], rows["mobilenet_v3_small"]
    assert big["artifact"]["size_mb"] > 5 and big["meets_constraints"] is False
    assert small["artifact"]["size_mb"] <= 5 and small["meets_constraints"] is True
    # The smaller model is recommended whichever is more accurate.
    assert done["recommended_model_id"] == small["model_id"]
    assert "size <= 5 MB on onnx-int8" in done["recommendation"]
    assert_matches_jobs(team, done)


def test_cancel_stops_every_trial(team: dict[str, Any]) -> None:
    search = create(
        team,
        space={"learning_rate": {"low": 1e-4, "high": 1e-2}},
        fixed={**FIXED, "strategy": "full", "epochs": 300},
        budget={"max_trials": 5, "max_parallel": 2},
    )
    jobs = [t["job_id"] for t in search["leaderboard"]]
    wait_for(
        lambda: any(get(team, f"/v1/jobs/{j}")["status"] == "running" for j in jobs),
        120,
        "a trial to run",
    )
    r = team["api"].as_team(team["key"], "POST", f"/v1/searches/{search['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    wait_for(
        lambda: all(get(team, f"/v1/jobs/{j}")["status"] == "cancelled" for j in jobs),
        60,
        "every trial to be cancelled",
    )
    time.sleep(2)  # a worker's advance after its trial ended must not start another
    after = get(team, f"/v1/searches/{search['id']}")
    assert after["budget_used"]["trials"] == 2 and after["trials"] == {"cancelled": 2}
    assert set(study_states(search["id"]).values()) == {"FAIL"}


def test_a_search_on_the_embedded_defaults(tmp_path: Path) -> None:
    """SQLite, the file-system broker and `graft serve`'s own worker."""
    with embedded_service(tmp_path, "embedded", GRAFT_REAPER_INTERVAL_SECONDS="1") as svc:
        headers = {"Authorization": f"Bearer {svc['key']}"}
        client = httpx.Client(base_url=svc["url"], headers=headers, timeout=30)
        files = {"file": ("d.zip", digits_zip(), "application/zip")}
        ds = client.post("/v1/datasets", files=files).json()
        wait_for(
            lambda: client.get(f"/v1/datasets/{ds['id']}").json()["status"] == "ready",
            60,
            "the dataset",
        )
        body = {
            "dataset_id": ds["id"],
            "space": PRUNING_SPACE,
            "fixed": {**FIXED, "epochs": 3},
            "budget": {"max_trials": 3, "max_parallel": 1},
            "seed": 4,
        }
        r = client.post("/v1/searches", json=body)
        assert r.status_code == 201, r.text

        def ended() -> dict[str, Any] | None:
            s = client.get(f"/v1/searches/{r.json()['id']}").json()
            return s if s["status"] != "running" else None

        done = wait_for(ended, 300, "the search to end", interval=0.5)
        assert done["status"] == "succeeded", done
        ordered = sorted(done["leaderboard"], key=lambda t: t["number"])
        assert ordered[1]["params"]["learning_rate"] == pytest.approx(9.305e-6, rel=1e-3)
        assert ordered[0]["status"] == "succeeded" and ordered[1]["status"] == "pruned"
        for row in done["leaderboard"]:
            job = client.get(f"/v1/jobs/{row['job_id']}").json()
            assert (job["status"], len(job["metrics"])) == (row["status"], row["epochs"])
