"""Celery tasks: thin wrappers that carry only an id (the row holds the rest)."""

from __future__ import annotations

from app.config import get_settings
from app.db.session import in_transaction
from app.queue import INGEST_TASK, TRAIN_TASK
from app.services.datasets import ingest_pending
from app.storage import storage_for
from worker.celery_app import app


@app.task(name=TRAIN_TASK)
def train(job_id: str) -> str:
    from worker.runner import run_job  # torch loads here, in the worker only

    return run_job(job_id)


@app.task(name=INGEST_TASK)
def ingest(dataset_id: str) -> None:
    settings = get_settings()
    in_transaction(ingest_pending, storage_for(settings), settings, dataset_id)
