from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from app.schemas.common import InputModel, Name, ObjectId, OutputModel

# The most classes an uploaded model may have (ImageNet-21k has about 21,000).
MAX_CLASSES = 25_000


# The formats the server can serve: app/services/models.py and worker/publish.py write
# them, worker/export/artifacts.py names the ONNX ones. A model has those its job made.
class ArtifactFormat(StrEnum):
    """A file a model may have, to download: safetensors (the PyTorch weights, every
    model), metadata (JSON: architecture, classes, preprocessing, metrics; every model),
    onnx (the fp32 ONNX graph), onnx-int8 and onnx-fp16 (quantized ONNX graphs), bundle
    (a zip of the ONNX variants with labels, preprocessing, predict.py and a README)."""

    safetensors = "safetensors"
    metadata = "metadata"
    onnx = "onnx"
    onnx_int8 = "onnx-int8"
    onnx_fp16 = "onnx-fp16"
    bundle = "bundle"


ARTIFACT_FORMATS: dict[ArtifactFormat, str] = {
    ArtifactFormat.safetensors: "the PyTorch weights (state dict), every model has it",
    ArtifactFormat.metadata: "JSON: architecture, classes, preprocessing, metrics; every "
    "model has it",
    ArtifactFormat.onnx: "the fp32 ONNX graph (jobs with export: onnx)",
    ArtifactFormat.onnx_int8: "the int8-quantized ONNX graph (quantization: int8)",
    ArtifactFormat.onnx_fp16: "the fp16 ONNX graph (quantization: fp16)",
    ArtifactFormat.bundle: "zip of the ONNX variants, labels, preprocessing, predict.py and "
    "a README (jobs that exported ONNX)",
}
_FORMAT_LIST = ", ".join(ArtifactFormat)


