"""The cache's wire half: capturing what a client received, replaying a stored answer.

Round trips (stored JSON -> replay_sse -> StreamCapture -> the same JSON),
captures of the simulator's real streams in both formats, broken streams that
must never be stored, and the official SDKs reading every replay.
"""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import httpx2
import openai
import orjson
import pytest

from spendgate.cache.capture import StreamCapture, complete_body
from spendgate.cache.replay import replay_json, replay_sse, response_id, split_text
from spendgate.pricing.catalog import TokenUsage
from spendgate.relay.stream import make_relay
from spendgate.simulator.app import start_simulator
from spendgate.wire.translate_response import anthropic_response_to_openai, openai_response_to_anthropic

Json = dict[str, Any]
RID = "18f3a9c0de01abcd000042"

LONG = (
    "Budgets are enforced before a call goes out: the gateway reserves the worst case, "
    "settles the real cost when the answer is in, and releases the rest — naïve façade ✓ 你好."
)

OPENAI_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 42,
    "total_tokens": 1242,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}


def _chat(*choices: Json, **extra: Any) -> Json:
    return {
        "id": "chatcmpl-orig",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": list(choices),
        "usage": OPENAI_USAGE,
        "service_tier": "default",
        "system_fingerprint": "fp_abc123",
        **extra,
    }


def _choice(index: int, message: Json, finish: str = "stop", logprobs: Json | None = None) -> Json:
    return {"index": index, "message": {"role": "assistant", "refusal": None, **message}, "logprobs": logprobs, "finish_reason": finish}


def _logprobs(text: str) -> Json:
    tokens = [text[i : i + 4] for i in range(0, len(text), 4)]
    return {"content": [{"token": t, "logprob": -0.5, "bytes": list(t.encode()), "top_logprobs": []} for t in tokens], "refusal": None}


OPENAI_TEXT = _chat(_choice(0, {"content": LONG, "annotations": []}))
OPENAI_TOOLS = _chat(
    _choice(
        0,
        {
            "content": None,
            "tool_calls": [
                {"id": "call_A1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius", "days": 3}'}},
                {"id": "call_B2", "type": "function", "function": {"name": "search", "arguments": '{"q":"hotels near the Louvre with a view"}'}},
            ],
        },
        "tool_calls",
    )
)
OPENAI_N = _chat(
    _choice(0, {"content": "First answer, short."}, logprobs=_logprobs("First answer, short.")),
    _choice(1, {"content": LONG}, "length"),
    _choice(2, {"content": ""}),
)
OPENAI_REFUSAL = _chat(_choice(0, {"content": None, "refusal": "I'm sorry, but I can't help with that request."}))
OPENAI_TEXT_AND_TOOL = _chat(
    _choice(0, {"content": "Let me check.", "tool_calls": [{"id": "call_C3", "type": "function", "function": {"name": "noop", "arguments": "{}"}}]}, "tool_calls")
)
LEGACY = {
    "id": "cmpl-orig",
    "object": "text_completion",
    "created": 1700000000,
    "model": "gpt-3.5-turbo-instruct",
    "system_fingerprint": "fp_legacy",
    "choices": [
        {
            "text": " once upon a time there was a gateway that counted every token",
            "index": 0,
            "logprobs": {"tokens": [" once", " upon"], "token_logprobs": [-0.1, -0.2], "top_logprobs": [{" once": -0.1}, {" upon": -0.2}], "text_offset": [0, 5]},
            "finish_reason": "length",
        },
        {"text": "", "index": 1, "logprobs": None, "finish_reason": "stop"},
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17},
}

ANTHROPIC_USAGE = {
    "input_tokens": 12,
    "cache_creation_input_tokens": 100,
    "cache_read_input_tokens": 2048,
    "output_tokens": 57,
    "service_tier": "standard",
}


def _message(content: list[Json], stop: str = "end_turn", stop_sequence: str | None = None) -> Json:
    return {
        "id": "msg_orig",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": content,
        "stop_reason": stop,
        "stop_sequence": stop_sequence,
        "usage": ANTHROPIC_USAGE,
    }


