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

Part (b): one data-parallel fit (resnet18 trained from scratch on 1,200 digits at 24 px,
3 epochs, batch 64) in the worker's own process, under torchrun with 1 process, and under
torchrun with 2 gloo processes (worker/launcher.py, exactly as a job with
`resources.devices` runs): the median epoch time, the whole call (torchrun's start-up
included) and the kept model's validation accuracy. On the CPU the 2 processes share
this machine's 2 cores with one thread each; on CUDA each would have a GPU.

Part (c): the artifact store's throughput, a bucket on moto's S3 server (127.0.0.1)
against the local disk: a model-sized file (64 MiB) and a dataset of 2,000 files of
4 KiB, each written (publish: upload and manifest; on disk an fsynced copy) and read
back into another host's directory (fetch: download and sha256 check; on disk a copy).

    .venv/bin/python bench/bench_scale.py --part b c          # without the many-worker part
"""

from __future__ import annotations

import argparse
import itertools
import os
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


def ddp_part(epochs: int) -> list[list[str]]:
    import numpy as np
    import torch

    from tests.worker.conftest import CLASS_NAMES, imageset, tiny_config
    from tests.worker.conftest import digits_images as digit_arrays
    from tests.worker.test_engine import new_model
    from worker.launcher import Launch
    from worker.training import engine
    from worker.training.types import Hooks

    images, labels = digit_arrays(24)
    order = np.random.default_rng(0).permutation(len(labels))
    train, val = imageset(images, labels, order[:1200]), imageset(images, labels, order[1200:])
    cfg = tiny_config(epochs=epochs, batch_size=64, image_size=24)
    cpu = torch.device("cpu")
    runs: list[tuple[str, Any]] = [
        ("in the worker's process", engine.fit),
        ("torchrun, 1 process", Launch(1)),
        ("torchrun, 2 processes (gloo)", Launch(2)),
    ]
    rows = []
    for name, fit in runs:
        with tempfile.TemporaryDirectory() as workdir:
            start = time.monotonic()
            result = fit(new_model(cfg), cfg, train, val, CLASS_NAMES, Hooks(), Path(workdir), cpu)
            wall = time.monotonic() - start
        epoch_s = sorted(m.seconds for m in result.history)[len(result.history) // 2]
        rows.append(
            [name, "cpu", f"{epoch_s:.2f}", f"{wall:.1f}", f"{result.report['accuracy']:.3f}"]
        )
        print(" | ".join(rows[-1]), flush=True)
    return rows


def store_part() -> list[list[str]]:
    import shutil

    from app.storage import Storage, atomic_writer
    from tests.integration.test_storage_bucket import bucket_storage
    from tests.s3 import S3Server

    def model(root: Path) -> Path:
        d = root / "models" / "mdl_bench"
        d.mkdir(parents=True)
        (d / "model.onnx").write_bytes(os.urandom(64 * 1024**2))
        return d

    def dataset(root: Path) -> Path:
        d = root / "datasets" / "ds_bench"
        for i in range(2000):
            (d / f"c{i % 10}").mkdir(parents=True, exist_ok=True)
            (d / f"c{i % 10}" / f"{i}.png").write_bytes(os.urandom(4096))
        return d

    def disk_copy(src: Path, dest: Path) -> None:
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            target = dest / f.relative_to(src)
            with atomic_writer(target) as out, f.open("rb") as inp:
                shutil.copyfileobj(inp, out, 1024**2)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = S3Server(Path(tmp) / "moto.log")
        try:
            for what, make in (("a 64 MiB model", model), ("2,000 files of 4 KiB", dataset)):
                src_root, there = Path(tmp) / "src", Path(tmp) / "there"
                shutil.rmtree(src_root, ignore_errors=True)
                src = make(src_root)
                size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
                writer = bucket_storage(server, server.new_bucket(), src_root)
                t0 = time.monotonic()
                writer.publish(src)
                t1 = time.monotonic()
                assert writer.remote is not None
                reader = Storage(there, writer.remote, 10**12)
                shutil.rmtree(there, ignore_errors=True)
                reader.fetch(reader.root / writer.rel(src))
                t2 = time.monotonic()
                local = Path(tmp) / "disk"
                shutil.rmtree(local, ignore_errors=True)
                disk_copy(src, local / "w")
                t3 = time.monotonic()
                disk_copy(local / "w", local / "r")
                t4 = time.monotonic()
                mb = size / 1024**2
                rows.append(
                    [
                        what,
                        *(f"{t:.2f} s, {mb / t:.1f} MB/s" for t in (t1 - t0, t2 - t1)),
                        *(f"{t:.2f} s, {mb / t:.1f} MB/s" for t in (t3 - t2, t4 - t3)),
                        f"{(t1 - t0) / (t3 - t2):.1f}x, {(t2 - t1) / (t4 - t3):.1f}x",
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
        finally:
            server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", nargs="+", choices=["a", "b", "c"], default=["a", "b", "c"])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker count")
    parser.add_argument("--epochs", type=int, default=3, help="part (b)")
    args = parser.parse_args()
    if "a" in args.part:
        scale_table(args)
    if "b" in args.part:
        rows = ddp_part(args.epochs)
        print()
        header = ["(b) one fit", "device", "epoch s (median)", "call s", "val accuracy"]
        print_table(header, rows)
    if "c" in args.part:
        rows = store_part()
        print()
        header = [
            "(c) artifacts",
            "bucket: publish",
            "bucket: fetch",
            "disk: write",
            "disk: read",
            "bucket/disk time (write, read)",
        ]
        print_table(header, rows)


def scale_table(args: argparse.Namespace) -> None:
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


if __name__ == "__main__":
    main()
