"""A real worker never posts a webhook to a private address unless allowed: a job whose
webhook is `http://localhost:<port>/` (refused at creation too, so the API here allows
private addresses and only the worker is left at the default) reaches a local receiver
only with GRAFT_WEBHOOK_ALLOW_PRIVATE=true."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.services.events import WEBHOOK_EVENTS
from tests.conftest import Api, WorkerProcess, base_env, configure, digits_images, wait_for
from tests.e2e.helpers import SIZE, train_job, upload, wait_done
from tests.e2e.test_reliability import Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis]


@pytest.mark.parametrize("allow_private", ["false", "true"])
def test_a_localhost_webhook_is_sent_only_when_private_addresses_are_allowed(
    tmp_path: Path,
    pg_url: str,
    redis_url: str,
    make_api: Callable[[], Api],
    start_worker: Callable[[dict[str, str]], WorkerProcess],
    allow_private: str,
) -> None:
    env = base_env(
        tmp_path,
        GRAFT_DATABASE_URL=pg_url,
        GRAFT_BROKER_URL=redis_url,
        GRAFT_WEBHOOK_BACKOFF_SECONDS="0.2",  # a retry, if there were one, would show
    )
    configure(env)  # the API: GRAFT_WEBHOOK_ALLOW_PRIVATE=true, so the job can be created
    api = make_api()
    key = api.new_team()
    dataset = upload(api, key, digits_images((0, 1, 2), 12, SIZE))
    receiver = Receiver(lambda n: 200)
    try:
        start_worker({**env, "GRAFT_WEBHOOK_ALLOW_PRIVATE": allow_private})
        url = f"http://localhost:{receiver.server.server_address[1]}/hook"
        hyperparameters = {"epochs": 1, "batch_size": 8, "image_size": SIZE, "augmentation": "none"}
        job = train_job(api, key, dataset["id"], webhook_url=url, hyperparameters=hyperparameters)
        assert wait_done(api, key, job["id"])["status"] == "succeeded"

        def events() -> list[dict[str, Any]]:
            return list(api.as_team(key, "GET", f"/v1/jobs/{job['id']}/events").json())

        def attempts() -> list[dict[str, Any]]:
            return [e["data"] for e in events() if e["type"] == "webhook.delivery"]

        # job.running, job.progress, job.succeeded: each one delivery.
        deliveries = sum(e["type"] in WEBHOOK_EVENTS for e in events())
        assert deliveries >= 3
        wait_for(lambda: len(attempts()) >= deliveries, 30, "every delivery's attempt")
        time.sleep(1)  # a retry would come after 0.2 s
        recorded = attempts()
        if allow_private == "false":
            assert receiver.calls == []
            assert len(recorded) == deliveries  # one attempt each: never retried
            for a in recorded:
                assert a["error"] == "refused: private address"
                assert a["status_code"] is None and a["outcome"] == "gave_up"
        else:
            assert len(receiver.calls) == deliveries
            assert [a["outcome"] for a in recorded] == ["delivered"] * deliveries
    finally:
        receiver.close()