ANTHROPIC_TEXT = _message([{"type": "text", "text": LONG}], "stop_sequence", "\n\nHuman:")
ANTHROPIC_TOOLS = _message(
    [
        {"type": "text", "text": "I'll look that up."},
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris", "nested": {"days": [1, 2, 3], "ok": True}}},
        {"type": "tool_use", "id": "toolu_01B", "name": "ping", "input": {}},
    ],
    "tool_use",
)
ANTHROPIC_THINKING = _message(
    [
        {"type": "thinking", "thinking": "The user wants a summary. " * 6, "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
        {"type": "text", "text": LONG},
    ]
)

OPENAI_REASONING = _chat(_choice(0, {"content": "42.", "reasoning_content": "The user asks for the answer; it is well known to be 42."}))
OPENAI_BODIES = [OPENAI_TEXT, OPENAI_TOOLS, OPENAI_N, OPENAI_REFUSAL, OPENAI_TEXT_AND_TOOL, OPENAI_REASONING]
OPENAI_IDS = ["text", "tools", "n3-logprobs", "refusal", "text+tool", "reasoning_content"]
ANTHROPIC_BODIES = [ANTHROPIC_TEXT, ANTHROPIC_TOOLS, ANTHROPIC_THINKING]


def _without_id(body: Json) -> Json:
    return {k: v for k, v in body.items() if k not in ("id", "created")}


def _capture(wire: str, endpoint: str, data: bytes, step: int = 7, usage: TokenUsage | None = None) -> Json | None:
    """Feed `data` in `step`-byte pieces (events split mid-line, mid-UTF-8)."""
    cap = StreamCapture(wire, endpoint)
    for i in range(0, len(data), step):
        cap.feed(data[i : i + step])
    return cap.result(usage)


def _events(frames: list[bytes]) -> list[tuple[str | None, Any]]:
    out: list[tuple[str | None, Any]] = []
    for f in frames:
        assert f.endswith(b"\n\n") and b"\n\n" not in f[:-2], f
        event, data = None, None
        for line in f.decode().split("\n")[:-2]:
            name, _, value = line.partition(": ")
            if name == "event":
                event = value
            else:
                assert name == "data"
                data = value if value == "[DONE]" else orjson.loads(value)
        out.append((event, data))
    return out


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("stored", OPENAI_BODIES, ids=OPENAI_IDS)
@pytest.mark.parametrize("step", [1, 7, 10_000])
def test_openai_chat_round_trip(stored: Json, step: int) -> None:
    frames = replay_sse("openai", "chat.completions", stored, request_id=RID, include_usage=True)
    cap = StreamCapture("openai", "chat.completions")
    data = b"".join(frames)
    for i in range(0, len(data), step):
        cap.feed(data[i : i + step])
    got = cap.result()
    assert got is not None and cap.result() == got, "result() can be asked again"
    assert _without_id(got) == _without_id(stored)
    assert got["id"] == f"chatcmpl-{RID}" and abs(got["created"] - time.time()) < 5


def test_openai_chat_stream_shape() -> None:
    frames = replay_sse("openai", "chat.completions", OPENAI_N, request_id=RID, include_usage=True)
    events = _events(frames)
    assert events[-1] == (None, "[DONE]")
    chunks = [d for _, d in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == f"chatcmpl-{RID}" for c in chunks)
    assert all(c["usage"] is None for c in chunks[:-1]) and chunks[-1]["choices"] == [] and chunks[-1]["usage"] == OPENAI_USAGE
    assert all(c["system_fingerprint"] == "fp_abc123" for c in chunks)
    firsts = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["delta"].get("role")]
    assert [f["index"] for f in firsts] == [0, 1, 2]
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[:-1] if c["choices"][0]["delta"].get("content")]
    assert 5 < len(pieces) < len(LONG) / 8, "a few pieces, not one character per event"
    finishes = [(c["choices"][0]["index"], c["choices"][0]["finish_reason"]) for c in chunks[:-1] if c["choices"][0]["finish_reason"]]
    assert finishes == [(0, "stop"), (1, "length"), (2, "stop")]
    # without include_usage: no usage anywhere, not even null
    plain = replay_sse("openai", "chat.completions", OPENAI_N, request_id=RID, include_usage=False)
    assert all(b'"usage"' not in f for f in plain) and plain[-1] == b"data: [DONE]\n\n"


