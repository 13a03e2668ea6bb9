from __future__ import annotations

from datetime import datetime

from pydantic import Field

from app.schemas.common import InputModel, OutputModel


class TeamCreate(InputModel):
    name: str = Field(min_length=1, max_length=200, examples=["vision-platform"])


class TeamRead(OutputModel):
    id: str = Field(examples=["team_0193a1b2c3d4e5f6a7b8c9d0"])
    name: str
    webhook_secret: str = Field(description="Signs webhook deliveries (HMAC-SHA256)")
    created_at: datetime


class ApiKeyCreated(OutputModel):
    id: str = Field(examples=["key_0193a1b2c3d4e5f6a7b8c9d0"])
    team_id: str
    key: str = Field(description="Shown once; only its hash is stored", examples=["gft_…"])
    created_at: datetime
