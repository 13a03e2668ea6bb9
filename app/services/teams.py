"""Teams, their API keys and webhook secrets, and authentication.

A key is `graft_` followed by 43 url-safe characters (256 random bits); only its sha256
is stored, with its first 12 characters as a prefix a person can recognise in a list.
Scopes: `read` reads, downloads and predicts; `write` can also create, cancel and delete.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.async_reads import AsyncReader
from app.db.base import utcnow
from app.db.models import ApiKey, Team
from app.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from app.ids import new_id
from app.rate_limits import get_rate_limits
from app.repositories.base import Page, page_of, team_page_columns
from app.repositories.teams import (
    KEY_COLUMNS,
    R,
    TeamRepository,
    key_and_columns,
    key_and_page,
)
from app.security import KEY_PREFIX, constant_time_equal, generate_key, hash_key, new_webhook_secret

SCOPES = ("read", "write")
# last_used_at is written at most this often per key, so reads do not write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
MAX_KEY_LIFETIME = timedelta(days=3650)
PREFIX_LENGTH = len(KEY_PREFIX) + 6


def create_team(session: Session, name: str, quotas: dict[str, int] | None = None) -> Team:
    team = Team(
        id=new_id("team"), name=name, webhook_secret=new_webhook_secret(), quotas=quotas or {}
    )
    team.created_at = utcnow()
    return TeamRepository(session).add(team)


def get_team(session: Session, team_id: str) -> Team:
    team = TeamRepository(session).get(team_id)
    if team is None:
        raise NotFound(f"No team {team_id}.", code="team_not_found", param="team_id")
    return team


def update_team(
    session: Session, team_id: str, *, name: str | None, quotas: dict[str, int | None] | None
) -> Team:
    """Rename a team or set its quotas; a quota set to null goes back to the default."""
    team = get_team(session, team_id)
    if name is not None:
        team.name = name
    if quotas is not None:
        merged = dict(team.quotas or {})
        for quota, value in quotas.items():
            if value is None:
                merged.pop(quota, None)
            else:
                merged[quota] = value
        team.quotas = merged
    session.flush()
    return team


# ---------------------------------------------------------------- keys


def create_key(
    session: Session,
    team_id: str,
    *,
    name: str = "",
    scopes: list[str] | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Returns the row and the key in clear, which is never stored."""
    get_team(session, team_id)
    now = utcnow()
    if expires_at is not None and not now < expires_at <= now + MAX_KEY_LIFETIME:
        raise InvalidInput(
            "`expires_at` must be in the future and at most 10 years away.", param="expires_at"
        )
    wanted = set(scopes or SCOPES)
    # write includes read: a key that may create jobs may also read them.
    stored = "read,write" if "write" in wanted else "read"
    key = generate_key()
    row = ApiKey(
        id=new_id("key"),
        team_id=team_id,
        key_hash=hash_key(key),
        prefix=key[:PREFIX_LENGTH],
        name=name,
        scopes=stored,
        created_at=now,
        expires_at=expires_at,
    )
    return TeamRepository(session).add_key(row), key


def list_keys(session: Session, team_id: str) -> list[ApiKey]:
    get_team(session, team_id)
    return TeamRepository(session).keys(team_id)


def revoke_key(session: Session, team_id: str, key_id: str) -> ApiKey:
    """Revoke at once: every API process looks the key up on each request."""
    repo = TeamRepository(session)
    row = repo.get_key(team_id, key_id)
    if row is None:
        raise NotFound(f"No key {key_id} in team {team_id}.", code="key_not_found", param="key_id")
    repo.revoke_key(key_id, utcnow())
    session.refresh(row)
    return row


def key_scopes(row: KeyFacts) -> list[str]:
    return row.scopes.split(",")


def authenticate(
    session: Session, key: str | None, *, scope: str = "read", address: str | None = None
) -> Team:
    """The team of a valid, unexpired key that has `scope`; counts the request against
    the key's rate limit, and a failure against the client address's."""
    repo = TeamRepository(session)
    found = repo.key_and_team(hash_key(_given(key)))
    return _admit(repo, found, scope, address)


def authenticate_and_get(
    session: Session,
    key: str | None,
    model: type[R],
    object_id: str,
    *,
    scope: str = "read",
    address: str | None = None,
) -> tuple[Team, R | None]:
    """authenticate, and the team's `model` row with `object_id` (None when the team
    has none), in one round trip: the hot path of a GET by id."""
    repo = TeamRepository(session)
    found = repo.key_team_and(hash_key(_given(key)), model, object_id)
    team = _admit(repo, found[:2] if found else None, scope, address)
    assert found is not None
    return team, found[2]


def _given(key: str | None) -> str:
    if not key:
        raise Unauthorized("Missing API key: send `Authorization: Bearer <key>`.")
    return key


