"""
Every error the client raises derives from `GraftError`:

* GraftError - anything the client refuses or cannot do.
  + APIError - the server answered with an error (`{"error": {code, message, param}}`).
    - BadRequest - 400: the body could not be read (e.g. not valid JSON).
    - AuthenticationError - 401: a missing, unknown, revoked or expired key.
    - PermissionDenied - 403: the key may not do this (a `read` key writing, a team
      key on an admin route).
      · QuotaExceeded - 403 `quota_exceeded`: the team is at one of its quotas.
    - NotFound - 404: no such object in the key's team.
    - Conflict - 409: the object's state does not allow it (a queued job deleted).
    - PayloadTooLarge - 413: an upload or a body over a limit.
    - ValidationError - 422: `param` names the field.
    - RateLimited - 429: `retry_after` says how long to wait.
    - ServerError - 5xx.
  + APIConnectionError - the server could not be reached (after the retries).
  + JobFailed - `jobs.wait()`, `evaluations.wait()`: it failed; `code`, `message` and
    `job` (the job or the evaluation) say how.
  + JobCancelled - `jobs.wait()`, `evaluations.wait()`: it was cancelled.
  + IntegrityError - a download does not match the sha256 the model lists.

`str()` of an `APIError` is the server's message.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from graft._models import EvaluationRead, JobRead


class GraftError(Exception):
    """Base class of every error the client raises."""


class APIError(GraftError):
    """The server answered with an error status and its one error shape."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str,
        param: str | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.param = param
        self.response = response


class BadRequest(APIError):
    """400: the request could not be read, e.g. a body that is not valid JSON."""


class AuthenticationError(APIError):
    """401: the API key is missing, unknown, revoked or expired."""


class PermissionDenied(APIError):
    """403: the key is valid but may not do this."""


class QuotaExceeded(PermissionDenied):
    """403 `quota_exceeded`: the team has reached one of its quotas."""


class NotFound(APIError):
    """404: no such object, or one owned by another team."""


class Conflict(APIError):
    """409: the object's state does not allow the request."""


class PayloadTooLarge(APIError):
    """413: the body or the upload is over a size limit."""


class ValidationError(APIError):
    """422: invalid input; `param` names the field (e.g. `hyperparameters.epochs`)."""


class RateLimited(APIError):
    """429: over the key's rate limit; `retry_after` is the wait in seconds, if given."""

    retry_after: float | None = None


class ServerError(APIError):
    """5xx: the server failed to answer the request."""


class APIConnectionError(GraftError):
    """The server could not be reached, or the connection broke, after the retries."""


class JobFailed(GraftError):
    """The job waited for ended `failed`; `code` and `message` are the job's error."""

    def __init__(self, job: JobRead | EvaluationRead) -> None:
        self.job = job
        self.code = job.error.code if job.error else "unknown"
        self.message = job.error.message if job.error else "it failed without an error"
        super().__init__(f"{_noun(job.id)} {job.id} failed ({self.code}): {self.message}")


class JobCancelled(GraftError):
    """The job waited for ended `cancelled`."""

    def __init__(self, job: JobRead | EvaluationRead) -> None:
        self.job = job
        super().__init__(f"{_noun(job.id)} {job.id} was cancelled.")


def _noun(object_id: str) -> str:
    return "Evaluation" if object_id.startswith("ev_") else "Job"


class IntegrityError(GraftError):
    """A downloaded file's sha256 is not the one the model object lists."""

    def __init__(self, message: str, *, expected: str | None, actual: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationError,
    429: RateLimited,
}


def retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (the form the API sends), or None."""
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def error_from_response(response: httpx.Response) -> APIError:
    """The exception for an error answer (its body read), from status and code."""
    code, message, param = f"http_{response.status_code}", "", None
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        code = str(detail.get("code") or code)
        message = str(detail.get("message") or "")
        param = detail.get("param") if isinstance(detail.get("param"), str) else None
    message = message or response.text.strip()[:1000] or response.reason_phrase
    status = response.status_code
    if status == 403 and code == "quota_exceeded":
        cls: type[APIError] = QuotaExceeded
    elif status >= 500:
        cls = ServerError
    else:
        cls = _BY_STATUS.get(status, APIError)
    error = cls(message, status_code=status, code=code, param=param, response=response)
    if isinstance(error, RateLimited):
        error.retry_after = retry_after(response)
    return error
