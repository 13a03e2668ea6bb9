"""The API's hot path, side by side with a bare FastAPI endpoint, on real processes.

Run from the repository root (needs PostgreSQL on 127.0.0.1:5432, redis-server and wrk):

    .venv/bin/python bench/bench_api.py                 # everything
    .venv/bin/python bench/bench_api.py --part http     # only the wrk table

Part `http`: one `graft api` process (uvicorn, as `graft api` runs it) on a scratch
PostgreSQL database holding a team with 10,000 jobs, and one bare FastAPI process
answering the same job JSON from memory. wrk (2 threads, or 1 at c=1) drives each
endpoint for --seconds at 1 and 32 connections; the ratio column is requests/s over
the bare endpoint's at the same concurrency, measured in the same run. Wrong keys and
missing ids are measured too: they must cost no more than the right ones. A second bare
process runs with the garbage-collector settings `graft api` uses (app/cli.py), to show
what they give FastAPI itself; the ratio stays over the plain bare endpoint.

Part `followers`: GET /v1/jobs/{id} at 32 connections on one API process, alone and
then with 200 Server-Sent Events followers of a running job connected to it.

Part `dispatch`: the time from POST /v1/jobs to `running` (the row's started_at minus
its created_at) with an idle worker, over --jobs jobs: on PostgreSQL + Redis, and on
the embedded defaults (SQLite + the file-system broker). Each job is cancelled once it
runs, and the next one is created after it ended.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from sqlalchemy import insert, text

from app.cli import SERVING_GC_THRESHOLDS
from app.db.base import utcnow
from app.db.models import Job, Model
from app.db.session import in_transaction, session_scope
from app.services.teams import create_key, create_team
from tests.conftest import (
    REPO,
    WorkerProcess,
    api_factory,
    base_env,
    configure,
    digits_images,
    scratch_database,
    wait_for,
    zip_dataset,
)
from tests.e2e.helpers import RedisServer, free_port, server
from tests.integration.test_repositories import a_dataset

JOBS_IN_TEAM = 10_000
BARE_APP = """
import json, os
from fastapi import FastAPI
from fastapi.responses import JSONResponse

app = FastAPI()
BODY = json.loads(os.environ["BENCH_BODY"])
if os.environ.get("BENCH_GC"):  # the collector as `graft api` sets it
    import gc
    gc.freeze()
    gc.set_threshold(*map(int, os.environ["BENCH_GC"].split(",")))

@app.get("/v1/jobs/{job_id}")
def get_job(job_id: str) -> JSONResponse:
    return JSONResponse(BODY)
"""


def wrk(url: str, key: str | None, connections: int, seconds: int) -> dict[str, float]:
    threads = 1 if connections == 1 else 2
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if key is not None:
        cmd += ["-H", f"Authorization: Bearer {key}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": rps,
        "p50": _ms(re.search(r"\s50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "p99": _ms(re.search(r"\s99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "non_2xx": float(non_2xx.group(1)) if non_2xx else 0.0,
    }


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def seed(env: dict[str, str]) -> dict[str, str]:
    """A team with a key, a dataset row, 10,000 jobs and a model; another team's key."""
    configure(env)
    with session_scope() as s:
        team = create_team(s, "bench")
        _, key = create_key(s, team.id)
        other = create_team(s, "other")
        _, other_key = create_key(s, other.id)
    now = utcnow()
    dataset = a_dataset("ds_bench" + uuid.uuid4().hex[:8], team.id)
    spec = {
        "dataset_id": dataset.id,
        "base_model": "resnet18",
        "pretrained_weights": "imagenet",
        "strategy": "linear_probe",
        "hyperparameters": {"epochs": 5, "batch_size": 32, "image_size": 224, "seed": 0},
        "export": ["onnx"],
        "quantization": ["int8"],
        "validation_split": 0.2,
    }
    rows = [
        {
            "id": f"job_{i:026d}",
            "team_id": team.id,
            "dataset_id": dataset.id,
            "spec": spec,
            "status": "queued" if i % 10 else "running",
            "created_at": now,
            "metrics": [],
            "attempt": 0,
            "cancel_requested": False,
        }
        for i in range(JOBS_IN_TEAM)
    ]
    model = Model(
        id="mdl_bench" + uuid.uuid4().hex[:8],
        team_id=team.id,
        job_id=None,
        name="m",
        source="upload",
        architecture="resnet18",
        classes=["cat", "dog"],
        preprocessing={"image_size": 224, "mean": [0.485, 0.456, 0.406]},
        metrics={},
        artifacts=[],
        created_at=now,
    )
    with session_scope() as s:
        s.add(dataset)
        s.flush()
        s.execute(insert(Job), rows)
        s.add(model)
    with session_scope() as s:
        # As autovacuum would after such a bulk insert: plans see the real row counts.
        s.execute(text("ANALYZE"))
    return {"key": key, "other_key": other_key, "job": rows[-1]["id"], "model": model.id}


