"""Plain data that crosses the boundary between the Celery glue and the training engine.

The engine (worker/training/engine.py) takes these and knows nothing of Celery, SQL or
HTTP: the glue (worker/runner.py) turns a job row into a TrainConfig, the dataset into
ImageSets, and turns the engine's callbacks into rows and events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Strategy = Literal["linear_probe", "partial", "full"]
# pruned: a model search's pruner stopped the trial at the end of an epoch.
StopReason = Literal["cancelled", "preempted", "lease_lost", "pruned"]
# "features": a linear probe computing its feature cache (epoch 0, before any training).
Phase = Literal["features", "training"]


@dataclass(frozen=True)
class TrainConfig:
    architecture: str
    num_classes: int
    strategy: Strategy = "linear_probe"
    unfreeze_last: int | None = None
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: Literal["sgd", "adamw"] = "adamw"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: int = 0
    step_size: int = 10
    gamma: float = 0.1
    label_smoothing: float = 0.0
    class_weighting: Literal["none", "balanced"] = "none"
    augmentation: Literal["none", "light", "strong"] = "light"
    random_invert: float = 0.0  # probability, where augmentation applies
    image_size: int = 224
    early_stopping_patience: int | None = None
    seed: int = 0
    mixed_precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    max_runtime_seconds: float | None = None
    backbone_lr_multiplier: float = 0.1
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass
class ImageSet:
    """Images decoded once: uint8 (N, S, S, 3) RGB, already resized to the job's size."""

    images: np.ndarray  # may be a np.memmap
    labels: np.ndarray  # int64 (N,)
    paths: list[str]  # dataset-relative path of each image, for reports

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Progress:
    epoch: int  # 1-based epoch in progress
    total_epochs: int
    step: int  # 1-based step within the epoch
    steps_per_epoch: int
    fraction: float  # of the whole job, 0..1
    eta_seconds: float | None
    images_per_second: float | None
    learning_rate: float
    # In phase "features", epoch is 0, step counts feature batches done (train then val)
    # out of steps_per_epoch in all, fraction is 0 and eta_seconds is for the phase only.
    phase: Phase = "training"


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    learning_rate: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)  # e.g. domain_loss

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "train_accuracy": self.train_accuracy,
            "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy,
            "learning_rate": self.learning_rate,
            "seconds": self.seconds,
        }
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochMetrics:
        """as_dict() read back: the named fields, and the rest as extra."""
        names = [f for f in cls.__dataclass_fields__ if f != "extra"]
        return cls(**{k: d[k] for k in names}, extra={k: d[k] for k in d if k not in names})


@dataclass
class Hooks:
    """Callbacks from the engine; every one defaults to doing nothing."""

    on_progress: Callable[[Progress], None] = lambda p: None
    # Called after the epoch's checkpoint is safely on disk.
    on_epoch_end: Callable[[EpochMetrics], None] = lambda m: None
    # Asked between steps; a reason makes the engine stop (see TrainingStopped).
    should_stop: Callable[[], StopReason | None] = lambda: None
    on_event: Callable[[str, dict[str, Any]], None] = lambda kind, data: None


class TrainingStopped(Exception):
    """Raised by the engine when should_stop() asked it to stop.

    For "preempted" the engine has written a checkpoint at the current step first, so a
    later run resumes exactly there.
    """

    def __init__(self, reason: StopReason, epoch: int, step: int) -> None:
        super().__init__(f"training stopped ({reason}) at epoch {epoch} step {step}")
        self.reason: StopReason = reason
        self.epoch = epoch
        self.step = step


@dataclass
class FitResult:
    best_epoch: int
    state_dict: dict[str, Any]  # the kept (best) model's weights, on CPU
    history: list[EpochMetrics]
    report: dict[str, Any]  # see worker/training/metrics.py: classification_report()
    resumed_from_epoch: int | None  # epoch of the checkpoint a resumed run started from
    stopped_early: bool