class Artifact(OutputModel):
    format: str = Field(
        description=f"What to pass to GET /v1/models/{{id}}/artifacts/{{format}}: one of "
        f"{_FORMAT_LIST}",
        examples=["safetensors"],
    )
    file: str = Field(description="The file's name", examples=["model.safetensors"])
    size_bytes: int = Field(description="The file's size in bytes", examples=[44784164])
    sha256: str = Field(
        description="SHA-256 of the file, lowercase hex: check a download against it",
        examples=["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
    )
    report: dict[str, Any] | None = Field(
        None,
        description="Exported variants: accuracy (0-1), accuracy_drop_points, top1_agreement, "
        "latency_ms, within_budget; null for safetensors, metadata and bundle",
        examples=[
            {
                "accuracy": 0.95,
                "accuracy_drop_points": 0.4,
                "top1_agreement": 0.99,
                "latency_ms": {"batch_1": 3.1, "batch_32": 41.0},
                "within_budget": True,
            }
        ],
    )


class ModelRead(OutputModel):
    id: str = Field(description="The model's id", examples=["mdl_0193a1b2c3d4e5f6a7b8c9d0"])
    name: str = Field(
        description="Given at upload, or `<architecture> from <job id>`",
        examples=["resnet18 from job_0193a1b2c3d4e5f6a7b8c9d0"],
    )
    source: Literal["job", "upload"] = Field(
        description="job: trained by a job; upload: a team's own base model", examples=["job"]
    )
    kind: Literal["model", "backbone"] = Field(
        description="model: a classifier with `classes`; backbone: an uploaded feature "
        "extractor without a head (no classes; start jobs from it)",
        examples=["model"],
    )
    job_id: str | None = Field(
        description="The job that produced it; null for an upload",
        examples=["job_0193a1b2c3d4e5f6a7b8c9d0"],
    )
    architecture: str = Field(
        description="The registry architecture it is an instance of", examples=["resnet18"]
    )
    classes: list[str] = Field(
        description="Class names in output order (index i is logit i)", examples=[["cat", "dog"]]
    )
    preprocessing: dict[str, Any] = Field(
        description="The exact inference preprocessing: resize, scale, mean, std, channel order",
        examples=[
            {
                "resize": [224, 224],
                "resample": "bilinear",
                "crop": None,
                "color_mode": "RGB",
                "channel_order": "NCHW",
                "scale": 0.00392156862745098,
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
                "image_size": 224,
            }
        ],
    )
    metrics: dict[str, Any] = Field(
        description="The kept epoch's metrics (accuracies 0-1); empty for an upload",
        examples=[
            {
                "best_epoch": 4,
                "val_accuracy": 0.95,
                "val_loss": 0.17,
                "train_accuracy": 0.98,
                "train_loss": 0.08,
                "stopped_early": False,
            }
        ],
    )
    artifacts: list[Artifact] = Field(
        description="The files that can be downloaded",
        examples=[
            [
                {
                    "format": "safetensors",
                    "file": "model.safetensors",
                    "size_bytes": 44784164,
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "report": None,
                }
            ]
        ],
    )
    recommended_artifact: str | None = Field(
        description="The format to deploy: the smallest ONNX variant within the accuracy "
        "budget, else onnx; safetensors when the job exported no ONNX; null for an upload",
        examples=["onnx-int8"],
    )
    created_at: datetime = Field(
        description="When it was created (UTC, ISO 8601)", examples=["2025-03-14T09:26:53Z"]
    )


class Prediction(OutputModel):
    label: str = Field(description="A class name of the model", examples=["cat"])
    score: float = Field(description="Softmax probability, 0-1", examples=[0.93])


class ImageError(OutputModel):
    code: str = Field(
        description="invalid_image, image_too_large or too_many_pixels", examples=["invalid_image"]
    )
    message: str = Field(
        description="Why this image was not classified",
        examples=["`files`: cat.jpg: image file is truncated."],
    )


class ImageResult(OutputModel):
    filename: str = Field(
        description="The part's file name (image-<i> when it had none)", examples=["cat.jpg"]
    )
    predictions: list[Prediction] | None = Field(
        None,
        description="The top_k labels, best first; null when `error` is set",
        examples=[[{"label": "cat", "score": 0.93}, {"label": "dog", "score": 0.07}]],
    )
    error: ImageError | None = Field(
        None,
        description="Why this image failed; null when it was classified",
        examples=[None],
    )


class PredictResponse(OutputModel):
    model_id: str = Field(
        description="The model that answered", examples=["mdl_0193a1b2c3d4e5f6a7b8c9d0"]
    )
    artifact: str = Field(
        description="The ONNX variant used: onnx, onnx-int8 or onnx-fp16", examples=["onnx-int8"]
    )
    results: list[ImageResult] = Field(
        description="One per image, in the order they were sent",
        examples=[
            [
                {
                    "filename": "cat.jpg",
                    "predictions": [{"label": "cat", "score": 0.93}],
                    "error": None,
                }
            ]
        ],
    )


class ModelForm(InputModel):
    """The form fields beside an uploaded base model."""

    architecture: ObjectId = Field(
        description="The registry architecture the weights are for", examples=["resnet18"]
    )
    kind: Literal["model", "backbone"] = Field(
        "model",
        description="model: the whole network, its head sized for `classes`; backbone: the "
        "feature extractor only (no head, no classes), a job gives it a fresh head",
        examples=["model"],
    )
    classes: str | None = Field(
        None,
        description='JSON list of class names, e.g. ["cat", "dog"]; required for kind=model, '
        "absent for a backbone",
        examples=['["cat", "dog"]'],
    )
    name: Name | None = Field(
        None,
        description="1-200 printable characters; default the file's name",
        examples=["my-resnet18"],
    )
    image_size: int | None = Field(
        None,
        ge=16,
        le=1024,
        description="Square input size in pixels; default the architecture's",
        examples=[224],
    )


class PredictForm(InputModel):
    """The form fields beside the images sent to predict."""

    artifact: ObjectId | None = Field(
        None,
        description="An ONNX variant (onnx, onnx-int8, onnx-fp16); default the recommended one",
        examples=["onnx-int8"],
    )
    top_k: int = Field(5, ge=1, le=100, description="Labels per image", examples=[5])
