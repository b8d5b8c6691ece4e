"""`POST /v1/chat/completions` (and its Azure and Gemini paths), JSON and SSE.

Streams follow OpenAI byte for byte in shape: a role chunk per choice, one token
per content chunk, `delta.tool_calls` fragments, a finish chunk per choice, then
(with `stream_options.include_usage`) a `choices: []` usage chunk, then `[DONE]`.
With `logprobs: true` each content chunk carries its token's `logprobs.content`
entry; a refusal under Structured Outputs comes as `message.refusal` /
`delta.refusal` with `content: null`.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from spendgate.simulator.errors import Flavor, bad_request
from spendgate.simulator.faults import Ask
from spendgate.simulator.ids import call_id, chat_id, fingerprint
from spendgate.simulator.logprobs import MAX_TOP_CHAT, chat_logprobs, json_confidence, token_logprobs
from spendgate.simulator.openai_common import (
    CONTENT_FILTER_OK,
    Intake,
    bounded_int,
    controls_for,
    intake,
    json_response,
    positive_int,
    stop_list,
    stream_flags,
)
from spendgate.simulator.openai_prompt import chat_prompt
from spendgate.simulator.plan import TextAnswer, ToolAnswer, is_reasoning_model, mix, plan_text, plan_tool_call, split_fragments
from spendgate.simulator.prompt_cache import openai_cached_tokens
from spendgate.simulator.state import SimulatorState
from spendgate.simulator.streaming import SSE_HEADERS, send_stream
from spendgate.wire.sse import DONE

Answer = TextAnswer | ToolAnswer
FRAGMENT_CHARS = 4  # tool-call argument characters per streamed chunk (about a token)
_PROMPT_FILTER = [{"prompt_index": 0, "content_filter_results": CONTENT_FILTER_OK}]


def chat_usage(prompt: int, cached: int, answers: list[Answer]) -> dict[str, Any]:
    completion = sum(a.tokens for a in answers)
    reasoning = sum(a.reasoning for a in answers)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def finish_reason(a: Answer) -> str:
    if a.finish == "length":
        return "length"
    return "tool_calls" if isinstance(a, ToolAnswer) else "stop"


def _chosen_tool(body: dict[str, Any], flavor: Flavor) -> dict[str, Any] | None:
    """The function to call, or None for a text answer (tool_choice none, or a tool result to answer)."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools:
        if choice is not None:
            raise bad_request(flavor, "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.", "tool_choice")
        return None
    if not isinstance(tools, list):
        raise bad_request(flavor, "Invalid type for 'tools': expected an array.", "tools", "invalid_type")
    functions = [t["function"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if not functions or choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        for f in functions:
            if f.get("name") == name:
                return f
        raise bad_request(flavor, f"Invalid value for 'tool_choice': no function named '{name}' was specified in the 'tools' parameter.", "tool_choice")
    messages = body.get("messages") or []
    if choice != "required" and isinstance(messages[-1], dict) and messages[-1].get("role") in ("tool", "function"):
        return None
    return functions[0]


class ChatCompletions:
    def __init__(self, state: SimulatorState) -> None:
        self.state = state

    async def __call__(self, request: web.Request, flavor: Flavor) -> web.StreamResponse:
        state = self.state
        it = await intake(request, state, flavor)
        body, model = it.body, it.model
        prompt = chat_prompt(model, body, flavor)
        n = positive_int(body, "n", flavor, 128) or 1
        reasoning_model = is_reasoning_model(model)
        if reasoning_model and body.get("max_tokens") is not None:
            raise bad_request(
                flavor,
                "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
                "max_tokens",
                "unsupported_parameter",
            )
        limit = positive_int(body, "max_completion_tokens", flavor) or positive_int(body, "max_tokens", flavor)
        stops = stop_list(body, flavor)
        stream, include_usage = stream_flags(body, flavor)
        want_logprobs = _logprobs_flag(body, flavor)
        top_k = bounded_int(body, "top_logprobs", flavor, 0, MAX_TOP_CHAT) or 0
        schema, json_mode = _response_format(body)
        tool = _chosen_tool(body, flavor)
        controls = controls_for(request, prompt.directives, model)
        if controls.reply not in (None, "text"):
            tool = None  # a forced reply kind answers in text
        ask = Ask("chat", prompt.tokens)
        fault = state.faults.pick(controls, ask)
        await state.faults.wait_first_byte(controls)
        if fault is not None:
            refused = await state.faults.produce(fault, request, flavor, model, stream, controls, ask, it.headers(SSE_HEADERS))
            if refused is not None:
                return refused

        cached = 0
        if prompt.tokens >= 1024:
            cached = openai_cached_tokens(state.openai_cache, prompt.aligned_prefix_digests(), prompt.tokens)
        seed = prompt.digest()
        reply = controls.reply or ("json" if json_mode else "text")
        confidence = json_confidence(controls.logprob)
        answers: list[Answer] = []
        lps: list[list[dict[str, Any]] | None] | None = [] if want_logprobs else None
        for i in range(n):
            s = mix(seed, i)
            a: Answer
            if tool is not None:
                a = plan_tool_call(s, str(tool.get("name", "")), tool.get("parameters"), controls.output_tokens, limit)
            else:
                a = plan_text(s, controls.output_tokens, limit, stops, reasoning_model, reply, schema, confidence)
            answers.append(a)
            if lps is not None:
                lps.append(
                    chat_logprobs(a.pieces, token_logprobs(s, len(a.pieces), controls.logprob), top_k, s) if isinstance(a, TextAnswer) else None
                )
        as_refusal = [isinstance(a, TextAnswer) and (a.kind == "refusal_flag" or (a.kind == "refusal" and schema is not None)) for a in answers]
        usage = chat_usage(prompt.tokens, cached, answers)
        if stream:
            frames, cut_at = _frames(it, answers, usage, include_usage, as_refusal, lps)
            tps = state.tokens_per_second(controls.tokens_per_second)
            return await send_stream(request, it.headers(SSE_HEADERS), frames, tps, cut_at if fault == "cut" else None)
        return json_response(_completion(it, answers, usage, as_refusal, lps), it.headers())


def _logprobs_flag(body: dict[str, Any], flavor: Flavor) -> bool:
    value = body.get("logprobs")
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(flavor, f"Invalid type for 'logprobs': expected a boolean, but got {type(value).__name__} instead.", "logprobs", "invalid_type")
    return value


def _response_format(body: dict[str, Any]) -> tuple[Any, bool]:
    """(the JSON schema asked for or None, whether JSON output is asked for at all)."""
    rf = body.get("response_format")
    if not isinstance(rf, dict):
        return None, False
    kind = rf.get("type")
    if kind == "json_schema":
        spec = rf.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return (schema if isinstance(schema, dict) else {"type": "object"}), True
    return None, kind == "json_object"


def _choice_logprobs(entries: list[dict[str, Any]] | None, refusal: bool) -> dict[str, Any]:
    if refusal:
        return {"content": None, "refusal": entries}
    return {"content": entries, "refusal": None}


def _message(a: Answer, refusal: bool) -> dict[str, Any]:
    if isinstance(a, ToolAnswer):
        call = {"id": call_id(), "type": "function", "function": {"name": a.name, "arguments": a.arguments}}
        return {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None, "annotations": []}
    if refusal:
        return {"role": "assistant", "content": None, "refusal": a.text, "annotations": []}
    return {"role": "assistant", "content": a.text, "refusal": None, "annotations": []}


def _completion(
    it: Intake, answers: list[Answer], usage: dict[str, Any], as_refusal: list[bool], lps: list[list[dict[str, Any]] | None] | None
) -> dict[str, Any]:
    choices = []
    for i, a in enumerate(answers):
        logprobs = None if lps is None else _choice_logprobs(lps[i], as_refusal[i])
        choice: dict[str, Any] = {"index": i, "message": _message(a, as_refusal[i]), "logprobs": logprobs, "finish_reason": finish_reason(a)}
        if it.flavor == "azure":
            choice["content_filter_results"] = CONTENT_FILTER_OK
        choices.append(choice)
    out: dict[str, Any] = {
        "id": chat_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": it.model,
        "choices": choices,
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": fingerprint(it.model),
    }
    if it.flavor == "azure":
        out["prompt_filter_results"] = _PROMPT_FILTER
    return out


def _frames(
    it: Intake,
    answers: list[Answer],
    usage: dict[str, Any],
    include_usage: bool,
    as_refusal: list[bool],
    lps: list[list[dict[str, Any]] | None] | None,
) -> tuple[list[tuple[bytes, int]], int]:
    """All SSE frames of the stream, each with the output tokens it stands for, and where a cut goes."""
    prefix = b"".join(
        (
            b'data: {"id":"',
            chat_id().encode(),
            b'","object":"chat.completion.chunk","created":',
            str(int(time.time())).encode(),
            b',"model":',
            orjson.dumps(it.model),
            b',"service_tier":"default","system_fingerprint":"',
            fingerprint(it.model).encode(),
            b'","choices":[',
        )
    )
    suffix = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"
    frames: list[tuple[bytes, int]] = []
    if it.flavor == "azure":
        head = {"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": _PROMPT_FILTER}
        frames.append((b"data: " + orjson.dumps(head) + b"\n\n", 0))
    sequences: list[list[bytes]] = []
    for i, a in enumerate(answers):
        idx = str(i).encode()
        entries = lps[i] if lps is not None else None
        role_logprobs: dict[str, Any] | None = None
        if isinstance(a, ToolAnswer):
            call = {"index": 0, "id": call_id(), "type": "function", "function": {"name": a.name, "arguments": ""}}
            delta: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}
            left, right = b'{"index":' + idx + b',"delta":{"tool_calls":[{"index":0,"function":{"arguments":', b'}}]},"logprobs":null,"finish_reason":null}'
            seq = [prefix + left + orjson.dumps(p) + right + suffix for p in split_fragments(a.arguments, FRAGMENT_CHARS)]
        else:
            field = b"refusal" if as_refusal[i] else b"content"
            if as_refusal[i]:
                delta = {"role": "assistant", "content": None, "refusal": ""}
            else:
                delta = {"role": "assistant", "content": "", "refusal": None}
            left = b'{"index":' + idx + b',"delta":{"' + field + b'":'
            if entries is None:
                right = b'},"logprobs":null,"finish_reason":null}'
                seq = [prefix + left + orjson.dumps(p) + right + suffix for p in a.pieces]
            else:
                role_logprobs = _choice_logprobs([], as_refusal[i])
                seq = [
                    prefix + left + orjson.dumps(p) + b'},"logprobs":' + orjson.dumps(_choice_logprobs([e], as_refusal[i])) + b',"finish_reason":null}' + suffix
                    for p, e in zip(a.pieces, entries)
                ]
        role = {"index": i, "delta": delta, "logprobs": role_logprobs, "finish_reason": None}
        frames.append((prefix + orjson.dumps(role) + suffix, 0))
        sequences.append(seq)
    cut_at = len(frames) + max(1, sum(len(s) for s in sequences) // 2)  # at least one content chunk goes out
    longest = max((len(s) for s in sequences), default=0)
    for t in range(longest):
        paced = False
        for i, seq in enumerate(sequences):
            if t < len(seq):
                weight = 0
                if not paced:
                    weight, paced = 1 + (answers[i].reasoning if t == 0 else 0), True
                frames.append((seq[t], weight))
    for i, a in enumerate(answers):
        done = {"index": i, "delta": {}, "logprobs": None, "finish_reason": finish_reason(a)}
        frames.append((prefix + orjson.dumps(done) + suffix, 0))
    if include_usage:
        frames.append((prefix + b'],"usage":' + orjson.dumps(usage) + b"}\n\n", 0))
    frames.append((DONE, 0))
    return frames, cut_at
