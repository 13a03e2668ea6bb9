"""The Celery application of the worker (`graft worker` runs it)."""

from __future__ import annotations

from typing import Any

from celery import signals

from app.config import get_settings
from app.queue import make_celery

app = make_celery()
app.conf.include = ["worker.tasks"]

_maintenance: list[Any] = []


@signals.worker_ready.connect
def _start_maintenance(**_: Any) -> None:
    from worker.maintenance import MaintenanceLoop
    from worker.webhooks import WebhookSender

    for thread in (MaintenanceLoop(get_settings().reaper_interval_seconds), WebhookSender()):
        thread.start()
        _maintenance.append(thread)


@signals.worker_shutting_down.connect
def _preempt_running_job(**_: Any) -> None:
    # Celery's warm shutdown waits for the running task; this makes that task
    # checkpoint at its next step and hand the job back instead of finishing it.
    from worker.runner import PREEMPTED

    PREEMPTED.set()