def test_openai_tool_call_deltas_like_openai() -> None:
    chunks = [d for _, d in _events(replay_sse("openai", "chat.completions", OPENAI_TOOLS, request_id=RID, include_usage=False))[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": None, "refusal": None}
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    heads = [c for c in calls if "id" in c]
    assert heads == [
        {"index": 0, "id": "call_A1", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
        {"index": 1, "id": "call_B2", "type": "function", "function": {"name": "search", "arguments": ""}},
    ]
    args = "".join(c["function"]["arguments"] for c in calls if c["index"] == 0)
    assert args == '{"city": "Paris", "unit": "celsius", "days": 3}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_openai_stream_without_usage_takes_the_relays_usage() -> None:
    frames = replay_sse("openai", "chat.completions", OPENAI_TEXT, request_id=RID, include_usage=False)
    data = b"".join(frames)
    assert _capture("openai", "chat.completions", data) is None, "no usage: nothing to store"
    u = TokenUsage(input_tokens=1200, output_tokens=42, cache_read_tokens=1024)
    got = _capture("openai", "chat.completions", data, usage=u)
    assert got is not None and got["choices"] == OPENAI_TEXT["choices"]
    assert got["usage"]["prompt_tokens"] == 1200 and got["usage"]["completion_tokens"] == 42
    assert got["usage"]["prompt_tokens_details"]["cached_tokens"] == 1024
    # a usage block in the stream wins over the one handed in
    streamed = b"".join(replay_sse("openai", "chat.completions", OPENAI_TEXT, request_id=RID, include_usage=True))
    assert _capture("openai", "chat.completions", streamed, usage=TokenUsage(input_tokens=1))["usage"] == OPENAI_USAGE  # type: ignore[index]


@pytest.mark.parametrize("include_usage", [True, False])
def test_legacy_completions_round_trip(include_usage: bool) -> None:
    frames = replay_sse("openai", "completions", LEGACY, request_id=RID, include_usage=include_usage)
    chunks = [d for _, d in _events(frames)[:-1]]
    assert all(c["object"] == "text_completion" and c["id"] == f"cmpl-{RID}" for c in chunks)
    usage = None if include_usage else TokenUsage(input_tokens=5, output_tokens=12)
    got = _capture("openai", "completions", b"".join(frames), usage=usage)
    assert got is not None
    if include_usage:
        assert _without_id(got) == _without_id(LEGACY)
    else:
        assert got["choices"] == LEGACY["choices"] and got["usage"]["total_tokens"] == 17


@pytest.mark.parametrize("stored", ANTHROPIC_BODIES, ids=["text", "tools", "thinking"])
@pytest.mark.parametrize("step", [1, 7, 10_000])
def test_anthropic_round_trip(stored: Json, step: int) -> None:
    frames = replay_sse("anthropic", "messages", stored, request_id=RID, include_usage=False)
    cap = StreamCapture("anthropic", "messages")
    data = b"".join(frames)
    for i in range(0, len(data), step):
        cap.feed(data[i : i + step])
    got = cap.result()
    assert got is not None and cap.result() == got, "result() can be asked again"
    assert {k: v for k, v in got.items() if k != "id"} == {k: v for k, v in stored.items() if k != "id"}
    assert got["id"] == f"msg_{RID}"


def test_anthropic_event_sequence_like_the_api() -> None:
    events = _events(replay_sse("anthropic", "messages", ANTHROPIC_THINKING, request_id=RID, include_usage=False))
    assert all(name == data["type"] for name, data in events), "every event: line names its data's type"
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["stop_sequence"] is None
    assert start["usage"]["input_tokens"] == 12 and start["usage"]["cache_read_input_tokens"] == 2048 and start["usage"]["output_tokens"] == 1
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None} and delta["usage"]["output_tokens"] == 57
    blocks = [(d["index"], d["content_block"]) for n, d in events if n == "content_block_start"]
    assert blocks[0] == (0, {"type": "thinking", "thinking": "", "signature": ""})
    assert blocks[1] == (1, {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"})
    assert blocks[2] == (2, {"type": "text", "text": ""})
    kinds = [d["delta"]["type"] for n, d in events if n == "content_block_delta" and d["index"] == 0]
    assert set(kinds[:-1]) == {"thinking_delta"} and kinds[-1] == "signature_delta"
    # every block opened is closed, in order
    opened = [d["index"] for n, d in events if n == "content_block_start"]
    closed = [d["index"] for n, d in events if n == "content_block_stop"]
    assert opened == closed == [0, 1, 2]


def test_anthropic_tool_input_streamed_as_json_text() -> None:
    events = _events(replay_sse("anthropic", "messages", ANTHROPIC_TOOLS, request_id=RID, include_usage=False))
    start = next(d for n, d in events if n == "content_block_start" and d["index"] == 1)
    assert start["content_block"] == {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {}}
    parts = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta" and d["index"] == 1]
    assert parts[0] == "" and orjson.loads("".join(parts)) == ANTHROPIC_TOOLS["content"][1]["input"]


def test_split_text() -> None:
    assert split_text("") == []
    assert "".join(split_text(LONG)) == LONG
    assert all(len(p) <= 24 for p in split_text(LONG))
    assert split_text("x" * 50) == ["x" * 24, "x" * 24, "xx"]
    assert response_id("messages", "a/b c") == "msg_abc"


# ---------------------------------------------------------------- JSON bodies


def test_complete_body_accepts_success_bodies_only() -> None:
    assert complete_body("openai", "chat.completions", orjson.dumps(OPENAI_TEXT)) == OPENAI_TEXT
    assert complete_body("openai", "completions", orjson.dumps(LEGACY)) == LEGACY
    assert complete_body("anthropic", "messages", orjson.dumps(ANTHROPIC_TOOLS)) == ANTHROPIC_TOOLS
    embeddings = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}], "model": "m", "usage": {"prompt_tokens": 2, "total_tokens": 2}}
    assert complete_body("openai", "embeddings", orjson.dumps(embeddings)) == embeddings
    assert complete_body("openai", "chat.completions", b'{"error": {"message": "x"}}') is None
    assert complete_body("anthropic", "messages", b'{"type": "error", "error": {"type": "api_error"}}') is None
    assert complete_body("openai", "chat.completions", b"not json") is None
    assert complete_body("openai", "chat.completions", orjson.dumps(LEGACY)) is None, "wrong object for the endpoint"
    assert complete_body("openai", "chat.completions", orjson.dumps(_chat())) is None, "no choices"
    unfinished = copy.deepcopy(OPENAI_TEXT)
    unfinished["choices"][0]["finish_reason"] = None
    assert complete_body("openai", "chat.completions", orjson.dumps(unfinished)) is None
    assert complete_body("openai", "embeddings", orjson.dumps({**embeddings, "data": []})) is None
    with pytest.raises(ValueError):
        complete_body("anthropic", "chat.completions", b"{}")


def test_replay_json_fresh_id_same_content() -> None:
    before = copy.deepcopy(OPENAI_N)
    out = orjson.loads(replay_json("openai", "chat.completions", OPENAI_N, request_id=RID))
    assert OPENAI_N == before, "the stored body is not modified"
    assert out["id"] == f"chatcmpl-{RID}" and out["created"] >= int(time.time()) - 5
    assert _without_id(out) == _without_id(OPENAI_N)
    msg = orjson.loads(replay_json("anthropic", "messages", orjson.dumps(ANTHROPIC_TEXT), request_id=RID))
    assert msg["id"] == f"msg_{RID}" and "created" not in msg and msg["content"] == ANTHROPIC_TEXT["content"]
    emb = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}], "model": "m", "usage": {"prompt_tokens": 1, "total_tokens": 1}}
    assert orjson.loads(replay_json("openai", "embeddings", emb, request_id=RID)) == emb
    with pytest.raises(ValueError):
        replay_sse("openai", "embeddings", emb, request_id=RID, include_usage=True)


