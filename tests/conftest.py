"""Shared fixtures: real PostgreSQL and Redis when present, the embedded defaults always.

Without a server, tests that need it are skipped with the reason printed at the end
(`-ra`); with CI=true a missing server is a failure instead.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.s3 import S3Server

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("GRAFT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("GRAFT_TEST_REDIS", "redis://127.0.0.1:6379/14")
ADMIN_KEY = "test-admin-key"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_server(name: str, host: str, port: int) -> None:
    if _port_open(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} (CI=true: a missing server is a failure)")
    pytest.skip(f"{message}; start it to run this test")


# -- configuration ----------------------------------------------------------


def configure(env: dict[str, str]) -> None:
    """Point the app's settings (and everything cached from them) at `env`."""
    from app.config import get_settings
    from app.queue import _client
    from app.rate_limits import reset_rate_limits

    os.environ.update(env)
    get_settings.cache_clear()
    _client.cache_clear()
    # Buckets of their own (Redis keys under a fresh namespace): no test inherits
    # another's spent budget.
    reset_rate_limits(namespace=uuid.uuid4().hex[:8])


BASE_ENV_KEYS = (
    "GRAFT_DATA_DIR",
    "GRAFT_DATABASE_URL",
    "GRAFT_BROKER_URL",
    "GRAFT_ADMIN_KEY",
    "GRAFT_QUEUE",
    "GRAFT_INGEST_QUEUE",
    "GRAFT_WEBHOOK_BACKOFF_SECONDS",
    "GRAFT_WEBHOOK_TIMEOUT_SECONDS",
    "GRAFT_WEBHOOK_ALLOW_PRIVATE",
    "GRAFT_RATE_LIMIT_PER_KEY",
    "GRAFT_RATE_LIMIT_BURST",
    "GRAFT_RATE_LIMIT_FAILED_AUTH",
    "GRAFT_QUOTA_RUNNING_JOBS",
    "GRAFT_QUOTA_QUEUED_JOBS",
    "GRAFT_QUOTA_STORED_BYTES",
    "GRAFT_QUOTA_DATASETS",
    "GRAFT_MAX_JSON_BODY_BYTES",
    "GRAFT_METRICS_TOKEN",
    "GRAFT_HEARTBEAT_SECONDS",
    "GRAFT_PROGRESS_INTERVAL_SECONDS",
    "GRAFT_LEASE_SECONDS",
    "GRAFT_ALLOW_WEIGHT_DOWNLOAD",
    "GRAFT_MODEL_CACHE",
    "GRAFT_REAPER_INTERVAL_SECONDS",
    "GRAFT_REDISPATCH_AFTER_SECONDS",
    "GRAFT_MAX_ATTEMPTS",
    "GRAFT_INLINE_INGEST_BYTES",
    "GRAFT_MAX_UPLOAD_BYTES",
    "GRAFT_MAX_IMAGE_PIXELS",
    "GRAFT_ARCHIVE_MAX_ENTRIES",
    "GRAFT_STORAGE_URL",
    "GRAFT_STORAGE_ENDPOINT_URL",
    "GRAFT_STORAGE_REGION",
    "GRAFT_STORAGE_ACCESS_KEY_ID",
    "GRAFT_STORAGE_SECRET_ACCESS_KEY",
    "GRAFT_STORAGE_DOWNLOADS",
    "GRAFT_CACHE_MAX_BYTES",
    "GRAFT_WORKER_DEVICES",
)


@pytest.fixture(autouse=True)
def _restore_env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in BASE_ENV_KEYS}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    from app.config import get_settings

    get_settings.cache_clear()


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A new database on the PostgreSQL server, migrated; dropped on exit."""
    from sqlalchemy import create_engine, text

    from app.db.migrate import upgrade
    from app.db.session import dispose_engines

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        dispose_engines(url)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A fresh database on the PostgreSQL server, migrated once for the session."""
    require_server("PostgreSQL", "127.0.0.1", 5432)
    with scratch_database("graft_test") as url:
        yield url


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """The session's database, emptied after each test."""
    yield pg_server_url
    from sqlalchemy import text

    from app.db.session import get_engine

    with get_engine(pg_server_url).begin() as conn:
        conn.execute(
            text(
                "TRUNCATE webhook_deliveries, job_events, jobs, searches, models, datasets, "
                "idempotency_keys, api_keys, teams, studies CASCADE"
            )
        )


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on a free port of 127.0.0.1, for the whole run (tests/s3.py)."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def redis_url() -> str:
    require_server("Redis", "127.0.0.1", 6379)
    return REDIS_URL


@pytest.fixture
def sqlite_env(tmp_path: Path) -> dict[str, str]:
    """The embedded defaults: SQLite and the filesystem broker under a fresh data dir."""
    from app.db.migrate import upgrade

    env = base_env(tmp_path, GRAFT_DATABASE_URL="", GRAFT_BROKER_URL="")
    configure(env)
    upgrade()
    return env


