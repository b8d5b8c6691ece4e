"""Assembles the ASGI application from the stages, and owns its lifespan."""

from __future__ import annotations

import gc
import logging
from typing import Any

import orjson

from spendgate.admin.api import AdminApi, admin_key_from
from spendgate.alerts.engine import AlertEngine
from spendgate.asgi import Receive, Scope, Send, header_dict, read_body, send_json
from spendgate.config import Config
from spendgate.controls.identify import Identify, may_use, presented_key
from spendgate.errors import GatewayError
from spendgate.feedback import Feedback
from spendgate.outcomes import Outcomes
from spendgate.ingest import Ingest
from spendgate.keys.store import open_key_store
from spendgate.ledger.open import open_ledger
from spendgate.ledger.writer import LedgerWriter
from spendgate.meter import Meter
from spendgate.pipeline import Call
from spendgate.pricing.catalog import Catalog
from spendgate.providers.adapters import Adapter
from spendgate.providers.upstream import UpstreamClient
from spendgate.proxy import Proxy
from spendgate.telemetry.service import Telemetry
from spendgate.relay.errors import render
from spendgate.routing.router import RouteStage, Router
from spendgate.controls.assembly import Controls
from spendgate.cache.service import ResponseCache
from spendgate.wire import anthropic as anthropic_wire
from spendgate.wire import openai as openai_wire

log = logging.getLogger("spendgate")

MAX_BODY = 32 * 1024 * 1024

# path -> (wire format, endpoint)
LLM_ROUTES: dict[str, tuple[str, str]] = {
    "/v1/chat/completions": ("openai", "chat.completions"),
    "/v1/completions": ("openai", "completions"),
    "/v1/embeddings": ("openai", "embeddings"),
    "/v1/messages": ("anthropic", "messages"),
}


