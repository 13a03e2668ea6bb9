"""What a claimed job trains on, from its typed spec: the engine's config, the data and
the model to start from (ImageNet weights, none, or an earlier model of the team)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from app.architectures import ARCHITECTURES
from app.config import Settings
from app.schemas.jobs import DomainAdaptation, JobCreate
from app.services.job_runs import ClaimedJob
from app.storage import Storage
from worker.errors import DatasetError, IncompatibleWeights
from worker.training import data, engine, registry
from worker.training.types import ImageSet, TrainConfig


@dataclass
class JobInputs:
    cfg: TrainConfig
    train: ImageSet
    val: ImageSet
    classes: list[str]
    model: torch.nn.Module


def prepare(job: ClaimedJob, settings: Settings, storage: Storage) -> JobInputs:
    spec, hp = job.spec, job.spec.hyperparameters
    train, val, classes = data.image_sets(
        storage.fetch(storage.dataset_dir(spec.dataset_id)),
        hp.image_size,
        spec.validation_split,
        hp.seed,
    )
    cfg = train_config(spec, job.architecture, len(classes))
    # Seeded before the model is built: a new head's initial weights depend on it, and
    # the same spec must give the same model on the CPU.
    engine.seed_everything(cfg.seed)
    return JobInputs(cfg, train, val, classes, build_model(job, settings, storage, cfg))


def train_config(spec: JobCreate, architecture: str, num_classes: int) -> TrainConfig:
    """Every hyperparameter goes to the engine as it is: one it does not take is a
    TypeError here (and a failing test), never silently dropped."""
    arch = ARCHITECTURES[architecture]
    return TrainConfig(
        architecture=architecture,
        num_classes=num_classes,
        strategy=spec.strategy,
        unfreeze_last=spec.unfreeze_last,
        mean=arch.mean,
        std=arch.std,
        **spec.hyperparameters.model_dump(),
    )


def build_model(
    job: ClaimedJob, settings: Settings, storage: Storage, cfg: TrainConfig
) -> torch.nn.Module:
    if job.base is None:
        return registry.build_model(
            cfg.architecture,
            cfg.num_classes,
            weights=job.spec.pretrained_weights,
            cache_dir=settings.weights_cache,
            image_size=cfg.image_size,
            allow_download=settings.allow_weight_download,
        )
    weights_path = storage.fetch(storage.model_dir(job.base.id)) / "model.safetensors"
    arch, size, base = cfg.architecture, cfg.image_size, job.base
    if base.kind == "backbone":
        return load_saved(
            weights_path,
            base.id,
            arch,
            lambda state: registry.build_from_backbone(arch, cfg.num_classes, state, size),
        )
    model = load_saved(
        weights_path,
        base.id,
        arch,
        lambda state: registry.build_from_state(arch, len(base.classes), state, size),
    )
    return registry.replace_head(model, cfg.architecture, cfg.num_classes)


def load_saved(
    path: Path,
    model_id: str,
    architecture: str,
    build: Callable[[dict[str, torch.Tensor]], torch.nn.Module],
) -> torch.nn.Module:
    """build(state) from a model's safetensors file; IncompatibleWeights when the file
    cannot be read or its tensors do not fit `architecture`."""
    try:
        return build(load_file(str(path)))
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise IncompatibleWeights(
            f"the weights of {model_id} do not fit {architecture}: {exc}"
        ) from exc


def adaptation_data(
    options: DomainAdaptation, storage: Storage, size: int, classes: list[str]
) -> tuple[np.ndarray, ImageSet | None]:
    """The unlabeled target images, and the labelled target set to evaluate on (if any)."""
    try:
        target = data.all_images(
            storage.fetch(storage.dataset_dir(options.target_dataset_id)), size
        )
        evaluation = None
        if options.target_eval_dataset_id:
            evaluation = data.labeled_set(
                storage.fetch(storage.dataset_dir(options.target_eval_dataset_id)), size, classes
            )
    except DatasetError as exc:
        raise DatasetError(f"domain adaptation: {exc}") from exc
    return np.asarray(target), evaluation
