"""Data-parallel fits on the CPU: torchrun with 2 gloo processes, as a worker launches it.

The engine is the same loop on every rank (worker/training/distributed.py splits each
global batch); these tests run worker/launcher.py's Launch, which starts real torchrun
processes, and check what a job on 2 processes must keep: accuracy, every image once an
epoch, stop at one step on all ranks, resume at the same global step, and no process
left behind when a rank is killed.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.worker.conftest import CLASS_NAMES, digits_images, imageset, tiny_config
from tests.worker.test_engine import new_model
from worker.errors import DeviceFailure
from worker.launcher import Launch
from worker.training import checkpoint, ddp, engine
from worker.training.distributed import padding, shard
from worker.training.types import EpochMetrics, Hooks, ImageSet, Progress, TrainingStopped

CPU = torch.device("cpu")
# The tests that start real torchrun processes, as the e2e tests start workers.
launches = pytest.mark.e2e


@pytest.fixture(scope="module")
def digits_split() -> tuple[ImageSet, ImageSet]:
    """1,200 train and 597 val digits at 16 px."""
    images, labels = digits_images(16)
    order = np.random.default_rng(0).permutation(len(labels))
    return imageset(images, labels, order[:1200]), imageset(images, labels, order[1200:])


def leftover_processes(marker: str) -> list[int]:
    """Processes whose command line mentions `marker` (a run directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


class Recorder:
    """Hooks that keep what the job's hooks would write, and stop when told to."""

    def __init__(self) -> None:
        self.epochs: list[EpochMetrics] = []
        self.events: list[tuple[str, dict[str, object]]] = []
        self.progress: list[Progress] = []
        self.stop: str | None = None

    def hooks(self) -> Hooks:
        return Hooks(
            on_progress=self.progress.append,
            on_epoch_end=self.epochs.append,
            should_stop=lambda: self.stop,  # type: ignore[arg-type,return-value]
            on_event=lambda kind, data: self.events.append((kind, data)),
        )

    def event(self, kind: str) -> dict[str, object]:
        return next(data for k, data in self.events if k == kind)


def test_a_global_batch_is_split_like_distributed_sampler() -> None:
    batch = np.arange(7)
    parts = [shard(batch, rank, 3) for rank in range(3)]
    # Padded by wrapping around to 9, then every third index from the rank's own.
    assert [p.tolist() for p in parts] == [[0, 3, 6], [1, 4, 0], [2, 5, 1]]
    batches = engine.epoch_batches(1200, 33, seed=0, epoch=1)
    seen = np.concatenate([shard(b, r, 2) for b in batches for r in range(2)])
    assert sorted(set(seen.tolist())) == list(range(1200))  # every image of the epoch
    # 36 batches of 33 and one of 12: each 33 is padded by one, and only those twice.
    assert len(seen) - 1200 == padding(batches, 2) == 36


@launches
def test_two_processes_train_as_well_as_one(
    digits_split: tuple[ImageSet, ImageSet], tmp_path: Path
) -> None:
    cfg = tiny_config(epochs=5, batch_size=33)
    one = engine.fit(
        new_model(cfg), cfg, *digits_split, CLASS_NAMES, Hooks(), tmp_path / "one", CPU
    )
    seen = Recorder()
    two = Launch(2)(
        new_model(cfg), cfg, *digits_split, CLASS_NAMES, seen.hooks(), tmp_path / "two", CPU
    )
    accuracy = [r.report["accuracy"] for r in (one, two)]
    # Both converge near 98 %; BatchNorm sees half a batch per rank, so not bit-equal.
    assert abs(accuracy[0] - accuracy[1]) <= 0.02, accuracy
    assert seen.event("distributed") == {
        "world_size": 2,
        "backend": "gloo",
        "train_images": 1200,
        "padded_per_epoch": 36,
    }
    assert [m.epoch for m in seen.epochs] == [1, 2, 3, 4, 5]
    for m in seen.epochs:
        # Each epoch trained on the whole dataset once, and on the reported padding.
        assert m.extra["train_samples"] == 1200 + m.extra["padded_samples"] == 1236
    # Progress counts global steps: the same steps per epoch as on one process.
    assert {p.steps_per_epoch for p in seen.progress} == {37}
    assert not (tmp_path / "two" / "ddp").exists()  # the inputs' copy is gone
    assert not leftover_processes(str(tmp_path / "two"))


@launches
def test_a_stop_reaches_every_rank_and_resumes_at_the_same_global_step(
    digits_split: tuple[ImageSet, ImageSet], tmp_path: Path
) -> None:
    train, val = digits_split
    data = (ImageSet(train.images[:400], train.labels[:400], train.paths[:400]), val)
    cfg = tiny_config(epochs=3, batch_size=20)
    first = Recorder()
    hooks = first.hooks()

    def preempt_in_epoch_two(p: Progress) -> None:
        first.progress.append(p)
        if p.epoch == 2 and p.step >= 3:
            first.stop = "preempted"

    hooks.on_progress = preempt_in_epoch_two
    with pytest.raises(TrainingStopped) as stopped:
        Launch(2)(new_model(cfg), cfg, *data, CLASS_NAMES, hooks, tmp_path, CPU)
    epoch, step = stopped.value.epoch, stopped.value.step
    assert stopped.value.reason == "preempted" and epoch >= 2
    ckpt = checkpoint.load(tmp_path)
    assert ckpt is not None
    # Rank 0 checkpointed the step where all ranks stopped, with all ranks' sums.
    assert (ckpt["epoch"], ckpt["step"]) == (epoch - 1, step)
    if step:
        assert ckpt["partial_epoch"]["seen"] == 20 * step

    second = Recorder()
    result = Launch(2)(new_model(cfg), cfg, *data, CLASS_NAMES, second.hooks(), tmp_path, CPU)
    assert second.event("resumed") == {"epoch": epoch - 1, "step": step}
    assert [m.epoch for m in second.epochs] == list(range(epoch, 4))
    # The resumed epoch counts the images of both runs: every image once.
    assert second.epochs[0].extra["train_samples"] == 400
    assert [m.epoch for m in result.history] == [1, 2, 3]


@launches
def test_cancel_stops_every_rank_without_a_checkpoint(
    digits_split: tuple[ImageSet, ImageSet], tmp_path: Path
) -> None:
    cfg = tiny_config(epochs=3, batch_size=20)
    seen = Recorder()
    hooks = seen.hooks()
    hooks.on_progress = lambda p: setattr(seen, "stop", "cancelled")
    with pytest.raises(TrainingStopped) as stopped:
        Launch(2)(new_model(cfg), cfg, *digits_split, CLASS_NAMES, hooks, tmp_path, CPU)
    assert stopped.value.reason == "cancelled" and stopped.value.epoch == 1
    assert checkpoint.load(tmp_path) is None
    assert not leftover_processes(str(tmp_path))


@launches
def test_a_killed_rank_fails_the_attempt_as_retryable_and_leaves_no_process(
    digits_split: tuple[ImageSet, ImageSet], tmp_path: Path
) -> None:
    cfg = tiny_config(epochs=3, batch_size=20)
    seen = Recorder()
    hooks = seen.hooks()
    killed = threading.Event()

    def kill_rank_one(p: Progress) -> None:
        if p.step >= 2 and not killed.is_set():
            pid = int(ddp.pid_file(tmp_path / "ddp", 1).read_text())
            os.kill(pid, signal.SIGKILL)
            killed.set()

    hooks.on_progress = kill_rank_one
    with pytest.raises(DeviceFailure) as failure:
        Launch(2)(new_model(cfg), cfg, *digits_split, CLASS_NAMES, hooks, tmp_path, CPU)
    assert killed.is_set()
    assert failure.value.retryable
    assert "Training process 1 of 2 ended without a word" in failure.value.message
    assert not leftover_processes(str(tmp_path))
    assert not (tmp_path / "ddp").exists()
