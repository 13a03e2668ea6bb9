"""Self-training on confident target predictions (pseudo-labels; Lee 2013).

Each round predicts the target, keeps the images whose top softmax probability reaches
`threshold`, labels them with the predicted class, and fine-tunes on the source training
set plus those images with the engine's own fit(): the job's strategy, optimiser and
augmentation, `epochs` epochs, the best epoch on the source validation set kept. The
source stays in the mix so that wrong pseudo-labels cannot drag the model away from
what it knows; later rounds see more target images as the model grows surer.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from worker.adapt.common import AdaptJob
from worker.training import engine
from worker.training.types import Hooks, ImageSet, TrainConfig

# A fraction of the job's learning rate: the model is trained already, and a full-rate
# restart on partly wrong labels undoes more than it adapts. options.learning_rate
# overrides the product.
DEFAULT_LR_FACTOR = 0.3

# Epochs of training per label-and-train round.
DEFAULT_EPOCHS = 5


def select(probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the images predicted with confidence >= threshold, and their labels."""
    keep = np.flatnonzero(probs.max(1) >= threshold)
    return keep, probs[keep].argmax(1).astype(np.int64)


def round_config(job: AdaptJob, round_: int) -> TrainConfig:
    cfg = job.cfg
    return replace(
        cfg,
        epochs=job.epochs(DEFAULT_EPOCHS),
        learning_rate=job.learning_rate(cfg.learning_rate * DEFAULT_LR_FACTOR),
        # The head is trained already: no head-only warm-up, and a fresh shuffle per round.
        warmup_epochs=0,
        early_stopping_patience=None,
        seed=cfg.seed + round_,
    )


def combined(
    source: ImageSet, target: np.ndarray, keep: np.ndarray, labels: np.ndarray
) -> ImageSet:
    # Copies the source images into memory with the selected targets: fit() takes one set.
    return ImageSet(
        np.concatenate([np.asarray(source.images), target[keep]]),
        np.concatenate([np.asarray(source.labels, dtype=np.int64), labels]),
        [*source.paths, *(f"target/{i}" for i in keep.tolist())],
    )


def run(job: AdaptJob) -> list[dict[str, Any]]:
    rounds = int(job.option("rounds"))
    threshold = float(job.option("threshold"))
    for r in range(1, rounds + 1):
        probs = engine.predict_proba(job.model, job.target, job.cfg, job.device)
        keep, labels = select(probs, threshold)
        counts = np.bincount(labels, minlength=job.cfg.num_classes)
        metrics: dict[str, Any] = {
            "pseudo_labels": len(keep),
            "share": len(keep) / len(job.target),
            "class_counts": dict(zip(job.class_names, counts.tolist(), strict=True)),
        }
        if len(keep):
            metrics["source_val_accuracy"] = _fine_tune(job, r, keep, labels)
        job.record("round", r, rounds, metrics)
        if not len(keep):
            break  # nothing is confident enough: training on the source alone adapts nothing
    return job.history


def _fine_tune(job: AdaptJob, round_: int, keep: np.ndarray, labels: np.ndarray) -> float:
    """Fine-tune job.model in place; returns the kept epoch's source val accuracy."""
    # Only the stop hook: the job's own progress and epoch metrics belong to its training.
    hooks = Hooks(should_stop=job.hooks.should_stop)
    train = combined(job.source_train, job.target, keep, labels)
    with tempfile.TemporaryDirectory(prefix="graft-pseudo-label-") as workdir:
        result = engine.fit(
            job.model,
            round_config(job, round_),
            train,
            job.source_val,
            job.class_names,
            hooks,
            Path(workdir),
            job.device,
        )
    return float(result.report["accuracy"])
