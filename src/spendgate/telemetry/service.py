"""What the gateway holds: the /metrics endpoint and the OTLP exporter, wired to the ledger writer."""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from spendgate.asgi import Scope, Send, header_dict
from spendgate.telemetry.prometheus import BudgetSource, PrometheusMetrics
from spendgate.telemetry.schema import TelemetryConfig


class Telemetry:
    """Built with the gateway; `start()` before the writer runs, `close()` after it has flushed."""

    def __init__(
        self,
        config: TelemetryConfig,
        writer: Any,
        admin_key: str | None,
        environ: Mapping[str, str] = os.environ,
        shared: bool | Callable[[], bool] = True,
    ) -> None:
        """`shared`: whether the gateway has virtual keys (not in first-minute mode); a
        callable is asked at each scrape, so creating the first managed key closes /metrics."""
        self.config = config
        self.writer = writer
        prom = config.prometheus
        self.prometheus = PrometheusMetrics(prom, writer) if prom.enabled else None
        self.path = prom.path if prom.enabled else None
        self._shared = shared
        # tokens a scrape may present; empty while auth is required = closed (403)
        self._tokens = [t for t in (admin_key, environ.get(prom.key_env) if prom.key_env else None) if t]
        self._environ = environ
        self.otlp: Any = None

    def start(self) -> None:
        """Register the writer listeners; start the OTLP exporter (fails clearly without its packages)."""
        if self.prometheus is not None:
            self.writer.add_listener(self.prometheus.observe)
        if self.config.otlp.enabled and self.otlp is None:
            from spendgate.telemetry.otel import OtlpExporter

            self.otlp = OtlpExporter(self.config.otlp, self._environ)
            self.writer.add_listener(self.otlp.observe)

    async def close(self) -> None:
        """Flush the OTLP batches (blocking HTTP, so off the event loop)."""
        if self.otlp is not None:
            otlp, self.otlp = self.otlp, None
            await asyncio.to_thread(otlp.close)

    def serves(self, path: str) -> bool:
        return path == self.path

    async def serve_metrics(self, scope: Scope, send: Send, budgets: BudgetSource | None) -> None:
        """GET /metrics: refresh the budget snapshot, then render the registry."""
        assert self.prometheus is not None
        headers = header_dict(scope)
        status = self._authorize(headers.get("authorization", ""))
        if status is not None:
            code, message = status
            kind = "authentication_error" if code == 401 else "permission_error"
            body = orjson.dumps({"error": {"message": message, "type": kind}})
            extra = [(b"www-authenticate", b'Bearer realm="metrics"')] if code == 401 else []
            await _send(send, code, body, b"application/json", extra)
            return
        await self.prometheus.refresh_budgets(budgets)
        body, content_type = self.prometheus.render(headers.get("accept", ""))
        await _send(send, 200, body, content_type.encode())

    @property
    def require_auth(self) -> bool:
        """Whether a scrape needs a bearer token now (see `PrometheusConfig.auth`)."""
        prom = self.config.prometheus
        if prom.auth == "none":
            return False
        if prom.auth == "token" or prom.key_env is not None:
            return True
        return bool(self._shared() if callable(self._shared) else self._shared)

    def _authorize(self, authorization: str) -> tuple[int, str] | None:
        if not self.require_auth:
            return None
        path = self.path
        if not self._tokens:
            key_env = self.config.prometheus.key_env
            missing = f"the variable {key_env} is not set and " if key_env else ""
            return 403, (
                f"{path} requires a bearer token but none is configured: {missing}no admin key is set. Set "
                "telemetry.prometheus.key_env to a variable holding a scrape token (or set the admin key, "
                "admin.key_env); or telemetry.prometheus.auth: none if only a network boundary guards it"
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return 401, f"{path} requires 'Authorization: Bearer <token>': the admin key or the scrape token (telemetry.prometheus.key_env)"
        if not any(hmac.compare_digest(token.encode(), t.encode()) for t in self._tokens):
            return 401, f"invalid {path} token: send the admin key or the scrape token (telemetry.prometheus.key_env)"
        return None


async def _send(send: Send, status: int, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *(extra or [])],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
