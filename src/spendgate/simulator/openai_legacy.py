"""`POST /v1/completions`: the legacy `text_completion` API, JSON and SSE.

Like the real endpoint, `max_tokens` defaults to 16; an `output_tokens` directive
is only capped by an explicit `max_tokens`.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from spendgate.simulator.errors import Flavor
from spendgate.simulator.ids import completion_id, fingerprint
from spendgate.simulator.openai_common import controls_for, intake, json_response, positive_int, stop_list, stream_flags
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
        directives: dict[str, str] = {}
        for p in prompts:
            directives.update(p.directives)
        controls = controls_for(request, directives)
        limit = explicit if explicit is not None or controls.output_tokens is not None else DEFAULT_MAX_TOKENS
        fault = state.faults.pick(controls)
        await state.faults.wait_first_byte(controls)
        if fault is not None:
            refused = await state.faults.produce(fault, request, flavor, it.model, stream)
            if refused is not None:
                return refused
        echo = bool(body.get("echo"))
        answers: list[tuple[TextAnswer, str]] = []
        for p in prompts:
            seed = p.digest()
            prefix = p.parts[1] if echo and len(p.parts) > 1 else ""
            for j in range(n):
                answers.append((plan_text(mix(seed, j), controls.output_tokens, limit, stops), prefix))
        completion = sum(a.tokens for a, _ in answers)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}
        cid, created = completion_id(), int(time.time())
        if stream:
            frames, cut_at = _frames(cid, created, it.model, answers, usage, include_usage)
            tps = state.tokens_per_second(controls.tokens_per_second)
            return await send_stream(request, it.headers(SSE_HEADERS), frames, tps, cut_at if fault == "cut" else None)
        choices = [
            {"text": prefix + a.text, "index": i, "logprobs": None, "finish_reason": _finish(a)} for i, (a, prefix) in enumerate(answers)
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


def _frames(
    cid: str, created: int, model: str, answers: list[tuple[TextAnswer, str]], usage: dict[str, Any], include_usage: bool
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
    for i, (a, prefix) in enumerate(answers):
        pieces = ([prefix] if prefix else []) + a.pieces
        for k, piece in enumerate(pieces):
            weight = 0 if prefix and k == 0 else 1
            frames.append((chunk([{"text": piece, "index": i, "logprobs": None, "finish_reason": None}]), weight))
        frames.append((chunk([{"text": "", "index": i, "logprobs": None, "finish_reason": _finish(a)}]), 0))
    cut_at = max(1, len(frames) // 2)
    if include_usage:
        frames.append((chunk([], usage=usage), 0))
    frames.append((DONE, 0))
    return frames, cut_at
