"""`POST /v1/completions`: the legacy `text_completion` API, JSON and SSE.

Like the real endpoint, `max_tokens` defaults to 16; an `output_tokens` directive
is only capped by an explicit `max_tokens`. `logprobs: k` (0..5) returns the
legacy `tokens` / `token_logprobs` / `top_logprobs` / `text_offset` object, per
chunk when streaming.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from spendgate.simulator.errors import Flavor
from spendgate.simulator.faults import Ask
from spendgate.simulator.ids import completion_id, fingerprint
from spendgate.simulator.logprobs import MAX_TOP_LEGACY, json_confidence, legacy_logprobs, token_logprobs
from spendgate.simulator.openai_common import bounded_int, controls_for, intake, json_response, positive_int, stop_list, stream_flags
from spendgate.simulator.openai_prompt import legacy_prompts
from spendgate.simulator.plan import TextAnswer, mix, plan_text
from spendgate.simulator.state import SimulatorState
from spendgate.simulator.streaming import SSE_HEADERS, send_stream
from spendgate.wire.sse import DONE

DEFAULT_MAX_TOKENS = 16


def _finish(a: TextAnswer) -> str:
    return "length" if a.finish == "length" else "stop"


class Completions:
    def __init__(self, state: SimulatorState) -> None:
        self.state = state

    async def __call__(self, request: web.Request, flavor: Flavor) -> web.StreamResponse:
        state = self.state
        it = await intake(request, state, flavor)
        body = it.body
        prompts, prompt_tokens = legacy_prompts(it.model, body, flavor)
        n = positive_int(body, "n", flavor, 128) or 1
        explicit = positive_int(body, "max_tokens", flavor)
        stops = stop_list(body, flavor)
        stream, include_usage = stream_flags(body, flavor)
        top_k = bounded_int(body, "logprobs", flavor, 0, MAX_TOP_LEGACY)
        directives: dict[str, str] = {}
        for p in prompts:
            directives.update(p.directives)
        controls = controls_for(request, directives, it.model)
        limit = explicit if explicit is not None or controls.output_tokens is not None else DEFAULT_MAX_TOKENS
        ask = Ask("completions", prompt_tokens, limit or 0)
        fault = state.faults.pick(controls, ask)
        await state.faults.wait_first_byte(controls)
        if fault is not None:
            refused = await state.faults.produce(fault, request, flavor, it.model, stream, controls, ask, it.headers(SSE_HEADERS))
            if refused is not None:
                return refused
        echo = bool(body.get("echo"))
        reply = controls.reply or "text"
        confidence = json_confidence(controls.logprob)
        answers: list[Answer] = []
        for p in prompts:
            seed = p.digest()
            text = p.parts[1] if len(p.parts) > 1 else ""
            prefix = text if echo else ""
            for j in range(n):
                s = mix(seed, j)
                a = plan_text(s, controls.output_tokens, limit, stops, reply=reply, confidence=confidence)
                lp = None
                if top_k is not None:
                    lp = _logprobs(a, prefix, len(text) if not echo else 0, top_k, s, controls.logprob)
                answers.append(Answer(a, prefix, lp))
        completion = sum(a.plan.tokens for a in answers)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}
        cid, created = completion_id(), int(time.time())
        if stream:
            frames, cut_at = _frames(cid, created, it.model, answers, usage, include_usage)
            tps = state.tokens_per_second(controls.tokens_per_second)
            return await send_stream(request, it.headers(SSE_HEADERS), frames, tps, cut_at if fault == "cut" else None)
        choices = [
            {"text": a.prefix + a.plan.text, "index": i, "logprobs": a.logprobs, "finish_reason": _finish(a.plan)} for i, a in enumerate(answers)
        ]
        payload = {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": it.model,
            "system_fingerprint": fingerprint(it.model),
            "choices": choices,
            "usage": usage,
        }
        return json_response(payload, it.headers())


@dataclass(slots=True)
class Answer:
    plan: TextAnswer
    prefix: str  # the echoed prompt, or ""
    logprobs: dict[str, Any] | None  # the legacy logprobs object when asked for


def _logprobs(a: TextAnswer, prefix: str, offset: int, k: int, seed: int, mean: float | None) -> dict[str, Any]:
    """Echoed prompt tokens (4 characters each, the first without a logprob) then the answer's tokens."""
    prompt_tokens = [prefix[i : i + 4] for i in range(0, len(prefix), 4)]
    prompt_values: list[float | None] = [None, *token_logprobs(seed ^ 1, len(prompt_tokens) - 1, -2.5)] if prompt_tokens else []
    values = prompt_values + list(token_logprobs(seed, len(a.pieces), mean))
    return legacy_logprobs(prompt_tokens + a.pieces, values, k, seed, offset)


def _slice(lp: dict[str, Any] | None, start: int, end: int) -> dict[str, Any] | None:
    if lp is None:
        return None
    return {key: values[start:end] for key, values in lp.items()}


def _frames(
    cid: str, created: int, model: str, answers: list[Answer], usage: dict[str, Any], include_usage: bool
) -> tuple[list[tuple[bytes, int]], int]:
    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        obj: dict[str, Any] = {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "choices": choices,
            "model": model,
            "system_fingerprint": fingerprint(model),
        }
        if include_usage:
            obj["usage"] = None
        obj.update(extra)
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    frames: list[tuple[bytes, int]] = []
    first_content = 0
    for i, a in enumerate(answers):
        lp = a.logprobs
        echoed = len(lp["tokens"]) - len(a.plan.pieces) if lp is not None else 0
        if a.prefix:
            frames.append((chunk([{"text": a.prefix, "index": i, "logprobs": _slice(lp, 0, echoed), "finish_reason": None}]), 0))
        for k, piece in enumerate(a.plan.pieces):
            if not first_content:
                first_content = len(frames) + 1
            at = echoed + k
            frames.append((chunk([{"text": piece, "index": i, "logprobs": _slice(lp, at, at + 1), "finish_reason": None}]), 1))
        frames.append((chunk([{"text": "", "index": i, "logprobs": None, "finish_reason": _finish(a.plan)}]), 0))
    cut_at = max(1, first_content, len(frames) // 2)  # at least one content chunk goes out
    if include_usage:
        frames.append((chunk([], usage=usage), 0))
    frames.append((DONE, 0))
    return frames, cut_at
