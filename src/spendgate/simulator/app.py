"""The provider simulator as an aiohttp application, and how to start it in a running loop.

    sim = await start_simulator(settings=SimulatorSettings(latency_ms=20))
    ...  # point clients at sim.url
    await sim.close()
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from spendgate.simulator.anthropic_api import Messages, has_anthropic_key
from spendgate.simulator.embeddings import Embeddings
from spendgate.simulator.errors import Flavor, Refusal, anthropic_error, not_found
from spendgate.simulator.models import list_models, retrieve_model
from spendgate.simulator.openai_chat import ChatCompletions
from spendgate.simulator.openai_common import intake
from spendgate.simulator.openai_legacy import Completions
from spendgate.simulator.settings import FAULT_KINDS, SimulatorSettings
from spendgate.simulator.state import SimulatorState

__all__ = ["FAULT_KINDS", "RunningSimulator", "SimulatorSettings", "build_app", "start_simulator"]

STATE = web.AppKey("simulator_state", SimulatorState)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FlavoredHandler = Callable[[web.Request, Flavor], Awaitable[web.StreamResponse]]


def _answer(handler: Handler) -> Handler:
    """Turn a `Refusal` raised anywhere in a handler into its error response."""

    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Refusal as refusal:
            return refusal.response

    return run


def _as(flavor: Flavor, handler: FlavoredHandler) -> Handler:
    return _answer(lambda request: handler(request, flavor))


def _anthropic_caller(request: web.Request) -> bool:
    h = request.headers
    return "anthropic-version" in h or ("x-api-key" in h and "authorization" not in h)


def build_app(settings: SimulatorSettings | None = None) -> web.Application:
    state = SimulatorState(settings or SimulatorSettings())
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE] = state
    chat, completions, embeddings, messages = ChatCompletions(state), Completions(state), Embeddings(state), Messages(state)

    async def models(request: web.Request) -> web.StreamResponse:
        if _anthropic_caller(request):
            if state.settings.require_auth and not has_anthropic_key(request):
                return anthropic_error(401, "authentication_error", "x-api-key header is required")
            return list_models(anthropic_shape=True)
        await intake(request, state, "openai", needs_model=False)
        return list_models(anthropic_shape=False)

    async def model(request: web.Request) -> web.StreamResponse:
        await intake(request, state, "openai", needs_model=False)
        return retrieve_model(request.match_info["model"])

    async def healthz(request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def unknown(request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/openai/"):
            flavor: Flavor = "azure"
        else:
            flavor = "anthropic" if _anthropic_caller(request) else "openai"
        return not_found(flavor, request.method, request.path)

    r = app.router
    for base in ("/v1", "/v1beta/openai"):
        r.add_post(f"{base}/chat/completions", _as("openai", chat))
        r.add_post(f"{base}/completions", _as("openai", completions))
        r.add_post(f"{base}/embeddings", _as("openai", embeddings))
        r.add_get(f"{base}/models", _answer(models))
        r.add_get(base + "/models/{model}", _answer(model))
    azure = "/openai/deployments/{deployment}"
    r.add_post(f"{azure}/chat/completions", _as("azure", chat))
    r.add_post(f"{azure}/completions", _as("azure", completions))
    r.add_post(f"{azure}/embeddings", _as("azure", embeddings))
    r.add_post("/v1/messages", _answer(messages.create))
    r.add_post("/v1/messages/count_tokens", _answer(messages.count_tokens))
    r.add_get("/healthz", healthz)
    r.add_route("*", "/{tail:.*}", unknown)
    return app


@dataclass(slots=True)
class RunningSimulator:
    """A simulator serving in the current event loop."""

    url: str  # e.g. http://127.0.0.1:43123 (no trailing slash, no /v1)
    host: str
    port: int
    settings: SimulatorSettings
    _runner: web.AppRunner
    _state: SimulatorState

    async def close(self) -> None:
        """Stop listening, release `timeout` hangs and end in-flight requests."""
        self._state.closing.set()
        await self._runner.cleanup()

    async def __aenter__(self) -> "RunningSimulator":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_simulator(host: str = "127.0.0.1", port: int = 0, *, settings: SimulatorSettings | None = None) -> RunningSimulator:
    """Start listening inside the running loop; port 0 picks a free port."""
    settings = settings or SimulatorSettings()
    app = build_app(settings)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1]
    shown = f"[{host}]" if ":" in host else host
    return RunningSimulator(f"http://{shown}:{bound}", host, bound, settings, runner, app[STATE])
