"""One rank of a data-parallel job: `python -m worker.training.ddp <run dir>`, started by
torchrun (worker/launcher.py starts torchrun), runs engine.fit under DistributedDataParallel.

The worker and its ranks share a run directory on the host:

    inputs.pt, {train,val}_{images,labels}.npy   what to train (written by the worker)
    events.jsonl   rank 0's progress, epoch ends and events, one JSON line each
    ack            the last epoch end the worker has recorded (rank 0 waits for it, so
                   a stop the worker decides on at an epoch's end, such as the pruner's,
                   is seen before the next step, as in a job on one process)
    stop           a reason to stop, from the worker (cancel, lease lost, pre-emption)
    result.pt | stopped.json | error-<rank>.json   how it ended
    rank-<rank>.pid   so the worker can be sure no rank outlives the job

Every rank checks, a few times a second, for the stop file, for SIGTERM (torchrun passes
its own on) and for its parents (torchrun and the worker) being alive; then the ranks
agree before every step, so all stop at the same step. A rank knows nothing of the job's
row: the worker's hooks write it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worker.training import checkpoint, engine
from worker.training.distributed import Distributed, padding
from worker.training.types import (
    EpochMetrics,
    FitResult,
    Hooks,
    ImageSet,
    Progress,
    StopReason,
    TrainConfig,
    TrainingStopped,
)

INPUTS = "inputs.pt"
EVENTS = "events.jsonl"
ACK = "ack"
STOP = "stop"
RESULT = "result.pt"
STOPPED = "stopped.json"
# How often a rank looks at the stop file and its parents (a stat and two syscalls).
WATCH_SECONDS = 0.2
STOP_REASONS: tuple[StopReason, ...] = ("cancelled", "preempted", "lease_lost", "pruned")


def error_file(run_dir: Path, rank: int) -> Path:
    return run_dir / f"error-{rank}.json"


def pid_file(run_dir: Path, rank: int) -> Path:
    return run_dir / f"rank-{rank}.pid"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------- the worker's side


def write_inputs(
    run_dir: Path,
    model: torch.nn.Module,
    cfg: TrainConfig,
    train: ImageSet,
    val: ImageSet,
    class_names: list[str],
    workdir: Path,
    device_type: str,
) -> None:
    """What every rank loads: the model (pickled whole, as torch.save does), the config,
    and the images as .npy files that each rank memory-maps instead of copying."""
    for name, data in (("train", train), ("val", val)):
        np.save(run_dir / f"{name}_images.npy", np.asarray(data.images))
        np.save(run_dir / f"{name}_labels.npy", np.asarray(data.labels, dtype=np.int64))
    meta = {
        "model": model.cpu(),
        "cfg": cfg,
        "class_names": class_names,
        "paths": {"train": train.paths, "val": val.paths},
        "workdir": str(workdir),
        "device_type": device_type,
        "worker_pid": os.getpid(),
    }
    torch.save(meta, run_dir / INPUTS)


class Relay:
    """Reads rank 0's events.jsonl as it grows and replays each line into `hooks`."""

    def __init__(self, run_dir: Path, hooks: Hooks) -> None:
        self.path, self.hooks = run_dir / EVENTS, hooks
        self.offset, self.pending = 0, b""

    def drain(self) -> int | None:
        """Replay what arrived; the last epoch whose end was among it, if any."""
        if not self.path.exists():
            return None
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        self.offset += len(chunk)
        *lines, self.pending = (self.pending + chunk).split(b"\n")
        ended = None
        for line in lines:
            message = json.loads(line)
            kind, data = message["kind"], message["data"]
            if kind == "progress":
                self.hooks.on_progress(Progress(**data))
            elif kind == "epoch":
                self.hooks.on_epoch_end(EpochMetrics.from_dict(data))
                ended = int(data["epoch"])
            else:
                self.hooks.on_event(data["kind"], data["data"])
        return ended


# ---------------------------------------------------------------- a rank's side


