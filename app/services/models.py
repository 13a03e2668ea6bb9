"""Use cases for models: read, list, download artifacts, upload a team's own base model."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.architectures import ARCHITECTURES, preprocessing
from app.config import get_settings
from app.db.base import utcnow
from app.db.models import Model, Team
from app.db.session import after_commit, on_rollback
from app.errors import AppError, Conflict, InvalidInput, NotFound, found
from app.ids import new_id
from app.repositories.base import Page
from app.repositories.models import ModelRepository
from app.services import quotas
from app.services.datasets import Upload
from app.services.model_weights import Kind, check_tensors
from app.storage import Storage, artifacts_size, describe_file, write_json

# The largest safetensors header we accept; real ones are a few hundred KB at most.
MAX_SAFETENSORS_HEADER = 64 * 1024 * 1024


def get_model(session: Session, team: Team, model_id: str, *, param: str = "model_id") -> Model:
    return found(ModelRepository(session).get_for_team(team.id, model_id), "model", model_id, param)


def list_models(session: Session, team: Team, *, limit: int, cursor: str | None) -> Page[Model]:
    return ModelRepository(session).list_for_team(team.id, limit=limit, cursor=cursor)


def delete_model(session: Session, storage: Storage, team: Team, model_id: str) -> None:
    """Delete a model and its files, unless a queued or running job continues from it.
    The job that produced it keeps its result.model_id, which then answers 404."""
    model = get_model(session, team, model_id)
    repo = ModelRepository(session)
    if repo.used_by_active_job(team.id, model.id):
        raise Conflict(
            f"Model {model_id} is the base of a queued or running job; cancel it first.",
            code="model_in_use",
            param="model_id",
        )
    repo.remove(model)
    after_commit(session, lambda: storage.remove_tree(storage.model_dir(model_id)))


def artifact_path(storage: Storage, model: Model, fmt: str) -> Path:
    for artifact in model.artifacts:
        if artifact["format"] == fmt:
            return storage.model_dir(model.id) / str(artifact["file"])
    known = ", ".join(a["format"] for a in model.artifacts)
    raise NotFound(
        f"Model {model.id} has no {fmt!r} artifact; it has: {known}.",
        code="artifact_not_found",
        param="format",
    )


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse a safetensors header without loading tensors (and never unpickling)."""
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise _not_safetensors("the file is too short")
        (length,) = struct.unpack("<Q", head)
        if length <= 1 or length > MAX_SAFETENSORS_HEADER:
            raise _not_safetensors("its header length is not plausible")
        raw = fh.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _not_safetensors("its header is not JSON") from exc
    if not isinstance(header, dict) or not any(k != "__metadata__" for k in header):
        raise _not_safetensors("it holds no tensors")
    data_size = path.stat().st_size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or "data_offsets" not in entry:
            raise _not_safetensors(f"tensor {name!r} has no offsets")
        start, end = entry["data_offsets"]
        if not 0 <= start <= end <= data_size:
            raise _not_safetensors(f"tensor {name!r} points outside the file")
    return header


def _not_safetensors(why: str) -> InvalidInput:
    return InvalidInput(
        f"The file is not a safetensors checkpoint ({why}). Only safetensors is accepted: "
        "pickle checkpoints (.pt, .pth, .bin) can run code and are refused.",
        code="invalid_checkpoint",
        param="file",
    )


def upload_model(
    session: Session,
    storage: Storage,
    team: Team,
    *,
    name: str,
    architecture: str,
    kind: Kind,
    classes: list[str],
    image_size: int | None,
    upload: Upload,
) -> Model:
    arch = ARCHITECTURES.get(architecture)
    if arch is None:
        upload.path.unlink(missing_ok=True)
        raise InvalidInput(
            f"Unknown architecture {architecture!r}: "
            f"use one of {', '.join(sorted(ARCHITECTURES))}.",
            code="unknown_architecture",
            param="architecture",
        )
    try:
        header = read_safetensors_header(upload.path)
        check_tensors(header, arch.name, kind, len(classes) or None)
        quotas.check_can_store(session, get_settings(), team, upload.size, new_dataset=False)
    except AppError:
        upload.path.unlink(missing_ok=True)
        raise
    model_id = new_id("mdl")
    directory = storage.model_dir(model_id)
    directory.mkdir(parents=True, exist_ok=True)
    on_rollback(session, lambda: storage.remove_tree(directory))
    weights = directory / "model.safetensors"
    os.replace(upload.path, weights)
    prep = preprocessing(arch, image_size or arch.default_image_size)
    metadata = {
        "model_id": model_id,
        "architecture": arch.name,
        "classes": classes,
        "num_classes": len(classes),
        "preprocessing": prep,
        "source": "upload",
        "kind": kind,
    }
    write_json(directory / "metadata.json", metadata)
    artifacts = [
        describe_file(weights, "safetensors"),
        describe_file(directory / "metadata.json", "metadata"),
    ]
    storage.publish(directory)  # before the row points at it
    model = Model(
        id=model_id,
        team_id=team.id,
        job_id=None,
        name=name,
        source="upload",
        kind=kind,
        architecture=arch.name,
        classes=classes,
        preprocessing=prep,
        metrics={},
        artifacts=artifacts,
        size_bytes=artifacts_size(artifacts),
        created_at=utcnow(),
    )
    return ModelRepository(session).add(model)
