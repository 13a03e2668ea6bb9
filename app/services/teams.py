"""Teams, their API keys and webhook secrets, and authentication.

A key is `graft_` followed by 43 url-safe characters (256 random bits); only its sha256
is stored, with its first 12 characters as a prefix a person can recognise in a list.
Scopes: `read` reads, downloads and predicts; `write` can also create, cancel and delete.
"""

from __future__ import annotations

from contextlib import suppress
from datetime import datetime, timedelta

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.base import utcnow
from app.db.models import ApiKey, Team
from app.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from app.ids import new_id
from app.rate_limits import get_rate_limits
from app.repositories.teams import R, TeamRepository
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


def key_scopes(row: ApiKey) -> list[str]:
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


def _admit(
    repo: TeamRepository,
    found: tuple[ApiKey, Team] | None,
    scope: str,
    address: str | None,
) -> Team:
    """The team of the key that was looked up, if it may do `scope` now."""
    now = utcnow()
    if found is None or (found[0].expires_at is not None and found[0].expires_at <= now):
        # Checked only on failure: a right key costs no extra round trip, and 256-bit
        # keys cannot be guessed; the limit stops floods of wrong ones (429, not 401).
        limiter = get_rate_limits()
        limiter.check_failed_auth(address or "unknown")
        limiter.record_failed_auth(address or "unknown")
        if found is None:
            raise Unauthorized("Unknown or revoked API key.")
        expired = found[0].expires_at
        assert expired is not None
        raise Unauthorized(
            f"API key {found[0].prefix}… expired at {expired.isoformat()}; "
            "ask your admin for a new one.",
            code="key_expired",
        )
    row, team = found
    if scope not in key_scopes(row):
        raise Forbidden(
            f"API key {row.prefix}… has the `read` scope only; creating, cancelling and "
            "deleting need a key with the `write` scope.",
            code="insufficient_scope",
        )
    get_rate_limits().hit_key(row.id)
    if row.last_used_at is None or row.last_used_at < now - LAST_USED_RESOLUTION:
        # A busy embedded database: last_used_at is a hint, the request goes on.
        with suppress(OperationalError):
            repo.touch_key(row.id, now, now - LAST_USED_RESOLUTION)
    return team


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
