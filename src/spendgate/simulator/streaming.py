"""Writing an SSE body: batching, tokens-per-second pacing, and mid-stream cuts.

Frames are prepared up front (cheap with orjson and byte templates) and written in
small batches; with pacing, each frame carries the output tokens it stands for and
is held until its due time, so throughput follows `tokens_per_second` without one
timer per token.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
BATCH = 16  # frames per write when not pacing


async def send_stream(
    request: web.Request,
    headers: dict[str, str],
    frames: list[tuple[bytes, int]],
    tokens_per_second: float,
    cut_after: int | None = None,
) -> web.StreamResponse:
    """Send `frames` ((bytes, weight in tokens)); abort the connection after `cut_after` frames."""
    resp = web.StreamResponse(status=200, headers=headers)
    try:
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        start = loop.time()
        due = 0
        buf: list[bytes] = []
        for i, (data, weight) in enumerate(frames):
            if cut_after is not None and i >= cut_after:
                if buf:
                    await resp.write(b"".join(buf))
                    await asyncio.sleep(0.01)  # let the partial stream reach the peer first
                abort(request)
                return resp
            if tokens_per_second > 0 and weight:
                due += weight
                wait = start + due / tokens_per_second - loop.time()
                if wait > 0:
                    if buf:
                        await resp.write(b"".join(buf))
                        buf.clear()
                    await asyncio.sleep(wait)
            buf.append(data)
            if len(buf) >= BATCH:
                await resp.write(b"".join(buf))
                buf.clear()
        if buf:
            await resp.write(b"".join(buf))
        await resp.write_eof()
    except ConnectionError:
        pass  # the client went away mid-stream; nothing left to do
    return resp


def abort(request: web.Request) -> None:
    """Drop the TCP connection without a word (RST where the OS allows)."""
    transport = request.transport
    if transport is not None:
        transport.abort()
