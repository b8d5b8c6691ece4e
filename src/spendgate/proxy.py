"""One LLM call end to end: stages, then the route's steps, each a failover loop of attempts.

A plain call has one step; a cascade has several, cheapest first. Every step
but the last is run buffered (read whole, judged by the cascade's checks) and
either delivered to the client, as JSON or replayed as a stream in its own
format, or escalated. The last step answers the client directly.
"""

from __future__ import annotations

import logging
from typing import Any

from spendgate.asgi import SSE_HEADERS, Receive, Send, send_json, start_response
from spendgate.cache.replay import replay_sse
from spendgate.cache.serve import MissRecorder, serve_hit
from spendgate.cache.stage import CacheStage
from spendgate.config import Config, Deployment, PrivacyConfig
from spendgate.errors import GatewayError
from spendgate.fingerprint import prefix_hashes, request_hash
from spendgate.ledger.events import UsageEvent
from spendgate.meter import Attempt, Meter
from spendgate.pipeline import Call, Stage, run_stages
from spendgate.providers.adapters import Adapter
from spendgate.providers.upstream import UpstreamClient
from spendgate.relay.attempt import AttemptRunner, id_headers, money
from spendgate.relay.errors import render
from spendgate.routing.cascade import CompiledCascade, strip_logprobs
from spendgate.routing.failover import AttemptNumbers, Failover, Failure, Success
from spendgate.routing.router import Router
from spendgate.wire import anthropic as anthropic_wire
from spendgate.wire import openai as openai_wire

log = logging.getLogger("spendgate.proxy")

ESCALATION = "cascade-escalation"


class EventSink:
    """Where finished events go (the ledger writer); `submit` never blocks."""

    def submit(self, event: UsageEvent) -> None: ...


class Proxy:
    def __init__(
        self,
        config: Config,
        stages: list[Stage],
        router: Router,
        adapters: dict[str, Adapter],
        upstream: UpstreamClient,
        meter: Meter,
        sink: EventSink,
        cache: CacheStage | None = None,
    ) -> None:
        self.stages = stages
        self.cache = cache
        self.router = router
        self.sink = sink
        self.privacy: PrivacyConfig = config.privacy
        self.attempts = AttemptRunner(adapters, upstream, meter, sink.submit, config.privacy, cache)
        routing = config.routing
        self.failover = Failover(router.health, routing.retry, routing.max_attempts)
        self.cascades = {c.name: CompiledCascade(c) for c in routing.cascades}

    async def handle(self, call: Call, send: Send, receive: Receive) -> None:
        try:
            await self._handle(call, send, receive)
        finally:
            await call.finish()  # settle reservations, free slots: on every path

    async def _handle(self, call: Call, send: Send, receive: Receive) -> None:
        try:
            await run_stages(self.stages, call)
            if call.cache_hit is not None:
                call.request_hash = request_hash(call.body)
                await serve_hit(call, send, id_headers(call), self.sink.submit)
                return
            if not call.candidates:  # no route stage ran (a pipeline assembled without one)
                self.router.route_directly(call)
        except GatewayError as err:
            await send_json(send, err.status, render(err, call.wire), id_headers(call))
            return
        prompt = _prompt_text(call)
        call.request_hash = request_hash(call.body)
        call.prefix_hashes = prefix_hashes(prompt, self.privacy.prefix_block_chars)
        steps = call.route_steps or [call.candidates]
        cascade = self.cascades[call.route_target.cascade.name] if len(steps) > 1 else None
        numbers = AttemptNumbers()
        reason = call.route_reason
        result: Success | Failure | None = None
        for i, chain in enumerate(steps):
            last_step = i == len(steps) - 1
            if cascade is not None and not last_step:
                skip = cascade.skip(prompt, call.tags)
                if skip is not None:
                    call.control_actions.append(f"cascade:{cascade.name}:skip-step{i + 1}:learned p={skip.probability:.3f}<{skip.threshold:g}")
                    reason = ESCALATION
                    continue
            only = call.context_only[i] if i < len(call.context_only) else set()
            result = await self._step(call, chain, only, reason, prompt, send, receive, None if last_step else cascade, numbers)
            if last_step or (isinstance(result, Success) and (result.sent or result.verdict.ok)):
                break
            assert cascade is not None
            why = result.verdict.failed if isinstance(result, Success) else f"error:{result.kind}"
            call.control_actions.append(f"cascade:{cascade.name}:escalate-step{i + 1}:{why}")
            reason = ESCALATION
        if isinstance(result, Success) and not result.sent:
            await self._deliver(call, result, send)
        elif isinstance(result, Failure):
            await send_json(send, result.status, result.body, [*result.headers, *id_headers(call)])

    async def _step(
        self, call: Call, chain: list[Deployment], context_only: set[str], reason: str, prompt: str, send: Send, receive: Receive,
        cascade: CompiledCascade | None, numbers: AttemptNumbers,
    ) -> Success | Failure:  # fmt: skip
        """One step's failover loop; buffered and judged when a cascade step follows."""
        endpoint = call.endpoint

        def judge(body: dict[str, Any], dep: Deployment) -> Any:
            assert cascade is not None
            return cascade.judge(body, dep, prompt, call.tags)

        async def attempt(dep: Deployment, number: int, why: str) -> Success | Failure:
            a = Attempt(dep, number, route_reason=why, buffered=cascade is not None)
            if cascade is None:
                return await self.attempts.run(call, a, prompt, send, receive)
            return await self.attempts.run(call, a, prompt, send, receive, buffered=judge, extra=cascade.extra(dep, endpoint))

        def too_long(dep: Deployment) -> list[Deployment]:
            return self.router.context_fallbacks(dep, endpoint, call.key, call.route_tokens)

        return await self.failover.run(
            chain, call.route_tokens, reason, attempt, numbers, call.control_actions, too_long, context_only, call.wire
        )

    async def _deliver(self, call: Call, result: Success, send: Send) -> None:
        """A buffered cascade answer that passed its checks, in the form the client asked for."""
        assert result.body is not None
        body = strip_logprobs(result.body, call.body.get("logprobs") is True) if call.wire == "openai" else result.body
        recorder = MissRecorder(self.cache, call) if call.cache_plan is not None and self.cache is not None else None
        cost = (b"x-spendgate-cost", money(call.cost))
        if not call.stream:
            if recorder is not None and result.event is not None:
                recorder.done(result.event, body)
            await send_json(send, 200, body, [*id_headers(call), cost])
            return
        frames = replay_sse(call.wire, call.endpoint, body, request_id=call.request_id, include_usage=call.client_wants_usage)
        await start_response(send, 200, [*SSE_HEADERS, *id_headers(call)])
        for f in frames:
            if recorder is not None:
                recorder.feed(f)
            await send({"type": "http.response.body", "body": f, "more_body": True})
        if recorder is not None and result.event is not None:
            recorder.done(result.event)
        await send({"type": "http.response.body", "body": b": x-spendgate-cost " + cost[1] + b"\n\n", "more_body": False})


def _prompt_text(call: Call) -> str:
    return (anthropic_wire if call.wire == "anthropic" else openai_wire).prompt_text(call.body)
