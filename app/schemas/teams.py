from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field

from app.schemas.common import InputModel, Name, OutputModel, Printable


class Quotas(InputModel):
    """A team's own quota limits; a missing field (or null) means the server default."""

    running_jobs: int | None = Field(None, ge=0, le=10_000, description="Jobs running at once")
    queued_jobs: int | None = Field(None, ge=0, le=1_000_000, description="Jobs waiting")
    stored_bytes: int | None = Field(
        None, ge=0, le=2**62, description="Bytes of datasets and models kept"
    )
    datasets: int | None = Field(None, ge=0, le=1_000_000, description="Datasets kept")
    upload_bytes: int | None = Field(
        None, ge=0, le=2**62, description="The largest upload (at most GRAFT_MAX_UPLOAD_BYTES)"
    )


class TeamCreate(InputModel):
    name: Name = Field(examples=["vision-platform"])
    quotas: Quotas | None = None


class TeamUpdate(InputModel):
    name: Name | None = None
    quotas: Quotas | None = Field(None, description="Only the quotas given change")


class TeamRead(OutputModel):
    id: str = Field(examples=["team_0193a1b2c3d4e5f6a7b8c9d0"])
    name: str
    quotas: dict[str, int] = Field(description="The team's own limits; others are the defaults")
    created_at: datetime


class OwnTeamRead(OutputModel):
    """The caller's team, with the secret that signs its webhooks."""

    id: str
    name: str
    webhook_secret: str = Field(description="Signs webhook deliveries (HMAC-SHA256)")
    previous_secret_expires_at: datetime | None = Field(
        None, description="After a rotation, the old secret also signs until then"
    )
    created_at: datetime


Scope = Literal["read", "write"]
SCOPES: tuple[Scope, ...] = ("read", "write")


class ApiKeyCreate(InputModel):
    name: Annotated[str, Field(max_length=200), Printable] = Field("", examples=["ci-pipeline"])
    scopes: list[Scope] = Field(
        default_factory=lambda: list(SCOPES),
        min_length=1,
        max_length=2,
        description="`read`: read, download, predict; `write` (includes read): also create, "
        "cancel and delete",
    )
    expires_at: AwareDatetime | None = Field(
        None, description="The key stops working then (at most 10 years ahead)"
    )


class ApiKeyRead(OutputModel):
    id: str = Field(examples=["key_0193a1b2c3d4e5f6a7b8c9d0"])
    team_id: str
    name: str
    prefix: str = Field(description="The key's first characters", examples=["graft_Xy3kP0"])
    scopes: list[Scope]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="To the minute")
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="Shown once; only its hash is stored", examples=["graft_…"])


class QuotaUsage(OutputModel):
    used: int
    limit: int


class UsageRead(OutputModel):
    team_id: str
    quotas: dict[str, QuotaUsage] = Field(
        description="running_jobs, queued_jobs, stored_bytes, datasets, upload_bytes (limit "
        "only: the largest single upload)"
    )
