"""A job on several devices: torchrun as a child process of the worker, supervised.

`Launch(devices)` has engine.fit's signature, so the runner calls it in fit's place. It
writes the inputs into `<attempt workdir>/ddp/`, starts
`python -m torch.distributed.run --standalone --nproc-per-node N -m worker.training.ddp`
(torchrun itself; not in-process, as a Celery prefork child cannot have daemonic
children), replays rank 0's reports into the job's hooks, passes the hooks' stop reasons
on through the stop file, and turns how the ranks ended into FitResult, TrainingStopped
or a JobError. Whatever happens, no rank outlives the call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from worker.errors import DeviceFailure, JobError, ResourcesExhausted
from worker.training import ddp
from worker.training.types import FitResult, Hooks, ImageSet, TrainConfig, TrainingStopped

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05
# After a stop was asked, the ranks have this long to checkpoint and exit.
STOP_GRACE_SECONDS = 120.0
LOG_TAIL_BYTES = 4000


def worker_devices(configured: int | None) -> int:
    """GRAFT_WORKER_DEVICES, else the visible CUDA devices, else 1."""
    return configured or torch.cuda.device_count() or 1


@dataclass(frozen=True)
class Launch:
    devices: int

    def __call__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        train: ImageSet,
        val: ImageSet,
        class_names: list[str],
        hooks: Hooks,
        workdir: Path,
        device: torch.device,
    ) -> FitResult:
        run_dir = Path(workdir) / "ddp"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        try:
            ddp.write_inputs(run_dir, model, cfg, train, val, class_names, workdir, device.type)
            returncode = self._supervise(run_dir, hooks)
            return _outcome(run_dir, returncode, self.devices)
        finally:
            # The inputs are a copy of the dataset: never keep them.
            shutil.rmtree(run_dir, ignore_errors=True)

    def command(self, run_dir: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(self.devices),
            "-m",
            "worker.training.ddp",
            str(run_dir),
        ]

    def _supervise(self, run_dir: Path, hooks: Hooks) -> int:
        relay = ddp.Relay(run_dir, hooks)
        log_path = run_dir / "torchrun.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                self.command(run_dir), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        asked_at: float | None = None
        try:
            while True:
                done = proc.poll() is not None
                ended = relay.drain()
                if done:
                    break
                if asked_at is None:
                    reason = hooks.should_stop()
                    if reason is not None:
                        ddp.write_atomic(run_dir / ddp.STOP, reason)
                        asked_at = time.monotonic()
                elif time.monotonic() - asked_at > STOP_GRACE_SECONDS:
                    log.warning("ranks still running %.0fs after a stop", STOP_GRACE_SECONDS)
                    break
                if ended is not None:
                    ddp.write_atomic(run_dir / ddp.ACK, str(ended))
                time.sleep(POLL_SECONDS)
        finally:
            _kill_all(proc, run_dir, self.devices)
        if proc.returncode != 0:
            tail = log_path.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace")
            log.warning("torchrun exited %s; its log ends:\n%s", proc.returncode, tail)
        return proc.returncode


def _kill_all(proc: subprocess.Popen[bytes], run_dir: Path, world_size: int) -> None:
    """torchrun and every rank (each rank has a session of its own, so killing
    torchrun's process group would not reach them)."""
    pids = [proc.pid]
    for rank in range(world_size):
        try:
            pids.append(int(ddp.pid_file(run_dir, rank).read_text()))
        except (OSError, ValueError):
            continue
    for pid in pids:
        if pid == proc.pid or _runs_in(pid, run_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    proc.wait()


def _runs_in(pid: int, run_dir: Path) -> bool:
    """Whether `pid` is still a rank of this run (not a new process that reused the pid)."""
    try:
        return str(run_dir).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _outcome(run_dir: Path, returncode: int, world_size: int) -> FitResult:
    result = ddp.load_result(run_dir)
    if result is not None:
        return result
    stopped = run_dir / ddp.STOPPED
    if stopped.exists():
        where = json.loads(stopped.read_text())
        raise TrainingStopped(where["reason"], where["epoch"], where["step"])
    errors = {}
    for rank in range(world_size):
        path = ddp.error_file(run_dir, rank)
        if path.exists():
            errors[rank] = json.loads(path.read_text())
    silent = [rank for rank in range(world_size) if rank not in errors]
    if silent:
        # Killed (the kernel's OOM killer, an operator, a device that hung): the others'
        # errors are only their peers' absence.
        names = ", ".join(str(r) for r in silent)
        raise DeviceFailure(
            f"Training process {names} of {world_size} ended without a word "
            f"(killed, or its device failed); torchrun exited with {returncode}."
        )
    first = errors[min(errors)]
    message = f"rank {min(errors)} of {world_size}: {first['message']}"
    if first["out_of_memory"]:
        raise ResourcesExhausted(message)
    if any(e["distributed"] for e in errors.values()):
        raise DeviceFailure(message)
    raise JobError(message)
