"""HTTP to upstream providers: one pooled keep-alive client for the process."""

from __future__ import annotations

import asyncio

import aiohttp

from spendgate.errors import GatewayError
from spendgate.providers.adapters import Target


class UpstreamClient:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            json_serialize=None,  # bodies are pre-serialized bytes
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(
        self, target: Target, body: bytes, timeout_s: float, connect_timeout_s: float, *, stream: bool = False
    ) -> aiohttp.ClientResponse:
        """Send the request; the caller reads and releases the response.

        For a stream `timeout_s` bounds each wait for the next bytes, not the
        whole stream: a long, healthy generation must never be cut.
        """
        assert self._session is not None, "UpstreamClient.start() was not awaited"
        if stream:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=timeout_s)
        else:
            timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        try:
            return await self._session.post(target.url, data=body, headers=target.headers, timeout=timeout)
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise GatewayError(504, f"The upstream provider did not answer within {timeout_s:g} s.", "timeout") from None
        except aiohttp.ClientError as exc:
            raise GatewayError(502, f"Could not reach the upstream provider: {type(exc).__name__}.", "upstream") from None
