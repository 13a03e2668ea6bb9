from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from app.schemas.common import InputModel, Name, OutputModel


class ClassCount(OutputModel):
    name: str = Field(examples=["cat"])
    count: int = Field(examples=[120])


class Rejected(OutputModel):
    path: str = Field(examples=["cat/broken.jpg"])
    reason: str = Field(examples=["corrupt_image"])
    detail: str | None = Field(None, examples=["image file is truncated"])


class Warning_(OutputModel):
    code: str = Field(examples=["small_class"])
    message: str


class DatasetRead(OutputModel):
    id: str = Field(examples=["ds_0193a1b2c3d4e5f6a7b8c9d0"])
    name: str = Field(examples=["pets-v1"])
    kind: Literal["labeled", "unlabeled"]
    status: Literal["processing", "ready", "failed"]
    num_images: int
    classes: list[ClassCount]
    splits: dict[str, int] | None = Field(
        None, description="Counts of an explicit train/val layout; null when split per job"
    )
    rejected: list[Rejected]
    warnings: list[Warning_]
    error: dict[str, str | None] | None = None
    sha256: str
    size_bytes: int
    created_at: datetime


class DatasetForm(InputModel):
    """The form fields beside the uploaded file."""

    name: Name | None = None
    kind: Literal["labeled", "unlabeled"] = "labeled"