class KeyFacts(Protocol):
    """What authentication needs of a key: an ApiKey row, or the hot path's KeyRow."""

    @property
    def id(self) -> str: ...
    @property
    def prefix(self) -> str: ...
    @property
    def scopes(self) -> str: ...
    @property
    def expires_at(self) -> datetime | None: ...
    @property
    def last_used_at(self) -> datetime | None: ...


@dataclass(frozen=True)
class KeyRow:
    id: str
    prefix: str
    scopes: str
    expires_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, row: Mapping[str, Any] | None) -> KeyRow | None:
        """From a row of repositories.teams.key_and_columns (None: no such key)."""
        return cls(**{c: row[f"key_{c}"] for c in KEY_COLUMNS}) if row else None


def refusal(key: KeyFacts | None, scope: str, now: datetime) -> Unauthorized | Forbidden | None:
    """Why `key` (None: unknown or revoked) may not do `scope` now, or None."""
    if key is None:
        return Unauthorized("Unknown or revoked API key.")
    if key.expires_at is not None and key.expires_at <= now:
        return Unauthorized(
            f"API key {key.prefix}… expired at {key.expires_at.isoformat()}; "
            "ask your admin for a new one.",
            code="key_expired",
        )
    if scope not in key_scopes(key):
        return Forbidden(
            f"API key {key.prefix}… has the `read` scope only; creating, cancelling and "
            "deleting need a key with the `write` scope.",
            code="insufficient_scope",
        )
    return None


def stale(key: KeyFacts, now: datetime) -> bool:
    """Whether the key's last_used_at is due for a write (once per resolution)."""
    return key.last_used_at is None or key.last_used_at < now - LAST_USED_RESOLUTION


def admit(key: KeyFacts | None, scope: str, address: str | None) -> bool:
    """Raises unless `key` (None: unknown or revoked) may do `scope` now, and counts
    the request against its rate limit; True when its last_used_at is due a write."""
    now = utcnow()
    refused = refusal(key, scope, now)
    if isinstance(refused, Unauthorized):
        # Counted only on failure: a right key costs no extra round trip, and 256-bit
        # keys cannot be guessed; the limit stops floods of wrong ones (429, not 401).
        get_rate_limits().count_failed_auth(address or "unknown")
    if refused is not None:
        raise refused
    assert key is not None
    get_rate_limits().hit_key(key.id)
    return stale(key, now)


async def admit_async(key: KeyFacts | None, scope: str, address: str | None) -> bool:
    """admit() in the event loop: the same checks, the rate limits counted on the
    async Redis client."""
    now = utcnow()
    refused = refusal(key, scope, now)
    if isinstance(refused, Unauthorized):
        await get_rate_limits().count_failed_auth_async(address or "unknown")
    if refused is not None:
        raise refused
    assert key is not None
    await get_rate_limits().hit_key_async(key.id)
    return stale(key, now)


def _admit(
    repo: TeamRepository,
    found: tuple[ApiKey, Team] | None,
    scope: str,
    address: str | None,
) -> Team:
    """The team of the key that was looked up, if it may do `scope` now."""
    touch = admit(found[0] if found else None, scope, address)
    assert found is not None  # admit() raised otherwise
    if touch:
        touch_key(repo.session, found[0].id)
    return found[1]


@dataclass(frozen=True)
class ObjectQuery:
    """The `fields` (the first is `id`) of the team's `model` row `object_id`."""

    model: Any
    object_id: str
    fields: tuple[str, ...]


def authenticate_and_columns(
    session: Session, key: str | None, query: ObjectQuery, *, scope: str, address: str | None
) -> dict[str, Any] | None:
    """authenticate_and_get as plain columns: the object's fields (None when the team
    has no such row), in one round trip without ORM objects."""
    params = key_lookup(key, query.object_id)
    row = TeamRepository(session).key_and_columns(query.model, query.fields, params)
    key_row = KeyRow.of(row)
    if admit(key_row, scope, address):
        assert key_row is not None
        touch_key(session, key_row.id)
    return found_columns(row, query.fields)


async def authenticate_and_columns_async(
    reader: AsyncReader, key: str | None, query: ObjectQuery, *, scope: str, address: str | None
) -> tuple[dict[str, Any] | None, str | None]:
    """authenticate_and_columns in the event loop (PostgreSQL): the object's columns,
    and the id of the key when its last_used_at is due a write (touch_key(), which the
    caller runs in a thread: once a minute per key)."""
    stmt = key_and_columns(query.model, query.fields)
    row = await reader.first(stmt, key_lookup(key, query.object_id))
    key_row = KeyRow.of(row)
    touch = await admit_async(key_row, scope, address)
    return found_columns(row, query.fields), key_row.id if touch and key_row else None


