"""`graft serve` stopped by a signal stops its worker too, instead of orphaning it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, base_env, wait_for
from tests.e2e.helpers import free_port, server

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc"),
]


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (field 2) may hold spaces: the parent pid follows its ")".
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited, only its parent has not reaped it yet


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_signal_to_serve_stops_its_worker(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    env = base_env(tmp_path, GRAFT_DATABASE_URL="", GRAFT_BROKER_URL="")
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker: int | None = None
    try:

        def log_text() -> str:
            return log_path.read_text(errors="replace")

        def up() -> bool:
            assert serve.poll() is None, f"serve exited:\n{log_text()[-5000:]}"
            return healthy(port)

        wait_for(up, 60, "the API to answer /healthz")
        worker = wait_for(lambda: children(serve.pid), 10, "the worker process")[0]
        # Signal once the worker is up and handles SIGTERM itself, as in real use.
        wait_for(lambda: "ready." in log_text(), 60, "the worker to be ready")

        serve.send_signal(sig)
        deadline = time.monotonic() + 60
        while (serve.poll() is None or alive(worker)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(worker), f"worker {worker} outlived serve:\n{log_text()[-5000:]}"
        assert serve.poll() == 128 + sig, log_text()[-5000:]
        assert f"stopping worker {worker}" in log_text()
    finally:
        for pid in (serve.pid, worker):
            if pid is not None and alive(pid):
                os.kill(pid, signal.SIGKILL)
        serve.wait()


@pytest.mark.parametrize("access_log", ["true", "false"])
def test_access_log_setting(tmp_path: Path, access_log: str) -> None:
    """GRAFT_ACCESS_LOG turns uvicorn's line per request on and off in `graft api`."""
    port = free_port()
    env = base_env(
        tmp_path, GRAFT_DATABASE_URL="", GRAFT_BROKER_URL="", GRAFT_ACCESS_LOG=access_log
    )
    log = tmp_path / "api.log"
    with server([sys.executable, "-m", "app.cli", "api", "--port", str(port)], env, port, log):
        assert healthy(port)
    lines = [line for line in log.read_text().splitlines() if "GET /healthz" in line]
    assert (len(lines) > 0) == (access_log == "true"), lines
