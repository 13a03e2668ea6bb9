"""One rank of a data-parallel fit: the process group torchrun set up, and what the
engine asks of it (its share of each batch, agreeing on a stop, summing the epoch's totals).

The engine stays one loop: every rank runs the same epochs and steps over the same
global batches (epoch_batches of the whole dataset, so a step means the same thing on one
process or on N, and a checkpoint of either resumes on the other). Each global batch is
split across the ranks as torch's DistributedSampler splits a dataset: padded by wrapping
around to a multiple of the world size, then every N-th index from the rank's own. The
ranks' shards are then equal, so DDP's averaged gradient is the mean over the global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from worker.training.types import StopReason

# Stop reasons in the order they win when ranks disagree: a lost lease (write nothing)
# over a cancel over a pre-emption (checkpoint first) over the pruner's advice.
_REASONS: tuple[StopReason | None, ...] = (None, "pruned", "preempted", "cancelled", "lease_lost")
# A rank waits this long in a collective for the others (gloo and NCCL otherwise wait
# 10 to 30 minutes for a peer that died without closing its connections).
COLLECTIVE_TIMEOUT = timedelta(minutes=5)


@dataclass
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @classmethod
    def from_environment(cls, device_type: str) -> Distributed:
        """Join the process group of the variables torchrun set (RANK, WORLD_SIZE, …):
        NCCL with one CUDA device per rank, gloo on the CPU."""
        local_rank = int(os.environ["LOCAL_RANK"])
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
            device, backend = torch.device("cuda", local_rank), "nccl"
        else:
            device, backend = torch.device("cpu"), "gloo"
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, device)

    @property
    def writes(self) -> bool:
        """Rank 0 alone writes checkpoints and reports; the others train beside it."""
        return self.rank == 0

    def shard(self, batch: np.ndarray) -> np.ndarray:
        return shard(batch, self.rank, self.world_size)

    def agree(self, reason: StopReason | None) -> StopReason | None:
        """Every rank's reason to stop, the same on all: each rank asks before every
        step, and they must stop at the same step or the next collective would hang."""
        code = torch.tensor([_REASONS.index(reason)], device=self.device)
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
        return _REASONS[int(code.item())]

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return [float(v) for v in t.tolist()]

    def from_writer(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (a decision only rank 0's numbers may make)."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def shard(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank `rank`'s part of one global batch, DistributedSampler's way."""
    padded = -len(batch) % world_size
    if padded:
        batch = np.concatenate([batch, np.resize(batch, padded)])
    return batch[rank::world_size]


def padding(batches: list[np.ndarray], world_size: int) -> int:
    """Images an epoch trains on twice because its batches were padded to the world size."""
    return sum(-len(b) % world_size for b in batches)