def http_part(seconds: int) -> list[list[str]]:
    with scratch_database("graft_bench_api") as db_url, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = base_env(
            root, GRAFT_DATABASE_URL=db_url, GRAFT_BROKER_URL="redis://127.0.0.1:6379/13"
        )
        ids = seed(env)
        port, bare_port = free_port(), free_port()
        graft_cmd = [sys.executable, "-m", "app.cli", "api", "--port", str(port)]
        with server(graft_cmd, env, port, root / "api.log") as base:
            body = httpx.get(
                f"{base}/v1/jobs/{ids['job']}", headers={"Authorization": f"Bearer {ids['key']}"}
            ).text
            (root / "bare.py").write_text(BARE_APP)
            bare_cmd = [sys.executable, "-m", "uvicorn", "--app-dir", tmp, "bare:app"]
            # uvicorn's defaults, as `graft api` runs it (access log included).
            bare_cmd += ["--port", str(bare_port)]
            gc_port = free_port()
            gc_cmd = [*bare_cmd[:-1], str(gc_port)]
            tuned = {"BENCH_BODY": body, "BENCH_GC": ",".join(map(str, SERVING_GC_THRESHOLDS))}
            with (
                server(bare_cmd, {"BENCH_BODY": body}, bare_port, root / "bare.log") as bare,
                server(gc_cmd, tuned, gc_port, root / "bare_gc.log") as bare_gc,
            ):
                cases = [
                    ("bare FastAPI, same job JSON", f"{bare}/v1/jobs/{ids['job']}", None),
                    (
                        "bare FastAPI, with graft api's GC settings",
                        f"{bare_gc}/v1/jobs/{ids['job']}",
                        None,
                    ),
                    ("GET /v1/jobs/{id}", f"{base}/v1/jobs/{ids['job']}", ids["key"]),
                    ("GET /v1/jobs?limit=20 (10,000 jobs)", f"{base}/v1/jobs?limit=20", ids["key"]),
                    ("GET /v1/models/{id}", f"{base}/v1/models/{ids['model']}", ids["key"]),
                    (
                        "GET /v1/jobs/{id}, wrong key (401)",
                        f"{base}/v1/jobs/{ids['job']}",
                        "graft_x",
                    ),
                    (
                        "GET /v1/jobs/{id}, another team's key (404)",
                        f"{base}/v1/jobs/{ids['job']}",
                        ids["other_key"],
                    ),
                ]
                table = []
                for connections in (1, 32):
                    bare_rps = 0.0
                    for name, url, key in cases:
                        r = wrk(url, key, connections, seconds)
                        bare_rps = bare_rps or r["rps"]
                        table.append(
                            [
                                name,
                                str(connections),
                                f"{r['rps']:,.0f}",
                                f"{r['rps'] / bare_rps:.2f}",
                                f"{r['p50']:.1f}",
                                f"{r['p99']:.1f}",
                                f"{r['non_2xx']:,.0f}",
                            ]
                        )
                        print(" | ".join(table[-1]), flush=True)
        return table


FOLLOWERS = 200


def followers_part(seconds: int) -> list[list[str]]:
    """GET /v1/jobs/{id} at c=32, without and then with 200 event-stream followers of a
    running job connected to the same API process (they wait between polls)."""
    import asyncio
    import threading

    with scratch_database("graft_bench_follow") as db_url, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = base_env(
            root, GRAFT_DATABASE_URL=db_url, GRAFT_BROKER_URL="redis://127.0.0.1:6379/13"
        )
        ids = seed(env)  # its last job is running: a stream of it stays open
        port = free_port()
        graft_cmd = [sys.executable, "-m", "app.cli", "api", "--port", str(port)]
        rows = []
        with server(graft_cmd, env, port, root / "api.log") as base:
            url = f"{base}/v1/jobs/{ids['job']}"
            alone = wrk(url, ids["key"], 32, seconds)
            running_job = f"job_{0:026d}"  # every tenth seeded job is running
            connected: list[int] = []
            stop = threading.Event()

            async def follow(client: httpx.AsyncClient) -> None:
                headers = {"Authorization": f"Bearer {ids['key']}", "Accept": "text/event-stream"}
                events = f"{base}/v1/jobs/{running_job}/events"
                async with client.stream("GET", events, headers=headers) as response:
                    connected.append(response.status_code)
                    async for _ in response.aiter_bytes():
                        if stop.is_set():
                            return

            async def followers() -> None:
                limits = httpx.Limits(max_connections=FOLLOWERS + 10)
                async with httpx.AsyncClient(timeout=None, limits=limits) as client:
                    tasks = [asyncio.create_task(follow(client)) for _ in range(FOLLOWERS)]
                    while not stop.is_set():
                        await asyncio.sleep(0.2)
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)

            thread = threading.Thread(target=lambda: asyncio.run(followers()), daemon=True)
            thread.start()
            wait_for(lambda: len(connected) == FOLLOWERS, 120, "the followers")
            with_followers = wrk(url, ids["key"], 32, seconds)
            stop.set()
            thread.join(30)
        for name, r in (("alone", alone), (f"with {FOLLOWERS} followers", with_followers)):
            rows.append([name, f"{r['rps']:,.0f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}"])
            print(" | ".join(rows[-1]), flush=True)
        return rows


