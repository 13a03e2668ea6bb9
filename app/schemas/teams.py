from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field

from app.schemas.common import InputModel, Name, OutputModel, Printable


class Quotas(InputModel):
    """A team's own quota limits; a missing field (or null) means the server default."""

    running_jobs: int | None = Field(
        None, ge=0, le=10_000, description="Jobs running at once", examples=[2]
    )
    queued_jobs: int | None = Field(
        None, ge=0, le=1_000_000, description="Jobs waiting", examples=[50]
    )
    stored_bytes: int | None = Field(
        None,
        ge=0,
        le=2**62,
        description="Bytes of datasets and models kept",
        examples=[107374182400],
    )
    datasets: int | None = Field(
        None, ge=0, le=1_000_000, description="Datasets kept", examples=[100]
    )
    upload_bytes: int | None = Field(
        None,
        ge=0,
        le=2**62,
        description="The largest upload in bytes (at most GRAFT_MAX_UPLOAD_BYTES)",
        examples=[2147483648],
    )


class TeamCreate(InputModel):
    name: Name = Field(description="1-200 printable characters", examples=["vision-platform"])
    quotas: Quotas | None = Field(
        None,
        description="The team's own limits; null (or a missing field): the server defaults",
        examples=[{"running_jobs": 2, "datasets": 100}],
    )


class TeamUpdate(InputModel):
    name: Name | None = Field(
        None, description="A new name; null or missing: unchanged", examples=["vision-platform"]
    )
    quotas: Quotas | None = Field(
        None,
        description="Only the quotas given change; one set to null returns to the default",
        examples=[{"running_jobs": 4}],
    )


class TeamRead(OutputModel):
    id: str = Field(description="The team's id", examples=["team_0193a1b2c3d4e5f6a7b8c9d0"])
    name: str = Field(description="The team's name", examples=["vision-platform"])
    quotas: dict[str, int] = Field(
        description="The team's own limits; others are the defaults",
        examples=[{"running_jobs": 2}],
    )
    created_at: datetime = Field(
        description="When it was created (UTC, ISO 8601)", examples=["2025-03-14T09:26:53Z"]
    )


class OwnTeamRead(OutputModel):
    """The caller's team, with the secret that signs its webhooks."""

    id: str = Field(description="The team's id", examples=["team_0193a1b2c3d4e5f6a7b8c9d0"])
    name: str = Field(description="The team's name", examples=["vision-platform"])
    webhook_secret: str = Field(
        description="Signs webhook deliveries (HMAC-SHA256)", examples=["whsec_5mT0c2k9Qx"]
    )
    previous_secret_expires_at: datetime | None = Field(
        None,
        description="After a rotation, the old secret also signs until then; null otherwise",
        examples=["2025-03-15T09:26:53Z"],
    )
    created_at: datetime = Field(
        description="When it was created (UTC, ISO 8601)", examples=["2025-03-14T09:26:53Z"]
    )


Scope = Literal["read", "write"]
SCOPES: tuple[Scope, ...] = ("read", "write")


class ApiKeyCreate(InputModel):
    name: Annotated[str, Field(max_length=200), Printable] = Field(
        "", description="A label for people, at most 200 characters", examples=["ci-pipeline"]
    )
    scopes: list[Scope] = Field(
        default_factory=lambda: list(SCOPES),
        min_length=1,
        max_length=2,
        description="`read`: read, download, predict; `write` (includes read): also create, "
        "cancel and delete",
        examples=[["read", "write"]],
    )
    expires_at: AwareDatetime | None = Field(
        None,
        description="The key stops working then (with a time zone, at most 10 years ahead); "
        "null: never",
        examples=["2026-01-01T00:00:00Z"],
    )


class ApiKeyRead(OutputModel):
    id: str = Field(description="The key's id", examples=["key_0193a1b2c3d4e5f6a7b8c9d0"])
    team_id: str = Field(
        description="The team it acts for", examples=["team_0193a1b2c3d4e5f6a7b8c9d0"]
    )
    name: str = Field(description="Its label; may be empty", examples=["ci-pipeline"])
    prefix: str = Field(description="The key's first characters", examples=["graft_Xy3kP0"])
    scopes: list[Scope] = Field(
        description="read and/or write (see ApiKeyCreate)", examples=[["read", "write"]]
    )
    created_at: datetime = Field(
        description="When it was created (UTC, ISO 8601)", examples=["2025-03-14T09:26:53Z"]
    )
    expires_at: datetime | None = Field(
        description="When it stops working; null: never", examples=["2026-01-01T00:00:00Z"]
    )
    last_used_at: datetime | None = Field(
        description="To the minute; null: never used", examples=["2025-03-14T10:02:00Z"]
    )
    revoked_at: datetime | None = Field(
        description="When it was revoked; null: it is not", examples=[None]
    )


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="Shown once; only its hash is stored", examples=["graft_…"])


class QuotaUsage(OutputModel):
    used: int = Field(description="What the team uses now (a count, or bytes)", examples=[3])
    limit: int = Field(description="The most it may use", examples=[100])


class UsageRead(OutputModel):
    team_id: str = Field(
        description="The caller's team", examples=["team_0193a1b2c3d4e5f6a7b8c9d0"]
    )
    quotas: dict[str, QuotaUsage] = Field(
        description="running_jobs, queued_jobs, stored_bytes, datasets, upload_bytes (limit "
        "only: the largest single upload)",
        examples=[{"running_jobs": {"used": 1, "limit": 2}, "datasets": {"used": 3, "limit": 100}}],
    )
