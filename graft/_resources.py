"""The API's resources, as attributes of the Client: teams, team, datasets, jobs, models,
evaluations, searches."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from graft import _models
from graft._archive import archive_of
from graft._exceptions import (
    APIConnectionError,
    IntegrityError,
    JobCancelled,
    JobFailed,
    ServerError,
)
from graft._progress import ProgressFile, byte_bar, job_bar
from graft._sse import SSEDecoder, iter_sse

if TYPE_CHECKING:
    from graft._client import Client

M = TypeVar("M", bound=BaseModel)
W = TypeVar("W", "_models.JobRead", "_models.EvaluationRead")
StrPath = str | os.PathLike[str]

# "pruned": a search's trial that its pruner stopped (it ends like a success, with no model).
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "pruned"})
FINAL_EVENTS = frozenset({"job.succeeded", "job.failed", "job.cancelled", "job.pruned"})
# How long a followed event stream keeps trying to resume once the server stops answering.
RECONNECT_WINDOW_SECONDS = 60.0
# The longest wait between reconnections when the server names none (`retry:`).
MAX_RECONNECT_DELAY_SECONDS = 2.0
BINARY = "application/octet-stream"


def _q(value: str) -> str:
    """An id as one path segment, whatever it holds."""
    return quote(value, safe="")


def _new_idempotency_key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


class _Resource:
    def __init__(self, client: Client) -> None:
        self._client = client

    def _call(self, model: type[M], method: str, path: str, **kw: Any) -> M:
        return model.model_validate(self._client._request(method, path, **kw).json())

    def _wait(
        self, get: Callable[[], W], poll: float, draw: Callable[[W], None] = lambda _: None
    ) -> W:
        """Poll a job or an evaluation until it ends: it if it succeeded, else JobFailed
        or JobCancelled."""
        while True:
            current = get()
            draw(current)
            if current.status in TERMINAL_STATUSES:
                break
            self._client._sleep(poll)
        if current.status == "failed":
            raise JobFailed(current)
        if current.status == "cancelled":
            raise JobCancelled(current)
        return current


class Keys(_Resource):
    """A team's API keys (admin key)."""

    def create(
        self,
        team_id: str,
        *,
        name: str = "",
        scopes: Sequence[str] | None = None,
        expires_at: datetime | str | None = None,
    ) -> _models.ApiKeyCreated:
        """Create a key (scopes: read, write); its secret, `.key`, is in this answer only."""
        body: dict[str, Any] = {"name": name}
        if scopes is not None:
            body["scopes"] = builtins.list(scopes)
        if expires_at is not None:
            body["expires_at"] = (
                expires_at.isoformat() if isinstance(expires_at, datetime) else expires_at
            )
        path = f"/v1/teams/{_q(team_id)}/keys"
        return self._call(_models.ApiKeyCreated, "POST", path, json=body, safe=False)

    def list(self, team_id: str) -> builtins.list[_models.ApiKeyRead]:
        """The team's keys, revoked ones included, never their secrets."""
        found = self._client._request("GET", f"/v1/teams/{_q(team_id)}/keys").json()
        return [_models.ApiKeyRead.model_validate(k) for k in found]

    def revoke(self, team_id: str, key_id: str) -> _models.ApiKeyRead:
        """Revoke a key: it fails at once on every API process."""
        path = f"/v1/teams/{_q(team_id)}/keys/{_q(key_id)}"
        return self._call(_models.ApiKeyRead, "DELETE", path)


class Teams(_Resource):
    """Teams (admin key); `keys` manages their API keys."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.keys = Keys(client)

    def create(
        self, name: str, *, quotas: Mapping[str, int | None] | None = None
    ) -> _models.TeamRead:
        """Create a team, optionally with quotas of its own."""
        body: dict[str, Any] = {"name": name}
        if quotas is not None:
            body["quotas"] = dict(quotas)
        return self._call(_models.TeamRead, "POST", "/v1/teams", json=body, safe=False)

    def get(self, team_id: str) -> _models.TeamRead:
        """Read a team."""
        return self._call(_models.TeamRead, "GET", f"/v1/teams/{_q(team_id)}")

    def update(
        self,
        team_id: str,
        *,
        name: str | None = None,
        quotas: Mapping[str, int | None] | None = None,
    ) -> _models.TeamRead:
        """Rename a team or set some of its quotas (a quota set to None returns to the default)."""
        body: dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if quotas is not None:
            body["quotas"] = dict(quotas)
        return self._call(_models.TeamRead, "PATCH", f"/v1/teams/{_q(team_id)}", json=body)


class Team(_Resource):
    """The caller's own team."""

    def get(self) -> _models.OwnTeamRead:
        """The key's team, with its webhook signing secret."""
        return self._call(_models.OwnTeamRead, "GET", "/v1/team")

    def rotate_webhook_secret(self) -> _models.OwnTeamRead:
        """A new webhook secret; the old one keeps signing beside it for a grace period."""
        path = "/v1/team/webhook-secret/rotate"
        return self._call(_models.OwnTeamRead, "POST", path, safe=False)


