"""The job spec (the contract other teams code against) and the job object."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AliasChoices, AnyHttpUrl, ConfigDict, Field

from app.schemas.common import InputModel, ObjectId, OutputModel, UniqueList

# `export` and `quantization` hold each of their few choices at most once.
MAX_VARIANTS = 4

# pruned: a model search's trial that its pruner stopped after an epoch (no model).
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "pruned"]


class Hyperparameters(InputModel):
    epochs: int = Field(5, ge=1, le=500, description="Passes over the training split", examples=[5])
    batch_size: int = Field(32, ge=1, le=1024, description="Images per step", examples=[32])
    learning_rate: float = Field(
        1e-3, gt=0, le=10, description="Head learning rate", examples=[0.001]
    )
    optimizer: Literal["sgd", "adamw"] = Field(
        "adamw", description="sgd (with `momentum`) or adamw", examples=["adamw"]
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum", examples=[0.9])
    weight_decay: float = Field(
        1e-4, ge=0, le=1, description="L2 penalty (decoupled for adamw)", examples=[0.0001]
    )
    lr_schedule: Literal["cosine", "step", "constant"] = Field(
        "cosine",
        description="cosine: anneal to 0 over the epochs; step: times `gamma` every "
        "`step_size` epochs; constant",
        examples=["cosine"],
    )
    warmup_epochs: int = Field(
        0,
        ge=0,
        le=100,
        description="Epochs of linear learning-rate warm-up (`full`: only the head trains in them)",
        examples=[1],
    )
    step_size: int = Field(
        10, ge=1, le=500, description="Epochs per decay of `step`", examples=[10]
    )
    gamma: float = Field(0.1, gt=0, le=1, description="Decay factor of `step`", examples=[0.1])
    label_smoothing: float = Field(
        0.0, ge=0, le=0.5, description="Cross-entropy label smoothing, 0 for none", examples=[0.1]
    )
    class_weighting: Literal["none", "balanced"] = Field(
        "none",
        description="balanced: a weighted cross-entropy, each class weighted n / (classes x "
        "its count) over the training split, so every class counts the same in the loss "
        "(for imbalanced datasets); none: every image counts the same",
        examples=["balanced"],
    )
    augmentation: Literal["none", "light", "strong"] = Field(
        "light",
        description="Training-image augmentation: none; light (random resized crop and "
        "horizontal flip); strong (also brightness, contrast and saturation jitter)",
        examples=["light"],
    )
    random_invert: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Probability of inverting a training image (1 - x) as part of its "
        "augmentation, for domains where polarity varies (scans, X-rays, ink on paper or "
        "on screens); needs augmentation light or strong",
        examples=[0.0],
    )
    image_size: int = Field(
        224, ge=16, le=1024, description="Square input size in pixels", examples=[224]
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        le=500,
        description="Stop after this many epochs without a lower val loss; null: never stop early",
        examples=[3],
    )
    seed: int = Field(
        0,
        ge=0,
        le=2**31 - 1,
        description="Seeds shuffling, augmentation and initialisation",
        examples=[0],
    )
    mixed_precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 (or fp16) autocast on CUDA, fp32 on CPU", examples=["auto"]
    )
    max_runtime_seconds: int = Field(
        86_400,
        ge=1,
        le=7 * 86_400,
        description="Training stops (keeping its best epoch) past it",
        examples=[3600],
    )
    backbone_lr_multiplier: float = Field(
        0.1, gt=0, le=1, description="`full`: backbone lr = learning_rate x this", examples=[0.1]
    )


# The schema's own bound; the deployment's (GRAFT_MAX_DEVICES_PER_JOB) is checked on create.
MAX_DEVICES = 64


class Resources(InputModel):
    devices: int = Field(
        1,
        ge=1,
        le=MAX_DEVICES,
        description="Devices (GPUs; processes on a CPU-only worker) the job trains on at "
        "once, with DistributedDataParallel under torchrun; it goes only to a worker that "
        "has this many. At most GRAFT_MAX_DEVICES_PER_JOB",
        examples=[2],
    )


class DomainAdaptation(InputModel):
    """Adapt the trained model to unlabeled images of the deployment domain."""

    method: Literal["adabn", "tent", "dann", "mcc", "pseudo_label", "auto"] = Field(
        description="adabn: re-estimate BatchNorm statistics on the target; tent: minimise "
        "prediction entropy on the target (normalisation scale and shift only); dann: "
        "domain-adversarial fine-tuning; mcc: fine-tuning that minimises the class "
        "confusion of the target predictions; pseudo_label: self-training on confident "
        "targets; auto: try adabn, tent, dann, mcc and pseudo_label in that order within "
        "`time_budget_seconds` and keep the best on the labelled target set "
        "(`target_eval_dataset_id`, required) if it beats the unadapted model by more than "
        "chance",
        examples=["adabn"],
    )
    target_dataset_id: ObjectId = Field(
        examples=["ds_0193a1b2c3d4e5f6a7b8c9d0"], description="An unlabeled dataset of the team"
    )
    target_eval_dataset_id: ObjectId | None = Field(
        None,
        description="A labeled dataset of the target domain, for evaluation only; null: none",
        examples=["ds_0193a1b2c3d4e5f6a7b8c9d1"],
    )
    steps: int = Field(
        100, ge=1, le=10_000, description="tent: optimisation steps at most", examples=[100]
    )
    learning_rate: float | None = Field(
        None,
        gt=0,
        le=1,
        description="tent, dann, mcc, pseudo_label; null: the method's default",
        examples=[0.0001],
    )
    epochs: int | None = Field(
        None,
        ge=1,
        le=200,
        description="dann, mcc: epochs (default 20); pseudo_label: epochs per round (default 5); "
        "null: the method's default",
        examples=[20],
    )
    threshold: float = Field(
        0.9,
        gt=0,
        lt=1,
        description="pseudo_label: the confidence (0-1) a target label needs",
        examples=[0.9],
    )
    rounds: int = Field(
        2, ge=1, le=20, description="pseudo_label: label-and-train rounds", examples=[2]
    )
    domain_loss_weight: float = Field(
        1.0,
        gt=0,
        le=10,
        description="dann: the largest weight of the reversed gradient; mcc: the weight of "
        "the class-confusion loss",
        examples=[1.0],
    )
    temperature: float | None = Field(
        None,
        gt=0,
        le=100,
        description="mcc: the softmax temperature of the target predictions (default 2.5)",
        examples=[2.5],
    )
    time_budget_seconds: int = Field(
        3600,
        ge=1,
        le=86_400,
        description="auto: seconds for all candidates together; a candidate still running "
        "when it is spent is stopped and discarded, later ones are skipped",
        examples=[3600],
    )


class JobCreate(InputModel):
    dataset_id: ObjectId = Field(
        description="A ready, labeled dataset of the team", examples=["ds_0193a1b2c3d4e5f6a7b8c9d0"]
    )
    base_model: ObjectId = Field(
        examples=["resnet18"],
        description="A registry architecture, or the id (mdl_…) of one of the team's models",
    )
    pretrained_weights: Literal["imagenet", "none"] = Field(
        "imagenet",
        description="imagenet: torchvision's weights; none: random init. Ignored when "
        "base_model is a model id",
        examples=["imagenet"],
    )
    strategy: Literal["linear_probe", "partial", "full"] = Field(
        "linear_probe",
        description="linear_probe: frozen backbone, new head; partial: also train the last "
        "`unfreeze_last` blocks; full: train everything",
        examples=["linear_probe"],
    )
    unfreeze_last: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="`partial` only: how many of the last backbone blocks train",
        examples=[2],
    )
    hyperparameters: Hyperparameters = Field(
        default_factory=lambda: Hyperparameters(),
        description="Training settings; each missing field takes its default",
        examples=[{"epochs": 5, "batch_size": 32, "learning_rate": 0.001, "image_size": 224}],
    )
    export: UniqueList[Literal["onnx"]] = Field(
        default_factory=list,
        max_length=MAX_VARIANTS,
        description="Export formats besides safetensors; [] for none",
        examples=[["onnx"]],
    )
    quantization: UniqueList[Literal["int8", "fp16"]] = Field(
        default_factory=list,
        max_length=MAX_VARIANTS,
        description="Quantized ONNX variants to build (onnx-int8, onnx-fp16); [] for none",
        examples=[["int8"]],
    )
    calibration_images: int = Field(
        256,
        ge=8,
        le=10_000,
        description="Training images in the int8 calibration set",
        examples=[256],
    )
    max_accuracy_drop: float = Field(
        1.0,
        ge=0,
        le=100,
        description="Accuracy points a variant may lose and stay in budget",
        examples=[1.0],
    )
    validation_split: float = Field(
        0.2,
        ge=0.05,
        le=0.5,
        description="Share of images held out for validation, unless the dataset has an "
        "explicit train/val split",
        examples=[0.2],
    )
    webhook_url: AnyHttpUrl | None = Field(
        None,
        max_length=2000,
        description="Receives a signed POST on job.running, job.progress, job.succeeded, "
        "job.failed and job.cancelled; null: no webhook",
        examples=["https://ci.example.com/hooks/graft"],
    )
    domain_adaptation: DomainAdaptation | None = Field(
        None,
        description="Adapt the trained model to unlabeled target images; null: none",
        examples=[{"method": "adabn", "target_dataset_id": "ds_0193a1b2c3d4e5f6a7b8c9d1"}],
    )
    resources: Resources | None = Field(
        None,
        description="What the job needs of its worker; null: one device",
        examples=[{"devices": 2}],
    )

    @property
    def devices(self) -> int:
        return self.resources.devices if self.resources else 1

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
    epoch: int = Field(
        description="The current epoch, from 1 (0 while extracting features)", examples=[2]
    )
    total_epochs: int = Field(description="Epochs the job will run at most", examples=[5])
    step: int = Field(description="Batches done in the current epoch", examples=[14])
    steps_per_epoch: int | None = Field(
        None, description="Batches per epoch; null until known", examples=[40]
    )
    fraction: float = Field(description="Share of the whole job done, 0-1", examples=[0.27])
    eta_seconds: float | None = Field(
        None, description="Estimated seconds left; null until measurable", examples=[95.0]
    )
    images_per_second: float | None = Field(
        None, description="Recent training throughput; null until measured", examples=[410.5]
    )
    learning_rate: float | None = Field(
        None,
        description="The head's current learning rate; null when not training",
        examples=[0.00093],
    )
    phase: Literal["features", "training"] = Field(
        "training",
        description=(
            "features: a linear probe is running its frozen backbone once over the train and "
            "val images (epoch 0; step counts those batches out of steps_per_epoch, eta_seconds "
            "is for this phase); training: the epochs themselves"
        ),
        examples=["training"],
    )


class EpochMetrics(OutputModel):
    epoch: int = Field(description="The epoch, from 1", examples=[1])
    train_loss: float = Field(description="Mean training cross-entropy", examples=[0.41])
    train_accuracy: float = Field(description="Training top-1 accuracy, 0-1", examples=[0.88])
    val_loss: float = Field(description="Mean validation cross-entropy", examples=[0.35])
    val_accuracy: float = Field(description="Validation top-1 accuracy, 0-1", examples=[0.9])


class JobResult(OutputModel):
    model_id: str = Field(
        description="The model the job produced (GET /v1/models/{id})",
        examples=["mdl_0193a1b2c3d4e5f6a7b8c9d0"],
    )


class JobError(OutputModel):
    code: str = Field(
        description="Stable code: weights_unavailable, out_of_memory, too_many_attempts, "
        "invalid_spec, …",
        examples=["weights_unavailable"],
    )
    message: str = Field(
        description="What went wrong, for a person",
        examples=["ImageNet weights for resnet18 are not in the cache."],
    )


class JobRead(OutputModel):
    id: str = Field(description="The job's id", examples=["job_0193a1b2c3d4e5f6a7b8c9d0"])
    status: JobStatus = Field(
        description="queued → running → succeeded, failed or cancelled (or pruned: a "
        "search's trial that its pruner stopped)",
        examples=["queued"],
    )
    spec: dict[str, Any] = Field(
        description="The job spec as created, defaults filled in (see JobCreate)",
        examples=[{"dataset_id": "ds_0193a1b2c3d4e5f6a7b8c9d0", "base_model": "resnet18"}],
    )
    created_at: datetime = Field(
        description="When it was created (UTC, ISO 8601)", examples=["2025-03-14T09:26:53Z"]
    )
    started_at: datetime | None = Field(
        description="When a worker last claimed it (UTC); null until one has",
        examples=["2025-03-14T09:27:01Z"],
    )
    finished_at: datetime | None = Field(
        description="When it ended; null until succeeded, failed or cancelled",
        examples=["2025-03-14T09:31:40Z"],
    )
    progress: Progress | None = Field(
        description="Where a running job is; null before it starts",
        examples=[{"epoch": 2, "total_epochs": 5, "step": 14, "fraction": 0.27}],
    )
    metrics: list[dict[str, Any]] = Field(
        description="Per epoch: train_loss, train_accuracy, val_loss, val_accuracy, …",
        examples=[
            [
                {
                    "epoch": 1,
                    "train_loss": 0.41,
                    "train_accuracy": 0.88,
                    "val_loss": 0.35,
                    "val_accuracy": 0.9,
                }
            ]
        ],
    )
    report: dict[str, Any] | None = Field(
        None,
        description="The kept model's validation report: best epoch, per-class metrics; "
        "null until it succeeds",
        examples=[{"best_epoch": 4}],
    )
    result: JobResult | None = Field(
        description="The model it produced; null unless succeeded",
        examples=[{"model_id": "mdl_0193a1b2c3d4e5f6a7b8c9d0"}],
    )
    error: JobError | None = Field(
        description="Why it failed; null unless failed",
        examples=[None],
    )
    attempt: int = Field(
        description="How many times a worker has claimed it (0 until the first)", examples=[1]
    )
    cancel_requested: bool = Field(
        description="A cancel was asked for; a running job stops at its next step",
        examples=[False],
    )
    search_id: str | None = Field(
        None,
        description="The model search this job is a trial of; null for a job of its own",
        examples=[None],
    )


class JobEventRead(OutputModel):
    # The row's per-job number (seq), not its global key: 1, 2, 3… within each job.
    # A row has both (seq is read first); the API's JSON, read back by the client, has id.
    id: int = Field(
        validation_alias=AliasChoices("seq", "id"),
        description="The event's number within its job: 1, 2, 3…; pass as `after` or "
        "Last-Event-ID to resume",
        examples=[3],
    )
    type: str = Field(
        description="job.queued, job.running, job.progress, job.retrying, job.requeued, "
        "job.preempted, job.cancel_requested, job.succeeded, job.failed, job.cancelled, "
        "job.pruned",
        examples=["job.progress"],
    )
    data: dict[str, Any] = Field(
        description="The event's details; their fields depend on `type`",
        examples=[{"metrics": {"epoch": 1, "val_accuracy": 0.9}}],
    )
    created_at: datetime = Field(
        description="When it happened (UTC, ISO 8601)", examples=["2025-03-14T09:28:12Z"]
    )
