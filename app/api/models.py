from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from sqlalchemy.orm import Session

from app.api.deps import (
    CurrentTeam,
    Cursor,
    Limit,
    ReadAsTeam,
    ReadingTeam,
    SessionDep,
    SettingsDep,
    StorageDep,
)
from app.api.responses import BINARY, as_json
from app.api.uploads import multipart_body, read_files_form, stream_form
from app.db.models import Model, Team
from app.errors import InvalidInput, found
from app.schemas.common import (
    ERROR_RESPONSES,
    NAME_MAX_LENGTH,
    ObjectId,
    PageOf,
    clean_name,
    page_of,
    unprintable_problem,
)
from app.schemas.models import (
    ARTIFACT_FORMATS,
    MAX_CLASSES,
    ArtifactFormat,
    ModelForm,
    ModelRead,
    PredictForm,
    PredictResponse,
)
from app.services import models as service
from app.services import predictions, quotas
from app.services.teams import ObjectQuery

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)

MEDIA_TYPES = {"metadata": "application/json", "bundle": "application/zip"}
FormatParam = Annotated[
    ArtifactFormat,
    Path(
        description="Which file: "
        + "; ".join(f"`{fmt.value}`: {what}" for fmt, what in ARTIFACT_FORMATS.items())
        + ". A format the model lacks answers 404 `artifact_not_found`.",
        examples=["safetensors"],
    ),
]


# A model's JSON is its row's columns of these names (the first is its id).
MODEL_FIELDS = tuple(ModelRead.model_fields)


@router.get("", response_model=PageOf[ModelRead])
async def list_models(read: ReadAsTeam, limit: Limit = 20, cursor: Cursor = None) -> Response:
    def answer(session: Session, team: Team) -> Response:
        return as_json(
            page_of(ModelRead, service.list_models(session, team, limit=limit, cursor=cursor))
        )

    return await read(answer)


@router.get("/{model_id}", response_model=ModelRead)
async def get_model(model_id: ObjectId, read: ReadAsTeam) -> Response:
    model = await read.columns(ObjectQuery(Model, model_id, MODEL_FIELDS))
    return as_json(ModelRead.model_validate(found(model, "model", model_id, "model_id")))


@router.get(
    "/{model_id}/artifacts/{format}",
    response_class=FileResponse,
    responses={
        200: {
            "description": "The file: JSON for `metadata`, a zip for `bundle`, else bytes",
            "content": {
                "application/octet-stream": BINARY,
                "application/zip": BINARY,
                "application/json": {"schema": {"type": "object"}},
            },
        }
    },
)
async def download_artifact(
    model_id: ObjectId,
    format: FormatParam,
    read: ReadAsTeam,
    storage: StorageDep,
    settings: SettingsDep,
) -> Response:
    """Download one artifact: `safetensors`, `metadata`, `onnx`, `onnx-int8`, `onnx-fp16`,
    `bundle`. The sha256 of each is in the model object. With a bucket the file streams
    from it, or (GRAFT_STORAGE_DOWNLOADS=redirect) answers 307 to a presigned URL."""

    def answer(session: Session, team: Team) -> Response:
        model = service.get_model(session, team, model_id)
        path = service.artifact_path(storage, model, format.value)
        media_type = MEDIA_TYPES.get(format.value, "application/octet-stream")
        filename = f"{model.id}-{path.name}"
        if storage.remote is None:
            return FileResponse(path, media_type=media_type, filename=filename)
        key = storage.rel(path)
        if settings.storage_downloads == "redirect":
            return RedirectResponse(storage.remote.url(key, settings.storage_url_expiry_seconds))
        size = next(a["size_bytes"] for a in model.artifacts if a["format"] == format.value)
        return StreamingResponse(
            storage.remote.chunks(key),
            media_type=media_type,
            headers={
                "Content-Disposition": f'attachment; filename="{filename}"',
                "Content-Length": str(size),
            },
        )

    return await read(answer)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelRead,
    openapi_extra=multipart_body(
        "Weights as a .safetensors file (pickle checkpoints are refused)",
        required=["architecture"],
        kind={
            "type": "string",
            "enum": ["model", "backbone"],
            "default": "model",
            "description": "model: the whole network, its head sized for `classes`; backbone: "
            "the feature extractor only (tensor names as in torchvision's model, no head)",
            "examples": ["backbone"],
        },
        architecture={
            "type": "string",
            "maxLength": 64,
            "description": "The registry architecture the weights are for",
            "examples": ["resnet18"],
        },
        classes={
            "type": "string",
            "description": f"JSON list of class names, in output order: at most {MAX_CLASSES} "
            f"distinct names of 1-{NAME_MAX_LENGTH} printable characters; required for "
            "kind=model, absent for a backbone",
            "examples": ['["cat", "dog"]'],
        },
        name={
            "type": "string",
            "minLength": 1,
            "maxLength": NAME_MAX_LENGTH,
            "description": "The model's name; default the file's name",
            "examples": ["my-resnet18"],
        },
        image_size={
            "type": "integer",
            "minimum": 16,
            "maximum": 1024,
            "description": "Square input size in pixels; default the architecture's",
            "examples": [224],
        },
    ),
)
async def upload_model(
    request: Request,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    team: CurrentTeam,
) -> ModelRead:
    """Upload a team's own base model, to start jobs from (`base_model: "mdl_…"`)."""
    form = await stream_form(request, storage, quotas.upload_limit(settings, team), ModelForm)
    fields, upload = form.fields, form.upload
    try:
        class_list = _form_classes(fields.kind, fields.classes)
    except InvalidInput:
        form.discard()
        raise
    model = await run_in_threadpool(
        service.upload_model,
        session,
        storage,
        team,
        name=fields.name or clean_name(form.filename, "uploaded model"),
        architecture=fields.architecture,
        kind=fields.kind,
        classes=class_list,
        image_size=fields.image_size,
        upload=upload,
    )
    return ModelRead.model_validate(model)


