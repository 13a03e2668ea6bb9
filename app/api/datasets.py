from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response, status
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
from app.api.responses import BINARY, as_json
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
from app.schemas.datasets import DatasetForm, DatasetImageRead, DatasetRead
from app.services import dataset_images, quotas
from app.services import datasets as service

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


@router.get("/{dataset_id}/images", response_model=PageOf[DatasetImageRead])
async def list_dataset_images(
    dataset_id: ObjectId,
    read: ReadAsTeam,
    storage: StorageDep,
    class_name: Annotated[
        str | None, Query(max_length=NAME_MAX_LENGTH, description="Only this class's images")
    ] = None,
    split: Annotated[
        Literal["train", "val"] | None,
        Query(description="Only this split's (datasets with an explicit train/val layout)"),
    ] = None,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Response:
    """A ready dataset's images, by class then path (409 while it is processing)."""

    def answer(session: Session, team: Team, dataset: Dataset | None) -> Response:
        dataset = found(dataset, "dataset", dataset_id, "dataset_id")
        page = dataset_images.list_images(
            storage, dataset, class_name=class_name, split=split, limit=limit, cursor=cursor
        )
        return as_json(page_of(DatasetImageRead, page))

    return await read.get(Dataset, dataset_id, answer)


@router.get(
    "/{dataset_id}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/png": BINARY}, "description": "The image as a PNG"}},
)
async def get_dataset_thumbnail(
    dataset_id: ObjectId,
    read: ReadAsTeam,
    storage: StorageDep,
    path: Annotated[
        str,
        Query(
            min_length=1,
            max_length=1024,
            description="The image's `path`, as GET …/images or a job report lists it",
        ),
    ],
    size: Annotated[
        int,
        Query(
            ge=dataset_images.THUMBNAIL_MIN,
            le=dataset_images.THUMBNAIL_MAX,
            description="The longest side in pixels",
        ),
    ] = 128,
) -> Response:
    """One of a ready dataset's images as a small PNG, for the dashboard (the images of a
    job report's `misclassified` list are its dataset's)."""

    def ready(session: Session, team: Team, dataset: Dataset | None) -> Dataset:
        return found(dataset, "dataset", dataset_id, "dataset_id")

    dataset = await read.get(Dataset, dataset_id, ready)
    # Decoded after the read, so no pooled connection waits on Pillow.
    png = await run_in_threadpool(dataset_images.thumbnail, storage, dataset, path, size)
    # A ready dataset's images never change; the key is in the request, so private.
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(
    dataset_id: ObjectId, session: SessionDep, storage: StorageDep, team: CurrentTeam
) -> Response:
    """Delete a dataset and its files (409 while a queued or running job uses it)."""
    service.delete_dataset(session, storage, team, dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