@pytest.fixture
def pg_env(tmp_path: Path, pg_url: str, redis_url: str) -> dict[str, str]:
    env = base_env(tmp_path, GRAFT_DATABASE_URL=pg_url, GRAFT_BROKER_URL=redis_url)
    configure(env)
    return env


def base_env(root: Path, **extra: str) -> dict[str, str]:
    """Settings for one test's stack, under `root`."""
    run = uuid.uuid4().hex[:8]
    return {
        "GRAFT_DATA_DIR": str(root / "data"),
        "GRAFT_ADMIN_KEY": ADMIN_KEY,
        # Queues of their own, so leftover messages of other runs never reach this one.
        "GRAFT_QUEUE": f"gpu-test-{run}",
        "GRAFT_INGEST_QUEUE": f"ingest-test-{run}",
        "GRAFT_HEARTBEAT_SECONDS": "0.5",
        "GRAFT_PROGRESS_INTERVAL_SECONDS": "0.2",
        "GRAFT_LEASE_SECONDS": "30",
        "GRAFT_ALLOW_WEIGHT_DOWNLOAD": "false",
        "GRAFT_WEBHOOK_ALLOW_PRIVATE": "true",  # local receivers; tests of the default unset it
        # Generous limits, so only the tests of limits and quotas meet them.
        "GRAFT_RATE_LIMIT_PER_KEY": "100000",
        "GRAFT_RATE_LIMIT_BURST": "100000",
        "GRAFT_RATE_LIMIT_FAILED_AUTH": "100000",
        "GRAFT_QUOTA_RUNNING_JOBS": "100",
        "GRAFT_MODEL_CACHE": str(root / "weights"),
        **extra,
    }


# -- the API ----------------------------------------------------------------


class Api:
    """A TestClient with a team's key, plus the admin calls."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def admin(self, method: str, url: str, **kw: Any) -> Any:
        return self.client.request(
            method, url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, **kw
        )

    def new_team(self, name: str = "team") -> str:
        team = self.admin("POST", "/v1/teams", json={"name": name})
        assert team.status_code == 201, team.text
        key = self.admin("POST", f"/v1/teams/{team.json()['id']}/keys")
        assert key.status_code == 201, key.text
        return str(key.json()["key"])

    def as_team(self, key: str, method: str, url: str, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
        return self.client.request(method, url, headers=headers, **kw)


@contextmanager
def api_factory(env: dict[str, str] | None = None) -> Iterator[Callable[[], Api]]:
    """Make API clients (each a started app), configured with `env` if given."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    clients: list[Any] = []

    def factory() -> Api:
        if env is not None:
            configure(env)
        client = TestClient(create_app())
        client.__enter__()
        clients.append(client)
        return Api(client)

    try:
        yield factory
    finally:
        for client in clients:
            client.__exit__(None, None, None)


@pytest.fixture
def make_api() -> Iterator[Callable[[], Api]]:
    with api_factory() as factory:
        yield factory


# -- data -------------------------------------------------------------------


def digits_images(
    classes: tuple[int, ...] = (0, 1, 2), per_class: int = 40, size: int = 16, offset: int = 0
) -> dict[str, list[Image.Image]]:
    """Real images: scikit-learn's UCI digits, upscaled from 8x8 to size x size."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    out: dict[str, list[Image.Image]] = {}
    for c in classes:
        idx = np.flatnonzero(digits.target == c)[offset : offset + per_class]
        imgs = []
        for i in idx:
            arr = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
            imgs.append(Image.fromarray(arr, mode="L").resize((size, size), Image.BILINEAR))
        out[f"digit_{c}"] = imgs
    return out


def zip_dataset(images: dict[str, list[Image.Image]], top: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for cls, imgs in images.items():
            for i, img in enumerate(imgs):
                png = io.BytesIO()
                img.save(png, format="PNG")
                path = f"{cls}/{i:04d}.png"
                # A fixed timestamp: writestr(name) stamps the current time (2 s steps), so
                # the same images zipped twice would differ when a step falls between.
                entry = zipfile.ZipInfo(f"{top}/{path}" if top else path, (2020, 1, 1, 0, 0, 0))
                zf.writestr(entry, png.getvalue())
    return buf.getvalue()


# -- worker processes --------------------------------------------------------


class WorkerProcess:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--loglevel", "info"],
            env=full_env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.log_path.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"worker did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, sig: int = 15, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def start(env: dict[str, str]) -> WorkerProcess:
        w = WorkerProcess(env, tmp_path / f"worker-{len(workers)}.log")
        workers.append(w)
        w.wait_ready()
        return w

    yield start
    for w in workers:
        w.stop(9)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
