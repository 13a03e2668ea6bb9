"""A team's job list reads its page through an index in id order (keyset pagination):
never a scan, never a sort.

The statement the repository really sends (captured as it runs) is EXPLAINed on
PostgreSQL over 10,000 jobs of two teams.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, insert, make_url, text

from app.db.base import utcnow
from app.db.models import Job
from app.db.session import get_engine, session_scope
from app.repositories.jobs import JobRepository
from app.services.teams import create_team

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("status", ["running", None], ids=["filtered", "all"])
def test_the_list_reads_its_page_in_index_order(pg_env: dict[str, str], status: str | None) -> None:
    mine = _seed()

    engine = get_engine(pg_env["GRAFT_DATABASE_URL"])
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM jobs" in statement:
            sent.append((statement, params))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with session_scope() as s:
            # As the service lists them: jobs of kind training (evaluations are rows too).
            repo = JobRepository(s)
            first = repo.list_for_team(mine, kind="training", status=status, limit=20, cursor=None)
            assert len(first.items) == 20 and first.has_more
            cursor = first.next_cursor
            repo.list_for_team(mine, kind="training", status=status, limit=20, cursor=cursor)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert len(sent) == 2
    for statement, params in sent:
        with engine.connect() as conn:
            plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, params))
        # An index hands over the page in id order: no scan of the table, and no sort of
        # the team's rows (which cost 21 ms at 10,000 jobs before (team_id[, status], id)).
        assert "Index Scan" in plan and "Seq Scan" not in plan, plan
        assert "Sort" not in plan and "Bitmap" not in plan, plan


@pytest.mark.parametrize("status", ["running", None], ids=["filtered", "all"])
def test_the_async_lists_one_statement_reads_its_page_in_index_order(
    pg_env: dict[str, str], status: str | None
) -> None:
    """The list's async path (services.teams.authenticate_and_page_async): the key and a
    LATERAL page of its team's jobs in one statement; the page still comes from the
    index in id order, with no scan and no sort of the jobs."""
    from app.api.jobs import JOB_FIELDS
    from app.db.async_reads import _compiled
    from app.repositories.teams import key_and_page
    from app.services.teams import create_key

    mine = _seed()
    with session_scope() as s:
        _, key = create_key(s, mine)
    from app.security import hash_key

    filters = ("kind", "status") if status else ("kind",)
    params: dict[str, Any] = {"key_hash": hash_key(key), "limit": 21, "f_kind": "training"}
    if status:
        params["f_status"] = status
    dsn = make_url(pg_env["GRAFT_DATABASE_URL"]).set(drivername="postgresql")

    async def explain_and_run(sql: str, args: list[Any]) -> tuple[str, list[Any]]:
        # On asyncpg, as the reader sends it: its own parameter syntax and casts.
        conn = await asyncpg.connect(dsn.render_as_string(False))
        try:
            plan = await conn.fetch("EXPLAIN " + sql, *args)
            return "\n".join(r[0] for r in plan), await conn.fetch(sql, *args)
        finally:
            await conn.close()

    for after in (False, True):
        compiled = _compiled(key_and_page(Job, JOB_FIELDS, filters, after))
        args = compiled.args(
            params | ({"cursor": "job_00000000000000000000009000"} if after else {})
        )
        plan, page = asyncio.run(explain_and_run(compiled.sql, args))
        assert "Index Scan" in plan and "Seq Scan on jobs" not in plan, plan
        assert "Sort" not in plan and "Bitmap" not in plan, plan
        assert len(page) == 21  # limit + 1: a full page and the sign of more


def _seed() -> str:
    """10,000 jobs of two teams; the id of the team whose page is read."""
    with session_scope() as s:
        mine, other = create_team(s, "mine").id, create_team(s, "other").id
    now = utcnow()
    rows = [
        {
            "id": f"job_{i:026d}",
            "team_id": mine if i % 5 == 0 else other,
            "spec": {},
            # 40 of this team's 2,000 jobs run, among 4,000 running jobs of the other
            # team: neither the status, nor the team, nor the id order alone finds the
            # page without reading many other rows; the pair in id order does.
            "status": "running" if (i % 250 == 0 if i % 5 == 0 else i % 2 == 1) else "done",
            "created_at": now,
            "metrics": [],
            "attempt": 0,
            "cancel_requested": False,
        }
        for i in range(10_000)
    ]
    with session_scope() as s:
        s.execute(insert(Job), rows)
        s.execute(text("ANALYZE"))
    return mine
