"""The job spec (the contract other teams code against) and the job object."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AnyHttpUrl, ConfigDict, Field

from app.schemas.common import InputModel, ObjectId, OutputModel, UniqueList

# `export` and `quantization` hold each of their few choices at most once.
MAX_VARIANTS = 4

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class Hyperparameters(InputModel):
    epochs: int = Field(5, ge=1, le=500, description="Passes over the training split")
    batch_size: int = Field(32, ge=1, le=1024)
    learning_rate: float = Field(1e-3, gt=0, le=10, description="Head learning rate")
    optimizer: Literal["sgd", "adamw"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(1e-4, ge=0, le=1)
    lr_schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: int = Field(0, ge=0, le=100)
    step_size: int = Field(10, ge=1, le=500, description="Epochs per decay of `step`")
    gamma: float = Field(0.1, gt=0, le=1, description="Decay factor of `step`")
    label_smoothing: float = Field(0.0, ge=0, le=0.5)
    augmentation: Literal["none", "light", "strong"] = "light"
    random_invert: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Probability of inverting a training image (1 - x) as part of its "
        "augmentation, for domains where polarity varies (scans, X-rays, ink on paper or "
        "on screens); needs augmentation light or strong",
    )
    image_size: int = Field(224, ge=16, le=1024, description="Square input size in pixels")
    early_stopping_patience: int | None = Field(
        None, ge=1, le=500, description="Stop after this many epochs without a lower val loss"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    mixed_precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 (or fp16) autocast on CUDA, fp32 on CPU"
    )
    max_runtime_seconds: int = Field(
        86_400, ge=1, le=7 * 86_400, description="Training stops (keeping its best epoch) past it"
    )
    backbone_lr_multiplier: float = Field(
        0.1, gt=0, le=1, description="`full`: backbone lr = learning_rate x this"
    )


class DomainAdaptation(InputModel):
    """Adapt the trained model to unlabeled images of the deployment domain."""

    method: Literal["adabn", "tent", "dann", "pseudo_label"] = Field(
        description="adabn: re-estimate BatchNorm statistics on the target; tent: minimise "
        "prediction entropy on the target (normalisation scale and shift only); dann: "
        "domain-adversarial fine-tuning; pseudo_label: self-training on confident targets"
    )
    target_dataset_id: ObjectId = Field(
        examples=["ds_0193a1b2c3d4e5f6a7b8c9d0"], description="An unlabeled dataset of the team"
    )
    target_eval_dataset_id: ObjectId | None = Field(
        None, description="A labeled dataset of the target domain, for evaluation only"
    )
    steps: int = Field(100, ge=1, le=10_000, description="tent: optimisation steps at most")
    learning_rate: float | None = Field(
        None, gt=0, le=1, description="tent, dann, pseudo_label; default per method"
    )
    epochs: int = Field(5, ge=1, le=200, description="dann: epochs; pseudo_label: epochs per round")
    threshold: float = Field(
        0.9, gt=0, lt=1, description="pseudo_label: the confidence a target label needs"
    )
    rounds: int = Field(2, ge=1, le=20, description="pseudo_label: label-and-train rounds")
    domain_loss_weight: float = Field(
        1.0, gt=0, le=10, description="dann: the largest weight of the reversed gradient"
    )


class JobCreate(InputModel):
    dataset_id: ObjectId = Field(examples=["ds_0193a1b2c3d4e5f6a7b8c9d0"])
    base_model: ObjectId = Field(
        examples=["resnet18"],
        description="A registry architecture, or the id (mdl_…) of one of the team's models",
    )
    pretrained_weights: Literal["imagenet", "none"] = Field(
        "imagenet", description="Ignored when base_model is a model id"
    )
    strategy: Literal["linear_probe", "partial", "full"] = "linear_probe"
    unfreeze_last: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="`partial` only: how many of the last backbone blocks train",
    )
    hyperparameters: Hyperparameters = Field(default_factory=lambda: Hyperparameters())
    export: UniqueList[Literal["onnx"]] = Field(
        default_factory=list, max_length=MAX_VARIANTS, examples=[["onnx"]]
    )
    quantization: UniqueList[Literal["int8", "fp16"]] = Field(
        default_factory=list, max_length=MAX_VARIANTS, examples=[["int8"]]
    )
    calibration_images: int = Field(256, ge=8, le=10_000, description="int8 calibration set")
    max_accuracy_drop: float = Field(
        1.0, ge=0, le=100, description="Accuracy points a variant may lose and stay in budget"
    )
    validation_split: float = Field(0.2, ge=0.05, le=0.5)
    webhook_url: AnyHttpUrl | None = Field(None, max_length=2000)
    domain_adaptation: DomainAdaptation | None = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": "ds_0193a1b2c3d4e5f6a7b8c9d0",
                    "base_model": "resnet18",
                    "pretrained_weights": "imagenet",
                    "strategy": "linear_probe",
                    "hyperparameters": {
                        "epochs": 5,
                        "batch_size": 32,
                        "learning_rate": 0.001,
                        "image_size": 224,
                        "seed": 0,
                    },
                    "export": ["onnx"],
                    "quantization": ["int8"],
                    "validation_split": 0.2,
                    "webhook_url": None,
                }
            ]
        },
    )


class Progress(OutputModel):
    epoch: int = Field(examples=[2])
    total_epochs: int = Field(examples=[5])
    step: int = Field(examples=[14])
    steps_per_epoch: int | None = Field(None, examples=[40])
    fraction: float = Field(examples=[0.27])
    eta_seconds: float | None = Field(None, examples=[95.0])
    images_per_second: float | None = Field(None, examples=[410.5])
    learning_rate: float | None = Field(None, examples=[0.00093])
    phase: Literal["features", "training"] = Field(
        "training",
        description=(
            "features: a linear probe is running its frozen backbone once over the train and "
            "val images (epoch 0; step counts those batches out of steps_per_epoch, eta_seconds "
            "is for this phase); training: the epochs themselves"
        ),
    )


class EpochMetrics(OutputModel):
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float


class JobResult(OutputModel):
    model_id: str = Field(examples=["mdl_0193a1b2c3d4e5f6a7b8c9d0"])


class JobError(OutputModel):
    code: str = Field(examples=["weights_unavailable"])
    message: str


class JobRead(OutputModel):
    id: str = Field(examples=["job_0193a1b2c3d4e5f6a7b8c9d0"])
    status: JobStatus
    spec: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress | None
    metrics: list[dict[str, Any]] = Field(
        description="Per epoch: train_loss, train_accuracy, val_loss, val_accuracy, …"
    )
    report: dict[str, Any] | None = Field(
        None, description="The kept model's validation report: best epoch, per-class metrics"
    )
    result: JobResult | None
    error: JobError | None
    attempt: int
    cancel_requested: bool


class JobEventRead(OutputModel):
    # The row's per-job number (seq), not its global key: 1, 2, 3… within each job.
    id: int = Field(validation_alias="seq", examples=[3])
    type: str = Field(examples=["epoch_completed"])
    data: dict[str, Any]
    created_at: datetime
