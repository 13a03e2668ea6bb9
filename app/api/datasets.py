from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, Response, UploadFile, status

from app.api.deps import (
    CurrentTeam,
    Cursor,
    IdempotencyKeyHeader,
    Limit,
    SessionDep,
    SettingsDep,
    StorageDep,
)
from app.schemas.common import ERROR_RESPONSES, PageOf
from app.schemas.datasets import DatasetRead
from app.services import datasets as service

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=ERROR_RESPONSES)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetRead,
    responses={200: {"model": DatasetRead, "description": "The same archive was uploaded before"}},
)
def create_dataset(
    request: Request,
    response: Response,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    team: CurrentTeam,
    file: Annotated[UploadFile, File(description="A zip or tar.gz of class folders")],
    name: Annotated[str | None, Form(max_length=200)] = None,
    kind: Annotated[Literal["labeled", "unlabeled"], Form()] = "labeled",
    idempotency_key: IdempotencyKeyHeader = None,
) -> DatasetRead:
    """Upload an image dataset. Small archives are ingested before the answer; large ones
    answer at once with status `processing`."""
    declared = int(request.headers.get("content-length") or 0)
    if declared > settings.max_upload_bytes + 1024 * 1024:  # multipart framing allowance
        raise service.upload_too_large(settings.max_upload_bytes)
    upload = service.receive_upload(file.file, storage, settings.max_upload_bytes)
    dataset, created = service.create_dataset_idempotent(
        session,
        storage,
        settings,
        team,
        name=name or (file.filename or "dataset"),
        kind=kind,
        upload=upload,
        idempotency_key=idempotency_key,
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return DatasetRead.model_validate(dataset)


@router.get("", response_model=PageOf[DatasetRead])
def list_datasets(
    session: SessionDep, team: CurrentTeam, limit: Limit = 20, cursor: Cursor = None
) -> PageOf[DatasetRead]:
    page = service.list_datasets(session, team, limit=limit, cursor=cursor)
    return PageOf[DatasetRead](
        data=[DatasetRead.model_validate(d) for d in page.items],
        has_more=page.has_more,
        next_cursor=page.next_cursor,
    )


@router.get("/{dataset_id}", response_model=DatasetRead)
def get_dataset(dataset_id: str, session: SessionDep, team: CurrentTeam) -> DatasetRead:
    return DatasetRead.model_validate(service.get_dataset(session, team, dataset_id))


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(
    dataset_id: str, session: SessionDep, storage: StorageDep, team: CurrentTeam
) -> Response:
    """Delete a dataset and its files (409 while a queued or running job uses it)."""
    service.delete_dataset(session, storage, team, dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