class Gateway:
    """The ASGI app. Built from config; started and stopped by the lifespan."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.catalog = Catalog(config)
        self.key_store = open_key_store(config.state.url)  # managed virtual keys
        self.identify = Identify(config, self.key_store)
        self.router = Router(config, self.catalog.blended_price)
        self.upstream = UpstreamClient()
        self.writer = LedgerWriter(
            open_ledger(config.ledger.url), batch_size=config.ledger.batch_size, flush_interval_ms=config.ledger.flush_interval_ms
        )
        self.simulator: Any = None
        self.proxy: Proxy | None = None
        self.ingest = Ingest(self.identify.keys, self.catalog, self.writer, config)
        self.feedback = Feedback(self.identify.keys, self.writer)
        self.outcomes = Outcomes(self.identify.keys, self.writer)
        self.admin = AdminApi(
            self.key_store, self.identify.keys, admin_key_from(config.admin), key_env=config.admin.key_env, tag_rules=config.tags
        )
        self.route_stage = RouteStage(self.router)
        self.controls = Controls(config, self.catalog, self.identify, self.route_stage)
        self.admin.budgets = self.controls.budgets
        self.cache = ResponseCache(config.cache)
        self.admin.cache = self.cache
        self.admin.router = self.router
        from spendgate.dashboard.app import build_dashboard

        self.dashboard = build_dashboard(self)  # None when dashboard.enabled is false
        self.alerts = (  # None when no alert rules are configured
            AlertEngine(
                config.alerts, self.writer.store, self.writer, self.controls.budgets, slos=config.slos, budget_config=config.budgets
            )
            if config.alerts.rules
            else None
        )
        self.telemetry = Telemetry(  # /metrics (token once virtual keys exist: asked per scrape), OTLP
            config.telemetry, self.writer, admin_key_from(config.admin), shared=lambda: not self.identify.keys.allow_any
        )

    async def startup(self) -> None:
        if self.config.simulator.enabled:
            from spendgate.simulator.app import SimulatorSettings, start_simulator

            s = self.config.simulator
            # the embedded simulator stands in for local servers too, which often take no key
            settings = SimulatorSettings(latency_ms=s.latency_ms, tokens_per_second=s.tokens_per_second, require_auth=False)
            self.simulator = await start_simulator("127.0.0.1", 0, settings=settings)
            log.info("built-in provider simulator listening on %s", self.simulator.url)
        adapters: dict[str, Adapter] = {}
        for dep in self.config.deployments:
            base = dep.base_url or ""
            if base == "simulator":
                base = _simulator_base(self.simulator.url, dep.provider)
            adapters[dep.name] = Adapter(dep, base)
        await self.upstream.start()
        self.telemetry.start()  # its writer listeners, before the writer runs
        self.writer.start()
        await self.controls.start(self.writer.store)
        if self.alerts is not None:
            self.alerts.start()
        self.cache.start()
        if self.key_store is not None:
            self.key_store.start_watching()  # keys changed by other processes
        meter = Meter(self.catalog, self.config.privacy)
        if self.identify.keys.allow_any:
            log.warning(
                "ANY API KEY IS ACCEPTED (allow_any_key: true, no keys configured). "
                "Create keys (`spendgate keys create`) or configure `keys:` before sharing this gateway."
            )
        # Move everything built so far (modules, config, price data) out of the
        # cyclic collector's view: full collections under load stay short, which
        # measurably cuts the gateway's p99 latency (bench/README.md).
        gc.collect()
        gc.freeze()
        stages = [self.identify, self.route_stage, *self.controls.admission, self.cache.stage, *self.controls.spending]
        self.proxy = Proxy(self.config, stages, self.router, adapters, self.upstream, meter, self.writer, self.cache.stage)

    async def shutdown(self) -> None:
        # the server has drained in-flight calls: their reservations are settled
        await self.controls.close()
        await self.cache.close()
        await self.upstream.close()
        if self.simulator is not None:
            await self.simulator.close()
        if self.alerts is not None:
            await self.alerts.close()  # flushes the writer first: the last calls' alerts still go out
        self.writer.close()
        await self.telemetry.close()  # after the last batch: flushes OTLP spans and metrics
        if self.key_store is not None:
            self.key_store.close()
        log.info("ledger flushed: %d events written", self.writer.written)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which exits
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        route = LLM_ROUTES.get(path)
        if route is not None and method == "POST":
            await self._llm(route[0], route[1], scope, receive, send)
        elif path in ("/healthz", "/health") and method == "GET":
            await _json(send, 200, {"status": "ok"})
        elif method == "GET" and self.telemetry.serves(path):
            await self.telemetry.serve_metrics(scope, send, self.controls.budgets.budget_status)
        elif path == "/v1/models" and method == "GET":
            await self._models(scope, send)
        elif path == "/v1/spendgate/feedback" and method == "POST":
            status, payload = await self.feedback.handle(header_dict(scope), await read_body(receive, MAX_BODY))
            await _json(send, status, payload)
        elif path == "/v1/outcomes" and method == "POST":
            status, payload = await self.outcomes.handle(header_dict(scope), await read_body(receive, MAX_BODY))
            await _json(send, status, payload)
        elif path == "/v1/spendgate/events" and method == "POST":
            status, payload = await self.ingest.handle(header_dict(scope), await read_body(receive, MAX_BODY))
            await _json(send, status, payload)
        elif path.startswith("/admin/") or path == "/admin":
            await self.admin(scope, receive, send)
        elif (path == "/dashboard" or path.startswith("/dashboard/")) and self.dashboard is not None:
            await self.dashboard(scope, receive, send)
        else:
            wire = "anthropic" if path.startswith("/v1/messages") else "openai"
            err = GatewayError(404, f"Unknown endpoint: {method} {path}", "invalid_request")
            await send_json(send, 404, render(err, wire), [])

    async def _llm(self, wire: str, endpoint: str, scope: Scope, receive: Receive, send: Send) -> None:
        headers = header_dict(scope)
        raw = await read_body(receive, MAX_BODY)
        try:
            if raw is None:
                raise GatewayError(413, f"The request body is larger than {MAX_BODY // (1024 * 1024)} MiB.")
            if wire == "anthropic":
                body = anthropic_wire.parse_request(raw)
            else:
                body = openai_wire.parse_request(endpoint, raw)
        except GatewayError as err:
            await send_json(send, err.status, render(err, wire), [])
            return
        call = Call(
            wire=wire,
            endpoint=endpoint,
            body=body,
            raw_body=raw,
            headers=headers,
            model=body["model"],
            stream=bool(body.get("stream", False)) and endpoint != "embeddings",
            client_wants_usage=openai_wire.client_wants_usage(body),
        )
        assert self.proxy is not None
        try:
            await self.proxy.handle(call, send, receive)
        except Exception:  # noqa: BLE001 - a bug must still answer in the client's format
            log.exception("unexpected error handling request %s", call.request_id)
            err = GatewayError(500, f"spendgate failed to handle this request (request id {call.request_id}).", "upstream")
            try:
                await send_json(send, 500, render(err, wire), [])
            except Exception:  # noqa: BLE001 - the response had already started
                pass

    async def _models(self, scope: Scope, send: Send) -> None:
        try:
            key = self.identify.keys.authenticate(_key(scope))
        except GatewayError as err:
            await send_json(send, err.status, render(err, "openai"), [])
            return
        models = [m for m in self.router.models() if may_use(key, m)]  # only what this key may call
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "spendgate"} for m in models]
        await _json(send, 200, {"object": "list", "data": data})


def _key(scope: Scope) -> str | None:
    return presented_key(header_dict(scope))


def _simulator_base(url: str, provider: str) -> str:
    if provider in ("openai", "openai_compatible"):
        return f"{url}/v1"
    if provider == "gemini":
        return f"{url}/v1beta/openai"
    return url


async def _json(send: Send, status: int, payload: Any) -> None:
    await send_json(send, status, orjson.dumps(payload), [])
