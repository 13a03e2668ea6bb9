"""The files of one job under GRAFT_DATA_DIR/jobs/<job id>/ that are not a model's.

With a bucket, each attempt's checkpoint files are pushed to it after every checkpoint
(CheckpointSync) and a new attempt on any host starts from the newest attempt's files.
"""

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
    _pull_newest_attempt(storage, job_dir)
    if (workdir / checkpoint.FILENAME).exists():  # a pre-empted attempt, continued here
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


def _pull_newest_attempt(storage: Storage, job_dir: Path) -> None:
    """From the bucket: the files of the latest attempt that checkpointed (the highest
    number: a worker that lost its lease may still write an earlier one; a pre-emption
    gives its attempt's number back, so it may be this attempt's own)."""
    numbers = [
        int(name.removeprefix("attempt-"))
        for name in storage.listdir_remote(job_dir)
        if name.startswith("attempt-") and name.removeprefix("attempt-").isdigit()
    ]
    for number in sorted(numbers, reverse=True):
        attempt = job_dir / f"attempt-{number}"
        names = storage.listdir_remote(attempt)
        if checkpoint.FILENAME not in names:
            continue
        # The checkpoint last: every file it was written after is then the same age.
        for name in sorted(names, key=lambda n: n == checkpoint.FILENAME):
            storage.download(attempt / name)
        return


class CheckpointSync:
    """Pushes an attempt's checkpoint files to the bucket, each only when it changed
    (the frozen weights and a feature cache once; checkpoint.pt, the last, every time)."""

    def __init__(self, storage: Storage, workdir: Path) -> None:
        self.storage, self.workdir = storage, workdir
        self.pushed: dict[str, tuple[int, int]] = {}

    def __call__(self) -> None:
        if not self.storage.is_remote:
            return
        files = [p for p in self.workdir.iterdir() if p.is_file() and not p.name.startswith(".")]
        for path in sorted(files, key=lambda p: p.name == checkpoint.FILENAME):
            stat = path.stat()
            if self.pushed.get(path.name) != (stat.st_size, stat.st_mtime_ns):
                self.storage.publish(path)
                self.pushed[path.name] = (stat.st_size, stat.st_mtime_ns)


def remove_checkpoints(storage: Storage, lease: Lease) -> None:
    """Once a job has ended with its model stored (or pruned), its checkpoints serve
    nothing more: each is several times the model's size, and they are counted in no
    quota. Only this attempt's directory and earlier ones go: a worker that lost its
    lease must not touch its successor's (which holds its own links to the files)."""
    job_dir = storage.job_dir(lease.job_id)
    names = {p.name for p in job_dir.glob("attempt-*")} | set(storage.listdir_remote(job_dir))
    for name in names:
        number = name.removeprefix("attempt-")
        if name.startswith("attempt-") and number.isdigit() and int(number) <= lease.attempt:
            storage.remove_tree(job_dir / name)


def record_validation_set(storage: Storage, job_id: str, val: ImageSet) -> None:
    """Which images the job validated on, so a team can reproduce its numbers."""
    path = storage.job_dir(job_id) / "validation_set.json"
    if not path.exists():
        write_json(path, {"paths": val.paths, "labels": [int(x) for x in val.labels]})
        storage.publish(path)
