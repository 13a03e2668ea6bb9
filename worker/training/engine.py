"""The training loop: plain functions in the manner of torchvision's classification reference.

`fit` trains a model on decoded ImageSets and knows nothing of Celery or SQL: it reports
through Hooks, checkpoints into `workdir` after every epoch and resumes from it. Batches
are indexed straight out of the uint8 arrays (no loader workers), moved to the device and
augmented there. Each epoch's order and each step's augmentation derive from
(seed, epoch, step) and the RNG state travels in the checkpoint, so on the CPU a resumed
run ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from worker.training import (
    augment,
    checkpoint,
    features,
    label_issues,
    metrics,
    registry,
    strategies,
)
from worker.training.distributed import Distributed, padding
from worker.training.types import (
    EpochMetrics,
    FitResult,
    Hooks,
    ImageSet,
    Progress,
    TrainConfig,
    TrainingStopped,
)

PROGRESS_INTERVAL_SECONDS = 0.5
EVAL_BATCH_SIZE = 256
# Config fields a checkpoint must agree on to be resumed (others, e.g. epochs, may change).
_RESUME_KEYS = ("architecture", "num_classes", "strategy", "unfreeze_last", "batch_size", "seed")


# ---------------------------------------------------------------- device and precision


def select_device(prefer: str | None = None) -> torch.device:
    """`prefer` if given (e.g. "cuda:1", "cpu"), else CUDA when present, else the CPU."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Precision:
    name: str  # "fp32", "bf16" or "fp16": what actually runs
    device_type: str
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler

    def autocast(self) -> AbstractContextManager[object]:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)


def resolve_precision(cfg: TrainConfig, device: torch.device) -> Precision:
    """cfg.mixed_precision made concrete for `device`, so one config runs anywhere."""
    name = cfg.mixed_precision
    if device.type != "cuda":
        # fp16 autocast on the CPU is slow and unscaled; bf16 is the CPU's low precision.
        name = "bf16" if name == "bf16" else "fp32"
    elif name == "auto":
        name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    scaler = torch.amp.GradScaler(device.type, enabled=name == "fp16")
    return Precision(name, device.type, dtype, scaler)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- batches


class Inputs(Protocol):
    def __len__(self) -> int: ...

    def batch(
        self, idx: np.ndarray, epoch: int, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def train_augmentation(cfg: TrainConfig) -> augment.Mode:
    """The augmentation training batches get. A frozen backbone (linear probe) sees each
    image as it is, cached or not, so the probe's two paths train on the same inputs."""
    return "none" if cfg.strategy == "linear_probe" else cfg.augmentation


class ImageInputs:
    """Batches of images from an ImageSet, augmented and normalised on the device."""

    def __init__(
        self, data: ImageSet, cfg: TrainConfig, device: torch.device, *, augmentation: augment.Mode
    ) -> None:
        self.images = data.images
        self.labels = np.asarray(data.labels, dtype=np.int64)
        self.device, self.seed = device, cfg.seed
        self.mode = augmentation
        # Inversion is part of augmentation: evaluation batches (mode none) never invert.
        self.invert = cfg.random_invert
        self.mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1)
        self.channels_last = _use_channels_last(cfg, device)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: np.ndarray, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = augment.step_generator(self.seed, epoch, step)
        raw = augment.gather(self.images, idx, self.device)
        x = augment.to_model_input(
            raw, self.mean, self.std, self.mode, gen, self.channels_last, self.invert
        )
        return x, augment.gather(self.labels, idx, self.device)


class ShardedInputs:
    """A data-parallel rank's part of each global batch (worker/training/distributed.py)."""

    def __init__(self, inner: Inputs, dist: Distributed) -> None:
        self.inner, self.dist = inner, dist

    def __len__(self) -> int:
        return len(self.inner)

    def batch(self, idx: np.ndarray, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.batch(self.dist.shard(idx), epoch, step)


class FeatureInputs:
    """Batches of cached backbone features (linear probe)."""

    def __init__(self, feats: torch.Tensor, labels: np.ndarray) -> None:
        self.feats = feats
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=feats.device)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: np.ndarray, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.from_numpy(idx).to(self.feats.device)
        return self.feats[i], self.labels[i]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The index batches of `epoch`; a function of (seed, epoch) only."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        # BatchNorm cannot train on a batch of one: fold the straggler into the batch before.
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


