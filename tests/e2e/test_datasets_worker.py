"""Datasets with a real `graft worker` process: background ingestion, the seeded split
that jobs record, and the decode-once cache that later jobs reuse."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    Api,
    WorkerProcess,
    base_env,
    configure,
    digits_images,
    wait_for,
    zip_dataset,
)

pytestmark = pytest.mark.e2e

SIZE = 16
DIGITS = (0, 1, 2)
CLASSES = tuple(f"digit_{d}" for d in DIGITS)
PER_CLASS = 20
VALIDATION_SPLIT = 0.2


def post_dataset(api: Api, key: str, archive: bytes) -> Any:
    files = {"file": ("d.zip", archive, "application/zip")}
    return api.as_team(key, "POST", "/v1/datasets", files=files, data={"name": "digits"})


def wait_dataset(api: Api, key: str, dataset_id: str, timeout: float = 60) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        ds = api.as_team(key, "GET", f"/v1/datasets/{dataset_id}").json()
        return ds if ds["status"] != "processing" else None

    return dict(wait_for(settled, timeout, f"dataset {dataset_id} to be ingested"))


# -- (a) background ingestion on PostgreSQL + Redis ---------------------------


@pytest.mark.postgres
@pytest.mark.redis
def test_large_archives_are_ingested_by_the_worker(
    pg_env: dict[str, str],
    make_api: Callable[[], Api],
    start_worker: Callable[[dict[str, str]], WorkerProcess],
) -> None:
    env = {**pg_env, "GRAFT_INLINE_INGEST_BYTES": "1"}
    configure(env)
    api = make_api()
    key = api.new_team()
    data = Path(env["GRAFT_DATA_DIR"])

    # Sent before any worker runs: the API must answer at once, without ingesting.
    r = post_dataset(api, key, zip_dataset(digits_images(DIGITS, per_class=12, size=SIZE)))
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["status"] == "processing"
    assert ds["num_images"] == 0 and ds["classes"] == []
    assert not (data / "datasets" / ds["id"]).exists()

    # A broken archive too large to ingest inline: the request cannot tell yet.
    good = zip_dataset(digits_images((3, 4), per_class=10, size=SIZE))
    broken_r = post_dataset(api, key, good[: len(good) // 2])
    assert broken_r.status_code == 201, broken_r.text
    broken = broken_r.json()
    assert broken["status"] == "processing" and broken["error"] is None
    early = api.as_team(key, "POST", "/v1/jobs", json=job_spec(ds["id"], seed=0))
    assert early.status_code == 422 and early.json()["error"]["code"] == "dataset_not_ready"

    worker = start_worker(env)
    ready = wait_dataset(api, key, ds["id"])
    assert ready["status"] == "ready", (ready, worker.log())
    assert ready["num_images"] == 36
    assert ready["classes"] == [{"name": c, "count": 12} for c in CLASSES]
    assert ready["rejected"] == [] and ready["error"] is None
    assert (data / "datasets" / ds["id"] / "manifest.json").is_file()

    failed = wait_dataset(api, key, broken["id"])
    assert failed["status"] == "failed", (failed, worker.log())
    assert failed["error"]["code"] == "not_an_archive"
    assert failed["error"]["message"]
    assert failed["num_images"] == 0
    assert not (data / "datasets" / broken["id"]).exists()
    # The pending archives are consumed either way.
    assert sorted(p.name for p in (data / "uploads").iterdir()) == []

    # No job may use a dataset that failed.
    refused = api.as_team(key, "POST", "/v1/jobs", json=job_spec(broken["id"], seed=0))
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "dataset_not_ready"


# -- (b) and (c) jobs on the embedded defaults ---------------------------------


def job_spec(dataset_id: str, *, seed: int) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "base_model": "resnet18",
        "pretrained_weights": "none",
        "strategy": "linear_probe",
        "validation_split": VALIDATION_SPLIT,
        "hyperparameters": {
            "epochs": 1,
            "batch_size": 16,
            "image_size": SIZE,
            "augmentation": "none",
            "seed": seed,
        },
    }


def run_job(api: Api, key: str, dataset_id: str, seed: int) -> dict[str, Any]:
    r = api.as_team(key, "POST", "/v1/jobs", json=job_spec(dataset_id, seed=seed))
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]

    def done() -> dict[str, Any] | None:
        job = api.as_team(key, "GET", f"/v1/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    job = dict(wait_for(done, 180, f"job {job_id} to finish"))
    assert job["status"] == "succeeded", job
    return job


def validation_set(api: Api, key: str, job: dict[str, Any]) -> dict[str, Any]:
    model_id = job["result"]["model_id"]
    r = api.as_team(key, "GET", f"/v1/models/{model_id}/artifacts/metadata")
    assert r.status_code == 200, r.text
    return dict(r.json()["validation_set"])


@pytest.fixture(scope="module")
def three_jobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One dataset, three one-epoch jobs in a row (seeds 7, 7, 8) on SQLite and the file
    broker, with the cache file's identity read after the first and the second."""
    from fastapi.testclient import TestClient

    from app.db.migrate import upgrade
    from app.main import create_app

    root = tmp_path_factory.mktemp("embedded")
    env = base_env(root, GRAFT_DATABASE_URL="", GRAFT_BROKER_URL="")
    configure(env)
    upgrade()
    worker = WorkerProcess(env, root / "worker.log")
    try:
        worker.wait_ready()
        with TestClient(create_app()) as client:
            api = Api(client)
            key = api.new_team()
            r = post_dataset(api, key, zip_dataset(digits_images(DIGITS, PER_CLASS, SIZE)))
            assert r.status_code == 201, r.text
            ds = r.json()
            cache = root / "data" / "datasets" / ds["id"] / "cache" / f"{SIZE}.npy"
            cache_before_jobs = cache.exists()
            jobs, val_sets, stats = [], [], []
            for seed in (7, 7, 8):
                job = run_job(api, key, ds["id"], seed)
                jobs.append(job)
                val_sets.append(validation_set(api, key, job))
                st = cache.stat()
                stats.append((st.st_ino, st.st_mtime_ns, st.st_size))
            yield {
                "dataset": ds,
                "jobs": jobs,
                "val_sets": val_sets,
                "cache": cache,
                "cache_before_jobs": cache_before_jobs,
                "cache_stats": stats,
                "data_dir": root / "data",
            }
    finally:
        worker.stop(9)


