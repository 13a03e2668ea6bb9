"""Serving a model's ONNX variants from the API (ONNX Runtime; never torch)."""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.db.models import Model
from app.errors import Conflict, InvalidInput
from app.services.inference import Predictor, file_error
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
    too_large = {
        i for i, (_, data) in enumerate(images) if len(data) > settings.max_predict_image_bytes
    }
    decodable = [img for i, img in enumerate(images) if i not in too_large]
    results = iter(
        PREDICTOR.predict(
            artifact_path(storage, model, fmt),
            model.preprocessing,
            list(model.classes),
            decodable,
            top_k,
        )
        if decodable
        else []
    )
    answers = [
        _too_large(name, settings.max_predict_image_bytes) if i in too_large else next(results)
        for i, (name, _) in enumerate(images)
    ]
    return {"model_id": model.id, "artifact": fmt, "results": answers}


def _too_large(filename: str, limit: int) -> dict[str, Any]:
    return file_error(
        filename,
        "image_too_large",
        f"{filename} is larger than {limit} bytes (GRAFT_MAX_PREDICT_IMAGE_BYTES).",
    )
