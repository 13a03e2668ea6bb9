"""Jobs that survive: real worker processes killed, stopped and doubled, a Redis server
of the test's own that it stops and starts, and a local webhook receiver.

Every test asserts the job's end state and its events.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
from tests.e2e.helpers import RedisServer, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]

SIZE = 24


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def stack(
    tmp_path: Path, pg_url: str, redis_server: RedisServer, make_api: Callable[[], Api]
) -> Iterator[dict[str, Any]]:
    env = base_env(
        tmp_path,
        GRAFT_DATABASE_URL=pg_url,
        GRAFT_BROKER_URL=redis_server.url,
        GRAFT_LEASE_SECONDS="5",
        GRAFT_REAPER_INTERVAL_SECONDS="1",
        GRAFT_REDISPATCH_AFTER_SECONDS="2",
        GRAFT_MAX_ATTEMPTS="3",
        GRAFT_WEBHOOK_BACKOFF_SECONDS="0.3",
        GRAFT_WEBHOOK_TIMEOUT_SECONDS="2",
    )
    configure(env)
    api = make_api()
    key = api.new_team()
    files = {"file": ("d.zip", zip_dataset(digits_images((0, 1, 2), 60, SIZE)), "application/zip")}
    ds = api.as_team(key, "POST", "/v1/datasets", files=files).json()
    workers: list[WorkerProcess] = []
    yield {
        "env": env,
        "api": api,
        "key": key,
        "dataset_id": ds["id"],
        "root": tmp_path,
        "workers": workers,
        "redis": redis_server,
    }
    for w in workers:
        w.stop(signal.SIGKILL)


def start(stack: dict[str, Any], name: str, **env: str) -> WorkerProcess:
    worker = WorkerProcess({**stack["env"], **env}, stack["root"] / f"{name}.log")
    stack["workers"].append(worker)
    worker.wait_ready()
    return worker


def create(stack: dict[str, Any], epochs: int = 4, **over: Any) -> str:
    spec: dict[str, Any] = {
        "dataset_id": stack["dataset_id"],
        "base_model": "resnet18",
        "pretrained_weights": "none",
        "strategy": "full",
        "hyperparameters": {
            "epochs": epochs,
            "batch_size": 8,
            "image_size": SIZE,
            "augmentation": "none",
        },
        **over,
    }
    r = stack["api"].as_team(stack["key"], "POST", "/v1/jobs", json=spec)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def job(stack: dict[str, Any], job_id: str) -> dict[str, Any]:
    return dict(stack["api"].as_team(stack["key"], "GET", f"/v1/jobs/{job_id}").json())


def events(stack: dict[str, Any], job_id: str) -> list[dict[str, Any]]:
    return list(stack["api"].as_team(stack["key"], "GET", f"/v1/jobs/{job_id}/events").json())


def types(stack: dict[str, Any], job_id: str) -> list[str]:
    return [e["type"] for e in events(stack, job_id)]


def wait_status(
    stack: dict[str, Any], job_id: str, status: str, timeout: float = 240
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        j = job(stack, job_id)
        if j["status"] in ("succeeded", "failed", "cancelled") and j["status"] != status:
            raise AssertionError(f"job ended {j['status']}, expected {status}: {j['error']}")
        return j if j["status"] == status else None

    return dict(wait_for(reached, timeout, f"job {job_id} to be {status}"))


def wait_in_epoch(stack: dict[str, Any], job_id: str, epoch: int, attempt: int = 1) -> None:
    def there() -> bool:
        j = job(stack, job_id)
        p = j["progress"] or {}
        return j["attempt"] == attempt and p.get("epoch") == epoch and p.get("step", 0) >= 1

    wait_for(there, 180, f"job {job_id} to be in epoch {epoch}", interval=0.1)


def assert_one_model(stack: dict[str, Any], j: dict[str, Any]) -> None:
    models = stack["api"].as_team(stack["key"], "GET", "/v1/models").json()["data"]
    assert [m["id"] for m in models] == [j["result"]["model_id"]]
    model_dirs = list((stack["root"] / "data" / "models").iterdir())
    assert [d.name for d in model_dirs] == [j["result"]["model_id"]]


def test_sigkill_mid_epoch_resumes_from_the_checkpoint(stack: dict[str, Any]) -> None:
    a = start(stack, "a")
    job_id = create(stack)
    wait_in_epoch(stack, job_id, 2)
    a.stop(signal.SIGKILL)
    checkpointed = len(job(stack, job_id)["metrics"])  # epochs done when it died
    assert 1 <= checkpointed < 4
    start(stack, "b")
    j = wait_status(stack, job_id, "succeeded")
    assert j["attempt"] == 2
    assert [m["epoch"] for m in j["metrics"]] == [1, 2, 3, 4]
    evs = events(stack, job_id)
    resumed = [e for e in evs if e["type"] == "job.resumed"]
    # It continues after the last checkpoint, never from zero.
    assert len(resumed) == 1 and resumed[0]["data"]["epoch"] == checkpointed
    t = [e["type"] for e in evs]
    # The next worker gets it from the reaper (re-queued) or from the broker's
    # re-delivery of the unacknowledged message; either way one new claim.
    assert t.count("job.running") == 2 and t.count("job.requeued") <= 1
    assert t.count("job.succeeded") == 1
    assert t.count("job.progress") == 4  # every epoch once: none ran twice to completion
    assert_one_model(stack, j)
    # With the model stored, both attempts' checkpoints are gone; what it validated on stays.
    job_dir = stack["root"] / "data" / "jobs" / job_id
    # Deleted right after the success is recorded: a poll may see the success first.
    kept = ["validation_set.json"]
    wait_for(lambda: sorted(p.name for p in job_dir.iterdir()) == kept, 30, "checkpoints to go")


def processes_of(job_id: str) -> list[int]:
    """torchrun and the ranks of a job (their command lines name its run directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and job_id.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_two_device_job_waits_for_a_two_device_worker_and_survives_a_killed_rank(
    stack: dict[str, Any],
) -> None:
    one = start(stack, "one", GRAFT_WORKER_DEVICES="1")
    job_id = create(stack, epochs=2, resources={"devices": 2})
    plain = create(stack, epochs=1)
    wait_status(stack, plain, "succeeded")  # the one-device worker was taking jobs,
    assert job(stack, job_id)["status"] == "queued"  # but not this one
    one.stop()
    start(stack, "two", GRAFT_WORKER_DEVICES="2")
    wait_in_epoch(stack, job_id, 2)
    assert len(processes_of(job_id)) == 3  # torchrun and its two ranks
    run_dir = stack["root"] / "data" / "jobs" / job_id / "attempt-1" / "ddp"
    os.kill(int((run_dir / "rank-1.pid").read_text()), signal.SIGKILL)
    j = wait_status(stack, job_id, "succeeded")
    assert j["attempt"] == 2
    evs = events(stack, job_id)
    retried = [e["data"]["reason"] for e in evs if e["type"] == "job.retrying"]
    assert len(retried) == 1 and "Training process 1 of 2 ended without a word" in retried[0]
    checkpointed = next(e["data"] for e in evs if e["type"] == "job.resumed")["epoch"]
    assert checkpointed >= 1  # the second attempt went on from the first one's checkpoint
    distributed = [e["data"] for e in evs if e["type"] == "job.distributed"]
    assert [d["world_size"] for d in distributed] == [2, 2]
    assert [m["epoch"] for m in j["metrics"]] == [1, 2]
    train_images = distributed[0]["train_images"]
    for m in j["metrics"]:
        assert m["train_samples"] == train_images + m["padded_samples"]
    assert not processes_of(job_id)
    models = stack["api"].as_team(stack["key"], "GET", "/v1/models").json()["data"]
    expected = {j["result"]["model_id"], job(stack, plain)["result"]["model_id"]}
    assert {m["id"] for m in models} == expected and len(models) == 2


def test_a_frozen_worker_that_wakes_after_losing_its_lease_writes_nothing(
    stack: dict[str, Any],
) -> None:
    """SIGSTOP stands for a worker that hangs (a long pause, a network partition): its
    lease expires, another worker takes the job, and when it wakes it must stop."""
    a = start(stack, "a")
    job_id = create(stack, epochs=3)
    wait_in_epoch(stack, job_id, 2)
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        start(stack, "b")
        wait_for(lambda: job(stack, job_id)["attempt"] == 2, 60, "worker b to take the job")
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    j = wait_status(stack, job_id, "succeeded")
    wait_for(lambda: "lease lost" in a.log(), 30, "worker a to notice it lost the lease")
    assert j["attempt"] == 2
    assert [m["epoch"] for m in j["metrics"]] == [1, 2, 3]
    assert types(stack, job_id).count("job.succeeded") == 1
    assert_one_model(stack, j)


def test_the_same_message_twice_is_one_claim_and_one_run(stack: dict[str, Any]) -> None:
    from app.queue import enqueue_job

    start(stack, "a")
    start(stack, "b")
    job_id = create(stack, epochs=1)
    assert enqueue_job(job_id) and enqueue_job(job_id)  # three deliveries in all
    j = wait_status(stack, job_id, "succeeded")
    time.sleep(2)  # let the other deliveries arrive; they must find nothing to claim
    assert j["attempt"] == 1
    assert types(stack, job_id).count("job.running") == 1
    assert job(stack, job_id)["attempt"] == 1
    assert_one_model(stack, j)


def test_sigterm_checkpoints_requeues_and_does_not_count(stack: dict[str, Any]) -> None:
    a = start(stack, "a")
    job_id = create(stack, epochs=3)
    wait_in_epoch(stack, job_id, 2)
    a.proc.send_signal(signal.SIGTERM)
    a.proc.wait(timeout=60)  # a bounded grace period: the worker exits by itself
    j = wait_status(stack, job_id, "queued", timeout=10)
    assert j["attempt"] == 0  # a pre-emption is not an attempt that failed
    assert "job.preempted" in types(stack, job_id)
    start(stack, "b")
    j = wait_status(stack, job_id, "succeeded")
    assert j["attempt"] == 1
    assert [m["epoch"] for m in j["metrics"]] == [1, 2, 3]
    evs = events(stack, job_id)
    stopped = next(e["data"] for e in evs if e["type"] == "job.preempted")
    resumed = [e["data"] for e in evs if e["type"] == "job.resumed"]
    # Mid-epoch: it resumes at the very step it stopped at.
    assert stopped["step"] >= 1
    assert resumed == [{"epoch": stopped["epoch"] - 1, "step": stopped["step"]}]
    assert_one_model(stack, j)


def test_a_job_that_keeps_losing_its_worker_fails_after_max_attempts(
    stack: dict[str, Any],
) -> None:
    job_id = create(stack, epochs=50)
    for attempt in (1, 2, 3):
        w = start(stack, f"w{attempt}")
        wait_in_epoch(stack, job_id, 1, attempt=attempt)
        w.stop(signal.SIGKILL)
    start(stack, "last")
    j = wait_status(stack, job_id, "failed", timeout=60)
    assert j["error"]["code"] == "too_many_attempts"
    assert j["attempt"] == 3
    assert types(stack, job_id).count("job.running") == 3


def test_broker_down_at_creation_then_back(
    stack: dict[str, Any], redis_server: RedisServer
) -> None:
    redis_server.stop()
    job_id = create(stack, epochs=1)  # answered 201 while the broker is down
    assert job(stack, job_id)["status"] == "queued"
    redis_server.start()
    start(stack, "a")
    j = wait_status(stack, job_id, "succeeded", timeout=120)
    assert j["attempt"] == 1
    assert types(stack, job_id).count("job.running") == 1


def test_cancel_queued_and_running(stack: dict[str, Any]) -> None:
    queued = create(stack, epochs=1)
    r = stack["api"].as_team(stack["key"], "POST", f"/v1/jobs/{queued}/cancel")
    assert r.json()["status"] == "cancelled"
    running = create(stack, epochs=50)
    start(stack, "a")
    wait_in_epoch(stack, running, 2)  # so there is a checkpoint to keep
    stack["api"].as_team(stack["key"], "POST", f"/v1/jobs/{running}/cancel")
    j = wait_status(stack, running, "cancelled", timeout=20)
    assert j["result"] is None
    # The queued one never started, and the worker is free for the next job.
    assert "job.running" not in types(stack, queued)
    nxt = create(stack, epochs=1)
    wait_status(stack, nxt, "succeeded", timeout=120)
    # The cancelled job keeps its last checkpoint.
    assert list((stack["root"] / "data" / "jobs" / running).glob("attempt-*/checkpoint.pt"))


def test_idempotency_key(stack: dict[str, Any]) -> None:
    api, key = stack["api"], stack["key"]
    spec = {
        "dataset_id": stack["dataset_id"],
        "base_model": "resnet18",
        "pretrained_weights": "none",
    }
    h = {"Idempotency-Key": "run-1"}
    first = api.as_team(key, "POST", "/v1/jobs", json=spec, headers=h)
    again = api.as_team(key, "POST", "/v1/jobs", json=spec, headers=h)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = api.as_team(key, "POST", "/v1/jobs", json={**spec, "strategy": "full"}, headers=h)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert len(api.as_team(key, "GET", "/v1/jobs").json()["data"]) == 1
    data = zip_dataset(digits_images((3, 4), 10, 16))
    up = {"file": ("x.zip", data, "application/zip")}
    d1 = api.as_team(key, "POST", "/v1/datasets", files=up, headers={"Idempotency-Key": "ds-1"})
    d2 = api.as_team(key, "POST", "/v1/datasets", files=up, headers={"Idempotency-Key": "ds-1"})
    assert d1.status_code == 201 and d2.status_code == 200 and d1.json()["id"] == d2.json()["id"]
    up2 = {"file": ("y.zip", zip_dataset(digits_images((5, 6), 10, 16)), "application/zip")}
    d3 = api.as_team(key, "POST", "/v1/datasets", files=up2, headers={"Idempotency-Key": "ds-1"})
    assert d3.status_code == 409


class Receiver:
    """A local webhook receiver whose behaviour each test scripts."""

    def __init__(self, respond: Callable[[int], int | None]) -> None:
        self.calls: list[dict[str, Any]] = []
        self.respond = respond
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                n = len(receiver.calls)
                receiver.calls.append({"headers": dict(self.headers), "body": body})
                code = receiver.respond(n)
                if code is None:  # never answer (until the test releases it)
                    receiver.release.wait(60)
                    code = 200
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()


def team_secret(stack: dict[str, Any]) -> str:
    from sqlalchemy import text

    from app.db.session import get_engine

    with get_engine(stack["env"]["GRAFT_DATABASE_URL"]).connect() as conn:
        return str(conn.execute(text("SELECT webhook_secret FROM teams")).scalar_one())


def valid_signature(secret: str, call: dict[str, Any]) -> bool:
    header = call["headers"]["Graft-Signature"]
    parts = dict(p.split("=", 1) for p in header.split(","))
    mac = hmac.new(secret.encode(), parts["t"].encode() + b"." + call["body"], hashlib.sha256)
    return hmac.compare_digest(mac.hexdigest(), parts["v1"])


def test_webhooks_in_order_signed_and_retried(stack: dict[str, Any]) -> None:
    # The first two deliveries answer 500, then everything is accepted.
    receiver = Receiver(lambda n: 500 if n < 2 else 200)
    try:
        start(stack, "a")
        job_id = create(stack, epochs=2, webhook_url=receiver.url)
        wait_status(stack, job_id, "succeeded")
        expected = ["job.running", "job.progress", "job.progress", "job.succeeded"]
        wait_for(lambda: len(receiver.calls) >= len(expected) + 2, 30, "all deliveries")
        secret = team_secret(stack)
        assert all(valid_signature(secret, c) for c in receiver.calls)
        seen = [json.loads(c["body"])["type"] for c in receiver.calls]
        assert seen == ["job.running"] * 3 + expected[1:]  # retried in place, then in order
        attempts = [e["data"] for e in events(stack, job_id) if e["type"] == "webhook.delivery"]
        assert [a["outcome"] for a in attempts[:3]] == ["retrying", "retrying", "delivered"]
        assert [a["status_code"] for a in attempts[:3]] == [500, 500, 200]
    finally:
        receiver.close()


def test_a_receiver_that_never_answers_does_not_delay_the_job(stack: dict[str, Any]) -> None:
    receiver = Receiver(lambda n: None)
    try:
        start(stack, "a")
        job_id = create(stack, epochs=2, webhook_url=receiver.url)
        # The receiver holds every call until released; the job must end regardless.
        j = wait_status(stack, job_id, "succeeded")
        assert not receiver.release.is_set()
        assert j["status"] == "succeeded"
        assert len(receiver.calls) >= 1
    finally:
        receiver.close()


def test_sse_stream_shows_every_epoch_and_the_end(stack: dict[str, Any]) -> None:
    start(stack, "a")
    job_id = create(stack, epochs=3)
    api, key = stack["api"], stack["key"]
    seen: list[tuple[int, str]] = []
    with api.client.stream(
        "GET",
        f"/v1/jobs/{job_id}/events",
        headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream"},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        current: dict[str, str] = {}
        for line in response.iter_lines():
            if line.startswith(("id:", "event:")):
                k, v = line.split(":", 1)
                current[k] = v.strip()
            elif line == "" and "event" in current:
                seen.append((int(current["id"]), current["event"]))
                current = {}
    kinds = [k for _, k in seen]
    assert kinds.count("job.progress") == 3
    assert "job.succeeded" in kinds
    # Resume: from the id of the first progress event, only what came after it.
    first_progress = next(i for i, k in seen if k == "job.progress")
    with api.client.stream(
        "GET",
        f"/v1/jobs/{job_id}/events",
        headers={
            "Authorization": f"Bearer {key}",
            "Accept": "text/event-stream",
            "Last-Event-ID": str(first_progress),
        },
    ) as response:
        ids = [int(line[3:]) for line in response.iter_lines() if line.startswith("id:")]
    assert ids and min(ids) > first_progress
