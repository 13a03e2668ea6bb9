"""A parser of `text/event-stream` (Server-Sent Events), by the WHATWG rules.

Lines end in CRLF, LF or CR; a blank line dispatches the event gathered so far;
`:` starts a comment (keepalives); an event cut off by the end of the stream is
dropped, never dispatched half-read.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

_END_OF_LINE = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event; `id` is the stream's last event id when it was sent."""

    data: str
    event: str = "message"
    id: str | None = None


class SSEDecoder:
    """Turns chunks of bytes, split anywhere, into events as they complete."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._started = False
        self._data: list[str] = []
        self._event = ""
        self.last_event_id: str | None = None
        # The reconnection delay the server asked for (`retry:`), in milliseconds.
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events that `chunk` completes."""
        text = self._pending + self._decoder.decode(chunk)
        if not self._started and text:
            text, self._started = text.removeprefix("\ufeff"), True
        events: list[ServerSentEvent] = []
        start = 0
        for end in _END_OF_LINE.finditer(text):
            if end.group() == "\r" and end.end() == len(text):
                break  # perhaps the first half of a CRLF: wait for the next chunk
            event = self._line(text[start : end.start()])
            if event is not None:
                events.append(event)
            start = end.end()
        self._pending = text[start:]
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return ServerSentEvent("\n".join(data), event or "message", self.last_event_id)


def iter_sse(
    chunks: Iterable[bytes], decoder: SSEDecoder | None = None
) -> Iterator[ServerSentEvent]:
    """Each complete event of a stream; a partial event at its end is not yielded."""
    decoder = decoder or SSEDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
