"""SQL for readiness checks."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session


def ping(session: Session) -> None:
    """One round trip to the database; raises if it cannot be reached."""
    session.execute(text("SELECT 1"))
