"""An evaluation: a model scored on every image of a labelled dataset, on a worker."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from app.schemas.common import InputModel, ObjectId, OutputModel
from app.schemas.jobs import JobError, JobStatus

# The files an evaluation can score: the PyTorch weights, or an exported ONNX variant
# (what a team deploys; its int8 accuracy on a test set is the number that matters).
EvaluatedArtifact = Literal["safetensors", "onnx", "onnx-int8", "onnx-fp16"]


class EvaluationCreate(InputModel):
    dataset_id: ObjectId = Field(
        description="A ready, labelled dataset of the team with exactly the model's classes "
        "(matched by name, in any order); every image of it, both splits, is scored",
        examples=["ds_0193a1b2c3d4e5f6a7b8c9d0"],
    )
    artifact: EvaluatedArtifact = Field(
        "safetensors",
        description="Which of the model's files to score: safetensors (the PyTorch weights) "
        "or an ONNX variant the model has (onnx, onnx-int8, onnx-fp16)",
        examples=["onnx-int8"],
    )


class EvaluationSpec(EvaluationCreate):
    """What is stored in the row and parsed again at claim: the request and its model."""

    model_id: ObjectId


class EvaluationProgress(OutputModel):
    images_done: int = Field(description="Images scored so far", examples=[4096])
    images_total: int = Field(description="Images in the dataset", examples=[10000])
    fraction: float = Field(description="images_done / images_total, 0-1", examples=[0.41])
    eta_seconds: float | None = Field(
        None, description="Estimated seconds left; null until measurable", examples=[12.5]
    )
    images_per_second: float | None = Field(
        None, description="Throughput so far; null until measured", examples=[820.0]
    )


class EvaluationRead(OutputModel):
    id: str = Field(description="The evaluation's id", examples=["ev_0193a1b2c3d4e5f6a7b8c9d0"])
    status: JobStatus = Field(
        description="queued → running → succeeded, failed or cancelled", examples=["running"]
    )
    model_id: str = Field(description="The model scored", examples=["mdl_0193a1b2c3d4e5f6a7b8c9d0"])
    dataset_id: str = Field(
        description="The labelled dataset it was scored on",
        examples=["ds_0193a1b2c3d4e5f6a7b8c9d0"],
    )
    artifact: EvaluatedArtifact = Field(description="The file scored", examples=["safetensors"])
    created_at: datetime = Field(
        description="When it was asked for (UTC)", examples=["2025-03-14T09:26:53Z"]
    )
    started_at: datetime | None = Field(
        description="When a worker last claimed it (UTC)", examples=["2025-03-14T09:27:01Z"]
    )
    finished_at: datetime | None = Field(
        description="When it ended (UTC)", examples=["2025-03-14T09:27:40Z"]
    )
    progress: EvaluationProgress | None = Field(
        description="Where a running evaluation is; null before it starts",
        examples=[{"images_done": 4096, "images_total": 10000, "fraction": 0.41}],
    )
    result: dict[str, Any] | None = Field(
        None,
        description="null until it succeeds; then accuracy, balanced_accuracy, macro_f1, "
        "num_samples, per_class [{name, precision, recall, f1, support}], macro_avg, "
        "confusion_matrix {labels, matrix} (rows the true class, columns the predicted one), "
        "misclassified (the 100 most confident mistakes: path, true_label, predicted_label, "
        "confidence) and misclassified_total",
        examples=[{"accuracy": 0.91, "balanced_accuracy": 0.91, "macro_f1": 0.9}],
    )
    error: JobError | None = Field(description="Why it failed; null unless failed", examples=[None])
    attempt: int = Field(description="How many times a worker has claimed it", examples=[1])
    cancel_requested: bool = Field(
        description="A cancel was asked for; a running evaluation stops at its next batch",
        examples=[False],
    )
