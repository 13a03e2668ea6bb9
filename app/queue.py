"""The Celery application's configuration, and sending work to it by task name.

The API imports this module, never worker.tasks: it sends "graft.train" by name and
so never loads torch. worker/celery_app.py builds its app from the same function.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from celery import Celery

from app.config import Settings, get_settings

log = logging.getLogger(__name__)

TRAIN_TASK = "graft.train"
INGEST_TASK = "graft.ingest"


def celery_config(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "broker_url": settings.celery_broker_url,
        "task_ignore_result": True,
        # Long jobs: acknowledge after the task ran, so a worker that dies mid-job
        # leaves the message to be delivered again (the job row makes that safe).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        # Publishing from the API must not hang on a dead broker: the job row is
        # committed already and the dispatcher sends it again later.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "broker_transport_options": {},
    }
    if settings.is_embedded_broker:
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        conf["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    else:
        # Redis re-delivers an unacknowledged message after this long; it must exceed
        # the longest job, or a running job would be handed to a second worker.
        conf["broker_transport_options"] = {
            "visibility_timeout": 8 * 86_400,
            "socket_connect_timeout": 3,
            "socket_timeout": 10,
        }
        conf["broker_connection_timeout"] = 3
    return conf


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("graft")
    app.conf.update(celery_config(settings))
    return app


@lru_cache
def _client() -> Celery:
    return make_celery()


def send(task: str, args: list[Any], queue: str) -> bool:
    """Publish a task; False (and a log line) if the broker cannot be reached."""
    try:
        _client().send_task(task, args=args, queue=queue, retry=True)
    except Exception:
        log.exception("could not publish %s%s to the broker", task, args)
        return False
    return True


def devices_of(spec: dict[str, Any]) -> int:
    """How many devices a stored job spec asks for (`resources.devices`, default 1)."""
    return int((spec.get("resources") or {}).get("devices", 1))


def queue_for(queue: str, devices: int) -> str:
    """The queue of a job on `devices` devices: one queue per device count ("gpu",
    "gpu.x2", "gpu.x4", …), so that only a worker with enough devices consumes it."""
    return queue if devices <= 1 else f"{queue}.x{devices}"


def worker_queues(queues: list[str], devices: int, ingest_queue: str) -> list[str]:
    """What a worker with `devices` devices consumes: each training queue it was given,
    for every device count up to its own, and the ingest queue as it is."""
    out: list[str] = []
    for queue in queues:
        counts = [1] if queue == ingest_queue else range(1, devices + 1)
        out += [queue_for(queue, n) for n in counts]
    return list(dict.fromkeys(out))


def enqueue_job(job_id: str, devices: int = 1) -> bool:
    return send(TRAIN_TASK, [job_id], queue_for(get_settings().queue, devices))


def enqueue_ingest(dataset_id: str) -> bool:
    return send(INGEST_TASK, [dataset_id], get_settings().ingest_queue)


def broker_reachable(timeout: float = 2.0) -> bool:
    try:
        with _client().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception:
        return False
    return True