# ---------------------------------------------------------------- broken streams


def _openai_data() -> bytes:
    return b"".join(replay_sse("openai", "chat.completions", OPENAI_N, request_id=RID, include_usage=True))


def _anthropic_data() -> bytes:
    return b"".join(replay_sse("anthropic", "messages", ANTHROPIC_TOOLS, request_id=RID, include_usage=False))


def test_incomplete_openai_streams_give_none() -> None:
    data = _openai_data()
    assert _capture("openai", "chat.completions", data) is not None
    no_done = data.removesuffix(b"data: [DONE]\n\n")
    assert _capture("openai", "chat.completions", no_done) is None
    frames = replay_sse("openai", "chat.completions", OPENAI_N, request_id=RID, include_usage=True)
    for cut in (1, len(frames) // 2, len(frames) - 3):
        assert _capture("openai", "chat.completions", b"".join(frames[:cut])) is None
    # [DONE] after a choice that never finished (the gateway cut it)
    unfinished = b"".join(f for f in frames if b'"finish_reason":"length"' not in f)
    assert _capture("openai", "chat.completions", unfinished) is None
    # an error event mid-stream, as the gateway sends when the upstream breaks
    err = b'data: {"error":{"message":"upstream stream ended early","type":"server_error","param":null,"code":"stream_interrupted"}}\n\n'
    assert _capture("openai", "chat.completions", b"".join(frames[:4]) + err + b"".join(frames[4:])) is None
    assert _capture("openai", "chat.completions", b"".join(frames[:4]) + b"data: {not json\n\n" + b"".join(frames[4:])) is None
    assert _capture("openai", "chat.completions", b"data: [DONE]\n\n") is None, "no choices at all"


def test_incomplete_anthropic_streams_give_none() -> None:
    data = _anthropic_data()
    assert _capture("anthropic", "messages", data) is not None
    frames = replay_sse("anthropic", "messages", ANTHROPIC_TOOLS, request_id=RID, include_usage=False)
    for cut in range(1, len(frames)):
        assert _capture("anthropic", "messages", b"".join(frames[:cut])) is None, cut
    err = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    assert _capture("anthropic", "messages", b"".join(frames[:5]) + err + b"".join(frames[5:])) is None
    # a block never closed, a tool input that is not JSON, a delta for no block
    assert _capture("anthropic", "messages", b"".join(f for f in frames if b'"content_block_stop","index":2' not in f)) is None
    bad_json = data.replace(b'"partial_json":"{', b'"partial_json":"{{', 1)
    assert bad_json != data and _capture("anthropic", "messages", bad_json) is None
    stray = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":9,"delta":{"type":"text_delta","text":"x"}}\n\n'
    assert _capture("anthropic", "messages", stray + data) is None
    # pings, the gateway's cost comment and unknown events change nothing
    extra = b'event: ping\ndata: {"type":"ping"}\n\n: x-spendgate-cost 0.000123\n\nevent: future\ndata: {"type":"future"}\n\n'
    got = _capture("anthropic", "messages", frames[0] + extra + b"".join(frames[1:]) + b": x-spendgate-cost 0.1\n\n")
    assert got is not None and got["content"] == ANTHROPIC_TOOLS["content"]


def test_capture_rejects_non_streamed_endpoints() -> None:
    with pytest.raises(ValueError):
        StreamCapture("openai", "embeddings")
    with pytest.raises(ValueError):
        StreamCapture("anthropic", "chat.completions")


def test_feeding_is_linear() -> None:
    """A long answer fed one frame at a time: no re-parsing of earlier data."""
    big = _chat(_choice(0, {"content": "word " * 40_000}))
    frames = replay_sse("openai", "chat.completions", big, request_id=RID, include_usage=True)
    cap = StreamCapture("openai", "chat.completions")
    t0 = time.perf_counter()
    for f in frames:
        cap.feed(f)
    result = cap.result()
    elapsed = time.perf_counter() - t0
    assert result is not None and result["choices"][0]["message"]["content"] == "word " * 40_000
    assert cap.bytes_seen == sum(len(f) for f in frames)
    assert elapsed < 1.0, f"{len(frames)} frames took {elapsed:.2f}s"


# ---------------------------------------------------------------- the simulator's real streams


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    sim = await start_simulator()
    yield sim.url
    await sim.close()


async def _post(url: str, path: str, body: Json, headers: dict[str, str]) -> tuple[bytes, list[bytes]]:
    """The raw response body, and the reads it arrived in."""
    reads: list[bytes] = []
    async with aiohttp.ClientSession() as s:
        async with s.post(url + path, json=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            try:
                async for chunk in resp.content.iter_any():
                    reads.append(chunk)
            except aiohttp.ClientPayloadError:
                pass  # a cut stream
    return b"".join(reads), reads


OAI_HEADERS = {"authorization": "Bearer sk-sim"}
ANT_HEADERS = {"x-api-key": "sk-sim", "anthropic-version": "2023-06-01"}
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}},
}


