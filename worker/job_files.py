"""The files of one job under GRAFT_DATA_DIR/jobs/<job id>/ that are not a model's."""

from __future__ import annotations

import os
from pathlib import Path

from app.services.job_runs import Lease
from app.storage import Storage, write_json
from worker.training import checkpoint
from worker.training.types import ImageSet


def attempt_workdir(storage: Storage, lease: Lease) -> Path:
    """The directory this attempt checkpoints into, seeded with the newest checkpoint
    of earlier attempts (and the files that go with it: frozen weights, features).

    Each attempt writes only its own directory: a worker that was frozen (not dead)
    and wakes up after losing its lease cannot overwrite its successor's checkpoint.
    """
    job_dir = storage.job_dir(lease.job_id)
    workdir = job_dir / f"attempt-{lease.attempt}"
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / checkpoint.FILENAME).exists():
        return workdir
    earlier = [
        d for d in job_dir.glob("attempt-*") if d != workdir and (d / checkpoint.FILENAME).exists()
    ]
    if earlier:
        newest = max(earlier, key=lambda d: (d / checkpoint.FILENAME).stat().st_mtime)
        for path in newest.iterdir():
            if path.is_file() and not path.name.startswith("."):
                # Hard links: the earlier attempt replacing its files later (by rename)
                # does not change ours.
                os.link(path, workdir / path.name)
    return workdir


def remove_checkpoints(storage: Storage, lease: Lease) -> None:
    """Once a job has ended with its model stored (or pruned), its checkpoints serve
    nothing more: each is several times the model's size, and they are counted in no
    quota. Only this attempt's directory and earlier ones go: a worker that lost its
    lease must not touch its successor's (which holds its own links to the files)."""
    for path in storage.job_dir(lease.job_id).glob("attempt-*"):
        number = path.name.removeprefix("attempt-")
        if number.isdigit() and int(number) <= lease.attempt:
            storage.remove_tree(path)


def record_validation_set(storage: Storage, job_id: str, val: ImageSet) -> None:
    """Which images the job validated on, so a team can reproduce its numbers."""
    path = storage.job_dir(job_id) / "validation_set.json"
    if not path.exists():
        write_json(path, {"paths": val.paths, "labels": [int(x) for x in val.labels]})
