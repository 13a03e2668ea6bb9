"""Quotas per team: what each counts, its limit (the Settings default or the team's own),
and the checks that refuse work before anything is stored or queued.

Amounts over a quota answer 403 `quota_exceeded` (the request is refused for this team
until it frees something; retrying the same request does not help), rates answer 429.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import Team
from app.errors import AppError
from app.repositories.teams import TeamRepository
from app.repositories.usage import Usage, UsageRepository

QUOTAS = ("running_jobs", "queued_jobs", "stored_bytes", "datasets", "upload_bytes")

# What a person does to get back under each quota.
REMEDIES = {
    "running_jobs": "the job waits in the queue until one of the team's jobs ends",
    "queued_jobs": "wait for queued jobs to start, or cancel some",
    "stored_bytes": "delete datasets or models the team no longer needs",
    "datasets": "delete datasets the team no longer needs",
    "upload_bytes": "send a smaller archive, or split it",
}


class QuotaExceeded(AppError):
    """An amount over a team's quota (403): nothing was stored or queued."""

    status_code = 403
    code = "quota_exceeded"

    def __init__(self, quota: str, limit: int, used: int, *, param: str | None = None) -> None:
        super().__init__(
            f"Quota `{quota}` exceeded: this team may use {_amount(quota, limit)} and "
            f"{'would use' if quota in ('stored_bytes', 'upload_bytes') else 'has'} "
            f"{_amount(quota, used)}; {REMEDIES[quota]}.",
            param=param,
        )
        self.quota = quota


def _amount(quota: str, n: int) -> str:
    if quota.endswith("_bytes"):
        return f"{n:,} bytes"
    return f"{n:,}"


def own_limit(team: Team, quota: str, default: int) -> int:
    """The team's own limit for `quota`, else `default`."""
    return int((team.quotas or {}).get(quota, default))


def limits(settings: Settings, team: Team) -> dict[str, int]:
    """Each quota's limit for `team`: its own override, else the default."""
    defaults = {
        "running_jobs": settings.quota_running_jobs,
        "queued_jobs": settings.quota_queued_jobs,
        "stored_bytes": settings.quota_stored_bytes,
        "datasets": settings.quota_datasets,
        "upload_bytes": settings.max_upload_bytes,
    }
    merged = {name: own_limit(team, name, default) for name, default in defaults.items()}
    # The server reads no upload larger than max_upload_bytes, whatever the team's quota.
    merged["upload_bytes"] = min(merged["upload_bytes"], settings.max_upload_bytes)
    return merged


@dataclass(frozen=True)
class UsageReport:
    usage: Usage
    limits: dict[str, int]

    def as_dict(self) -> dict[str, dict[str, int]]:
        used = {
            "running_jobs": self.usage.running_jobs,
            "queued_jobs": self.usage.queued_jobs,
            "stored_bytes": self.usage.stored_bytes,
            "datasets": self.usage.datasets,
            "upload_bytes": 0,
        }
        return {name: {"used": used[name], "limit": self.limits[name]} for name in QUOTAS}


def report(session: Session, settings: Settings, team: Team) -> UsageReport:
    return UsageReport(UsageRepository(session).for_team(team.id), limits(settings, team))


def _locked_usage(session: Session, team: Team) -> Usage:
    # Lock the team first, so two requests of one team cannot both pass the check.
    TeamRepository(session).lock(team.id)
    return UsageRepository(session).for_team(team.id)


def check_can_queue(session: Session, settings: Settings, team: Team, count: int = 1) -> None:
    """Before jobs are created: the team has room for `count` more queued jobs."""
    usage = _locked_usage(session, team)
    limit = limits(settings, team)["queued_jobs"]
    if usage.queued_jobs + count > limit:
        raise QuotaExceeded("queued_jobs", limit, usage.queued_jobs)


def check_can_store(
    session: Session, settings: Settings, team: Team, adding_bytes: int, *, new_dataset: bool
) -> None:
    """Before a dataset or model is stored: the team has room for `adding_bytes` more
    (and, for a dataset, one more dataset)."""
    usage = _locked_usage(session, team)
    team_limits = limits(settings, team)
    if new_dataset and usage.datasets >= team_limits["datasets"]:
        raise QuotaExceeded("datasets", team_limits["datasets"], usage.datasets)
    would_use = usage.stored_bytes + adding_bytes
    if would_use > team_limits["stored_bytes"]:
        raise QuotaExceeded("stored_bytes", team_limits["stored_bytes"], would_use, param="file")


def upload_limit(settings: Settings, team: Team) -> int:
    """The largest file this team may upload, in bytes."""
    return limits(settings, team)["upload_bytes"]


def may_start(session: Session, team_id: str, default_limit: int) -> bool:
    """At claim: whether the team runs fewer jobs than its running_jobs quota."""
    team = TeamRepository(session).lock(team_id)
    if team is None:
        return False
    limit = own_limit(team, "running_jobs", default_limit)
    return UsageRepository(session).for_team(team_id).running_jobs < limit
