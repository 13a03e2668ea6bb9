"""Many workers on one broker and one database: throughput, claim gaps, nothing lost.

Run from the repository root (needs PostgreSQL on 127.0.0.1:5432 and redis-server):

    .venv/bin/python bench/bench_scale.py                     # 200 jobs, 1, 2 and 4 workers
    .venv/bin/python bench/bench_scale.py --jobs 50 --workers 1 2

Part (a) of issue 19: one `graft api` process and N `graft worker` processes (each
`--concurrency 1`, the solo pool: one job at a time, as one worker per GPU runs) on a
scratch PostgreSQL database and a Redis server of the benchmark's own. For each N, the
benchmark creates --jobs tiny jobs at once through the API (resnet18 from scratch on 16
px digits, 1 epoch, no export), waits until every one has ended, and reads back each
job, its events and its model:

- jobs/min: jobs over the time from the first POST to the last job's end;
- claim gap: per worker, from the end of one of its jobs to the start (the claim) of
  its next, p50 and p95: what a busy queue costs a free worker before it trains again;
- lost: jobs not `succeeded` in the end; run twice: jobs claimed more than once
  (`job.running` events), with an attempt other than 1, or with other than one model.

Every worker runs torch with one thread (OMP_NUM_THREADS=1), so N workers ask for N
cores; this machine has 2, so beyond 2 workers the jobs share the cores and the figure
that counts is that nothing is lost or doubled, and what the claims cost.

Parts (b) (the DDP epoch time with 1 and 2 processes) and (c) (artifact throughput to
an S3 server against the local disk) need the torchrun launcher and the S3 store of
issue 19, which are not built yet; this script says so rather than print numbers.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from tests.conftest import (
    ADMIN_KEY,
    WorkerProcess,
    base_env,
    digits_images,
    scratch_database,
    zip_dataset,
)
from tests.e2e.helpers import RedisServer, free_port, server

SIZE = 16
ENDED = ("succeeded", "failed", "cancelled", "pruned")


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Client:
    def __init__(self, base: str, key: str) -> None:
        self.http = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )

    def get(self, url: str, **params: Any) -> Any:
        r = self.http.get(url, params=params)
        r.raise_for_status()
        return r.json()

    def all(self, url: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self.get(url, limit=100, **({"cursor": cursor} if cursor else {}))
            items += page["data"]
            if not page["has_more"]:
                return items
            cursor = page["next_cursor"]


def setup(base: str) -> tuple[Client, str]:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    team = httpx.post(f"{base}/v1/teams", json={"name": "scale"}, headers=admin).json()
    key = httpx.post(f"{base}/v1/teams/{team['id']}/keys", json={}, headers=admin).json()["key"]
    client = Client(base, key)
    archive = zip_dataset(digits_images((0, 1, 2), 20, SIZE))
    r = client.http.post("/v1/datasets", files={"file": ("digits.zip", archive, "application/zip")})
    r.raise_for_status()
    dataset = r.json()
    deadline = time.monotonic() + 120
    while dataset["status"] == "processing" and time.monotonic() < deadline:
        time.sleep(0.2)
        dataset = client.get(f"/v1/datasets/{dataset['id']}")
    assert dataset["status"] == "ready", dataset
    return client, str(dataset["id"])


def run(client: Client, dataset_id: str, jobs: int, timeout: float) -> dict[str, Any]:
    spec = {
        "dataset_id": dataset_id,
        "base_model": "resnet18",
        "pretrained_weights": "none",
        "strategy": "full",
        "hyperparameters": {
            "epochs": 1,
            "batch_size": 16,
            "image_size": SIZE,
            "augmentation": "none",
        },
        "export": [],
        "quantization": [],
    }
    started = time.time()
    ids = []
    for _ in range(jobs):
        r = client.http.post("/v1/jobs", json=spec)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    created_s = time.time() - started
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        time.sleep(1)
        for job in client.all("/v1/jobs"):
            if job["id"] in pending and job["status"] in ENDED:
                pending.discard(job["id"])
    rows = {j["id"]: j for j in client.all("/v1/jobs") if j["id"] in set(ids)}
    models = [m for m in client.all("/v1/models") if m.get("job_id") in rows]
    per_job_models = {i: 0 for i in ids}
    for m in models:
        per_job_models[m["job_id"]] += 1
    runs: dict[str, list[tuple[datetime, datetime]]] = {}
    claims_per_job = {}
    for job_id in ids:
        events = client.get(f"/v1/jobs/{job_id}/events")
        running = [e for e in events if e["type"] == "job.running"]
        claims_per_job[job_id] = len(running)
        job = rows[job_id]
        if running and job["finished_at"]:
            worker = str(running[-1]["data"]["worker"]).rsplit(":", 1)[0]
            runs.setdefault(worker, []).append(
                (_when(job["started_at"]), _when(job["finished_at"]))
            )
    gaps = []
    for spans in runs.values():
        spans.sort()
        gaps += [(b[0] - a[1]).total_seconds() for a, b in itertools.pairwise(spans)]
    ended = [_when(j["finished_at"]) for j in rows.values() if j["finished_at"]]
    wall = (max(ended).timestamp() - started) if ended else float("nan")
    lost = [i for i in ids if rows[i]["status"] != "succeeded"]
    if lost:  # say how they ended
        ends = Counter(
            f"{rows[i]['status']} {(rows[i]['error'] or {}).get('message', '')}" for i in lost
        )
        print(f"{len(lost)} jobs did not succeed: {dict(ends.most_common(5))}", flush=True)
    twice = [
        i
        for i in ids
        if claims_per_job[i] != 1 or rows[i]["attempt"] != 1 or per_job_models[i] != 1
    ]
    return {
        "jobs": jobs,
        "created_s": created_s,
        "wall_s": wall,
        "per_min": jobs / wall * 60,
        "gap_p50": _percentile(gaps, 0.5),
        "gap_p95": _percentile(gaps, 0.95),
        "workers_used": len(runs),
        "lost": len(lost),
        "twice": len(twice),
    }


def scale_part(jobs: int, worker_counts: list[int], timeout: float) -> list[list[str]]:
    rows = []
    with scratch_database("graft_bench_scale") as db_url, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        redis = RedisServer(free_port())
        redis.start()
        try:
            env = base_env(
                root,
                GRAFT_DATABASE_URL=db_url,
                GRAFT_BROKER_URL=redis.url,
                GRAFT_QUOTA_RUNNING_JOBS="100",
                GRAFT_QUOTA_QUEUED_JOBS=str(jobs),
                OMP_NUM_THREADS="1",
            )
            port = free_port()
            api_cmd = [sys.executable, "-m", "app.cli", "api", "--port", str(port)]
            with server(api_cmd, env, port, root / "api.log") as base:
                ingester = WorkerProcess(env, root / "ingest.log")
                ingester.wait_ready()
                client, dataset_id = setup(base)
                ingester.stop()
                for n in worker_counts:
                    workers = [WorkerProcess(env, root / f"w{n}-{i}.log") for i in range(n)]
                    for w in workers:
                        w.wait_ready()
                    try:
                        r = run(client, dataset_id, jobs, timeout)
                    finally:
                        for w in workers:
                            w.stop()
                    row = [
                        str(n),
                        str(r["jobs"]),
                        f"{r['per_min']:.0f}",
                        f"{r['wall_s']:.1f}",
                        f"{r['created_s']:.1f}",
                        f"{r['gap_p50'] * 1000:.0f}",
                        f"{r['gap_p95'] * 1000:.0f}",
                        str(r["workers_used"]),
                        str(r["lost"]),
                        str(r["twice"]),
                    ]
                    rows.append(row)
                    print(" | ".join(row), flush=True)
        finally:
            redis.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker count")
    args = parser.parse_args()
    header = [
        "workers",
        "jobs",
        "jobs/min",
        "wall s",
        "POST s",
        "claim gap p50 ms",
        "claim gap p95 ms",
        "workers that ran jobs",
        "lost",
        "run twice",
    ]
    rows = scale_part(args.jobs, args.workers, args.timeout)
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print(
        "(b) DDP epoch time and (c) S3 throughput: not measured; the torchrun launcher "
        "and the S3 store are not built yet (issue 19)."
    )


if __name__ == "__main__":
    main()