def test_same_seed_records_the_same_validation_set(three_jobs: dict[str, Any]) -> None:
    first, second, _ = three_jobs["val_sets"]
    assert first["paths"] and first == second
    assert three_jobs["jobs"][0]["id"] != three_jobs["jobs"][1]["id"]
    # The job's own record agrees with the model's metadata.
    from app.storage import read_json

    for job, recorded in zip(three_jobs["jobs"], three_jobs["val_sets"], strict=True):
        path = three_jobs["data_dir"] / "jobs" / job["id"] / "validation_set.json"
        assert read_json(path) == recorded


def test_another_seed_records_another_validation_set(three_jobs: dict[str, Any]) -> None:
    first, _, other = three_jobs["val_sets"]
    assert len(other["paths"]) == len(first["paths"])
    assert set(other["paths"]) != set(first["paths"])


def test_validation_set_is_stratified(three_jobs: dict[str, Any]) -> None:
    per_class_val = round(PER_CLASS * VALIDATION_SPLIT)
    for val in three_jobs["val_sets"]:
        folders = Counter(path.split("/")[1] for path in val["paths"])
        assert folders == dict.fromkeys(CLASSES, per_class_val)
        labels = Counter(val["labels"])
        assert labels == dict.fromkeys(range(len(CLASSES)), per_class_val)
        for path, label in zip(val["paths"], val["labels"], strict=True):
            assert path.split("/")[1] == CLASSES[label]


def test_images_are_decoded_once_per_size(three_jobs: dict[str, Any]) -> None:
    assert three_jobs["cache_before_jobs"] is False  # ingestion does not decode for training
    cache: Path = three_jobs["cache"]
    assert cache.is_file()
    import numpy as np

    arr = np.load(cache, mmap_mode="r")
    assert arr.shape == (len(CLASSES) * PER_CLASS, SIZE, SIZE, 3) and arr.dtype == np.uint8
    after_first, after_second, after_third = three_jobs["cache_stats"]
    assert after_second == after_first  # same inode, mtime and size: not rewritten
    assert after_third == after_first
    leftovers = [p.name for p in cache.parent.iterdir() if p != cache]
    assert leftovers == []
