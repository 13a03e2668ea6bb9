"""Shapes shared by every resource: pages, the one error body, and bounded inputs."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Annotated, Generic, Protocol, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

T = TypeVar("T")

# The size of the name columns in the database.
NAME_MAX_LENGTH = 200
# Ids are about 30 characters (`ds_` and 26); architectures are shorter still.
ID_MAX_LENGTH = 64

# Characters a name may not hold: C0 and C1 controls and DEL, the bidi embeddings,
# overrides and isolates (they reorder what is displayed around them), and the
# invisible ones that make two names look alike (zero-width space, word joiner,
# invisible operators, BOM). ZWJ and ZWNJ (U+200C, U+200D) stay: scripts such as
# Persian and emoji sequences need them.
_UNPRINTABLE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u200b\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)

# Validation errors whose message is a predicate of the field, rendered by the
# handler in app/main.py as "`param` <message>." rather than "Invalid `param`: …".
FIELD_SENTENCE_ERRORS = frozenset({"unprintable_character", "duplicate_items"})


def unprintable_problem(text: str, what: str = "names") -> str | None:
    """Why `text` is not printable text, or None: the first bad character, named."""
    found = _UNPRINTABLE.search(text)
    if found is None:
        return None
    char = found.group()
    if char <= "\x9f":
        kind = "a control character"
    elif "\u202a" <= char <= "\u202e" or "\u2066" <= char <= "\u2069":
        kind = "a bidirectional override"
    else:
        kind = "an invisible character"
    return f"contains {kind} (U+{ord(char):04X}); {what} must be printable text"


def _printable(what: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        problem = unprintable_problem(text, what)
        if problem is not None:
            raise PydanticCustomError("unprintable_character", problem)
        return text

    return check


def _no_duplicates(items: list[T]) -> list[T]:
    seen: list[T] = []
    for item in items:
        if item in seen:
            raise PydanticCustomError(
                "duplicate_items", "lists {item} more than once", {"item": str(item)}
            )
        seen.append(item)
    return items


# Refuses unprintable characters in a name-like string: `Annotated[str, Printable]`.
Printable = AfterValidator(_printable("names"))
# A name given by a client (team, dataset, model): 1-200 characters of printable text.
Name = Annotated[str, StringConstraints(min_length=1, max_length=NAME_MAX_LENGTH), Printable]
# The id of an object (`ds_…`, `mdl_…`) or a registry name (`resnet18`).
ObjectId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=ID_MAX_LENGTH),
    AfterValidator(_printable("ids")),
]
# A list whose items may each appear once (`uniqueItems` in the schema); bound its
# length with `Field(max_length=…)` where it is used.
UniqueList = Annotated[
    list[T], AfterValidator(_no_duplicates), Field(json_schema_extra={"uniqueItems": True})
]


def clean_name(raw: str | None, default: str) -> str:
    """A name derived from client data that is not itself a name (an upload's file
    name): unprintable characters dropped, cut to the column's size."""
    text = _UNPRINTABLE.sub("", raw or "").strip()[:NAME_MAX_LENGTH]
    return text or default


class InputModel(BaseModel):
    """Base of request bodies: an unknown field is a 422, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class OutputModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class PageOf(BaseModel, Generic[T]):
    data: list[T] = Field(
        description="This page's objects, at most `limit` of them; empty past the last page",
        examples=[[]],
    )
    has_more: bool = Field(
        description="Whether another page follows; fetch it with `cursor=next_cursor`",
        examples=[False],
    )
    next_cursor: str | None = Field(
        None,
        description="Pass as `cursor` for the next page; null on the last page",
        examples=["ds_0193a1b2c3d4e5f6a7b8c9d0"],
    )


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
    code: str = Field(
        description="Stable, machine-readable error code (snake_case); branch on this",
        examples=["dataset_not_found"],
    )
    message: str = Field(
        description="What went wrong and what to do, for a person; may change between releases",
        examples=["No dataset ds_0193 in this team."],
    )
    param: str | None = Field(
        None,
        description="The input the error is about (a field, dotted for nested ones, a path "
        "or query parameter); null when it is about the request as a whole",
        examples=["dataset_id"],
    )


class ErrorBody(BaseModel):
    error: ErrorDetail = Field(
        description="The one error shape of every 4xx and 5xx answer",
        examples=[
            {
                "code": "dataset_not_found",
                "message": "No dataset ds_0193 in this team.",
                "param": "dataset_id",
            }
        ],
    )


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "The body is not valid JSON (`invalid_json`) or cannot be read"),
        (401, "Missing or unknown API key"),
        (403, "The key may not do this"),
        (404, "Not found (or owned by another team)"),
        (409, "Conflict with the object's state"),
        (413, "The body is over a size limit (GRAFT_MAX_JSON_BODY_BYTES, an upload limit)"),
        (422, "Invalid input; `param` names the field"),
    )
}
ERROR_RESPONSES[429] = {
    "model": ErrorBody,
    "description": "Rate limited: wait for Retry-After seconds",
    "headers": {
        "Retry-After": {
            "description": "Seconds until a request will be accepted again",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
}
