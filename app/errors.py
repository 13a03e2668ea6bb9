"""One flat hierarchy of application errors, rendered as one JSON error shape.

Every error the API answers looks like
``{"error": {"code": "dataset_not_found", "message": "...", "param": "dataset_id"}}``.
Raise a subclass (or AppError with a code) anywhere below the routers; the handler
in app/main.py turns it into the response.
"""

from __future__ import annotations

from typing import TypeVar


class AppError(Exception):
    """Base of every error the API reports to a client."""

    status_code: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code

    def to_dict(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"code": self.code, "message": self.message, "param": self.param}}


class Unauthorized(AppError):
    """Missing or unknown API key (401)."""

    status_code = 401
    code = "unauthorized"


class Forbidden(AppError):
    """A valid key that may not do this (403), e.g. a team key on an admin route."""

    status_code = 403
    code = "forbidden"


class NotFound(AppError):
    """A missing object, or one that belongs to another team (404): the two look alike."""

    status_code = 404
    code = "not_found"

    @classmethod
    def in_team(cls, kind: str, object_id: str, param: str) -> NotFound:
        """`No dataset ds_… in this team.`, code `dataset_not_found`."""
        return cls(f"No {kind} {object_id} in this team.", code=f"{kind}_not_found", param=param)


T = TypeVar("T")


def found(obj: T | None, kind: str, object_id: str, param: str) -> T:
    """`obj`, or NotFound.in_team when the team has no such object."""
    if obj is None:
        raise NotFound.in_team(kind, object_id, param)
    return obj


class Conflict(AppError):
    """The object is in a state that does not allow this (409)."""

    status_code = 409
    code = "conflict"


class PayloadTooLarge(AppError):
    """An upload over a configured limit (413)."""

    status_code = 413
    code = "payload_too_large"


class InvalidInput(AppError):
    """Well-formed input that is not acceptable: a bad field, a bad archive (422)."""

    status_code = 422
    code = "invalid_input"


class RateLimited(AppError):
    """Over a rate limit (429); the handler sends `retry_after` as the Retry-After header."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after = max(1, int(retry_after))
