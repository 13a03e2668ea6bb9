from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from app.schemas.common import InputModel, Name, ObjectId, OutputModel

# The most classes an uploaded model may have (ImageNet-21k has about 21,000).
MAX_CLASSES = 25_000


class Artifact(OutputModel):
    format: str = Field(examples=["safetensors"])
    file: str = Field(examples=["model.safetensors"])
    size_bytes: int
    sha256: str
    report: dict[str, Any] | None = Field(
        None, description="Exported variants: accuracy, agreement, latency, within_budget"
    )


class ModelRead(OutputModel):
    id: str = Field(examples=["mdl_0193a1b2c3d4e5f6a7b8c9d0"])
    name: str
    source: Literal["job", "upload"]
    job_id: str | None
    architecture: str = Field(examples=["resnet18"])
    classes: list[str] = Field(examples=[["cat", "dog"]])
    preprocessing: dict[str, Any]
    metrics: dict[str, Any]
    artifacts: list[Artifact]
    recommended_artifact: str | None
    created_at: datetime


class Prediction(OutputModel):
    label: str = Field(examples=["cat"])
    score: float = Field(examples=[0.93])


class ImageError(OutputModel):
    code: str = Field(examples=["invalid_image"])
    message: str


class ImageResult(OutputModel):
    filename: str
    predictions: list[Prediction] | None = None
    error: ImageError | None = None


class PredictResponse(OutputModel):
    model_id: str
    artifact: str = Field(examples=["onnx-int8"])
    results: list[ImageResult]


class ModelForm(InputModel):
    """The form fields beside an uploaded base model."""

    architecture: ObjectId = Field(examples=["resnet18"])
    classes: str = Field(description='JSON list of class names, e.g. ["cat", "dog"]')
    name: Name | None = None
    image_size: int | None = Field(None, ge=16, le=1024)


class PredictForm(InputModel):
    """The form fields beside the images sent to predict."""

    artifact: ObjectId | None = Field(
        None, description="An ONNX variant; default the recommended one"
    )
    top_k: int = Field(5, ge=1, le=100)
