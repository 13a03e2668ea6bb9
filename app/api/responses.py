"""Answering with a pydantic model's JSON, serialized once.

An endpoint that returns a model makes FastAPI validate it again against its
`response_model` before serializing it; on the hot read paths that second pass costs
as much as building the answer. The routes keep `response_model=` for the OpenAPI spec.
"""

from __future__ import annotations

from fastapi import Response
from pydantic import BaseModel


def as_json(model: BaseModel, status_code: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


# An OpenAPI media type whose body is a file (generated clients read it as bytes).
BINARY = {"schema": {"type": "string", "format": "binary"}}
