"""GRAFT_STORAGE_URL=s3://…: the pipeline and the reliability cases with the artifacts in a
bucket (moto's S3 server on 127.0.0.1), and no directory shared between processes: the
API and each worker have a data directory of their own, so whatever one of them reads
from another must have come through the bucket.
"""

from __future__ import annotations

import hashlib
import io
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import (
    REDIS_URL,
    Api,
    WorkerProcess,
    base_env,
    configure,
    digits_images,
    wait_for,
    zip_dataset,
)
from tests.e2e.test_reliability import create, events, job, wait_in_epoch, wait_status
from tests.s3 import S3Server

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

SIZE = 24


@pytest.fixture
def stack(
    tmp_path: Path, pg_url: str, s3: S3Server, make_api: Callable[[], Api]
) -> Iterator[dict[str, Any]]:
    bucket = s3.new_bucket()
    env = base_env(
        tmp_path / "api",
        GRAFT_DATABASE_URL=pg_url,
        GRAFT_BROKER_URL=REDIS_URL,
        GRAFT_LEASE_SECONDS="5",
        GRAFT_REAPER_INTERVAL_SECONDS="1",
        GRAFT_REDISPATCH_AFTER_SECONDS="2",
        # Every archive is ingested by a worker: it reaches the worker through the bucket.
        GRAFT_INLINE_INGEST_BYTES="1",
        **s3.env(bucket),
    )
    configure(env)
    api = make_api()
    key = api.new_team()
    workers: list[WorkerProcess] = []
    st: dict[str, Any] = {
        "env": env,
        "api": api,
        "key": key,
        "root": tmp_path,
        "workers": workers,
        "bucket": bucket,
        "s3": s3,
    }
    start(st, "a")
    files = {"file": ("d.zip", zip_dataset(digits_images((0, 1, 2), 60, SIZE)), "application/zip")}
    ds = api.as_team(key, "POST", "/v1/datasets", files=files).json()
    assert ds["status"] == "processing"

    def ready() -> bool:
        d = api.as_team(key, "GET", f"/v1/datasets/{ds['id']}").json()
        assert d["status"] != "failed", d
        return bool(d["status"] == "ready")

    wait_for(ready, 60, "the dataset to be ingested by the worker")
    st["dataset_id"] = ds["id"]
    yield st
    for w in workers:
        w.stop(signal.SIGKILL)


def start(stack: dict[str, Any], name: str) -> WorkerProcess:
    """A worker with a data directory of its own."""
    env = {**stack["env"], "GRAFT_DATA_DIR": str(stack["root"] / name)}
    worker = WorkerProcess(env, stack["root"] / f"{name}.log")
    stack["workers"].append(worker)
    worker.wait_ready()
    return worker


def keys(stack: dict[str, Any], prefix: str = "") -> list[str]:
    return [k.removeprefix("graft/") for k in stack["s3"].keys(stack["bucket"], "graft/" + prefix)]


def only_the_validation_set(stack: dict[str, Any], job_id: str) -> None:
    """The worker deletes a succeeded job's checkpoints (all attempts', in the bucket)
    right after it recorded the success, so a poll may see the success first."""
    kept = [f"jobs/{job_id}/validation_set.json"]
    wait_for(lambda: keys(stack, f"jobs/{job_id}/") == kept, 30, "the checkpoints to go")