class Datasets(_Resource):
    """Image datasets: archives of class folders."""

    def upload(
        self,
        path: StrPath,
        name: str | None = None,
        kind: str = "labeled",
        progress: bool = False,
    ) -> _models.DatasetRead:
        """Upload a zip, tar or tar.gz, or a folder zipped on the fly; kind: labeled|unlabeled."""
        source = Path(path)
        # A folder is named after itself, as an archive is after its file (by the server).
        name = source.resolve().name if name is None and source.is_dir() else name
        data = {"kind": kind} if name is None else {"kind": kind, "name": name}
        with (
            archive_of(source) as archive,
            byte_bar(f"upload {archive.name}", archive.stat().st_size, progress) as sent,
            ProgressFile(archive, sent) as file,
        ):
            response = self._client._request(
                "POST",
                "/v1/datasets",
                data=data,
                files={"file": (archive.name, file, BINARY)},
                headers=_new_idempotency_key(),
            )
        return _models.DatasetRead.model_validate(response.json())

    def get(self, dataset_id: str) -> _models.DatasetRead:
        """Read a dataset: its status, classes, splits, rejected files and warnings."""
        return self._call(_models.DatasetRead, "GET", f"/v1/datasets/{_q(dataset_id)}")

    def list(self, *, limit: int = 20) -> Iterator[_models.DatasetRead]:
        """Every dataset of the team, newest first, fetched `limit` a page."""
        return self._client._pages(
            "/v1/datasets", {"limit": limit}, _models.DatasetRead.model_validate
        )

    def delete(self, dataset_id: str) -> None:
        """Delete a dataset and its files (Conflict while a queued or running job uses it)."""
        self._client._request("DELETE", f"/v1/datasets/{_q(dataset_id)}")