def _strip_tool_ids(body: Json) -> Json:
    body = copy.deepcopy(body)
    for choice in body.get("choices") or []:
        msg = choice.get("message") or {}
        msg.pop("annotations", None)  # non-streaming only: streams carry no empty annotations list
        for call in msg.get("tool_calls") or []:
            call["id"] = "call"
    for block in body.get("content") or []:
        if "id" in block:
            block["id"] = "toolu"
    return _without_id(body)


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tool"])
async def test_capture_simulator_openai_chat_stream_equals_its_json_answer(sim_url: str, tools: bool) -> None:
    req: Json = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Explain budgets [[sim:output_tokens=30]]"}], "n": 2}
    if tools:
        req["tools"], req["tool_choice"] = [WEATHER_TOOL], "required"
    full = orjson.loads((await _post(sim_url, "/v1/chat/completions", req, OAI_HEADERS))[0])
    _, reads = await _post(sim_url, "/v1/chat/completions", {**req, "stream": True, "stream_options": {"include_usage": True}}, OAI_HEADERS)
    cap = StreamCapture("openai", "chat.completions")
    for chunk in reads:
        cap.feed(chunk)
    got = cap.result()
    assert got is not None and len(got["choices"]) == 2
    assert _strip_tool_ids(got) == _strip_tool_ids(full)
    assert complete_body("openai", "chat.completions", orjson.dumps(full)) == full
    # and the capture replays to the same thing again
    again = _capture("openai", "chat.completions", b"".join(replay_sse("openai", "chat.completions", got, request_id=RID, include_usage=True)))
    assert again is not None and _without_id(again) == _without_id(got)


