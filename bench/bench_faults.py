"""Fault table: inject each fault several times into real processes and count outcomes.

Run from the repository root (needs PostgreSQL on 127.0.0.1:5432 and redis-server):

    .venv/bin/python bench/bench_faults.py --repeats 3

For every fault it creates a job, injects the fault into a real `graft worker`
process (or into the broker), lets the system recover, and counts the job as
finished (succeeded exactly once), lost (did not end, or failed), or ran twice (more
than one `job.succeeded` event or more than one model row for the job).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text

from app.queue import enqueue_job
from tests.conftest import (
    Api,
    WorkerProcess,
    base_env,
    configure,
    digits_images,
    scratch_database,
    wait_for,
    zip_dataset,
)
from tests.e2e.helpers import RedisServer, free_port

TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Stack:
    env: dict[str, str]
    root: Path
    redis: RedisServer
    api: Api
    key: str
    dataset_id: str
    workers: list[WorkerProcess] = field(default_factory=list)

    def worker(self) -> WorkerProcess:
        w = WorkerProcess(self.env, self.root / f"worker-{len(self.workers)}.log")
        self.workers.append(w)
        w.wait_ready(120)
        return w

    def create(self, epochs: int = 3) -> str:
        spec = {
            "dataset_id": self.dataset_id,
            "base_model": "resnet18",
            "pretrained_weights": "none",
            "strategy": "full",
            "hyperparameters": {
                "epochs": epochs,
                "batch_size": 8,
                "image_size": 32,
                "augmentation": "none",
            },
        }
        r = self.api.as_team(self.key, "POST", "/v1/jobs", json=spec)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.api.as_team(self.key, "GET", f"/v1/jobs/{job_id}").json())

    def events(self, job_id: str) -> list[str]:
        evs = self.api.as_team(self.key, "GET", f"/v1/jobs/{job_id}/events").json()
        return [e["type"] for e in evs]

    def in_epoch(self, job_id: str, epoch: int, attempt: int = 1) -> None:
        def there() -> bool:
            j = self.job(job_id)
            p = j["progress"] or {}
            return j["attempt"] == attempt and p.get("epoch") == epoch and p.get("step", 0) >= 1

        wait_for(there, 300, f"{job_id} in epoch {epoch}", interval=0.1)


def inject_sigkill(stack: Stack) -> str:
    a = stack.worker()
    job_id = stack.create()
    stack.in_epoch(job_id, 2)
    a.stop(signal.SIGKILL)
    stack.worker()
    return job_id


def inject_sigterm(stack: Stack) -> str:
    a = stack.worker()
    job_id = stack.create()
    stack.in_epoch(job_id, 2)
    a.proc.send_signal(signal.SIGTERM)
    a.proc.wait(120)
    stack.worker()
    return job_id


def inject_duplicate(stack: Stack) -> str:
    stack.worker()
    stack.worker()
    job_id = stack.create(epochs=1)
    enqueue_job(job_id)
    enqueue_job(job_id)
    return job_id


def inject_broker_down(stack: Stack) -> str:
    stack.redis.stop()
    job_id = stack.create(epochs=1)
    stack.redis.start()
    stack.worker()
    return job_id


def inject_frozen_worker(stack: Stack) -> str:
    a = stack.worker()
    job_id = stack.create()
    stack.in_epoch(job_id, 2)
    os.kill(a.proc.pid, signal.SIGSTOP)
    stack.worker()
    wait_for(lambda: stack.job(job_id)["attempt"] == 2, 120, "takeover")
    os.kill(a.proc.pid, signal.SIGCONT)
    return job_id


FAULTS: dict[str, tuple[str, Callable[[Stack], str]]] = {
    "sigkill": ("SIGKILL of the worker mid-epoch 2 of 3", inject_sigkill),
    "sigterm": ("SIGTERM of the worker mid-epoch 2 of 3", inject_sigterm),
    "duplicate": ("the same message delivered 3 times, 2 workers", inject_duplicate),
    "broker_down": ("broker stopped when the job is created", inject_broker_down),
    "frozen": ("worker frozen (SIGSTOP) past its lease, then woken", inject_frozen_worker),
}


def outcome(stack: Stack, job_id: str, timeout: float) -> tuple[str, int, float]:
    start = time.monotonic()
    try:
        wait_for(lambda: stack.job(job_id)["status"] in TERMINAL, timeout, "the end", 0.5)
    except AssertionError:
        return "lost", stack.job(job_id)["attempt"], time.monotonic() - start
    time.sleep(2)  # late duplicate deliveries would show up now
    j = stack.job(job_id)
    succeeded = stack.events(job_id).count("job.succeeded")
    with create_engine(stack.env["GRAFT_DATABASE_URL"]).connect() as conn:
        models = conn.execute(
            text("SELECT count(*) FROM models WHERE job_id = :j"), {"j": job_id}
        ).scalar_one()
    if succeeded > 1 or models > 1:
        return "twice", j["attempt"], time.monotonic() - start
    return (
        ("finished" if j["status"] == "succeeded" else "lost"),
        j["attempt"],
        time.monotonic() - start,
    )


def make_stack(root: Path, db_url: str) -> Stack:
    redis = RedisServer(free_port())
    redis.start()
    env = base_env(
        root,
        GRAFT_DATABASE_URL=db_url,
        GRAFT_BROKER_URL=redis.url,
        GRAFT_LEASE_SECONDS="5",
        GRAFT_REAPER_INTERVAL_SECONDS="1",
        GRAFT_REDISPATCH_AFTER_SECONDS="2",
    )
    configure(env)
    from fastapi.testclient import TestClient

    from app.main import create_app

    client = TestClient(create_app())
    client.__enter__()
    api = Api(client)
    key = api.new_team()
    data = zip_dataset(digits_images((0, 1, 2), 60, 32))
    ds = api.as_team(key, "POST", "/v1/datasets", files={"file": ("d.zip", data)}).json()
    return Stack(env, root, redis, api, key, ds["id"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--faults", default=",".join(FAULTS))
    args = parser.parse_args()
    rows = []
    with scratch_database("graft_bench") as db_url, tempfile.TemporaryDirectory() as tmp:
        stack = make_stack(Path(tmp), db_url)
        try:
            for fault in args.faults.split(","):
                label, inject = FAULTS[fault]
                counts = {"finished": 0, "lost": 0, "twice": 0}
                attempts, seconds = [], []
                for _ in range(args.repeats):
                    job_id = inject(stack)
                    result, attempt, took = outcome(stack, job_id, timeout=300)
                    counts[result] += 1
                    attempts.append(attempt)
                    seconds.append(took)
                    for w in stack.workers:
                        w.stop(signal.SIGKILL)
                    stack.workers.clear()
                rows.append((label, args.repeats, counts, attempts, seconds))
                print(f"{fault}: {counts} attempts={attempts}", flush=True)
        finally:
            for w in stack.workers:
                w.stop(signal.SIGKILL)
            stack.redis.stop()
    print()
    print(
        "| fault | injected | finished | lost | ran twice | attempts used | s to recover (median) |"
    )
    print("|---|---:|---:|---:|---:|---|---:|")
    for label, n, counts, attempts, seconds in rows:
        median = sorted(seconds)[len(seconds) // 2]
        print(
            f"| {label} | {n} | {counts['finished']} | {counts['lost']} | {counts['twice']} "
            f"| {', '.join(map(str, attempts))} | {median:.1f} |"
        )


if __name__ == "__main__":
    main()