@router.delete("/{model_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_model(
    model_id: ObjectId, session: SessionDep, storage: StorageDep, team: CurrentTeam
) -> Response:
    """Delete a model and its files (409 while a queued or running job continues from
    it). Its job stays, with a result.model_id that then answers 404."""
    service.delete_model(session, storage, team, model_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{model_id}/predict",
    response_model=PredictResponse,
    openapi_extra=multipart_body(
        "Images (JPEG, PNG, WebP, BMP, GIF): at most GRAFT_MAX_PREDICT_IMAGES (32) of at most "
        "GRAFT_MAX_PREDICT_IMAGE_BYTES (20 MiB) and GRAFT_MAX_IMAGE_PIXELS (40 million) each",
        file_field="files",
        many=True,
        artifact={
            "type": "string",
            "maxLength": 64,
            "enum": [f.value for f in ArtifactFormat if f.value.startswith("onnx")],
            "description": "An ONNX variant of the model (onnx, onnx-int8, onnx-fp16); default "
            "the recommended one; one the model lacks answers 422 artifact_not_found",
            "examples": ["onnx-int8"],
        },
        top_k={
            "type": "integer",
            "minimum": 1,
            "maximum": 100,
            "default": 5,
            "description": "Labels per image, best first",
            "examples": [5],
        },
    ),
)
async def predict(
    model_id: ObjectId,
    request: Request,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    team: ReadingTeam,
) -> PredictResponse:
    """Classify images with one of the model's ONNX variants, preprocessed exactly as in
    training. An image over a limit or that cannot be decoded gets its own error in
    `results` (`invalid_image`, `image_too_large`, `too_many_pixels`; sizes are read from
    the header, before decoding); the others are answered."""
    # The key and the model first: the body is read only for a caller who may predict.
    model = await run_in_threadpool(service.get_model, session, team, model_id)
    form = await read_files_form(
        request, PredictForm, file_field="files", max_files=settings.max_predict_images
    )
    try:
        images = [
            (f.filename or f"image-{i}", await f.read(settings.max_predict_image_bytes + 1))
            for i, f in enumerate(form.files)
        ]
    finally:
        await form.close()
    answer = await run_in_threadpool(
        predictions.predict,
        storage,
        settings,
        model,
        artifact=form.fields.artifact,
        top_k=form.fields.top_k,
        images=images,
    )
    return PredictResponse.model_validate(answer)


def _form_classes(kind: str, raw: str | None) -> list[str]:
    if kind == "backbone":
        if raw is not None:
            raise InvalidInput(
                "A backbone has no classes: leave `classes` out (a job from it takes its "
                "dataset's), or upload the whole model with kind=model.",
                param="classes",
            )
        return []
    if raw is None:
        raise InvalidInput("Missing required field `classes`.", param="classes")
    return _parse_classes(raw)


def _parse_classes(raw: str) -> list[str]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(c, str) and c for c in value)
        or len(set(value)) != len(value)
    ):
        raise InvalidInput(
            'classes must be a JSON list of distinct, non-empty names, e.g. ["cat", "dog"].',
            param="classes",
        )
    if len(value) > MAX_CLASSES:
        raise InvalidInput(
            f"classes lists {len(value)} names; a model may have at most {MAX_CLASSES}.",
            param="classes",
        )
    for name in value:
        problem = unprintable_problem(name)
        if len(name) > NAME_MAX_LENGTH:
            problem = f"is longer than {NAME_MAX_LENGTH} characters"
        if problem is not None:
            raise InvalidInput(f"`classes`: class {name!r} {problem}.", param="classes")
    return value
