"""The SSE parser must give the same events however TCP splits the bytes."""

from __future__ import annotations

from spendgate.wire.sse import SSEParser

STREAM_LF = (
    b"event: message_start\ndata: {\"type\":\"message_start\"}\n\n"
    b": a comment\n\n"
    b"event: content_block_delta\ndata: {\"delta\":{\"text\":\"hi\"}}\n\n"
    b"data: {\"multi\":1}\ndata: {\"line\":2}\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    ("message_start", '{"type":"message_start"}'),
    ("content_block_delta", '{"delta":{"text":"hi"}}'),
    (None, '{"multi":1}\n{"line":2}'),
    (None, "[DONE]"),
]


def _parse(chunks: list[bytes]) -> list[tuple[str | None, str]]:
    p = SSEParser()
    out = []
    for c in chunks:
        out.extend((e.event, e.data) for e in p.feed(c))
    return out


def test_every_split_point_and_line_ending() -> None:
    for stream in (STREAM_LF, STREAM_LF.replace(b"\n", b"\r\n"), STREAM_LF.replace(b"\n", b"\r")):
        assert _parse([stream]) == EXPECTED
        for cut in range(1, len(stream)):
            assert _parse([stream[:cut], stream[cut:]]) == EXPECTED, (stream[:cut][-5:], cut)
        assert _parse([bytes([b]) for b in stream]) == EXPECTED


def test_unfinished_event_stays_pending() -> None:
    p = SSEParser()
    events = p.feed(b"data: {\"a\":1}\n\ndata: {\"b\"")
    assert [e.data for e in events] == ['{"a":1}'] and p.pending() == b'data: {"b"'