async def test_capture_simulator_legacy_completions_stream(sim_url: str) -> None:
    req: Json = {"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon a time [[sim:output_tokens=20]]", "n": 2}
    full = orjson.loads((await _post(sim_url, "/v1/completions", req, OAI_HEADERS))[0])
    data, _ = await _post(sim_url, "/v1/completions", {**req, "stream": True, "stream_options": {"include_usage": True}}, OAI_HEADERS)
    got = _capture("openai", "completions", data, step=50)
    assert got is not None and _without_id(got) == _without_id(full)


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tool"])
async def test_capture_simulator_anthropic_stream_equals_its_json_answer(sim_url: str, tools: bool) -> None:
    req: Json = {"model": "claude-haiku-4-5", "max_tokens": 200, "messages": [{"role": "user", "content": "Explain budgets [[sim:output_tokens=30]]"}]}
    if tools:
        schema = WEATHER_TOOL["function"]["parameters"]
        req["tools"], req["tool_choice"] = [{"name": "get_weather", "input_schema": schema}], {"type": "any"}
    full = orjson.loads((await _post(sim_url, "/v1/messages", req, ANT_HEADERS))[0])
    _, reads = await _post(sim_url, "/v1/messages", {**req, "stream": True}, ANT_HEADERS)
    cap = StreamCapture("anthropic", "messages")
    for chunk in reads:
        cap.feed(chunk)
    got = cap.result()
    assert got is not None and _strip_tool_ids(got) == _strip_tool_ids(full)
    assert got["content"][0]["type"] == ("tool_use" if tools else "text")


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
async def test_capture_of_a_cut_simulator_stream_is_none(sim_url: str, wire: str) -> None:
    prompt = [{"role": "user", "content": "Tell me a story [[sim:output_tokens=60]] [[sim:fault=cut]]"}]
    if wire == "openai":
        body = {"model": "gpt-4o-mini", "messages": prompt, "stream": True, "stream_options": {"include_usage": True}}
        data, _ = await _post(sim_url, "/v1/chat/completions", body, OAI_HEADERS)
        assert data and _capture(wire, "chat.completions", data) is None
    else:
        body = {"model": "claude-haiku-4-5", "max_tokens": 200, "messages": prompt, "stream": True}
        data, _ = await _post(sim_url, "/v1/messages", body, ANT_HEADERS)
        assert data and _capture(wire, "messages", data) is None


