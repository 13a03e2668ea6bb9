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

from bench.bench_api import percentile, print_table
from graft import Client
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


def setup(base: str, root: Path) -> tuple[Client, str]:
    """A team, its key, and a small dataset (ingested in the request: it is tiny)."""
    admin = Client(base, ADMIN_KEY)
    team = admin.teams.create("scale")
    client = Client(base, admin.teams.keys.create(team.id).key)
    archive = root / "digits.zip"
    archive.write_bytes(zip_dataset(digits_images((0, 1, 2), 20, SIZE)))
    dataset = client.datasets.upload(archive)
    assert dataset.status == "ready", dataset
    return client, dataset.id


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
    ids = [client.jobs.create(spec).id for _ in range(jobs)]
    created_s = time.time() - started
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        time.sleep(1)
        pending -= {j.id for j in client.jobs.list(limit=100) if j.status in ENDED}
    rows = {j.id: j for j in client.jobs.list(limit=100) if j.id in set(ids)}
    per_job_models = Counter(m.job_id for m in client.models.list(limit=100))
    runs: dict[str, list[tuple[datetime, datetime]]] = {}
    claims_per_job = {}
    for job_id in ids:
        running = [e for e in client.jobs.events(job_id) if e.type == "job.running"]
        claims_per_job[job_id] = len(running)
        job = rows[job_id]
        if running and job.started_at and job.finished_at:
            worker = str(running[-1].data["worker"]).rsplit(":", 1)[0]
            runs.setdefault(worker, []).append((job.started_at, job.finished_at))
    gaps = []
    for spans in runs.values():
        spans.sort()
        gaps += [(b[0] - a[1]).total_seconds() for a, b in itertools.pairwise(spans)]
    ended = [j.finished_at for j in rows.values() if j.finished_at]
    wall = (max(ended).timestamp() - started) if ended else float("nan")
    lost = [i for i in ids if rows[i].status != "succeeded"]
    if lost:  # say how they ended
        ends = Counter(
            f"{rows[i].status} {rows[i].error.message if rows[i].error else ''}" for i in lost
        )
        print(f"{len(lost)} jobs did not succeed: {dict(ends.most_common(5))}", flush=True)
    twice = [
        i for i in ids if claims_per_job[i] != 1 or rows[i].attempt != 1 or per_job_models[i] != 1
    ]
    return {
        "jobs": jobs,
        "created_s": created_s,
        "wall_s": wall,
        "per_min": jobs / wall * 60,
        "gap_p50": percentile(gaps, 0.5),
        "gap_p95": percentile(gaps, 0.95),
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
                client, dataset_id = setup(base, root)
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
    print_table(header, rows)
    print()
    print(
        "(b) DDP epoch time and (c) S3 throughput: not measured; the torchrun launcher "
        "and the S3 store are not built yet (issue 19)."
    )


if __name__ == "__main__":
    main()