def test_the_pipeline_with_a_bucket_and_no_shared_directory(stack: dict[str, Any]) -> None:
    api, key, ds = stack["api"], stack["key"], stack["dataset_id"]
    # The archive went through the bucket to the worker, and is gone once ingested.
    assert keys(stack, "uploads/") == []
    assert f"datasets/{ds}/.complete.json" in keys(stack, f"datasets/{ds}/")
    # The API never had the dataset's files: it reads the images from the bucket.
    assert not (stack["root"] / "api" / "data" / "datasets" / ds).exists()
    images = api.as_team(key, "GET", f"/v1/datasets/{ds}/images?limit=2").json()["data"]
    assert len(images) == 2
    assert (stack["root"] / "api" / "data" / "datasets" / ds / ".complete.json").exists()

    job_id = create(stack, epochs=2, export=["onnx"], quantization=["int8"])
    j = wait_status(stack, job_id, "succeeded")
    model_id = j["result"]["model_id"]
    model = api.as_team(key, "GET", f"/v1/models/{model_id}").json()
    stored = keys(stack, f"models/{model_id}/")
    assert f"models/{model_id}/.complete.json" in stored
    for artifact in model["artifacts"]:
        assert f"models/{model_id}/{artifact['file']}" in stored
    # What the job keeps is in the bucket; its checkpoints went with its success.
    only_the_validation_set(stack, job_id)
    local = stack["root"] / "a" / "jobs" / job_id
    wait_for(lambda: not local.exists(), 30, "the worker's own copy to go")

    # Downloads stream from the bucket, byte for byte what the model object says.
    for artifact in model["artifacts"]:
        r = api.as_team(key, "GET", f"/v1/models/{model_id}/artifacts/{artifact['format']}")
        assert r.status_code == 200, r.text
        assert hashlib.sha256(r.content).hexdigest() == artifact["sha256"]
        assert int(r.headers["content-length"]) == artifact["size_bytes"]
    png = io.BytesIO()
    Image.new("L", (SIZE, SIZE)).save(png, format="PNG")
    files = [("files", ("x.png", png.getvalue(), "image/png"))]
    r = api.as_team(key, "POST", f"/v1/models/{model_id}/predict", files=files)
    assert r.status_code == 200, r.text  # the API fetched the model from the bucket

    # Or, as a setting, a redirect to a presigned URL of the bucket.
    configure({**stack["env"], "GRAFT_STORAGE_DOWNLOADS": "redirect"})
    r = api.as_team(
        key, "GET", f"/v1/models/{model_id}/artifacts/safetensors", follow_redirects=False
    )
    assert r.status_code == 307
    signed = httpx.get(r.headers["location"])
    weights = next(a for a in model["artifacts"] if a["format"] == "safetensors")
    assert hashlib.sha256(signed.content).hexdigest() == weights["sha256"]

    assert api.as_team(key, "DELETE", f"/v1/models/{model_id}").status_code == 204
    assert keys(stack, f"models/{model_id}/") == []


def test_a_job_killed_on_one_worker_resumes_on_another_from_the_bucket(
    stack: dict[str, Any],
) -> None:
    a = stack["workers"][0]
    job_id = create(stack, epochs=3)
    wait_in_epoch(stack, job_id, 2)
    a.stop(signal.SIGKILL)
    checkpointed = len(job(stack, job_id)["metrics"])
    assert checkpointed >= 1
    assert f"jobs/{job_id}/attempt-1/checkpoint.pt" in keys(stack, f"jobs/{job_id}/")
    start(stack, "b")  # never saw the job: its directory is empty
    j = wait_status(stack, job_id, "succeeded")
    assert j["attempt"] == 2
    assert [m["epoch"] for m in j["metrics"]] == [1, 2, 3]
    resumed = [e["data"] for e in events(stack, job_id) if e["type"] == "job.resumed"]
    assert [r["epoch"] for r in resumed] == [checkpointed]
    only_the_validation_set(stack, job_id)


def test_sigterm_on_one_worker_resumes_at_the_same_step_on_another(
    stack: dict[str, Any],
) -> None:
    a = stack["workers"][0]
    job_id = create(stack, epochs=3)
    wait_in_epoch(stack, job_id, 2)
    a.proc.send_signal(signal.SIGTERM)
    a.proc.wait(timeout=60)
    assert wait_status(stack, job_id, "queued", timeout=10)["attempt"] == 0
    start(stack, "b")
    j = wait_status(stack, job_id, "succeeded")
    evs = events(stack, job_id)
    stopped = next(e["data"] for e in evs if e["type"] == "job.preempted")
    resumed = [e["data"] for e in evs if e["type"] == "job.resumed"]
    assert stopped["step"] >= 1
    assert resumed == [{"epoch": stopped["epoch"] - 1, "step": stopped["step"]}]
    assert [m["epoch"] for m in j["metrics"]] == [1, 2, 3]


def test_the_same_message_three_times_is_one_run(stack: dict[str, Any]) -> None:
    from app.queue import enqueue_job

    start(stack, "b")
    job_id = create(stack, epochs=2)
    assert enqueue_job(job_id) and enqueue_job(job_id)
    j = wait_status(stack, job_id, "succeeded")
    assert j["attempt"] == 1
    assert [e["type"] for e in events(stack, job_id)].count("job.running") == 1
    models = stack["api"].as_team(stack["key"], "GET", "/v1/models").json()["data"]
    assert [m["id"] for m in models] == [j["result"]["model_id"]]