# ---------------------------------------------------------------- the official SDKs read every replay


def _serving(payload: bytes, streamed: bool) -> httpx2.Client:
    def handler(request: httpx2.Request) -> httpx2.Response:
        kind = "text/event-stream" if streamed else "application/json"
        return httpx2.Response(200, headers={"content-type": kind}, content=payload)

    return httpx2.Client(transport=httpx2.MockTransport(handler))


def _openai(payload: bytes, streamed: bool) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-test", base_url="http://cache.test/v1", max_retries=0, http_client=_serving(payload, streamed))


def _anthropic(payload: bytes, streamed: bool) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-test", base_url="http://cache.test", max_retries=0, http_client=_serving(payload, streamed))


USER = [{"role": "user", "content": "hi"}]


def _sdk_message(msg: Any) -> Json:
    out: Json = msg.model_dump(exclude_none=True, exclude={"annotations", "parsed"})
    for call in out.get("tool_calls") or []:
        call.pop("index", None)  # the stream helper keeps the delta index on its accumulated calls
    return out


@pytest.mark.parametrize("stored", OPENAI_BODIES, ids=OPENAI_IDS)
def test_openai_sdk_reads_the_replayed_stream(stored: Json) -> None:
    frames = replay_sse("openai", "chat.completions", stored, request_id=RID, include_usage=True)
    client = _openai(b"".join(frames), streamed=True)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True, stream_options={"include_usage": True}))
    assert all(c.id == f"chatcmpl-{RID}" for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.model_dump(exclude_none=True) == OPENAI_USAGE
    # the SDK's own accumulator arrives at the stored answer (its snapshot: the final
    # completion refuses to "parse" a choice cut by length)
    with client.chat.completions.stream(model="gpt-4o-mini", messages=USER, stream_options={"include_usage": True}) as stream:
        for _ in stream:
            pass
        final = stream.current_completion_snapshot
    assert final.id == f"chatcmpl-{RID}" and final.system_fingerprint == "fp_abc123"
    for choice, want in zip(final.choices, stored["choices"], strict=True):
        assert choice.index == want["index"] and choice.finish_reason == want["finish_reason"]
        expected = {k: v for k, v in want["message"].items() if v is not None and k != "annotations"}
        assert _sdk_message(choice.message) == expected
        lp = choice.logprobs.model_dump(exclude_none=True) if choice.logprobs else None
        assert lp == ({k: v for k, v in want["logprobs"].items() if v is not None} if want["logprobs"] else None)


def test_openai_sdk_reads_replayed_legacy_stream() -> None:
    frames = replay_sse("openai", "completions", LEGACY, request_id=RID, include_usage=True)
    chunks = list(_openai(b"".join(frames), streamed=True).completions.create(model="gpt-3.5-turbo-instruct", prompt="x", stream=True))
    texts: dict[int, str] = {}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + ch.text
    assert texts == {0: LEGACY["choices"][0]["text"], 1: ""}
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 17


@pytest.mark.parametrize("stored", ANTHROPIC_BODIES, ids=["text", "tools", "thinking"])
def test_anthropic_sdk_reads_the_replayed_stream(stored: Json) -> None:
    frames = replay_sse("anthropic", "messages", stored, request_id=RID, include_usage=False)
    client = _anthropic(b"".join(frames), streamed=True)
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=100, messages=USER) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert final.id == f"msg_{RID}" and final.model == stored["model"]
    assert [b.model_dump(exclude_none=True) for b in final.content] == stored["content"]
    assert final.stop_reason == stored["stop_reason"] and final.stop_sequence == stored["stop_sequence"]
    assert final.usage.model_dump(exclude_none=True) == stored["usage"]
    text = "".join(b["text"] for b in stored["content"] if b["type"] == "text")
    assert "".join(texts) == text and len(texts) == len(split_text(text))


