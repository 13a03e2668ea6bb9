"""Answering with a pydantic model's JSON, serialized once.

An endpoint that returns a model makes FastAPI validate it again against its
`response_model` before serializing it; on the hot read paths that second pass costs
as much as building the answer. The routes keep `response_model=` for the OpenAPI spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Response, status
from pydantic import BaseModel

from app.db.models import Job

# The fields a job and an evaluation share: where the run is and how it ended.
RUN_FIELDS = (
    "id",
    "status",
    "created_at",
    "started_at",
    "finished_at",
    "progress",
    "error",
    "attempt",
    "cancel_requested",
)


def fields_of(row: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """`names` of an ORM object, or of the plain row the hot path reads (a mapping)."""
    if isinstance(row, Mapping):
        return {n: row[n] for n in names}
    return {n: getattr(row, n) for n in names}


def run_fields(job: Job | Mapping[str, Any]) -> dict[str, Any]:
    return fields_of(job, RUN_FIELDS)


def replayed(response: Response, created: bool) -> None:
    """An Idempotency-Key's replay answers 200 and says so; a creation keeps its 201/202."""
    if not created:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"


def as_json(model: BaseModel, status_code: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


# An OpenAPI media type whose body is a file (generated clients read it as bytes).
BINARY = {"schema": {"type": "string", "format": "binary"}}
