"""Hundreds of live event streams on one API process: each follower gets every event of
the job once and in order, and the API still answers polls while they wait."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest

from app.db.session import in_transaction, session_scope
from app.repositories.jobs import JobRepository
from app.services import job_runs
from app.services.teams import create_key, create_team
from tests.e2e.helpers import free_port, server
from tests.integration.test_repositories import a_dataset, a_job

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

FOLLOWERS = 200
NOTES = 5


def test_200_followers_each_get_every_event_once_and_in_order(
    pg_env: dict[str, str], tmp_path: Path
) -> None:
    with session_scope() as s:
        team = create_team(s, "t")
        _, key = create_key(s, team.id)
        ds = a_dataset("ds_sse" + team.id[-8:], team.id)
        s.add(ds)
        s.flush()
        job = a_job(
            "job_sse" + team.id[-8:], team.id, spec={"dataset_id": ds.id, "base_model": "resnet18"}
        )
        s.add(job)
        job_id = job.id
    auth = {"Authorization": f"Bearer {key}"}
    port = free_port()
    cmd = [sys.executable, "-m", "app.cli", "api", "--port", str(port)]

    def write_the_job() -> None:
        claimed = in_transaction(job_runs.claim, job_id, "w1", lease_seconds=60, max_attempts=3)
        assert claimed is not None
        for i in range(NOTES):
            in_transaction(job_runs.note, claimed.lease, "job.step", {"i": i})
        in_transaction(job_runs.fail, claimed.lease, {"code": "x", "message": "the end"})

    async def follow(client: httpx.AsyncClient, base: str, connected: list[int]) -> list[int]:
        ids = []
        headers = {**auth, "Accept": "text/event-stream"}
        async with client.stream("GET", f"{base}/v1/jobs/{job_id}/events", headers=headers) as r:
            assert r.status_code == 200
            connected.append(1)
            async for line in r.aiter_lines():
                if line.startswith("id: "):
                    ids.append(int(line.removeprefix("id: ")))
        return ids

    async def run(base: str) -> tuple[list[list[int]], int]:
        limits = httpx.Limits(max_connections=FOLLOWERS + 10)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            connected: list[int] = []
            tasks = [asyncio.create_task(follow(client, base, connected)) for _ in range(FOLLOWERS)]
            for _ in range(1200):
                if len(connected) == FOLLOWERS:
                    break
                await asyncio.sleep(0.1)
            assert len(connected) == FOLLOWERS
            # Every follower waits now; a poll still gets its answer.
            poll = await client.get(f"{base}/v1/jobs/{job_id}", headers=auth)
            await asyncio.to_thread(write_the_job)
            return await asyncio.gather(*tasks), poll.status_code

    with server(cmd, pg_env, port, tmp_path / "api.log") as base:
        streams, poll_status = asyncio.run(run(base))
    assert poll_status == 200
    with session_scope() as s:
        expected = [e.seq for e in JobRepository(s).events(job_id)]
    assert len(expected) == 1 + NOTES + 1  # running, the notes, failed
    # Ids count within the job: 1, 2, 3…, whatever other jobs wrote meanwhile.
    assert expected == list(range(1, len(expected) + 1))
    assert all(ids == expected for ids in streams)