def test_both_sdks_parse_replay_json() -> None:
    for stored in OPENAI_BODIES:
        r = _openai(replay_json("openai", "chat.completions", stored, request_id=RID), streamed=False).chat.completions.create(
            model="gpt-4o-mini", messages=USER
        )
        assert r.id == f"chatcmpl-{RID}" and r.usage is not None and r.usage.model_dump(exclude_none=True) == OPENAI_USAGE
        assert [c.message.content for c in r.choices] == [c["message"]["content"] for c in stored["choices"]]
        assert [c.message.model_dump(exclude_none=True).get("tool_calls") for c in r.choices] == [
            c["message"].get("tool_calls") for c in stored["choices"]
        ]
    legacy = _openai(replay_json("openai", "completions", LEGACY, request_id=RID), streamed=False).completions.create(model="m", prompt="x")
    assert legacy.id == f"cmpl-{RID}" and [c.text for c in legacy.choices] == [c["text"] for c in LEGACY["choices"]]
    for stored in ANTHROPIC_BODIES:
        m = _anthropic(replay_json("anthropic", "messages", stored, request_id=RID), streamed=False).messages.create(
            model="claude-haiku-4-5", max_tokens=100, messages=USER
        )
        assert m.id == f"msg_{RID}" and [b.model_dump(exclude_none=True) for b in m.content] == stored["content"]
        assert m.usage.model_dump(exclude_none=True) == stored["usage"]


def test_sdk_streams_captured_back_through_the_cache() -> None:
    """What an SDK reads from a replay is what the next capture stores: a stable fixed point."""
    for wire, endpoint, stored in [("openai", "chat.completions", OPENAI_TOOLS), ("anthropic", "messages", ANTHROPIC_THINKING)]:
        first = _capture(wire, endpoint, b"".join(replay_sse(wire, endpoint, stored, request_id="a", include_usage=True)))
        assert first is not None
        second = _capture(wire, endpoint, b"".join(replay_sse(wire, endpoint, first, request_id="b", include_usage=True)))
        assert second is not None and {k: v for k, v in second.items() if k not in ("id", "created")} == {
            k: v for k, v in first.items() if k not in ("id", "created")
        }


# ---------------------------------------------------------------- what the gateway's relays send


def _relayed(client_wire: str, upstream_wire: str, upstream: list[bytes], client_wants_usage: bool) -> tuple[bytes, Any]:
    relay = make_relay(client_wire, upstream_wire, "served-model", client_wants_usage, capture=False)
    out = b"".join(relay.feed(f) for f in upstream) + relay.finish()
    return out, relay


def test_capture_of_translated_streams_equals_the_translated_json() -> None:
    """Cross-format calls: the capture of the client's stream is the body a JSON call would get."""
    # (a tool_use with empty input is left out: the stream translator sends its arguments as ""
    # where the JSON translation says "{}"; the capture keeps what the client was sent)
    stored = {**ANTHROPIC_TOOLS, "content": ANTHROPIC_TOOLS["content"][:2]}
    upstream = replay_sse("anthropic", "messages", stored, request_id=RID, include_usage=False)
    out, relay = _relayed("openai", "anthropic", upstream, client_wants_usage=False)
    got = _capture("openai", "chat.completions", out, usage=relay.usage)
    want = anthropic_response_to_openai(stored, "served-model")
    assert got is not None and _without_id(got) == _without_id(want)

    upstream = replay_sse("openai", "chat.completions", OPENAI_TEXT_AND_TOOL, request_id=RID, include_usage=True)
    out, relay = _relayed("anthropic", "openai", upstream, client_wants_usage=True)
    got = _capture("anthropic", "messages", out)
    want = openai_response_to_anthropic(OPENAI_TEXT_AND_TOOL, "served-model")
    assert got is not None and {k: v for k, v in got.items() if k != "id"} == {k: v for k, v in want.items() if k != "id"}


def test_capture_of_a_passthrough_stream_with_usage_stripped() -> None:
    """The client did not ask for usage: the relay strips it, and hands it to the capture."""
    upstream = replay_sse("openai", "chat.completions", OPENAI_N, request_id=RID, include_usage=True)
    out, relay = _relayed("openai", "openai", upstream, client_wants_usage=False)
    assert b'"usage"' not in out
    got = _capture("openai", "chat.completions", out, usage=relay.usage if relay.usage_known else None)
    assert got is not None and got["choices"] == OPENAI_N["choices"]
    assert got["usage"]["prompt_tokens"] == 1200 and got["usage"]["prompt_tokens_details"]["cached_tokens"] == 1024
