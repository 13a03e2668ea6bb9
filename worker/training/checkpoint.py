"""The training checkpoint: one dict with fixed keys, written atomically, loaded safely.

A worker can die at any instant (OOM, preemption, a lost lease), so a reader must see
either the previous checkpoint or the new one, never a torn file: write to a temp file in
the same directory, fsync, rename over the old name, fsync the directory. Loading uses
torch.load(weights_only=True), so a checkpoint can hold tensors and plain containers but
never runs code.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

VERSION = 1
FILENAME = "checkpoint.pt"
# The weights a job never changes (a linear probe's backbone, partial's frozen blocks),
# written once beside the checkpoint instead of into every epoch's file.
FROZEN_FILENAME = "frozen.pt"

# Besides "version", which save() adds.
KEYS = frozenset(
    {
        "config",
        "epoch",  # last completed epoch
        "step",  # steps done in epoch + 1 when written mid-epoch (preempted), else 0
        "partial_epoch",  # train loss/accuracy sums of that unfinished epoch
        "model",  # the state-dict entries not in frozen.pt
        "optimizer",
        "scheduler",
        "scaler",
        "rng",
        "history",
        "best",
        "best_val_loss",  # early stopping watches val loss, model selection accuracy
        "epochs_without_improvement",
        "elapsed_seconds",
        "stop_reason",
    }
)


def path_in(workdir: Path) -> Path:
    return Path(workdir) / FILENAME


def save(workdir: Path, checkpoint: dict[str, Any]) -> None:
    if set(checkpoint) != KEYS:
        raise ValueError(f"checkpoint keys differ from the fixed set: {set(checkpoint) ^ KEYS}")
    atomic_torch_save({"version": VERSION, **checkpoint}, path_in(workdir))


def load(workdir: Path) -> dict[str, Any] | None:
    """The checkpoint in `workdir`, or None when there is none."""
    path = path_in(workdir)
    if not path.is_file():
        return None
    ckpt: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("version") != VERSION:
        raise ValueError(f"{path} has checkpoint version {ckpt.get('version')}, not {VERSION}")
    return ckpt


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; some filesystems refuse O_RDONLY fsync on dirs.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached, contiguous CPU copy of a state dict (safe to keep while training goes on)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def capture_rng() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        # weights_only loading accepts tensors and plain containers, not numpy arrays.
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    # Another GPU count (a resume on another host) keeps the fresh CUDA seeds.
    cuda = state["cuda"]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _as_tuples(value: Any) -> Any:
    # random.setstate insists on tuples; a round trip may hand back lists.
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value