def _ordered_batches(n: int, batch_size: int) -> list[np.ndarray]:
    return [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _use_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    return device.type == "cuda" and cfg.architecture != "vit_b_16"


# ---------------------------------------------------------------- one epoch


@dataclass
class EpochTotals:
    """Running train loss and accuracy of an epoch, kept on the device (no per-step sync)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    seconds: float = 0.0  # train time of this epoch spent in earlier runs (resume)

    @classmethod
    def zeros(cls, device: torch.device) -> EpochTotals:
        z = torch.zeros((), dtype=torch.float64, device=device)
        return cls(z, z.clone())

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss_sum += loss.detach().double() * len(y)
        self.correct += (logits.detach().argmax(1) == y).sum()
        self.seen += len(y)

    def as_dict(self) -> dict[str, float]:
        return {
            "loss_sum": float(self.loss_sum),
            "correct": float(self.correct),
            "seen": self.seen,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, d: dict[str, float], device: torch.device) -> EpochTotals:
        t = cls.zeros(device)
        t.loss_sum += d["loss_sum"]
        t.correct += d["correct"]
        t.seen, t.seconds = int(d["seen"]), float(d["seconds"])
        return t


class ProgressMeter:
    """Throttles on_progress to about twice a second and estimates throughput and ETA."""

    def __init__(self, hooks: Hooks, total_epochs: int, steps_per_epoch: int) -> None:
        self.hooks, self.total_epochs, self.steps_per_epoch = hooks, total_epochs, steps_per_epoch
        self.run_start = time.monotonic()
        self.run_steps = 0
        self.last_report = -math.inf
        self.epoch_start, self.epoch_images = self.run_start, 0

    def start_epoch(self) -> None:
        self.epoch_start, self.epoch_images = time.monotonic(), 0

    def step_done(self, epoch: int, step: int, images: int, lr: float) -> None:
        """`step` is 1-based within the epoch."""
        self.run_steps += 1
        self.epoch_images += images
        now = time.monotonic()
        last = step == self.steps_per_epoch
        if not last and now - self.last_report < PROGRESS_INTERVAL_SECONDS:
            return
        self.last_report = now
        total = self.total_epochs * self.steps_per_epoch
        done = (epoch - 1) * self.steps_per_epoch + step
        per_step = (now - self.run_start) / self.run_steps
        epoch_elapsed = now - self.epoch_start
        self.hooks.on_progress(
            Progress(
                epoch=epoch,
                total_epochs=self.total_epochs,
                step=step,
                steps_per_epoch=self.steps_per_epoch,
                fraction=done / total,
                eta_seconds=per_step * (total - done),
                images_per_second=self.epoch_images / epoch_elapsed if epoch_elapsed else None,
                learning_rate=lr,
            )
        )


class FeatureMeter:
    """Progress and stop checks while a linear probe computes its feature cache.

    Reports Progress(phase="features", epoch=0) with step = feature batches done out of
    steps_per_epoch = all of them (train then val), throttled like ProgressMeter and always
    on the last batch. Between batches it asks hooks.should_stop() and raises
    TrainingStopped(reason, 0, 0): no epoch ran, so nothing needs a checkpoint (a restart
    computes the features again).
    """

    def __init__(self, hooks: Hooks, total_epochs: int, total_batches: int, lr: float) -> None:
        self.hooks, self.total_epochs, self.total_batches = hooks, total_epochs, total_batches
        self.lr = lr
        self.start = time.monotonic()
        self.batches, self.images = 0, 0
        self.last_report = -math.inf

    def batch_done(self, images: int) -> None:
        self.batches += 1
        self.images += images
        now = time.monotonic()
        last = self.batches >= self.total_batches
        if last or now - self.last_report >= PROGRESS_INTERVAL_SECONDS:
            self.last_report = now
            elapsed = now - self.start
            self.hooks.on_progress(
                Progress(
                    epoch=0,
                    total_epochs=self.total_epochs,
                    step=self.batches,
                    steps_per_epoch=self.total_batches,
                    fraction=0.0,
                    eta_seconds=elapsed / self.batches * (self.total_batches - self.batches),
                    images_per_second=self.images / elapsed if elapsed else None,
                    learning_rate=self.lr,
                    phase="features",
                )
            )
        if not last:
            reason = self.hooks.should_stop()
            if reason is not None:
                raise TrainingStopped(reason, 0, 0)


def train_one_epoch(
    module: nn.Module,
    inputs: Inputs,
    batches: list[np.ndarray],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    criterion: nn.Module,
    precision: Precision,
    *,
    epoch: int,
    start_step: int,
    totals: EpochTotals,
    hooks: Hooks,
    meter: ProgressMeter,
    on_preempt: Callable[[int], None],
) -> None:
    """Train `module` over `batches[start_step:]`, accumulating into `totals`.

    Asks hooks.should_stop() before every step; on "preempted" calls on_preempt(steps
    done) so the caller can checkpoint, then raises TrainingStopped for any reason.
    """
    scaler = precision.scaler
    meter.start_epoch()
    for step in range(start_step, len(batches)):
        reason = hooks.should_stop()
        if reason is not None:
            if reason == "preempted":
                on_preempt(step)
            raise TrainingStopped(reason, epoch, step)
        x, y = inputs.batch(batches[step], epoch, step)
        with precision.autocast():
            logits = module(x)
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        totals.add(loss, logits, y)
        # The global batch: on N ranks, y is this rank's share of it.
        meter.step_done(epoch, step + 1, len(batches[step]), optimizer.param_groups[-1]["lr"])


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def _logits(
    module: nn.Module, inputs: Inputs, precision: Precision, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    # Per-module modes, not module.train(): frozen BatchNorm layers must stay in eval.
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    out, labels = [], []
    for idx in _ordered_batches(len(inputs), batch_size):
        x, y = inputs.batch(idx, 0, 0)
        with precision.autocast():
            out.append(module(x).float())
        labels.append(y)
    for m, training in modes:
        m.training = training
    return torch.cat(out), torch.cat(labels)


def _evaluate_inputs(
    module: nn.Module, inputs: Inputs, precision: Precision
) -> tuple[float, float, np.ndarray]:
    logits, y = _logits(module, inputs, precision, EVAL_BATCH_SIZE)
    loss = nn.functional.cross_entropy(logits, y).item()
    accuracy = (logits.argmax(1) == y).double().mean().item()
    return loss, accuracy, logits.softmax(1).cpu().numpy()


def evaluate(
    model: nn.Module, imageset: ImageSet, cfg: TrainConfig, device: torch.device
) -> tuple[float, float, np.ndarray]:
    """(mean cross-entropy without label smoothing, accuracy, class probabilities)."""
    inputs = ImageInputs(imageset, cfg, device, augmentation="none")
    return _evaluate_inputs(model, inputs, resolve_precision(cfg, device))


def predict_proba(
    model: nn.Module,
    images_uint8: np.ndarray,
    cfg: TrainConfig,
    device: torch.device,
    batch_size: int = EVAL_BATCH_SIZE,
) -> np.ndarray:
    """Class probabilities (N, C) for decoded uint8 (N, S, S, 3) images."""
    n = len(images_uint8)
    data = ImageSet(images_uint8, np.zeros(n, dtype=np.int64), [""] * n)
    inputs = ImageInputs(data, cfg, device, augmentation="none")
    logits, _ = _logits(model, inputs, resolve_precision(cfg, device), batch_size)
    return logits.softmax(1).cpu().numpy()


# ---------------------------------------------------------------- optimisation


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = strategies.param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Per-step multiplier of each group's learning rate: linear warm-up, then the schedule."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        if cfg.lr_schedule == "step":
            return float(cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size))
        return 1.0

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))


# ---------------------------------------------------------------- run state


@dataclass
class Best:
    epoch: int = 0
    val_accuracy: float = -math.inf
    val_loss: float = math.inf
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)

    def beaten_by(self, m: EpochMetrics) -> bool:
        """Higher val accuracy wins; on a tie, lower val loss."""
        return m.val_accuracy > self.val_accuracy or (
            m.val_accuracy == self.val_accuracy and m.val_loss < self.val_loss
        )


@dataclass
class RunState:
    """What survives an epoch boundary; everything in it goes into the checkpoint."""

    epoch: int = 0  # last completed
    step: int = 0  # steps already done in epoch + 1 (a mid-epoch resume)
    partial: dict[str, float] | None = None
    history: list[EpochMetrics] = field(default_factory=list)
    best: Best = field(default_factory=Best)
    best_val_loss: float = math.inf
    epochs_without_improvement: int = 0
    elapsed_seconds: float = 0.0
    stop_reason: str | None = None

    def record(self, m: EpochMetrics, model: nn.Module, cfg: TrainConfig) -> None:
        """Add an epoch's metrics, keep the best weights and decide whether to stop."""
        self.epoch, self.step, self.partial = m.epoch, 0, None
        self.history.append(m)
        if self.best.beaten_by(m):
            self.best = Best(m.epoch, m.val_accuracy, m.val_loss, checkpoint.cpu_state(model))
        if m.val_loss < self.best_val_loss:
            self.best_val_loss, self.epochs_without_improvement = m.val_loss, 0
        else:
            self.epochs_without_improvement += 1
        if m.epoch >= cfg.epochs:
            return
        patience = cfg.early_stopping_patience
        if patience is not None and self.epochs_without_improvement >= patience:
            self.stop_reason = "early_stopping"
        elif (
            cfg.max_runtime_seconds is not None and self.elapsed_seconds >= cfg.max_runtime_seconds
        ):
            self.stop_reason = "max_runtime"


class Trainer:
    """The optimiser, schedule, data and hooks of one fit() call, and its checkpointing."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        hooks: Hooks,
        workdir: Path,
        device: torch.device,
        steps_per_epoch: int,
        dist: Distributed | None = None,
    ) -> None:
        self.model, self.cfg, self.hooks, self.workdir, self.device = (
            model,
            cfg,
            hooks,
            workdir,
            device,
        )
        self.dist = dist
        self.precision = resolve_precision(cfg, device)
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, steps_per_epoch)
        # Built with the data (set_data): class weights depend on the training labels.
        self.criterion: nn.CrossEntropyLoss
        self.meter = ProgressMeter(hooks, cfg.epochs, steps_per_epoch)
        self.frozen = strategies.frozen_keys(model, cfg)
        self.run_start = time.monotonic()
        # The module that trains and its inputs: the whole model on images, or only the
        # head on cached features (set_data).
        self.module: nn.Module = model
        # What the optimiser steps through: the module, or DDP around it on N ranks
        # (evaluation calls the module itself: DDP's forward is a collective).
        self.train_module: nn.Module = model
        self.train_in: Inputs
        self.val_in: Inputs

    def set_data(self, train: ImageSet, val: ImageSet, feature_cache: bool) -> None:
        cfg, device = self.cfg, self.device
        self.val_labels = np.asarray(val.labels, dtype=np.int64)
        weight = None
        if cfg.class_weighting == "balanced":
            # A weighted loss, not a resampler: every image is still seen once an epoch.
            weights = metrics.balanced_class_weights(train.labels, cfg.num_classes)
            weight = torch.tensor(weights, dtype=torch.float32, device=device)
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
        if cfg.strategy == "linear_probe" and feature_cache:
            feats = self._features(train, val)
            self.module = registry.head(self.model, cfg.architecture)
            self.train_module = self.module
            self.train_in = FeatureInputs(feats["train"], train.labels)
            self.val_in = FeatureInputs(feats["val"], val.labels)
            return
        self.train_in = ImageInputs(train, cfg, device, augmentation=train_augmentation(cfg))
        self.val_in = ImageInputs(val, cfg, device, augmentation="none")
        if self.dist is not None:
            self.train_in = ShardedInputs(self.train_in, self.dist)
            ids = [device.index] if device.type == "cuda" else None
            self.train_module = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def _features(self, train: ImageSet, val: ImageSet) -> dict[str, torch.Tensor]:
        cfg, device = self.cfg, self.device
        extractor = registry.feature_extractor(self.model, cfg.architecture)
        probe = ImageInputs(val, cfg, device, augmentation="none")
        batch_size = EVAL_BATCH_SIZE
        total = features.batch_count(len(train), batch_size)
        total += features.batch_count(len(val), batch_size)
        # Created on first use, so a cache loaded from the workdir reports nothing.
        meter: FeatureMeter | None = None

        def compute_one(images: np.ndarray) -> torch.Tensor:
            nonlocal meter
            if meter is None:
                lr = self.optimizer.param_groups[-1]["lr"]
                meter = FeatureMeter(self.hooks, cfg.epochs, total, lr)
            return features.compute(
                extractor,
                images,
                batch_size=batch_size,
                device=device,
                mean=probe.mean,
                std=probe.std,
                channels_last=probe.channels_last,
                autocast=self.precision.autocast,
                on_batch=meter.batch_done,
            )

        return features.load_or_compute(
            self.workdir, {"train": train, "val": val}, compute_one, device
        )

    def run_epoch(self, state: RunState, epoch: int, n_train: int) -> EpochMetrics:
        cfg = self.cfg
        strategies.configure_epoch(self.model, cfg, epoch)
        batches = epoch_batches(n_train, cfg.batch_size, cfg.seed, epoch)
        totals = EpochTotals.zeros(self.device)
        # A partial epoch's sums are all ranks' together: one rank carries them on.
        if state.partial and (self.dist is None or self.dist.writes):
            totals = EpochTotals.from_dict(state.partial, self.device)
        epoch_start = time.monotonic() - totals.seconds

        def on_preempt(step: int) -> None:
            totals.seconds = time.monotonic() - epoch_start
            state.elapsed_seconds = time.monotonic() - self.run_start
            # At step 0 the previous epoch's checkpoint already holds this exact state.
            if step:
                self._sum_over_ranks(totals)
                self.checkpoint(state, step, totals)

        train_one_epoch(
            self.train_module,
            self.train_in,
            batches,
            self.optimizer,
            self.scheduler,
            self.criterion,
            self.precision,
            epoch=epoch,
            start_step=state.step,
            totals=totals,
            hooks=self.hooks,
            meter=self.meter,
            on_preempt=on_preempt,
        )
        extra = self._sum_over_ranks(totals, batches)
        val_loss, val_acc, probs = _evaluate_inputs(self.module, self.val_in, self.precision)
        state.elapsed_seconds = time.monotonic() - self.run_start
        scores = metrics.balanced_scores(self.val_labels, probs.argmax(1), self.cfg.num_classes)
        extra.update({f"val_{name}": value for name, value in scores.items()})
        return EpochMetrics(
            epoch=epoch,
            train_loss=float(totals.loss_sum) / totals.seen,
            train_accuracy=float(totals.correct) / totals.seen,
            val_loss=val_loss,
            val_accuracy=val_acc,
            learning_rate=self.optimizer.param_groups[-1]["lr"],
            seconds=time.monotonic() - epoch_start,
            extra=extra,
        )

    def _sum_over_ranks(
        self, totals: EpochTotals, batches: list[np.ndarray] | None = None
    ) -> dict[str, float]:
        """On N ranks: every rank's loss, hits and images in `totals`, and (for a whole
        epoch's `batches`) the images it trained on and how many of them were padding."""
        if self.dist is None:
            return {}
        loss_sum, correct, seen = self.dist.sum(
            [float(totals.loss_sum), float(totals.correct), float(totals.seen)]
        )
        totals.loss_sum.fill_(loss_sum)
        totals.correct.fill_(correct)
        totals.seen = int(seen)
        if batches is None:
            return {}
        return {
            "train_samples": totals.seen,
            "padded_samples": padding(batches, self.dist.world_size),
        }

    def checkpoint(
        self, state: RunState, step: int = 0, partial: EpochTotals | None = None
    ) -> None:
        if self.dist is not None and not self.dist.writes:
            return
        checkpoint.save(
            self.workdir,
            {
                "config": asdict(self.cfg),
                "epoch": state.epoch,
                "step": step,
                "partial_epoch": partial.as_dict() if partial else None,
                "model": self._live(self._model_state(state, step)),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.precision.scaler.state_dict(),
                "rng": checkpoint.capture_rng(),
                "history": [m.as_dict() for m in state.history],
                # Not asdict(): it would deep-copy every tensor of the state dict.
                "best": {**vars(state.best), "state_dict": self._live(state.best.state_dict)},
                "best_val_loss": state.best_val_loss,
                "epochs_without_improvement": state.epochs_without_improvement,
                "elapsed_seconds": state.elapsed_seconds,
                "stop_reason": state.stop_reason,
            },
        )

    def _model_state(self, state: RunState, step: int) -> dict[str, torch.Tensor]:
        # Right after a best epoch the model is the best: sharing the tensors lets
        # torch.save store them once, halving the file.
        if step == 0 and state.best.epoch == state.epoch and state.best.state_dict:
            return state.best.state_dict
        return checkpoint.cpu_state(self.model)

    def _live(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The entries that can change; the frozen rest goes to frozen.pt, once per job."""
        path = self.workdir / checkpoint.FROZEN_FILENAME
        if self.frozen and state_dict and not path.is_file():
            checkpoint.atomic_torch_save({k: state_dict[k] for k in self.frozen}, path)
        return {k: v for k, v in state_dict.items() if k not in self.frozen}

    def restore(self, ckpt: dict[str, Any]) -> RunState:
        _check_resumable(ckpt["config"], self.cfg)
        frozen: dict[str, torch.Tensor] = {}
        if self.frozen:
            path = self.workdir / checkpoint.FROZEN_FILENAME
            frozen = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict({**frozen, **ckpt["model"]})
        ckpt["best"]["state_dict"] = {**frozen, **ckpt["best"]["state_dict"]}
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:
            self.precision.scaler.load_state_dict(ckpt["scaler"])
        checkpoint.restore_rng(ckpt["rng"])
        self.run_start = time.monotonic() - ckpt["elapsed_seconds"]
        return RunState(
            epoch=ckpt["epoch"],
            step=ckpt["step"],
            partial=ckpt["partial_epoch"],
            history=[EpochMetrics.from_dict(d) for d in ckpt["history"]],
            best=Best(**ckpt["best"]),
            best_val_loss=ckpt["best_val_loss"],
            epochs_without_improvement=ckpt["epochs_without_improvement"],
            elapsed_seconds=ckpt["elapsed_seconds"],
            stop_reason=ckpt["stop_reason"],
        )

    def _label_issues(self, train: ImageSet, class_names: list[str]) -> dict[str, Any]:
        """Suspected wrong labels among the training images, from the kept model's
        features (the job's cache for a linear probe; one pass over the images else)."""
        if isinstance(self.train_in, FeatureInputs):
            feats = self.train_in.feats
        else:
            extractor = registry.feature_extractor(self.model, self.cfg.architecture)
            inputs = ImageInputs(train, self.cfg, self.device, augmentation="none")
            feats, _ = _logits(extractor, inputs, self.precision, EVAL_BATCH_SIZE)
        flat = feats.float().flatten(1).cpu().numpy()
        return label_issues.label_issues(
            flat, np.asarray(train.labels), class_names, train.paths, self.cfg.seed
        )

    def result(
        self,
        state: RunState,
        train: ImageSet,
        val: ImageSet,
        class_names: list[str],
        resumed_from: int | None,
    ) -> FitResult:
        """The best epoch's weights, loaded back into the model, and their report on val."""
        self.model.load_state_dict(state.best.state_dict)
        _, _, probs = _evaluate_inputs(self.module, self.val_in, self.precision)
        report = metrics.classification_report(
            np.asarray(val.labels), probs.argmax(1), probs, class_names, val.paths
        )
        report["stop_reason"] = state.stop_reason
        report.update(self._label_issues(train, class_names))
        return FitResult(
            best_epoch=state.best.epoch,
            state_dict=state.best.state_dict,
            history=state.history,
            report=report,
            resumed_from_epoch=resumed_from,
            stopped_early=state.stop_reason is not None,
        )


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig) -> None:
    current = asdict(cfg)
    diff = [k for k in _RESUME_KEYS if saved.get(k) != current[k]]
    if diff:
        raise ValueError(f"the checkpoint in the workdir was written for another config: {diff}")


def _validate(cfg: TrainConfig, train: ImageSet, val: ImageSet, class_names: list[str]) -> None:
    if cfg.num_classes != len(class_names):
        raise ValueError(f"num_classes is {cfg.num_classes} but {len(class_names)} class names")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError("epochs and batch_size must be at least 1")
    if len(train) == 0 or len(val) == 0:
        raise ValueError("training needs at least one train and one val image")
    for name, s in (("train", train), ("val", val)):
        if s.images.ndim != 4 or s.images.shape[1:] != (cfg.image_size, cfg.image_size, 3):
            raise ValueError(
                f"{name} images have shape {s.images.shape[1:]}, expected "
                f"({cfg.image_size}, {cfg.image_size}, 3)"
            )


# ---------------------------------------------------------------- fit


def fit(
    model: nn.Module,
    cfg: TrainConfig,
    train: ImageSet,
    val: ImageSet,
    class_names: list[str],
    hooks: Hooks,
    workdir: Path,
    device: torch.device,
    *,
    feature_cache: bool = True,
    dist: Distributed | None = None,
) -> FitResult:
    """Train `model` (in place) under `cfg`; return the best epoch on `val` and its report.

    Resumes from workdir/checkpoint.pt when present. For linear_probe with
    feature_cache=True the backbone runs once per job and augmentation does not apply.
    With `dist`, this is one rank of a data-parallel fit (worker/training/ddp.py): every
    rank runs this same loop on its share of each batch; rank 0 alone checkpoints, and
    only its hooks report. A linear probe then runs its frozen backbone at every step
    (no feature cache: one cache file per job, not one per rank).
    """
    _validate(cfg, train, val, class_names)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    model.to(device)
    if _use_channels_last(cfg, device):
        model.to(memory_format=torch.channels_last)
    steps_per_epoch = len(epoch_batches(len(train), cfg.batch_size, cfg.seed, 1))
    trainer = Trainer(model, cfg, hooks, workdir, device, steps_per_epoch, dist)
    hooks.on_event("precision", {"precision": trainer.precision.name, "device": str(device)})
    ckpt = checkpoint.load(workdir)
    if ckpt is None and (dist is None or dist.writes):
        # Files without a checkpoint belong to some earlier, abandoned start.
        for stale in (features.FILENAME, checkpoint.FROZEN_FILENAME):
            (workdir / stale).unlink(missing_ok=True)
    if ckpt is None:
        state, resumed_from = RunState(), None
    else:
        state, resumed_from = trainer.restore(ckpt), ckpt["epoch"]
        hooks.on_event("resumed", {"epoch": state.epoch, "step": state.step})
    trainer.set_data(train, val, feature_cache and dist is None)
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if state.stop_reason:
            break
        m = trainer.run_epoch(state, epoch, len(train))
        state.record(m, model, cfg)
        if dist is not None:
            # Each rank evaluated with its own BatchNorm statistics: rank 0's decide.
            state.stop_reason = dist.from_writer(state.stop_reason)
        trainer.checkpoint(state)
        hooks.on_epoch_end(m)
    return trainer.result(state, train, val, class_names, resumed_from)
