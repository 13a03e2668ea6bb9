"""The Python client and the CLI against real processes: an API process and a worker on
the embedded defaults, the API stopped and started again under a follower."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from graft import Client, JobFailed
from tests.conftest import ADMIN_KEY, REPO, WorkerProcess, base_env, digits_images, wait_for
from tests.e2e.helpers import free_port

pytestmark = pytest.mark.e2e


class ApiProcess:
    """`graft api` on a fixed port, so it can be stopped and started again there."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "app.cli", "api", "--port", str(self.port)]
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            cmd, env={**os.environ, **self.env}, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )

        def up() -> bool:
            try:
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "the API")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("live")
    env = base_env(root, GRAFT_DATABASE_URL="", GRAFT_BROKER_URL="")
    from tests.conftest import configure

    configure(env)
    from app.db.migrate import upgrade

    upgrade()
    api = ApiProcess(env, free_port(), root / "api.log")
    api.start()
    worker = WorkerProcess(env, root / "worker.log")
    worker.wait_ready()
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    team = httpx.post(f"{api.url}/v1/teams", json={"name": "live"}, headers=admin).json()
    key = httpx.post(f"{api.url}/v1/teams/{team['id']}/keys", headers=admin).json()["key"]
    client = Client(base_url=api.url, api_key=key)
    folder = root / "digits"
    for cls, images in digits_images(per_class=20).items():
        (folder / cls).mkdir(parents=True)
        for i, img in enumerate(images):
            img.save(folder / cls / f"{i:03d}.png")
    dataset = client.datasets.upload(folder)
    try:
        yield {"api": api, "client": client, "dataset": dataset.id, "key": key, "root": root}
    finally:
        client.close()
        worker.stop(9)
        api.stop()


def a_job(stack: dict[str, Any], epochs: int) -> Any:
    return stack["client"].jobs.create(
        dataset_id=stack["dataset"],
        base_model="resnet18",
        pretrained_weights="none",
        strategy="full",
        hyperparameters={"epochs": epochs, "batch_size": 16, "image_size": 16},
    )


def test_wait_draws_progress_and_returns_the_succeeded_job(
    stack: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    job = a_job(stack, epochs=2)
    done = stack["client"].jobs.wait(job.id, progress=True, poll=0.2)
    assert done.status == "succeeded" and done.result is not None
    drawn = capsys.readouterr().err
    # The bar is cut to the (captured) console's 80 columns.
    assert job.id[:16] in drawn and "succeeded · epoch 2/2" in drawn


def test_wait_raises_job_failed_with_the_jobs_error(stack: dict[str, Any]) -> None:
    # ImageNet weights cannot be had offline here: the job fails weights_unavailable.
    job = stack["client"].jobs.create(
        dataset_id=stack["dataset"],
        base_model="resnet18",
        pretrained_weights="imagenet",
        hyperparameters={"epochs": 1, "image_size": 16},
    )
    with pytest.raises(JobFailed) as failed:
        stack["client"].jobs.wait(job.id, poll=0.2)
    assert failed.value.code == "weights_unavailable" and failed.value.job.id == job.id


def test_a_follower_survives_the_api_restarting_and_misses_no_event(
    stack: dict[str, Any],
) -> None:
    client, api = stack["client"], stack["api"]
    job = a_job(stack, epochs=25)
    seen: list[int] = []
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            for event in client.jobs.events(job.id, follow=True):
                seen.append(event.id)
        except BaseException as exc:
            errors.append(exc)

    follower = threading.Thread(target=follow)
    follower.start()
    wait_for(lambda: len(seen) >= 3, 120, "the first events")
    api.stop()
    time.sleep(2)  # events go on being written while nobody serves them
    api.start()
    follower.join(300)
    assert not follower.is_alive() and not errors, errors
    every = [e.id for e in client.jobs.events(job.id)]
    assert seen == every == list(range(1, len(every) + 1))
    assert client.jobs.get(job.id).status == "succeeded"


def test_ctrl_c_stops_watching_but_not_the_job(stack: dict[str, Any]) -> None:
    client = stack["client"]
    job = a_job(stack, epochs=200)
    env = {
        **os.environ,
        "GRAFT_API_URL": stack["api"].url,
        "GRAFT_API_KEY": stack["key"],
        "GRAFT_CONFIG": str(stack["root"] / "none.json"),
    }
    watch = subprocess.Popen(
        [sys.executable, "-m", "graft.cli", "jobs", "watch", job.id],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: client.jobs.get(job.id).status == "running", 120, "the job to run")
    time.sleep(1)
    watch.send_signal(signal.SIGINT)
    _, stderr = watch.communicate(timeout=60)
    assert watch.returncode == 130, stderr
    assert f"graft jobs watch {job.id}" in stderr
    assert client.jobs.get(job.id).status == "running"
    client.jobs.cancel(job.id)
    wait_for(lambda: client.jobs.get(job.id).status == "cancelled", 120, "the cancel")


class LoseFirstAnswer(httpx.BaseTransport):
    """The network between client and server: the first POST /v1/jobs reaches the
    server, which creates the job, and its answer is lost on the way back."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.keys: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST" and request.url.path == "/v1/jobs":
            self.keys.append(request.headers.get("Idempotency-Key"))
            if len(self.keys) == 1:
                response.read()
                response.close()
                raise httpx.ReadError("connection reset by peer", request=request)
        return response


def test_a_create_whose_answer_was_lost_is_retried_into_one_job(stack: dict[str, Any]) -> None:
    network = LoseFirstAnswer()
    http = httpx.Client(transport=network, timeout=30)
    with Client(stack["api"].url, stack["key"], http=http, retry_backoff=0.01) as client:
        before = {j.id for j in client.jobs.list()}
        job = client.jobs.create(
            dataset_id=stack["dataset"],
            base_model="resnet18",
            pretrained_weights="none",
            hyperparameters={"epochs": 1, "image_size": 16},
        )
        created = {j.id for j in client.jobs.list()} - before
        client.jobs.cancel(job.id)
    assert created == {job.id}
    assert len(network.keys) == 2 and network.keys[0] == network.keys[1] is not None
    http.close()