class Watch:
    """This rank's own reason to stop, before the ranks agree on one."""

    def __init__(self, run_dir: Path, worker_pid: int) -> None:
        self.stop_file, self.worker_pid = run_dir / STOP, worker_pid
        self.launcher_pid = os.getppid()
        self.terminated = threading.Event()
        self.reason: StopReason | None = None
        self.checked = 0.0

    def __call__(self) -> StopReason | None:
        now = time.monotonic()
        if self.reason is None and (
            self.terminated.is_set() or now - self.checked >= WATCH_SECONDS
        ):
            self.checked = now
            self.reason = self._look()
        return self.reason

    def orphaned(self) -> bool:
        return os.getppid() != self.launcher_pid or not _alive(self.worker_pid)

    def _look(self) -> StopReason | None:
        if self.stop_file.exists():
            text = self.stop_file.read_text().strip()
            return next((r for r in STOP_REASONS if r == text), "lease_lost")
        if self.orphaned():
            return "lease_lost"  # nobody holds the job for this rank any more
        if self.terminated.is_set():
            return "preempted"
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Reporter:
    """Rank 0's hooks: each report becomes a line of events.jsonl for the worker."""

    def __init__(self, run_dir: Path, watch: Watch) -> None:
        self.file = (run_dir / EVENTS).open("a", encoding="utf-8")
        self.ack, self.watch = run_dir / ACK, watch

    def send(self, kind: str, data: dict[str, Any]) -> None:
        self.file.write(json.dumps({"kind": kind, "data": data}) + "\n")
        self.file.flush()

    def on_epoch_end(self, m: EpochMetrics) -> None:
        self.send("epoch", m.as_dict())
        # The worker records the epoch and may decide to stop before the next step.
        while not self.watch.orphaned():
            if self.ack.exists() and int(self.ack.read_text() or 0) >= m.epoch:
                self.watch.checked = 0.0  # look for a stop before the next step
                return
            time.sleep(0.02)

    def hooks(self, dist: Distributed) -> Hooks:
        return Hooks(
            on_progress=lambda p: self.send("progress", asdict(p)),
            on_epoch_end=self.on_epoch_end,
            should_stop=lambda: dist.agree(self.watch()),
            on_event=lambda kind, data: self.send("event", {"kind": kind, "data": data}),
        )


def _image_set(run_dir: Path, name: str, paths: list[str]) -> ImageSet:
    images = np.load(run_dir / f"{name}_images.npy", mmap_mode="r")
    return ImageSet(images, np.load(run_dir / f"{name}_labels.npy"), paths)


def run_rank(run_dir: Path) -> int:
    rank = int(os.environ["RANK"])
    pid_file(run_dir, rank).write_text(str(os.getpid()))
    meta = torch.load(run_dir / INPUTS, weights_only=False)  # written by our own worker
    watch = Watch(run_dir, int(meta["worker_pid"]))
    # torchrun passes a SIGTERM on to its ranks (and kills them 30 s later): checkpoint.
    signal.signal(signal.SIGTERM, lambda signum, frame: watch.terminated.set())
    dist: Distributed | None = None
    try:
        dist = group = Distributed.from_environment(meta["device_type"])
        train = _image_set(run_dir, "train", meta["paths"]["train"])
        val = _image_set(run_dir, "val", meta["paths"]["val"])
        if group.writes:
            hooks = Reporter(run_dir, watch).hooks(group)
        else:
            hooks = Hooks(should_stop=lambda: group.agree(watch()))
        cfg: TrainConfig = meta["cfg"]
        batches = engine.epoch_batches(len(train), cfg.batch_size, cfg.seed, 1)
        hooks.on_event(
            "distributed",
            {
                "world_size": group.world_size,
                "backend": "nccl" if group.device.type == "cuda" else "gloo",
                "train_images": len(train),
                "padded_per_epoch": padding(batches, group.world_size),
            },
        )
        result = engine.fit(
            meta["model"],
            cfg,
            train,
            val,
            meta["class_names"],
            hooks,
            Path(meta["workdir"]),
            group.device,
            dist=group,
        )
        if group.writes:
            checkpoint.atomic_torch_save(result, run_dir / RESULT)
    except TrainingStopped as stop:
        if rank == 0:
            where = {"reason": stop.reason, "epoch": stop.epoch, "step": stop.step}
            write_atomic(run_dir / STOPPED, json.dumps(where))
    except BaseException as exc:
        report = {
            "message": f"{type(exc).__name__}: {exc}",
            "out_of_memory": isinstance(exc, torch.OutOfMemoryError | MemoryError),
            # A peer that died or a device that failed: another attempt may succeed.
            "distributed": isinstance(exc, torch.distributed.DistError) or "CUDA error" in str(exc),
        }
        write_atomic(error_file(run_dir, rank), json.dumps(report))
        return 1
    finally:
        if dist is not None:
            dist.close()
    return 0


def load_result(run_dir: Path) -> FitResult | None:
    path = run_dir / RESULT
    if not path.exists():
        return None
    result: FitResult = torch.load(path, weights_only=False)  # rank 0 of this very job
    return result


if __name__ == "__main__":
    sys.exit(run_rank(Path(sys.argv[1])))
