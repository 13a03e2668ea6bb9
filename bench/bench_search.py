"""Model search against random search and the default single job, on a transfer task
built from scikit-learn's digits, on real processes (PostgreSQL, Redis, workers).

Run from the repository root (needs PostgreSQL on 127.0.0.1:5432 and redis-server):

    .venv/bin/python bench/bench_search.py               # 16 trials each
    .venv/bin/python bench/bench_search.py --trials 8    # quicker, noisier

The task: two source models are trained from scratch on digits 0-4 (resnet18 and
mobilenet_v3_small, as the test helpers pretrain theirs), and the target is digits 5-9
(60 images per class, 30 % of them held out for validation). The search space puts
those two source models (`mdl_…`) next to the same two registry architectures from
scratch, with three strategies, a learning-rate range and two batch sizes; every trial
runs 12 epochs at 32 px and exports int8 ONNX (constraint: batch-1 latency <= 5 ms).

Side by side in one run:
  (a) TPE + ASHA (Graft's default search), N trials, 2 at once: with one worker, and
      with two workers (one thread each, so both share the same two cores);
  (b) random search with the same N trials and no pruning (one worker);
  (c) the default single job: POST /v1/jobs with the registry's resnet18 and the spec's
      defaults (linear_probe, lr 1e-3, batch 32), the same epochs and image size.
Columns: best validation accuracy of a finished model, epochs spent, wall time, the
recommended model's int8 latency. Targets: (a) within 1 point of (b) with at most half
of its epochs; (a) at least 3 points over (c).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import (
    Api,
    WorkerProcess,
    api_factory,
    base_env,
    configure,
    digits_images,
    scratch_database,
    wait_for,
    zip_dataset,
)
from tests.e2e.helpers import RedisServer, free_port

SIZE = 32
EPOCHS = 12
FIXED = {"pretrained_weights": "none", "image_size": SIZE, "epochs": EPOCHS,
         "augmentation": "none", "validation_split": 0.3, "seed": 0}  # fmt: skip
CONSTRAINTS = {"quantization": "int8", "max_latency_ms": 5}


@contextmanager
def workers(env: dict[str, str], root: Path, count: int) -> Iterator[None]:
    """`count` worker processes; with more than one, each gets one thread (they share
    this machine's two cores)."""
    extra = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if count > 1 else {}
    started = []
    try:
        for i in range(count):
            w = WorkerProcess({**env, **extra}, root / f"worker-{time.time_ns()}-{i}.log")
            started.append(w)
            w.wait_ready(120)
        yield
    finally:
        for w in started:
            w.stop()


def upload(api: Api, key: str, classes: tuple[int, ...], per_class: int, name: str) -> str:
    archive = zip_dataset(digits_images(classes, per_class, SIZE))
    r = api.as_team(key, "POST", "/v1/datasets", files={"file": ("d.zip", archive)},
                    data={"name": name})  # fmt: skip
    assert r.status_code == 201 and r.json()["status"] == "ready", r.text
    return str(r.json()["id"])


def job(api: Api, key: str, spec: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    r = api.as_team(key, "POST", "/v1/jobs", json=spec)
    assert r.status_code == 201, r.text

    def done() -> dict[str, Any] | None:
        j = api.as_team(key, "GET", f"/v1/jobs/{r.json()['id']}").json()
        return j if j["status"] not in ("queued", "running") else None

    finished = dict(wait_for(done, timeout, "a job", interval=1))
    assert finished["status"] == "succeeded", finished
    return finished


def search(api: Api, key: str, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    start = time.monotonic()
    r = api.as_team(key, "POST", "/v1/searches", json=body)
    assert r.status_code == 201, r.text

    def done() -> dict[str, Any] | None:
        s = api.as_team(key, "GET", f"/v1/searches/{r.json()['id']}").json()
        return s if s["status"] != "running" else None

    finished = dict(wait_for(done, 7200, "a search", interval=1))
    return finished, time.monotonic() - start


def most_at_once(api: Api, key: str, s: dict[str, Any]) -> int:
    """The most trials that were running at the same moment (from their jobs' times)."""
    edges = []
    for t in s["leaderboard"]:
        j = api.as_team(key, "GET", f"/v1/jobs/{t['job_id']}").json()
        if j["started_at"] and j["finished_at"]:
            edges += [(datetime.fromisoformat(j["started_at"]), 1),
                      (datetime.fromisoformat(j["finished_at"]), -1)]  # fmt: skip
    running = most = 0
    for _, step in sorted(edges):
        running += step
        most = max(most, running)
    return most


def search_row(name: str, s: dict[str, Any], wall: float, api: Api, key: str) -> dict[str, Any]:
    done = [t for t in s["leaderboard"] if t["status"] == "succeeded"]
    rec = next((t for t in done if t["model_id"] == s["recommended_model_id"]), None)
    pruned = sum(1 for t in s["leaderboard"] if t["pruned"])
    return {
        "name": name,
        "best": max((t["value"] for t in done), default=0.0),
        "epochs": s["budget_used"]["epochs"],
        "wall": wall,
        "latency": rec["artifact"]["latency_ms"] if rec and rec["artifact"] else None,
        "at_once": most_at_once(api, key, s),
        "detail": f"{len(s['leaderboard'])} trials, {pruned} pruned; best: "
        + (", ".join(f"{k}={_short(v)}" for k, v in rec["params"].items()) if rec else "none"),
    }


def _short(v: Any) -> str:
    return f"{v:.2g}" if isinstance(v, float) else str(v)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=16)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    source_lines: list[str] = []
    with scratch_database("graft_bench_search") as db, tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(free_port())
        redis.start()
        root = Path(tmp)
        quiet = {"GRAFT_HEARTBEAT_SECONDS": "2", "GRAFT_PROGRESS_INTERVAL_SECONDS": "2"}
        env = base_env(root, GRAFT_DATABASE_URL=db, GRAFT_BROKER_URL=redis.url, **quiet)
        configure(env)
        try:
            with api_factory(env) as make_api:
                api = make_api()
                key = api.new_team("bench")
                source = upload(api, key, (0, 1, 2, 3, 4), 150, "digits 0-4")
                target = upload(api, key, (5, 6, 7, 8, 9), 60, "digits 5-9")
                with workers(env, root, 1):
                    print("pretraining the source models on digits 0-4 …", flush=True)
                    sources: list[str] = []
                    for arch in ("resnet18", "mobilenet_v3_small"):
                        j = job(api, key, {
                            "dataset_id": source, "base_model": arch, "pretrained_weights": "none",
                            "strategy": "full",
                            "hyperparameters": {"epochs": 8, "batch_size": 32, "image_size": SIZE,
                                                "learning_rate": 3e-3, "augmentation": "none"},
                        })  # fmt: skip
                        sources.append(j["result"]["model_id"])
                        accuracy = max(m["val_accuracy"] for m in j["metrics"])
                        source_lines.append(f"source {arch} ({sources[-1]}): {accuracy:.1%} "
                                            "val accuracy on digits 0-4")  # fmt: skip
                    space = {
                        "base_model": [*sources, "resnet18", "mobilenet_v3_small"],
                        "strategy": ["linear_probe", "partial", "full"],
                        "learning_rate": {"low": 1e-4, "high": 3e-2, "log": True},
                        "batch_size": [16, 32],
                    }
                    base = {"dataset_id": target, "space": space, "fixed": FIXED,
                            "constraints": CONSTRAINTS,
                            "budget": {"max_trials": args.trials, "max_parallel": 2}}  # fmt: skip
                    print("(c) the default single job …", flush=True)
                    start = time.monotonic()
                    c = job(api, key, {
                        "dataset_id": target, "base_model": "resnet18",
                        "pretrained_weights": "none",
                        "hyperparameters": {"epochs": EPOCHS, "image_size": SIZE,
                                            "augmentation": "none"},
                        "export": ["onnx"], "quantization": ["int8"], "validation_split": 0.3,
                    })  # fmt: skip
                    c_wall = time.monotonic() - start
                    model = api.as_team(key, "GET", f"/v1/models/{c['result']['model_id']}").json()
                    int8 = next(a for a in model["artifacts"] if a["format"] == "onnx-int8")
                    rows.append({
                        "name": "(c) default single job", "best": model["metrics"]["val_accuracy"],
                        "epochs": len(c["metrics"]), "wall": c_wall,
                        "latency": int8["report"]["latency_ms"]["batch_1"], "at_once": 1,
                        "detail": "resnet18, linear_probe, lr 1e-3, batch 32",
                    })  # fmt: skip
                    print("(a) TPE + ASHA, one worker …", flush=True)
                    a1, a1_wall = search(api, key, base)
                    rows.append(search_row("(a) TPE + ASHA, 1 worker", a1, a1_wall, api, key))
                    print("(b) random search, no pruning …", flush=True)
                    b, b_wall = search(api, key, {**base, "sampler": "random", "pruner": "none"})
                    rows.append(search_row("(b) random, no pruning", b, b_wall, api, key))
                with workers(env, root, 2):
                    print("(a) TPE + ASHA, two workers …", flush=True)
                    a2, a2_wall = search(api, key, base)
                    rows.append(search_row("(a) TPE + ASHA, 2 workers", a2, a2_wall, api, key))
        finally:
            redis.stop()
    print()
    print(f"digits 0-4 → 5-9, {args.trials} trials per search, {EPOCHS} epochs per trial, "
          f"{SIZE} px, int8 latency at batch 1")  # fmt: skip
    print("\n".join(source_lines))
    print()
    print("| run | best val accuracy | epochs | wall s | int8 latency ms | most trials at once "
          "| trials |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        latency = f"{r['latency']:.2f}" if r["latency"] is not None else "—"
        print(f"| {r['name']} | {100 * r['best']:.1f} % | {r['epochs']} | {r['wall']:.0f} | "
              f"{latency} | {r['at_once']} | {r['detail']} |")  # fmt: skip
    by = {r["name"][:3]: r for r in rows if not r["name"].endswith("2 workers")}
    a, b_row, c_row = by["(a)"], by["(b)"], by["(c)"]
    print()
    gap = 100 * (b_row["best"] - a["best"])
    print(f"(a) vs (b): {gap:+.1f} points behind (target: at most 1), "
          f"{a['epochs']} / {b_row['epochs']} epochs = {a['epochs'] / b_row['epochs']:.2f} "
          f"(target: at most 0.50)")  # fmt: skip
    print(f"(a) vs (c): {100 * (a['best'] - c_row['best']):+.1f} points (target: at least +3)")


if __name__ == "__main__":
    main()
