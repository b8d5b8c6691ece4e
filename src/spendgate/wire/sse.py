"""Server-sent events: an incremental parser for relayed streams, and framing.

The parser accepts bytes split anywhere (mid-line, mid-CRLF) because upstream
TCP reads do not respect event boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: str
    raw: bytes  # the event's bytes as received, including the blank line


class SSEParser:
    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buf += chunk
        if b"\r" in self._buf:
            # A CR ending a non-blank line may be the first half of a CRLF split
            # across reads: normalizing it now would turn one line break into
            # two and end the event early. After a line break it can only
            # complete a blank line, so it is safe to take at once.
            held = self._buf.endswith(b"\r") and not self._buf.endswith((b"\n\r", b"\r\r"))
            body = self._buf[:-1] if held else self._buf
            self._buf = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + (b"\r" if held else b"")
        events: list[SSEEvent] = []
        buf = self._buf
        start = 0  # scan with an offset and cut the rest once: linear in the chunk, however many events it holds
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            parsed = _parse_block(buf[start : end + 2])
            if parsed is not None:
                events.append(parsed)
            start = end + 2
        if start:
            self._buf = buf[start:]
        return events

    def pending(self) -> bytes:
        """Bytes of an unfinished event (a stream cut mid-event)."""
        return self._buf


def _parse_block(block: bytes) -> SSEEvent | None:
    event: str | None = None
    data: list[str] = []
    for line in block.decode("utf-8", "replace").split("\n"):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if event is None and not data:
        return None
    return SSEEvent(event, "\n".join(data), block)


def frame(data: bytes | str, event: str | None = None) -> bytes:
    """One SSE event; `data` must not contain newlines (JSON from orjson never does)."""
    if isinstance(data, str):
        data = data.encode()
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


DONE = b"data: [DONE]\n\n"
