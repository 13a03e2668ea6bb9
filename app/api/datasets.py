from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.api.deps import (
    CurrentTeam,
    Cursor,
    IdempotencyKeyHeader,
    Limit,
    ReadAsTeam,
    SessionDep,
    SettingsDep,
    StorageDep,
)
from app.api.responses import as_json
from app.api.uploads import multipart_body, stream_form
from app.db.models import Dataset, Team
from app.errors import found
from app.schemas.common import (
    ERROR_RESPONSES,
    NAME_MAX_LENGTH,
    ObjectId,
    PageOf,
    clean_name,
    page_of,
)
from app.schemas.datasets import DatasetForm, DatasetRead
from app.services import datasets as service
from app.services import quotas

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=ERROR_RESPONSES)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetRead,
    responses={200: {"model": DatasetRead, "description": "The same archive was uploaded before"}},
    openapi_extra=multipart_body(
        "A zip, tar.gz or tar of class folders",
        name={
            "type": "string",
            "minLength": 1,
            "maxLength": NAME_MAX_LENGTH,
            "description": "The dataset's name; default the archive's file name",
            "examples": ["pets-v1"],
        },
        kind={
            "type": "string",
            "enum": ["labeled", "unlabeled"],
            "default": "labeled",
            "description": "labeled: class folders, for training; unlabeled: images only, a "
            "target for domain adaptation",
            "examples": ["labeled"],
        },
    ),
)
async def create_dataset(
    request: Request,
    response: Response,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    team: CurrentTeam,
    idempotency_key: IdempotencyKeyHeader = None,
) -> DatasetRead:
    """Upload an image dataset (multipart: `file`, optional `name` and `kind`). The file
    streams into the store; small archives are ingested before the answer, large ones
    answer at once with status `processing`."""
    form = await stream_form(request, storage, quotas.upload_limit(settings, team), DatasetForm)
    fields, upload = form.fields, form.upload
    dataset, created = await run_in_threadpool(
        service.create_dataset_idempotent,
        session,
        storage,
        settings,
        team,
        name=fields.name or clean_name(form.filename, "dataset"),
        kind=fields.kind,
        upload=upload,
        idempotency_key=idempotency_key,
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return DatasetRead.model_validate(dataset)


@router.get("", response_model=PageOf[DatasetRead])
async def list_datasets(read: ReadAsTeam, limit: Limit = 20, cursor: Cursor = None) -> Response:
    def answer(session: Session, team: Team) -> Response:
        page = service.list_datasets(session, team, limit=limit, cursor=cursor)
        return as_json(page_of(DatasetRead, page))

    return await read(answer)


@router.get("/{dataset_id}", response_model=DatasetRead)
async def get_dataset(dataset_id: ObjectId, read: ReadAsTeam) -> Response:
    def answer(session: Session, team: Team, dataset: Dataset | None) -> Response:
        dataset = found(dataset, "dataset", dataset_id, "dataset_id")
        return as_json(DatasetRead.model_validate(dataset))

    return await read.get(Dataset, dataset_id, answer)


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(
    dataset_id: ObjectId, session: SessionDep, storage: StorageDep, team: CurrentTeam
) -> Response:
    """Delete a dataset and its files (409 while a queued or running job uses it)."""
    service.delete_dataset(session, storage, team, dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
