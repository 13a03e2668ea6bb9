"""What a claimed job trains on, from its typed spec: the engine's config, the data and
the model to start from (ImageNet weights, none, or an earlier model of the team)."""

from __future__ import annotations

from dataclasses import dataclass

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
        storage.dataset_dir(spec.dataset_id), hp.image_size, spec.validation_split, hp.seed
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
    weights_path = storage.model_dir(job.base.id) / "model.safetensors"
    try:
        state = load_file(str(weights_path))
        if job.base.kind == "backbone":
            return registry.build_from_backbone(
                cfg.architecture, cfg.num_classes, state, cfg.image_size
            )
        model = registry.build_from_state(
            cfg.architecture, len(job.base.classes), state, cfg.image_size
        )
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise IncompatibleWeights(
            f"the weights of {job.base.id} do not fit {cfg.architecture}: {exc}"
        ) from exc
    return registry.replace_head(model, cfg.architecture, cfg.num_classes)


def adaptation_data(
    options: DomainAdaptation, storage: Storage, size: int, classes: list[str]
) -> tuple[np.ndarray, ImageSet | None]:
    """The unlabeled target images, and the labelled target set to evaluate on (if any)."""
    try:
        target = data.all_images(storage.dataset_dir(options.target_dataset_id), size)
        evaluation = None
        if options.target_eval_dataset_id:
            evaluation = data.labeled_set(
                storage.dataset_dir(options.target_eval_dataset_id), size, classes
            )
    except DatasetError as exc:
        raise DatasetError(f"domain adaptation: {exc}") from exc
    return np.asarray(target), evaluation
