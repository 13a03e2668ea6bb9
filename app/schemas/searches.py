"""A model search: the request (space, fixed settings, objective, constraints, budget)
and the search object with its leaderboard, Pareto front and recommended model."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from app.schemas.common import InputModel, ObjectId, OutputModel, UniqueList
from app.schemas.jobs import Hyperparameters, JobError

# Choices per categorical dimension of a space; a space has at most this many points
# per dimension, so validating every combination up front stays cheap.
MAX_CHOICES = 16
# The most trials one search may ask for (GRAFT_SEARCH_MAX_TRIALS may lower it).
MAX_TRIALS = 500

SearchStatus = Literal["running", "succeeded", "failed", "cancelled"]
Strategy = Literal["linear_probe", "partial", "full"]
Augmentation = Literal["none", "light", "strong"]


class LearningRateRange(InputModel):
    low: float = Field(gt=0, le=10, description="Smallest learning rate tried", examples=[1e-4])
    high: float = Field(gt=0, le=10, description="Largest learning rate tried", examples=[3e-2])
    log: bool = Field(
        True, description="Sample uniformly in log space (true) or linearly", examples=[True]
    )


class SearchSpace(InputModel):
    """What the search varies; a dimension left out takes its value from `fixed`."""

    base_model: UniqueList[ObjectId] | None = Field(
        None,
        min_length=1,
        max_length=MAX_CHOICES,
        description="Registry architectures and ids (mdl_…) of the team's models to try",
        examples=[["resnet18", "mobilenet_v3_small"]],
    )
    strategy: UniqueList[Strategy] | None = Field(
        None,
        min_length=1,
        max_length=3,
        description="Fine-tuning strategies to try",
        examples=[["linear_probe", "full"]],
    )
    learning_rate: LearningRateRange | None = Field(
        None,
        description="A range of head learning rates",
        examples=[{"low": 1e-4, "high": 3e-2, "log": True}],
    )
    batch_size: UniqueList[Annotated[int, Field(ge=1, le=1024)]] | None = Field(
        None,
        min_length=1,
        max_length=8,
        description="Batch sizes to try (1-1024 each)",
        examples=[[32, 64]],
    )
    augmentation: UniqueList[Augmentation] | None = Field(
        None,
        min_length=1,
        max_length=3,
        description="Augmentation levels to try",
        examples=[["light", "strong"]],
    )


class SearchFixed(Hyperparameters):
    """Every setting of a trial's job that the space does not vary: the hyperparameters
    (flat, as in a job's `hyperparameters`) and the job spec's own fields."""

    base_model: ObjectId | None = Field(
        None,
        description="The architecture or model id when the space has no base_model",
        examples=["resnet18"],
    )
    pretrained_weights: Literal["imagenet", "none"] = Field(
        "imagenet", description="As in a job spec", examples=["imagenet"]
    )
    strategy: Strategy = Field(
        "linear_probe",
        description="The strategy when the space has none",
        examples=["linear_probe"],
    )
    unfreeze_last: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="`partial` trials: backbone blocks that train; null: 2 (or fewer "
        "where the architecture has fewer)",
        examples=[2],
    )
    validation_split: float = Field(
        0.2, ge=0.05, le=0.5, description="As in a job spec", examples=[0.2]
    )


class SearchConstraints(InputModel):
    """What the recommended model must meet, measured on its quantized ONNX artifact."""

    max_latency_ms: float | None = Field(
        None,
        gt=0,
        le=60_000,
        description="Median batch-1 latency of the quantized artifact, in milliseconds, as "
        "the export report measured it; null: no limit",
        examples=[5.0],
    )
    max_size_mb: float | None = Field(
        None,
        gt=0,
        le=100_000,
        description="Size of the quantized artifact in MB (10^6 bytes); null: no limit",
        examples=[10.0],
    )
    quantization: Literal["int8", "fp16"] | None = Field(
        None,
        description="The variant every finished trial exports and the limits apply to "
        "(onnx-int8 or onnx-fp16); needed for any limit; null: no export",
        examples=["int8"],
    )


class SearchBudget(InputModel):
    max_trials: int = Field(
        ge=1, le=MAX_TRIALS, description="Trials (jobs) in all, at most", examples=[24]
    )
    max_parallel: int = Field(
        1,
        ge=1,
        le=64,
        description="Trials queued or running at once, at most; no more than the team's "
        "running_jobs quota",
        examples=[4],
    )
    max_epochs_total: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Training epochs of all trials together, at most; a trial starts only "
        "if its epochs fit in what is left; null: max_trials x epochs",
        examples=[150],
    )


class SearchCreate(InputModel):
    dataset_id: ObjectId = Field(
        description="A ready, labeled dataset of the team", examples=["ds_0193a1b2c3d4e5f6a7b8c9d0"]
    )
    space: SearchSpace = Field(
        description="What to vary: at least one dimension with two or more choices, or a "
        "learning-rate range",
        examples=[{"base_model": ["resnet18", "mobilenet_v3_small"], "strategy": ["full"]}],
    )
    fixed: SearchFixed = Field(
        default_factory=lambda: SearchFixed(),
        description="The settings every trial shares",
        examples=[{"pretrained_weights": "imagenet", "image_size": 64, "epochs": 12}],
    )
    objective: Literal["val_accuracy", "val_loss"] = Field(
        "val_accuracy",
        description="What the search maximises (val_accuracy) or minimises (val_loss)",
        examples=["val_accuracy"],
    )
    constraints: SearchConstraints = Field(
        default_factory=lambda: SearchConstraints(),
        description="Limits the recommended model must meet",
        examples=[{"max_latency_ms": 5, "max_size_mb": 10, "quantization": "int8"}],
    )
    budget: SearchBudget = Field(
        description="How much the search may spend",
        examples=[{"max_trials": 24, "max_parallel": 4, "max_epochs_total": 150}],
    )
    sampler: Literal["tpe", "random"] = Field(
        "tpe",
        description="Optuna's TPE sampler, or random sampling (a baseline)",
        examples=["tpe"],
    )
    pruner: Literal["asha", "none"] = Field(
        "asha",
        description="asha: Optuna's asynchronous successive halving stops trials whose "
        "per-epoch objective falls behind; none: every trial runs all its epochs",
        examples=["asha"],
    )
    seed: int = Field(
        0,
        ge=0,
        le=2**31 - 1,
        description="Seeds the sampler: the same seed and the same trial results give the "
        "same trials",
        examples=[0],
    )


class TrialArtifact(OutputModel):
    format: str = Field(description="The artifact the constraints apply to", examples=["onnx-int8"])
    size_mb: float = Field(description="Its size in MB (10^6 bytes)", examples=[2.9])
    latency_ms: float | None = Field(
        description="Its median batch-1 latency in ms, as its export report measured",
        examples=[1.7],
    )


class Trial(OutputModel):
    number: int = Field(description="The trial's number in the search, from 0", examples=[3])
    job_id: str = Field(
        description="The job that runs it (GET /v1/jobs/{id})",
        examples=["job_0193a1b2c3d4e5f6a7b8c9d0"],
    )
    status: str = Field(
        description="The job's status: queued, running, succeeded, pruned, failed, cancelled",
        examples=["succeeded"],
    )
    params: dict[str, Any] = Field(
        description="The values the sampler chose for each dimension of the space",
        examples=[{"base_model": "resnet18", "learning_rate": 0.003}],
    )
    value: float | None = Field(
        description="Best objective so far: the kept model's once it succeeded, else the "
        "best epoch's; null before its first epoch",
        examples=[0.94],
    )
    epochs: int = Field(description="Epochs it ran (each counted once)", examples=[12])
    pruned: bool = Field(description="Whether the pruner stopped it", examples=[False])
    model_id: str | None = Field(
        description="The model it produced; null unless it succeeded",
        examples=["mdl_0193a1b2c3d4e5f6a7b8c9d0"],
    )
    artifact: TrialArtifact | None = Field(
        description="The constrained artifact's size and latency; null without one",
        examples=[{"format": "onnx-int8", "size_mb": 2.9, "latency_ms": 1.7}],
    )
    meets_constraints: bool | None = Field(
        description="Whether its artifact meets every constraint; null until it succeeded",
        examples=[True],
    )


class BudgetUsed(OutputModel):
    trials: int = Field(description="Trials created so far", examples=[7])
    epochs: int = Field(description="Epochs trained so far, over all trials", examples=[41])


class ParetoPoint(OutputModel):
    number: int = Field(description="The trial", examples=[3])
    model_id: str = Field(description="Its model", examples=["mdl_0193a1b2c3d4e5f6a7b8c9d0"])
    value: float = Field(description="Its objective", examples=[0.94])
    latency_ms: float | None = Field(description="Its artifact's latency", examples=[1.7])
    size_mb: float = Field(description="Its artifact's size", examples=[2.9])


class SearchRead(OutputModel):
    id: str = Field(description="The search's id", examples=["srch_0193a1b2c3d4e5f6a7b8c9d0"])
    status: SearchStatus = Field(
        description="running → succeeded (its budget is spent and every trial ended), "
        "failed (no trial succeeded) or cancelled",
        examples=["running"],
    )
    spec: dict[str, Any] = Field(
        description="The request as created, defaults filled in (see SearchCreate)",
        examples=[{"dataset_id": "ds_0193a1b2c3d4e5f6a7b8c9d0", "budget": {"max_trials": 24}}],
    )
    created_at: datetime = Field(
        description="When it was created (UTC)", examples=["2025-03-14T09:26:53Z"]
    )
    finished_at: datetime | None = Field(
        description="When it ended; null while running", examples=[None]
    )
    budget_used: BudgetUsed = Field(
        description="What it has spent", examples=[{"trials": 7, "epochs": 41}]
    )
    trials: dict[str, int] = Field(
        description="Trials per status",
        examples=[{"queued": 1, "running": 4, "succeeded": 1, "pruned": 1}],
    )
    leaderboard: list[Trial] = Field(
        description="Every trial, best objective first (trials without one last)",
        examples=[[]],
    )
    pareto_front: list[ParetoPoint] = Field(
        description="The succeeded trials no other beats on objective, latency and size "
        "at once, best objective first (only with constraints.quantization)",
        examples=[[]],
    )
    recommended_model_id: str | None = Field(
        description="The best model that meets every constraint; null until one does",
        examples=["mdl_0193a1b2c3d4e5f6a7b8c9d0"],
    )
    recommendation: str = Field(
        description="Why that model, or why none",
        examples=[
            "Trial 3 (resnet18) has the best val_accuracy, 0.94, of the 5 succeeded "
            "trials that meet the constraints."
        ],
    )
    error: JobError | None = Field(
        description="Why the search failed; null unless failed", examples=[None]
    )
