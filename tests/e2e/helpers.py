"""Helpers of the end-to-end tests: create, wait for and inspect jobs over the API."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ADMIN_KEY, REPO, Api, base_env, wait_for, zip_dataset

SIZE = 16


def train_job(api: Api, key: str, dataset_id: str, **over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dataset_id": dataset_id,
        "base_model": "resnet18",
        "pretrained_weights": "none",
        "strategy": "full",
        "hyperparameters": {
            "epochs": 3,
            "batch_size": 16,
            "learning_rate": 0.003,
            "image_size": SIZE,
            "augmentation": "none",
        },
    }
    spec.update(over)
    r = api.as_team(key, "POST", "/v1/jobs", json=spec)
    assert r.status_code == 201, r.text
    return dict(r.json())


def wait_done(api: Api, key: str, job_id: str, timeout: float = 300) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = api.as_team(key, "GET", f"/v1/jobs/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return dict(wait_for(done, timeout, f"job {job_id} to finish"))


def upload(api: Api, key: str, images: dict[str, Any]) -> dict[str, Any]:
    files = {"file": ("d.zip", zip_dataset(images), "application/zip")}
    r = api.as_team(key, "POST", "/v1/datasets", files=files, data={"name": "digits"})
    assert r.status_code == 201, r.text
    return dict(r.json())


def upload_model(api: Api, key: str, weights: bytes, classes: str) -> dict[str, Any]:
    """A team's own resnet18 base model, from safetensors bytes and a JSON class list."""
    r = api.as_team(
        key,
        "POST",
        "/v1/models",
        files={"file": ("m.safetensors", weights)},
        data={"architecture": "resnet18", "classes": classes},
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A Redis of the test's own, on its own port, so the test can stop it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_for(up, 20, "redis-server to listen")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@contextmanager
def server(cmd: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    """A uvicorn process (`cmd`); yields its base URL once its /docs answers."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env={**os.environ, **env}, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(url + "/docs", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_for(up, 60, f"{cmd[2]} on port {port}")
            yield url
        finally:
            proc.terminate()
            proc.wait(30)


@contextmanager
def embedded_service(root: Path, team: str, **env_extra: str) -> Iterator[dict[str, Any]]:
    """`graft serve` on the embedded defaults (its real worker), with a team and its key:
    {"url", "key", "root", "log"}."""
    env = base_env(root, GRAFT_DATABASE_URL="", GRAFT_BROKER_URL="", **env_extra)
    port = free_port()
    cmd = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    with server(cmd, env, port, root / "serve.log") as url:
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        made = httpx.post(f"{url}/v1/teams", json={"name": team}, headers=admin).json()
        key = httpx.post(f"{url}/v1/teams/{made['id']}/keys", headers=admin).json()["key"]
        yield {"url": url, "key": key, "root": root, "log": root / "serve.log"}
