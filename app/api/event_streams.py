"""Live event streams: one database poll per followed job in this process, however
many clients follow it.

A job's first follower starts its feed: an asyncio task that reads the job's new
events every POLL_SECONDS (one short query in the thread pool; the status is read
before the events, so the events that came with the end are never missed) and keeps
them, serialized once, while anyone follows. Each follower waits on the feed (no
thread, no query of its own) and sends the events after its own position; the last
one to leave stops the feed. So 200 followers of one job cost 2 queries a second, not
400, and a poll of the job meanwhile answers as fast as without them
(bench/bench_api.py --part followers).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi.concurrency import run_in_threadpool

from app.schemas.jobs import JobEventRead
from app.services import jobs as service

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0


@dataclass(frozen=True)
class Frame:
    seq: int
    text: str  # the whole Server-Sent Events frame


@dataclass
class Feed:
    """The events of one job read so far, and whether it has ended."""

    job_id: str
    frames: list[Frame] = field(default_factory=list)
    ended: bool = False
    followers: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    error: BaseException | None = None

    @property
    def last_seq(self) -> int:
        return self.frames[-1].seq if self.frames else 0

    def after(self, seq: int) -> list[Frame]:
        return [f for f in self.frames if f.seq > seq]

    async def run(self, poll_seconds: float) -> None:
        try:
            while True:
                events, ended = await run_in_threadpool(
                    service.poll_events, self.job_id, after_seq=self.last_seq
                )
                for event in events:
                    data = JobEventRead.model_validate(event).model_dump_json()
                    text = f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n"
                    self.frames.append(Frame(event.seq, text))
                self.ended = ended and not events
                if events or self.ended:
                    self._wake()
                if self.ended:
                    return
                if not events:
                    await asyncio.sleep(poll_seconds)
        except Exception as exc:  # the followers end their streams; they may reconnect
            self.error = exc
            self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class EventHub:
    """The feeds of the jobs followed in this process."""

    def __init__(self, poll_seconds: float = POLL_SECONDS) -> None:
        self.poll_seconds = poll_seconds
        # Keyed by event loop too: a feed's task and events belong to the loop they were
        # made on (one per process under uvicorn; tests run several apps at once).
        self._feeds: dict[tuple[int, str], Feed] = {}

    @asynccontextmanager
    async def follow(self, job_id: str) -> AsyncIterator[Feed]:
        key = (id(asyncio.get_running_loop()), job_id)
        feed = self._feeds.get(key)
        if feed is None or feed.error is not None:
            feed = self._feeds[key] = Feed(job_id)
            feed.task = asyncio.create_task(feed.run(self.poll_seconds))
        feed.followers += 1
        try:
            yield feed
        finally:
            feed.followers -= 1
            if feed.followers == 0 and self._feeds.get(key) is feed:
                del self._feeds[key]
                if feed.task is not None:
                    feed.task.cancel()

    async def stream(
        self, job_id: str, after_seq: int, keepalive_seconds: float = KEEPALIVE_SECONDS
    ) -> AsyncIterator[str]:
        """The frames after `after_seq` as they come, until the job has ended and all
        were sent; a comment after keepalive_seconds of silence keeps proxies open."""
        yield "retry: 2000\n\n"
        last = after_seq
        async with self.follow(job_id) as feed:
            while True:
                changed = feed.changed
                for frame in feed.after(last):
                    yield frame.text
                    last = frame.seq
                if feed.error is not None or (feed.ended and last >= feed.last_seq):
                    return
                try:
                    await asyncio.wait_for(changed.wait(), keepalive_seconds)
                except TimeoutError:
                    yield ": keepalive\n\n"


hub = EventHub()
