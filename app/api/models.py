from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, Response, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from app.api.deps import (
    CurrentTeam,
    Cursor,
    Limit,
    ReadAsTeam,
    SessionDep,
    SettingsDep,
    StorageDep,
)
from app.api.responses import as_json
from app.api.uploads import multipart_body, stream_form
from app.db.models import Team
from app.errors import InvalidInput
from app.schemas.common import ERROR_RESPONSES, PageOf, page_of
from app.schemas.models import ModelForm, ModelRead, PredictResponse
from app.services import models as service
from app.services import predictions

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)

MEDIA_TYPES = {"metadata": "application/json", "bundle": "application/zip"}


@router.get("", response_model=PageOf[ModelRead])
async def list_models(read: ReadAsTeam, limit: Limit = 20, cursor: Cursor = None) -> Response:
    def answer(session: Session, team: Team) -> Response:
        return as_json(
            page_of(ModelRead, service.list_models(session, team, limit=limit, cursor=cursor))
        )

    return await read(answer)


@router.get("/{model_id}", response_model=ModelRead)
async def get_model(model_id: str, read: ReadAsTeam) -> Response:
    def answer(session: Session, team: Team) -> Response:
        return as_json(ModelRead.model_validate(service.get_model(session, team, model_id)))

    return await read(answer)


@router.get("/{model_id}/artifacts/{format}", response_class=FileResponse)
async def download_artifact(
    model_id: str, format: str, read: ReadAsTeam, storage: StorageDep
) -> FileResponse:
    """Download one artifact: `safetensors`, `metadata`, `onnx`, `onnx-int8`, `onnx-fp16`,
    `bundle`. The sha256 of each is in the model object."""

    def answer(session: Session, team: Team) -> FileResponse:
        model = service.get_model(session, team, model_id)
        path = service.artifact_path(storage, model, format)
        return FileResponse(
            path,
            media_type=MEDIA_TYPES.get(format, "application/octet-stream"),
            filename=f"{model.id}-{path.name}",
        )

    return await read(answer)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelRead,
    openapi_extra=multipart_body(
        "Weights as a .safetensors file (pickle checkpoints are refused)",
        architecture={"type": "string", "examples": ["resnet18"]},
        classes={"type": "string", "description": "JSON list of class names, in output order"},
        name={"type": "string", "maxLength": 200},
        image_size={"type": "integer", "minimum": 16, "maximum": 1024},
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
    form = await stream_form(request, storage, settings.max_upload_bytes, ModelForm)
    fields, upload = form.fields, form.upload
    try:
        class_list = _parse_classes(fields.classes)
    except InvalidInput:
        form.discard()
        raise
    model = await run_in_threadpool(
        service.upload_model,
        session,
        storage,
        team,
        name=fields.name or form.filename or "uploaded model",
        architecture=fields.architecture,
        classes=class_list,
        image_size=fields.image_size,
        upload=upload,
    )
    return ModelRead.model_validate(model)


@router.post("/{model_id}/predict", response_model=PredictResponse)
def predict(
    model_id: str,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    team: CurrentTeam,
    files: Annotated[list[UploadFile], File(description="One or more images")],
    artifact: Annotated[
        str | None, Form(description="An ONNX variant; default the recommended one")
    ] = None,
    top_k: Annotated[int, Form(ge=1, le=100)] = 5,
) -> PredictResponse:
    """Classify images with one of the model's ONNX variants, preprocessed exactly as in
    training. An image that cannot be decoded gets its own error; the others are answered."""
    model = service.get_model(session, team, model_id)
    images = [
        (f.filename or f"image-{i}", f.file.read(settings.max_predict_image_bytes + 1))
        for i, f in enumerate(files)
    ]
    answer = predictions.predict(
        storage, settings, model, artifact=artifact, top_k=top_k, images=images
    )
    return PredictResponse.model_validate(answer)


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
    return value
