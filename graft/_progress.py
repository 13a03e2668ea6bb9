"""Progress bars (rich, imported only when one is asked for) and the file that feeds one."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn

    from graft._models import JobRead


def _ignore(_: Any) -> None:
    return None


@contextmanager
def _bar(*columns: ProgressColumn | str) -> Iterator[Progress]:
    from rich.console import Console
    from rich.progress import Progress

    with Progress(*columns, console=Console(stderr=True)) as bar:
        yield bar


@contextmanager
def byte_bar(description: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A bar over `total` bytes; the callable sets how many were sent."""
    if not enabled:
        yield _ignore
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with _bar("{task.description}", *columns) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.update(task, completed=done)


@contextmanager
def job_bar(job_id: str, enabled: bool) -> Iterator[Callable[[JobRead], None]]:
    """A bar over a job's fraction done; the callable redraws it from a job read."""
    if not enabled:
        yield _ignore
        return
    from rich.progress import BarColumn

    with _bar("{task.description}", BarColumn(), "{task.fields[detail]}") as bar:
        task = bar.add_task(job_id, total=1.0, detail="")

        def draw(job: JobRead) -> None:
            done = job.progress.fraction if job.progress else 0.0
            bar.update(task, completed=1.0 if job.status == "succeeded" else done)
            bar.update(task, detail=job_line(job))

        yield draw


def job_line(job: JobRead) -> str:
    """`running · epoch 2/5 · step 14/40 · loss 0.4210 · val acc 91.2% · ETA 1:35`."""
    parts: list[str] = [job.status]
    progress = job.progress
    if progress is not None:
        parts.append(f"epoch {progress.epoch}/{progress.total_epochs}")
        per_epoch = f"/{progress.steps_per_epoch}" if progress.steps_per_epoch else ""
        parts.append(f"step {progress.step}{per_epoch}")
    last = job.metrics[-1] if job.metrics else {}
    if isinstance(last.get("train_loss"), int | float):
        parts.append(f"loss {last['train_loss']:.4f}")
    if isinstance(last.get("val_accuracy"), int | float):
        parts.append(f"val acc {last['val_accuracy']:.1%}")
    if progress is not None and progress.eta_seconds is not None and job.status == "running":
        minutes, seconds = divmod(round(progress.eta_seconds), 60)
        parts.append(f"ETA {minutes}:{seconds:02d}")
    return " · ".join(parts)


class ProgressFile(io.FileIO):
    """A file opened for reading that reports its position after every read, so a
    bar follows the bytes an upload has sent (and restarts with a retry's rewind)."""

    def __init__(self, path: str | os.PathLike[str], on_position: Callable[[int], None]) -> None:
        super().__init__(path, "rb")
        self._on_position = on_position

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size) or b""
        self._on_position(self.tell())
        return chunk
