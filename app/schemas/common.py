"""Shapes shared by every resource: pages and the one error body."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class InputModel(BaseModel):
    """Base of request bodies: an unknown field is a 422, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class OutputModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class PageOf(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool = Field(examples=[False])
    next_cursor: str | None = Field(None, examples=[None])


class PageLike(Protocol):
    @property
    def items(self) -> Sequence[object]: ...

    @property
    def has_more(self) -> bool: ...

    @property
    def next_cursor(self) -> str | None: ...


M = TypeVar("M", bound=BaseModel)


def page_of(schema: type[M], page: PageLike) -> PageOf[M]:
    """A page of rows from a repository, each validated into `schema`."""
    return PageOf(
        data=[schema.model_validate(i) for i in page.items],
        has_more=page.has_more,
        next_cursor=page.next_cursor,
    )


class ErrorDetail(BaseModel):
    code: str = Field(examples=["dataset_not_found"])
    message: str = Field(examples=["No dataset ds_0193 in this team."])
    param: str | None = Field(None, examples=["dataset_id"])


class ErrorBody(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (401, "Missing or unknown API key"),
        (404, "Not found (or owned by another team)"),
        (409, "Conflict with the object's state"),
        (422, "Invalid input; `param` names the field"),
    )
}