def dispatch_part(jobs: int) -> list[list[str]]:
    table = []
    with scratch_database("graft_bench_dispatch") as db_url, tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(free_port())
        redis.start()
        try:
            root = Path(tmp) / "redis"
            env = base_env(root, GRAFT_DATABASE_URL=db_url, GRAFT_BROKER_URL=redis.url)
            table.append(["PostgreSQL + Redis", *_dispatch_times(env, root, jobs)])
        finally:
            redis.stop()
        root = Path(tmp) / "embedded"
        env = base_env(root, GRAFT_DATABASE_URL="", GRAFT_BROKER_URL="")
        table.append(["embedded (SQLite + file-system broker)", *_dispatch_times(env, root, jobs)])
    return table


def _dispatch_times(env: dict[str, str], root: Path, jobs: int) -> list[str]:
    from app.db.migrate import upgrade
    from app.repositories.jobs import JobRepository

    env = {**env, "GRAFT_HEARTBEAT_SECONDS": "0.2"}
    configure(env)
    upgrade()
    worker = WorkerProcess(env, root.parent / f"{root.name}-worker.log")
    try:
        worker.wait_ready(120)
        with api_factory(env) as make_api:
            api = make_api()
            key = api.new_team()
            files = {"file": ("d.zip", zip_dataset(digits_images(per_class=8)), "application/zip")}
            ds = api.as_team(key, "POST", "/v1/datasets", files=files, data={"name": "d"})
            spec = {
                "dataset_id": ds.json()["id"],
                "base_model": "resnet18",
                "pretrained_weights": "none",
                "strategy": "full",
                "hyperparameters": {"epochs": 50, "batch_size": 8, "image_size": 16},
            }
            waits = []
            for _ in range(jobs):
                job_id = api.as_team(key, "POST", "/v1/jobs", json=spec).json()["id"]

                def running(job_id: str = job_id) -> Any:
                    job = in_transaction(lambda s: JobRepository(s).get(job_id))
                    return job if job.started_at else None

                job = wait_for(running, 60, f"{job_id} running", interval=0.01)
                waits.append((job.started_at - job.created_at).total_seconds())
                api.as_team(key, "POST", f"/v1/jobs/{job_id}/cancel")
                wait_for(
                    lambda job_id=job_id: in_transaction(
                        lambda s: JobRepository(s).get(job_id).status == "cancelled"
                    ),
                    60,
                    f"{job_id} cancelled",
                    interval=0.05,
                )
    finally:
        worker.stop()
    p95 = percentile(waits, 0.95)
    return [str(len(waits)), f"{statistics.median(waits):.3f}", f"{p95:.3f}", f"{max(waits):.3f}"]


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile of `values` by nearest rank (NaN for none)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def print_table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["all", "http", "followers", "dispatch"], default="all")
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    parser.add_argument("--jobs", type=int, default=50, help="jobs timed from POST to running")
    args = parser.parse_args()
    if shutil.which("wrk") is None and args.part != "dispatch":
        sys.exit("wrk is not installed: apt-get install wrk")
    results: dict[str, Any] = {}
    if args.part in ("all", "http"):
        results["http"] = http_part(args.seconds)
    if args.part in ("all", "followers"):
        results["followers"] = followers_part(args.seconds)
    if args.part in ("all", "dispatch"):
        results["dispatch"] = dispatch_part(args.jobs)
    print()
    if "http" in results:
        header = ["endpoint", "connections", "requests/s", "× bare", "p50 ms", "p99 ms", "non-2xx"]
        print_table(header, results["http"])
        print()
    if "followers" in results:
        header = ["GET /v1/jobs/{id}, c=32", "requests/s", "p50 ms", "p99 ms"]
        print_table(header, results["followers"])
        print()
    if "dispatch" in results:
        print_table(["broker", "jobs", "p50 s", "p95 s", "max s"], results["dispatch"])
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "api.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
