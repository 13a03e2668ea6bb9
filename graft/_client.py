"""The Client: where the API is, the key, retries with backoff, and error mapping."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from graft import _models
from graft._exceptions import APIConnectionError, GraftError, RateLimited, error_from_response
from graft._resources import Datasets, Evaluations, Jobs, Models, Searches, Team, Teams

T = TypeVar("T")

USER_AGENT = "graft-python"
# Answers that say "try again later": the rate limit, and a proxy or server in trouble.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_BACKOFF_SECONDS = 10.0
# A server's Retry-After is honoured up to this; a longer wait is the caller's choice.
MAX_RETRY_AFTER_SECONDS = 60.0


class Client:
    """A synchronous client of the Graft API v1.

    `base_url` and `api_key` default to the environment's GRAFT_API_URL and
    GRAFT_API_KEY. Every request that may safely be repeated (reads, deletes, cancels,
    and the creations that carry an Idempotency-Key) is retried on connection errors,
    429 (after its Retry-After) and 502/503/504, up to `max_retries` times with
    exponential backoff and jitter from `retry_backoff` seconds; any other request only
    when it could not connect, or on 429. `http` is an httpx.Client to send with (a
    test's TestClient), whose own timeout applies; closing it is left to its owner.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        retry_backoff: float = 0.5,
        http: httpx.Client | None = None,
    ) -> None:
        base_url = base_url or os.environ.get("GRAFT_API_URL")
        api_key = api_key or os.environ.get("GRAFT_API_KEY")
        if not base_url:
            raise GraftError("No API URL: pass Client(base_url=...) or set GRAFT_API_URL.")
        if not api_key:
            raise GraftError("No API key: pass Client(api_key=...) or set GRAFT_API_KEY.")
        self.base_url = base_url.rstrip("/")
        self.max_retries = max(0, max_retries)
        self.retry_backoff = retry_backoff
        self._headers = {"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT}
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client(timeout=timeout)
        self._sleep: Callable[[float], None] = time.sleep
        self.teams = Teams(self)
        self.team = Team(self)
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)
        self.models = Models(self)
        self.evaluations = Evaluations(self)
        self.searches = Searches(self)

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r})"

    def usage(self) -> _models.UsageRead:
        """The team's usage against each of its quotas."""
        return _models.UsageRead.model_validate(self._request("GET", "/v1/usage").json())

    def close(self) -> None:
        """Close the connections (not those of an `http` client passed in)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- what the resources call -------------------------------------------------

    def _request(self, method: str, path: str, *, safe: bool = True, **kw: Any) -> httpx.Response:
        """Send with retries and return the read answer; an error answer raises."""
        return self._send(method, path, safe=safe, stream=False, **kw)

    @contextmanager
    def _stream(
        self, method: str, path: str, *, safe: bool = True, **kw: Any
    ) -> Iterator[httpx.Response]:
        """As `_request`, with the body left to read (`iter_bytes`) and closed on exit."""
        response = self._send(method, path, safe=safe, stream=True, **kw)
        try:
            yield response
        finally:
            response.close()

    def _pages(self, path: str, params: dict[str, Any], parse: Callable[[Any], T]) -> Iterator[T]:
        """Every item of a paginated list, following `next_cursor` page by page."""
        params = {k: v for k, v in params.items() if v is not None}
        while True:
            page = self._request("GET", path, params=params).json()
            yield from (parse(item) for item in page["data"])
            if not page.get("has_more") or not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]

    def _backoff(self, attempt: int) -> float:
        """Exponential from retry_backoff, capped, with jitter (half to all of it)."""
        delay = min(MAX_BACKOFF_SECONDS, self.retry_backoff * 2.0**attempt)
        return delay * random.uniform(0.5, 1.0)

    def _send(
        self,
        method: str,
        path: str,
        *,
        safe: bool,
        stream: bool,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> httpx.Response:
        url = self.base_url + path
        headers = {**self._headers, **(headers or {})}
        attempt = 0
        while True:
            retries_left = attempt < self.max_retries
            # Built again for every attempt: a file in the body is read again from its start.
            request = self._http.build_request(method, url, headers=headers, **kw)
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                # A connection never made cannot have reached the server: anything may retry.
                never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if not (retries_left and (safe or never_sent)):
                    raise APIConnectionError(_connection_message(request, exc)) from exc
                self._sleep(self._backoff(attempt))
                attempt += 1
                continue
            if not response.is_error:
                return response
            if stream:
                response.read()
                response.close()
            error = error_from_response(response)
            status = response.status_code
            if not (retries_left and status in RETRY_STATUSES and (safe or status == 429)):
                raise error
            wait = error.retry_after if isinstance(error, RateLimited) else None
            self._sleep(
                min(wait, MAX_RETRY_AFTER_SECONDS) if wait is not None else self._backoff(attempt)
            )
            attempt += 1


def _connection_message(request: httpx.Request, exc: httpx.TransportError) -> str:
    where = f"{request.method} {request.url}"
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return f"Could not connect to the Graft API for {where}: {reason}"
    return f"The connection broke during {where} ({reason}); it may or may not have been done."
