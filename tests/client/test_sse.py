"""The SSE parser on canned bytes, and `jobs.events(follow=True)` resuming with
Last-Event-ID over a mocked network that cuts the stream and answers 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from graft import APIConnectionError, Client
from graft._resources import RECONNECT_WINDOW_SECONDS
from graft._sse import ServerSentEvent, SSEDecoder, iter_sse

STREAM = (
    b"retry: 2000\n\n"
    b": keepalive\n\n"
    b"id: 1\nevent: job.queued\ndata: first\n\n"
    b"id: 2\r\nevent: job.running\r\ndata: line one\r\ndata:line two\r\n\r\n"
    b'data: no id, no type\r\rid: 4\nevent: job.progress\ndata: {"a": 1}\n\n'
)
EXPECTED = [
    ServerSentEvent("first", "job.queued", "1"),
    ServerSentEvent("line one\nline two", "job.running", "2"),
    ServerSentEvent("no id, no type", "message", "2"),  # the last id carries over
    ServerSentEvent('{"a": 1}', "job.progress", "4"),
]


def test_events_are_parsed_with_every_line_ending_comments_and_retry() -> None:
    decoder = SSEDecoder()
    assert list(iter_sse([STREAM], decoder)) == EXPECTED
    assert decoder.retry == 2000 and decoder.last_event_id == "4"


def test_chunks_split_anywhere_give_the_same_events() -> None:
    for cut in range(1, len(STREAM)):
        assert list(iter_sse([STREAM[:cut], STREAM[cut:]])) == EXPECTED, cut


def test_bytes_one_at_a_time_and_a_bom_and_utf8_split_across_chunks() -> None:
    text = "\ufeffid: 7\ndata: caf\u00e9 \u2713\n\n".encode()
    assert list(iter_sse(text[i : i + 1] for i in range(len(text)))) == [
        ServerSentEvent("caf\u00e9 \u2713", "message", "7")
    ]


def test_an_event_cut_by_the_end_of_the_stream_is_not_yielded() -> None:
    cut = b"id: 1\ndata: whole\n\nid: 2\ndata: half"
    assert list(iter_sse([cut])) == [ServerSentEvent("whole", "message", "1")]
    # Cut after its last line but before the blank line that would dispatch it.
    assert [e.id for e in iter_sse([cut + b"\n"])] == ["1"]


# ---------------------------------------------------------------- following a job


def sse(seq: int, kind: str) -> bytes:
    data = {"id": seq, "type": kind, "data": {}, "created_at": "2025-01-01T00:00:00Z"}
    return f"id: {seq}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()


class CutStream(httpx.SyncByteStream):
    """A body that breaks off after `parts`, as when the server process dies."""

    def __init__(self, *parts: bytes) -> None:
        self.parts = parts

    def __iter__(self) -> Iterator[bytes]:
        yield from self.parts
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


JOB: dict[str, object] = {
    "id": "job_1",
    "status": "running",
    "spec": {},
    "created_at": "2025-01-01T00:00:00Z",
    "started_at": None,
    "finished_at": None,
    "progress": None,
    "metrics": [],
    "result": None,
    "error": None,
    "attempt": 1,
    "cancel_requested": False,
}


def follower(*answers: httpx.Response) -> tuple[Client, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[len(seen) - 1]

    client = Client(
        "http://graft.test", "graft_key", http=httpx.Client(transport=httpx.MockTransport(handler))
    )
    client._sleep = lambda _: None
    return client, seen


def stream(body: bytes | httpx.SyncByteStream) -> httpx.Response:
    headers = {"Content-Type": "text/event-stream"}
    if isinstance(body, bytes):
        return httpx.Response(200, headers=headers, content=body)
    return httpx.Response(200, headers=headers, stream=body)


def test_follow_resumes_from_the_last_event_after_a_cut_and_a_503() -> None:
    client, seen = follower(
        stream(
            CutStream(
                b"retry: 10\n\n",
                sse(1, "job.queued"),
                sse(2, "job.running"),
                sse(3, "job.progress")[:25],
            )
        ),
        httpx.Response(503, json={"error": {"code": "unavailable", "message": "restarting"}}),
        stream(sse(3, "job.progress") + sse(4, "job.succeeded") + sse(5, "webhook.delivery")),
    )
    client.max_retries = 0  # the stream resumes whatever the per-request retries
    events = list(client.jobs.events("job_1", follow=True))

    assert [(e.id, e.type) for e in events] == [
        (1, "job.queued"),
        (2, "job.running"),
        (3, "job.progress"),
        (4, "job.succeeded"),
        (5, "webhook.delivery"),
    ]
    assert [r.headers.get("Last-Event-ID") for r in seen] == [None, "2", "2"]
    assert {r.headers["Accept"] for r in seen} == {"text/event-stream"}
    assert {r.url.path for r in seen} == {"/v1/jobs/job_1/events"}


def test_a_clean_end_before_the_final_event_reads_the_job_and_resumes() -> None:
    client, seen = follower(
        stream(sse(3, "job.running")),
        httpx.Response(200, json=JOB),
        stream(sse(4, "job.failed")),
    )
    events = list(client.jobs.events("job_1", follow=True, after=2))
    assert [e.id for e in events] == [3, 4]
    assert [(r.url.path, r.headers.get("Last-Event-ID")) for r in seen] == [
        ("/v1/jobs/job_1/events", "2"),
        ("/v1/jobs/job_1", None),
        ("/v1/jobs/job_1/events", "3"),
    ]
    assert seen[0].url.params["after"] == "2"


def test_follow_gives_up_once_the_server_has_been_gone_for_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter(range(0, 1000, 20))
    monkeypatch.setattr("graft._resources.time.monotonic", lambda: float(next(clock)))
    refused = httpx.ConnectError("connection refused")

    def handler(request: httpx.Request) -> httpx.Response:
        raise refused

    client = Client(
        "http://graft.test",
        "graft_key",
        max_retries=0,
        http=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    client._sleep = lambda _: None
    with pytest.raises(APIConnectionError, match="could not be resumed") as gone:
        list(client.jobs.events("job_1", follow=True))
    assert f"{RECONNECT_WINDOW_SECONDS:.0f} s" in str(gone.value)
