"""An evaluation: a model's predictions on every image of a labelled dataset, scored.

A plain function like the engine's fit (no Celery, no SQL): the runner hands it the
claimed evaluation's files and two callbacks, and records the report it returns.
The scores are worker/training/metrics.py's classification_report, the same as a
training job's validation report, so the two read alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.architectures import ARCHITECTURES
from app.services.inference import softmax
from worker.errors import DatasetError, ModelFilesMissing
from worker.export.artifacts import FILE_NAMES
from worker.export.evaluate import Normalization, onnx_logits, torch_logits
from worker.job_inputs import load_saved
from worker.training import data, engine, metrics, registry
from worker.training.types import StopReason, TrainingStopped


@dataclass(frozen=True)
class Subject:
    """What is scored: a model's files, architecture, classes and input size."""

    model_dir: Path
    architecture: str
    classes: list[str]
    image_size: int
    artifact: str  # safetensors, onnx, onnx-int8 or onnx-fp16


def evaluate(
    subject: Subject,
    dataset_dir: Path,
    on_progress: Callable[[dict[str, Any]], None],
    should_stop: Callable[[], StopReason | None],
) -> dict[str, Any]:
    """The classification report of `subject` on every image of the dataset.

    on_progress gets {images_done, images_total, fraction, eta_seconds,
    images_per_second} after each batch; should_stop is asked after each batch, and a
    reason stops the run with TrainingStopped (nothing is written: a re-run starts over,
    which costs one pass of inference).
    """
    try:
        images = data.labeled_set(dataset_dir, subject.image_size, subject.classes)
    except DatasetError as exc:
        raise DatasetError(f"the evaluation dataset: {exc}") from exc
    total = len(images)
    started = time.monotonic()

    def on_batch(done: int) -> None:
        reason = should_stop()
        if reason is not None:
            raise TrainingStopped(reason, 1, done)
        elapsed = time.monotonic() - started
        rate = done / elapsed if elapsed > 0 else None
        on_progress(
            {
                "images_done": done,
                "images_total": total,
                "fraction": round(done / total, 4) if total else 1.0,
                "eta_seconds": round((total - done) / rate, 1) if rate else None,
                "images_per_second": round(rate, 1) if rate else None,
            }
        )

    arch = ARCHITECTURES[subject.architecture]
    norm = Normalization.of(arch.mean, arch.std)
    logits = _logits(subject, images.images, norm, on_batch)
    probs = softmax(logits)
    report = metrics.classification_report(
        images.labels, probs.argmax(1), probs, subject.classes, images.paths
    )
    return {"artifact": subject.artifact, **report}


def _logits(
    subject: Subject,
    images: np.ndarray,
    norm: Normalization,
    on_batch: Callable[[int], None],
) -> np.ndarray:
    if subject.artifact == "safetensors":
        path = subject.model_dir / "model.safetensors"
        if not path.is_file():
            raise ModelFilesMissing(f"the model's weights are gone from the store ({path.name})")
        arch, n, size = subject.architecture, len(subject.classes), subject.image_size
        model = load_saved(
            path,
            subject.model_dir.name,
            arch,
            lambda s: registry.build_from_state(arch, n, s, size),
        )
        model.to(engine.select_device())
        return torch_logits(model, images, norm, on_batch=on_batch)
    path = subject.model_dir / FILE_NAMES[subject.artifact]
    if not path.is_file():
        raise ModelFilesMissing(f"the model has no {subject.artifact} file ({path.name})")
    return onnx_logits(path, images, norm, on_batch=on_batch)
