"""Serving a model's ONNX variants from the API (ONNX Runtime; never torch)."""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.db.models import Model
from app.errors import Conflict, InvalidInput
from app.services.inference import ImageLimits, Predictor
from app.services.models import artifact_path
from app.storage import Storage

# Sessions are cached across requests; each holds a model in memory.
PREDICTOR = Predictor(max_sessions=8)


def choose_artifact(model: Model, requested: str | None) -> str:
    onnx = [a["format"] for a in model.artifacts if str(a["format"]).startswith("onnx")]
    if not onnx:
        raise Conflict(
            f"Model {model.id} has no ONNX variant to serve; train it with "
            '"export": ["onnx"] (and optionally "quantization").',
            code="no_onnx_artifact",
            param="model_id",
        )
    if requested is None:
        recommended = model.recommended_artifact
        if recommended is not None and recommended in onnx:
            return recommended
        return "onnx" if "onnx" in onnx else str(onnx[0])
    if requested not in onnx:
        raise InvalidInput(
            f"Model {model.id} has no {requested!r} variant; it has: {', '.join(onnx)}.",
            code="artifact_not_found",
            param="artifact",
        )
    return requested


def predict(
    storage: Storage,
    settings: Settings,
    model: Model,
    *,
    artifact: str | None,
    top_k: int,
    images: list[tuple[str, bytes]],
) -> dict[str, Any]:
    fmt = choose_artifact(model, artifact)
    if not images:
        raise InvalidInput("Send at least one image as `files`.", param="files")
    if len(images) > settings.max_predict_images:
        raise InvalidInput(
            f"At most {settings.max_predict_images} images per request "
            f"(GRAFT_MAX_PREDICT_IMAGES); got {len(images)}.",
            param="files",
        )
    # The limits of ingestion, checked the same way: pixels from the header, before
    # anything is decoded (a 9000x9000 PNG of 79 KB would otherwise take 340 MB).
    limits = ImageLimits(
        max_bytes=settings.max_predict_image_bytes, max_pixels=settings.max_image_pixels
    )
    storage.fetch(storage.model_dir(model.id))
    results = PREDICTOR.predict(
        artifact_path(storage, model, fmt),
        model.preprocessing,
        list(model.classes),
        images,
        top_k,
        limits,
    )
    return {"model_id": model.id, "artifact": fmt, "results": results}
