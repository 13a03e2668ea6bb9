"""What every adaptation method shares: the job it runs on, its result, and small helpers.

The methods reuse the engine's batching (engine.ImageInputs: gather on the device,
normalise, augment), its precision policy and its stop protocol, so an adapted model
sees its inputs exactly as the trained one did.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from app.schemas.jobs import DomainAdaptation
from worker.training import engine
from worker.training.types import Hooks, ImageSet, TrainConfig, TrainingStopped

EVENT = "adaptation_epoch"


@dataclass
class AdaptResult:
    state_dict: dict[str, torch.Tensor]  # the weights to ship, on the CPU
    kept: Literal["adapted", "unadapted"]
    report: dict[str, Any]  # JSON-able; see worker/adapt/report.py
    history: list[dict[str, Any]] = field(default_factory=list)  # per epoch / round / step


@dataclass
class AdaptJob:
    """Everything a method needs; `model` is adapted in place."""

    model: nn.Module
    options: Mapping[str, Any]
    cfg: TrainConfig
    source_train: ImageSet
    source_val: ImageSet
    target: np.ndarray  # uint8 (N, S, S, 3), unlabeled
    device: torch.device
    hooks: Hooks
    class_names: list[str]
    history: list[dict[str, Any]] = field(default_factory=list)

    def option(self, name: str) -> Any:
        return option(self.options, name)

    def learning_rate(self, default: float) -> float:
        lr = self.option("learning_rate")
        return float(default if lr is None else lr)

    def epochs(self, default: int) -> int:
        epochs = self.option("epochs")
        return int(default if epochs is None else epochs)

    @property
    def method(self) -> str:
        return str(self.options["method"])

    def target_inputs(self, augmentation: engine.augment.Mode = "none") -> engine.ImageInputs:
        return engine.ImageInputs(
            unlabeled(self.target), self.cfg, self.device, augmentation=augmentation
        )

    def check_stop(self, epoch: int, step: int) -> None:
        """Between steps, as the engine does. Adaptation keeps no checkpoint, so a preempted
        job redoes it from the trained model (adaptation is short next to training)."""
        reason = self.hooks.should_stop()
        if reason is not None:
            raise TrainingStopped(reason, epoch, step)

    def record(self, unit: str, index: int, total: int, metrics: Mapping[str, Any]) -> None:
        """Append to the history and tell the job (event adaptation_epoch)."""
        entry = {unit: index, **metrics}
        self.history.append(entry)
        self.hooks.on_event(
            EVENT, {"method": self.method, "unit": unit, "index": index, "total": total, **metrics}
        )


def option(options: Mapping[str, Any], name: str) -> Any:
    """An option of the spec, or the schema's default when a caller left it out."""
    if name in options:
        return options[name]
    return DomainAdaptation.model_fields[name].default


def unlabeled(images: np.ndarray) -> ImageSet:
    n = len(images)
    return ImageSet(images, np.zeros(n, dtype=np.int64), [""] * n)


def even_batches(n: int, batch_size: int) -> list[np.ndarray]:
    """In-order batches of near-equal size (never a lone image, which BatchNorm rejects)."""
    return np.array_split(np.arange(n), max(1, -(-n // batch_size)))


def cycled_batches(n: int, batch_size: int, seed: int, epoch: int, steps: int) -> list[np.ndarray]:
    """`steps` shuffled batches of a set, reshuffled each time it runs out."""
    out: list[np.ndarray] = []
    lap = 0
    while len(out) < steps:
        # Distinct (seed, epoch, lap) per pass keeps the order a function of its position only.
        out += engine.epoch_batches(n, batch_size, seed, epoch * 10_000 + lap)
        lap += 1
    return out[:steps]


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """Restore each module's train/eval mode and each parameter's requires_grad on exit."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad in grads:
            p.requires_grad_(requires_grad)