def authenticate_and_page(
    session: Session, key: str | None, page: PageQuery, *, scope: str, address: str | None
) -> Page[dict[str, Any]]:
    """A page of the team's rows as column dicts, after the key's checks (2 round trips)."""
    team = authenticate(session, key, scope=scope, address=address)
    return team_page_columns(
        session,
        page.model,
        page.fields,
        team.id,
        page.filters,
        limit=page.limit,
        cursor=page.cursor,
    )


async def authenticate_and_page_async(
    reader: AsyncReader, key: str | None, page: PageQuery, *, scope: str, address: str | None
) -> tuple[Page[dict[str, Any]], str | None]:
    """authenticate_and_page in the event loop (PostgreSQL), in one statement; and the
    key's id when its last_used_at is due a write, as authenticate_and_columns_async."""
    given = tuple(sorted(n for n, v in page.filters.items() if v is not None))
    params: dict[str, Any] = {"key_hash": hash_key(_given(key)), "limit": page.limit + 1}
    params |= {f"f_{n}": page.filters[n] for n in given}
    if page.cursor:
        params["cursor"] = page.cursor
    stmt = key_and_page(page.model, page.fields, given, bool(page.cursor))
    rows = await reader.all(stmt, params)
    key_row = KeyRow.of(rows[0] if rows else None)
    touch = await admit_async(key_row, scope, address)
    found = [o for o in (found_columns(r, page.fields) for r in rows) if o is not None]
    return page_of(found, page.limit), key_row.id if touch and key_row else None


@dataclass(frozen=True)
class PageQuery:
    """A page of a team's `model` rows: `fields` (the first is `id`), newest first,
    each filter given (not None) an equality, ids below `cursor`."""

    model: Any
    fields: tuple[str, ...]
    filters: dict[str, Any]
    limit: int
    cursor: str | None


def key_lookup(key: str | None, object_id: str) -> dict[str, str]:
    """The parameters of repositories.teams.key_and_columns; 401 without a key."""
    return {"key_hash": hash_key(_given(key)), "object_id": object_id}


def found_columns(row: Mapping[str, Any] | None, fields: tuple[str, ...]) -> dict[str, Any] | None:
    """The object's part of a key_and_columns row; None when the team has no such row."""
    if row is None or row[fields[0]] is None:
        return None
    return {f: row[f] for f in fields}


def touch_key(session: Session, key_id: str, now: datetime | None = None) -> None:
    now = now or utcnow()
    # A busy embedded database: last_used_at is a hint, the request goes on.
    with suppress(OperationalError):
        TeamRepository(session).touch_key(key_id, now, now - LAST_USED_RESOLUTION)


def secret_matches(token: str, secrets: list[str], address: str | None) -> bool:
    """Whether `token` is one of `secrets` (the admin key, the metrics token). Every one
    is compared in constant time, so the time taken does not tell which matched. An
    address that guessed wrong too often is refused (429) before anything is compared,
    and a wrong token counts against it."""
    limiter = get_rate_limits()
    limiter.check_failed_auth(address or "unknown")
    if any([constant_time_equal(token, secret) for secret in secrets]):
        return True
    limiter.record_failed_auth(address or "unknown")
    return False


def require_admin(settings: Settings, key: str | None, address: str | None = None) -> None:
    if not key:
        raise Unauthorized("Missing admin key: send `Authorization: Bearer <GRAFT_ADMIN_KEY>`.")
    admin = settings.admin_key.get_secret_value() if settings.admin_key else ""
    if not admin:
        raise Forbidden("Team administration is disabled: GRAFT_ADMIN_KEY is not set.")
    if secret_matches(key, [admin], address):
        return
    if key.startswith(KEY_PREFIX):
        raise Forbidden(
            "This route needs the admin key (GRAFT_ADMIN_KEY); a team's API key cannot "
            "manage teams or keys.",
            code="admin_only",
        )
    raise Unauthorized("Unknown admin key: the bearer token is not GRAFT_ADMIN_KEY.")


# ---------------------------------------------------------------- webhook secrets


def rotate_webhook_secret(session: Session, settings: Settings, team_id: str) -> Team:
    """A new secret; the old one keeps signing beside it for the grace period, so
    receivers can switch without missing a delivery."""
    team = TeamRepository(session).lock(team_id)
    assert team is not None
    team.previous_webhook_secret = team.webhook_secret
    team.previous_secret_expires_at = utcnow() + timedelta(
        seconds=settings.webhook_secret_grace_seconds
    )
    team.webhook_secret = new_webhook_secret()
    session.flush()
    return team


def signing_secrets(team: Team, now: datetime | None = None) -> list[str]:
    """The secrets a delivery is signed with now: the current one, and the previous one
    while its grace period lasts."""
    now = now or utcnow()
    secrets = [team.webhook_secret]
    expires = team.previous_secret_expires_at
    if team.previous_webhook_secret and expires is not None and now < expires:
        secrets.append(team.previous_webhook_secret)
    return secrets