class Jobs(_Resource):
    """Fine-tuning jobs."""

    def create(
        self,
        spec: Mapping[str, Any] | BaseModel | None = None,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> _models.JobRead:
        """Create a job from a spec (a dict, or fields as keywords); it starts queued."""
        if isinstance(spec, BaseModel):
            spec = spec.model_dump(mode="json", exclude_unset=True)
        body = {**(spec or {}), **fields}
        # One key for every retry of this call, so that a retry never makes a second job.
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._call(
            _models.JobRead,
            "POST",
            "/v1/jobs",
            json=body,
            headers=headers or _new_idempotency_key(),
        )

    def get(self, job_id: str) -> _models.JobRead:
        """Read a job: status, progress, metrics, result or error."""
        return self._call(_models.JobRead, "GET", f"/v1/jobs/{_q(job_id)}")

    def list(self, *, status: str | None = None, limit: int = 20) -> Iterator[_models.JobRead]:
        """Every job of the team (only those in `status` if given), newest first."""
        params = {"status": status, "limit": limit}
        return self._client._pages("/v1/jobs", params, _models.JobRead.model_validate)

    def cancel(self, job_id: str) -> _models.JobRead:
        """Cancel a job (Conflict if it has already ended)."""
        return self._call(_models.JobRead, "POST", f"/v1/jobs/{_q(job_id)}/cancel")

    def delete(self, job_id: str) -> None:
        """Delete an ended job with its events and files (Conflict while queued or running)."""
        self._client._request("DELETE", f"/v1/jobs/{_q(job_id)}")

    def events(
        self, job_id: str, follow: bool = False, after: int = 0
    ) -> Iterator[_models.JobEventRead]:
        """The job's events after `after`; with follow=True, live until the job has ended."""
        if follow:
            return self._follow(job_id, after)
        path = f"/v1/jobs/{_q(job_id)}/events"
        found = self._client._request("GET", path, params={"after": after}).json()
        return iter([_models.job_event(e) for e in found])

    def wait(self, job_id: str, progress: bool = False, poll: float = 1.0) -> _models.JobRead:
        """Poll until the job ends: the job if it succeeded, else JobFailed or JobCancelled."""
        with job_bar(job_id, progress) as draw:
            return self._wait(lambda: self.get(job_id), poll, draw)

    def _follow(self, job_id: str, after: int) -> Iterator[_models.JobEventRead]:
        """The SSE stream, resumed from the last event yielded (Last-Event-ID) whenever
        the connection drops or the server answers 5xx, until the job's final event.
        It gives up once the server has not answered for RECONNECT_WINDOW_SECONDS."""
        path = f"/v1/jobs/{_q(job_id)}/events"
        last, ended, failures = after, False, 0
        down_since: float | None = None
        while True:
            headers = {"Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = str(last)
            decoder = SSEDecoder()
            try:
                with self._client._stream(
                    "GET", path, params={"after": after}, headers=headers
                ) as response:
                    down_since = None
                    for sse in iter_sse(response.iter_bytes(), decoder):
                        event = _models.job_event(sse.data)
                        yield event
                        last, failures = event.id, 0
                        ended = ended or event.type in FINAL_EVENTS
            except (APIConnectionError, ServerError, httpx.TransportError) as exc:
                now = time.monotonic()
                down_since = now if down_since is None else down_since
                if now - down_since > RECONNECT_WINDOW_SECONDS:
                    raise APIConnectionError(
                        f"The event stream of job {job_id} broke and could not be resumed "
                        f"within {RECONNECT_WINDOW_SECONDS:.0f} s: {exc}"
                    ) from exc
            else:
                # A clean end: after the final event, or (from an `after` past it) with none.
                if ended or self.get(job_id).status in TERMINAL_STATUSES:
                    return
            cap = decoder.retry / 1000 if decoder.retry else MAX_RECONNECT_DELAY_SECONDS
            self._client._sleep(min(self._client._backoff(failures), cap))
            failures += 1


class Evaluations(_Resource):
    """A model scored on a labelled dataset by a worker: accuracy, per-class scores,
    the confusion matrix and the misclassified images (`result`)."""

    def create(
        self,
        model_id: str,
        dataset_id: str,
        *,
        artifact: str = "safetensors",
        idempotency_key: str | None = None,
    ) -> _models.EvaluationRead:
        """Queue an evaluation of the model (its `artifact`) on every image of the dataset."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._call(
            _models.EvaluationRead,
            "POST",
            f"/v1/models/{_q(model_id)}/evaluations",
            json={"dataset_id": dataset_id, "artifact": artifact},
            headers=headers or _new_idempotency_key(),
        )

    def get(self, evaluation_id: str) -> _models.EvaluationRead:
        return self._call(_models.EvaluationRead, "GET", f"/v1/evaluations/{_q(evaluation_id)}")

    def list(
        self, *, status: str | None = None, limit: int = 20
    ) -> Iterator[_models.EvaluationRead]:
        """Every evaluation of the team (only those in `status` if given), newest first."""
        params = {"status": status, "limit": limit}
        return self._client._pages("/v1/evaluations", params, _models.EvaluationRead.model_validate)

    def cancel(self, evaluation_id: str) -> _models.EvaluationRead:
        path = f"/v1/evaluations/{_q(evaluation_id)}/cancel"
        return self._call(_models.EvaluationRead, "POST", path)

    def wait(self, evaluation_id: str, poll: float = 1.0) -> _models.EvaluationRead:
        """Poll until it ends: the evaluation (its `result`) if it succeeded, else
        JobFailed or JobCancelled."""
        return self._wait(lambda: self.get(evaluation_id), poll)


class Models(_Resource):
    """Models that jobs produced or teams uploaded, their artifacts, and predictions."""

    def get(self, model_id: str) -> _models.ModelRead:
        """Read a model: classes, preprocessing, metrics, artifacts with their sha256."""
        return self._call(_models.ModelRead, "GET", f"/v1/models/{_q(model_id)}")

    def list(self, *, limit: int = 20) -> Iterator[_models.ModelRead]:
        """Every model of the team, newest first."""
        return self._client._pages("/v1/models", {"limit": limit}, _models.ModelRead.model_validate)

    def upload(
        self,
        path: StrPath,
        architecture: str,
        classes: Sequence[str] | None = None,
        name: str | None = None,
        image_size: int | None = None,
        kind: str = "model",
    ) -> _models.ModelRead:
        """Upload a base model of the team's own: safetensors weights, architecture, and
        its classes; or, with kind="backbone", a feature extractor without head or classes."""
        data = {"architecture": architecture, "kind": kind}
        if classes is not None:
            data["classes"] = json.dumps(builtins.list(classes))
        if name is not None:
            data["name"] = name
        if image_size is not None:
            data["image_size"] = str(image_size)
        with open(path, "rb") as file:
            return self._call(
                _models.ModelRead,
                "POST",
                "/v1/models",
                data=data,
                files={"file": (Path(path).name, file, BINARY)},
                safe=False,
            )

    def download(self, model_id: str, format: str, path: StrPath) -> Path:
        """Save an artifact at `path` (or in it, if a folder), checked against its sha256."""
        model = self.get(model_id)
        artifact = next((a for a in model.artifacts if a.format == format), None)
        target = Path(path)
        if target.is_dir():
            target /= f"{model.id}-{artifact.file if artifact else format}"
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        part = Path(name)
        try:
            with os.fdopen(fd, "wb") as file:
                actual = self._save(f"/v1/models/{_q(model.id)}/artifacts/{_q(format)}", file)
            expected = artifact.sha256 if artifact else None
            if actual != expected:
                raise IntegrityError(
                    f"The {format} artifact of {model.id} has sha256 {actual}; the model "
                    f"lists {expected}. Nothing was written to {target}.",
                    expected=expected,
                    actual=actual,
                )
            part.chmod(0o644)  # mkstemp's 0600 is for the part file, not the download
            os.replace(part, target)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return target

    def _save(self, path: str, file: IO[bytes]) -> str:
        """Stream a download into `file`, synced to disk; its sha256."""
        digest = hashlib.sha256()
        with self._client._stream("GET", path) as response:
            try:
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    file.write(chunk)
            except httpx.TransportError as exc:
                raise APIConnectionError(f"The download of {path} broke: {exc}") from exc
        file.flush()
        os.fsync(file.fileno())
        return digest.hexdigest()

    def delete(self, model_id: str) -> None:
        """Delete a model and its files (Conflict while a queued or running job uses it)."""
        self._client._request("DELETE", f"/v1/models/{_q(model_id)}")

    def predict(
        self,
        model_id: str,
        images: Sequence[StrPath | tuple[str, bytes]],
        top_k: int = 5,
        artifact: str | None = None,
    ) -> _models.PredictResponse:
        """Classify images (paths, or (filename, bytes) pairs) with an ONNX variant."""
        data = {"top_k": str(top_k)}
        if artifact is not None:
            data["artifact"] = artifact
        with ExitStack() as opened:
            parts = [("files", _image_part(image, opened)) for image in images]
            path = f"/v1/models/{_q(model_id)}/predict"
            return self._call(_models.PredictResponse, "POST", path, data=data, files=parts)


def _image_part(image: StrPath | tuple[str, bytes], opened: ExitStack) -> tuple[str, Any, str]:
    """An image for the multipart body: given bytes as they are, a path as its open file."""
    if isinstance(image, tuple):
        return (image[0], image[1], BINARY)
    return (Path(image).name, opened.enter_context(open(image, "rb")), BINARY)


class Searches(_Resource):
    """Model searches: trials are jobs, steered by Optuna; each search has a leaderboard,
    a Pareto front and a recommended model."""

    def create(
        self,
        spec: Mapping[str, Any] | BaseModel | None = None,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> _models.SearchRead:
        """Start a search from a request (a dict, or fields as keywords: dataset_id,
        space, fixed, objective, constraints, budget, sampler, pruner, seed)."""
        if isinstance(spec, BaseModel):
            spec = spec.model_dump(mode="json", exclude_unset=True)
        body = {**(spec or {}), **fields}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._call(
            _models.SearchRead,
            "POST",
            "/v1/searches",
            json=body,
            headers=headers or _new_idempotency_key(),
        )

    def get(self, search_id: str) -> _models.SearchRead:
        """Read a search: status, budget used, leaderboard, Pareto front, recommendation."""
        return self._call(_models.SearchRead, "GET", f"/v1/searches/{_q(search_id)}")

    def list(self, *, limit: int = 20) -> Iterator[_models.SearchRead]:
        """Every search of the team, newest first."""
        return self._client._pages(
            "/v1/searches", {"limit": limit}, _models.SearchRead.model_validate
        )

    def cancel(self, search_id: str) -> _models.SearchRead:
        """Cancel a search and its queued and running trials (Conflict if it ended)."""
        return self._call(_models.SearchRead, "POST", f"/v1/searches/{_q(search_id)}/cancel")

    def wait(
        self,
        search_id: str,
        poll: float = 2.0,
        on_update: Callable[[_models.SearchRead], None] = lambda _: None,
    ) -> _models.SearchRead:
        """Poll until the search ends (succeeded, failed or cancelled) and return it;
        on_update sees every poll (a live leaderboard, say)."""
        while True:
            current = self.get(search_id)
            on_update(current)
            if current.status != "running":
                return current
            self._client._sleep(poll)
