"""The provider simulator, driven by the official openai and anthropic SDKs.

The simulator runs in a background thread with its own event loop (as the gateway
embeds it); one test runs it through the `spendgate simulate` CLI.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from spendgate.simulator.app import RunningSimulator, SimulatorSettings, start_simulator

KEY = "sk-sim-test"
# what iterating a stream raises when the connection drops (the SDKs use httpx2)
STREAM_BROKEN = (httpx.HTTPError, httpx2.HTTPError, openai.APIError, anthropic.APIError)


class ThreadedSimulator:
    """A simulator in its own thread and loop, so sync SDK clients can call it."""

    def __init__(self, settings: SimulatorSettings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sim: RunningSimulator = self._run(start_simulator(settings=settings))
        self.url = self.sim.url

    def _run(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> float:
        """Close; returns how long it took."""
        t0 = time.monotonic()
        self._run(self.sim.close())
        elapsed = time.monotonic() - t0
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        return elapsed


@pytest.fixture(scope="module")
def sim() -> Iterator[ThreadedSimulator]:
    s = ThreadedSimulator(SimulatorSettings())
    yield s
    s.close()


def oai(sim: ThreadedSimulator, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{sim.url}/v1", api_key=KEY, max_retries=0, **kw)


def ant(sim: ThreadedSimulator, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.url, api_key=KEY, max_retries=0, **kw)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
SEARCH = {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}


# ---- OpenAI chat ---------------------------------------------------------------------


def test_chat_json_shape_usage_and_determinism(sim: ThreadedSimulator) -> None:
    c = oai(sim)
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=user("What is the capital of France? [[sim:output_tokens=40]]"))
    r = raw.parse()
    assert raw.headers["x-request-id"].startswith("req_")
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == "gpt-4o"
    assert r.system_fingerprint.startswith("fp_") and isinstance(r.created, int)
    choice = r.choices[0]
    assert choice.index == 0 and choice.finish_reason == "stop" and choice.message.role == "assistant" and choice.logprobs is None
    assert len(choice.message.content) > 40 and choice.message.content.endswith(".")
    assert choice.message.content[0].isupper(), "an answer starts at a sentence, without leading space"
    u = r.usage
    assert u.completion_tokens == 40 and u.prompt_tokens > 0 and u.total_tokens == u.prompt_tokens + 40
    assert u.prompt_tokens_details.cached_tokens == 0 and u.completion_tokens_details.reasoning_tokens == 0
    again = c.chat.completions.create(model="gpt-4o", messages=user("What is the capital of France? [[sim:output_tokens=40]]"))
    assert again.choices[0].message.content == choice.message.content
    assert again.usage.prompt_tokens == u.prompt_tokens
    other = c.chat.completions.create(model="gpt-4o", messages=user("What is the capital of Spain? [[sim:output_tokens=40]]"))
    assert other.choices[0].message.content != choice.message.content
    # without a directive: a realistic length, still deterministic
    free = [c.chat.completions.create(model="gpt-4o-mini", messages=user("Tell me about budgets")) for _ in range(2)]
    assert 20 <= free[0].usage.completion_tokens <= 300
    assert free[0].choices[0].message.content == free[1].choices[0].message.content
    # longer prompts cost more prompt tokens
    longer = c.chat.completions.create(model="gpt-4o", messages=user("What is the capital of France? " * 20))
    assert longer.usage.prompt_tokens > u.prompt_tokens + 100


def test_chat_stream_without_usage_matches_json_answer(sim: ThreadedSimulator) -> None:
    c = oai(sim)
    messages = user("Tell me a story [[sim:output_tokens=25]]")
    full = c.chat.completions.create(model="gpt-4o-mini", messages=messages)
    chunks = list(c.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(ch.usage is None for ch in chunks) and all(ch.choices for ch in chunks)
    assert all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks)
    content = [ch.choices[0].delta.content for ch in chunks if ch.choices[0].delta.content]
    assert len(content) == 25, "one token per content chunk"
    assert "".join(content) == full.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    raw = httpx.post(f"{sim.url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"}, json={"model": "gpt-4o", "messages": messages, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert b'"usage"' not in raw.content and raw.content.endswith(b"data: [DONE]\n\n")


def test_chat_stream_include_usage_exactly_like_openai(sim: ThreadedSimulator) -> None:
    body = {"model": "gpt-4o", "messages": user("hi [[sim:output_tokens=7]]"), "stream": True, "stream_options": {"include_usage": True}}
    raw = httpx.post(f"{sim.url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"}, json=body)
    events = [e for e in raw.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert all("usage" in p and p["usage"] is None for p in payloads[:-1])
    last = payloads[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 7
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + 7
    chunks = list(oai(sim).chat.completions.create(**body))
    assert chunks[-1].usage.completion_tokens == 7 and chunks[-1].choices == []


def test_n_choices_max_tokens_and_stop(sim: ThreadedSimulator) -> None:
    c = oai(sim)
    r = c.chat.completions.create(model="gpt-4o-mini", messages=user("two please [[sim:output_tokens=12]]"), n=2)
    assert [ch.index for ch in r.choices] == [0, 1]
    assert r.choices[0].message.content != r.choices[1].message.content
    assert r.usage.completion_tokens == 24
    chunks = list(c.chat.completions.create(model="gpt-4o-mini", messages=user("two please [[sim:output_tokens=12]]"), n=2, stream=True))
    for i in (0, 1):
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices and ch.choices[0].index == i)
        assert text == r.choices[i].message.content
    cut = c.chat.completions.create(model="gpt-4o", messages=user("long one [[sim:output_tokens=200]]"), max_tokens=10)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 10
    cut2 = c.chat.completions.create(model="gpt-4o", messages=user("long one [[sim:output_tokens=200]]"), max_completion_tokens=9)
    assert cut2.choices[0].finish_reason == "length" and cut2.usage.completion_tokens == 9
    whole = c.chat.completions.create(model="gpt-4o", messages=user("stop test [[sim:output_tokens=60]]"))
    text = whole.choices[0].message.content
    stopped = c.chat.completions.create(model="gpt-4o", messages=user("stop test [[sim:output_tokens=60]]"), stop=["."])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(".")]
    assert stopped.usage.completion_tokens < 60


def test_tool_calls_json_and_stream(sim: ThreadedSimulator) -> None:
    c = oai(sim)
    msgs = user("weather in Paris?")
    r = c.chat.completions.create(model="gpt-4o", messages=msgs, tools=[WEATHER, SEARCH])
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert args["city"] == "Paris" and args["unit"] in ("celsius", "fahrenheit") and isinstance(args["days"], int)
    named = c.chat.completions.create(model="gpt-4o", messages=msgs, tools=[WEATHER, SEARCH], tool_choice={"type": "function", "function": {"name": "search"}})
    assert named.choices[0].message.tool_calls[0].function.name == "search"
    none = c.chat.completions.create(model="gpt-4o", messages=msgs, tools=[WEATHER], tool_choice="none")
    assert none.choices[0].message.content and not none.choices[0].message.tool_calls
    # streamed as delta.tool_calls fragments that add up to the same arguments
    chunks = list(c.chat.completions.create(model="gpt-4o", messages=msgs, tools=[WEATHER, SEARCH], stream=True))
    first = chunks[0].choices[0].delta.tool_calls[0]
    assert first.id.startswith("call_") and first.function.name == "get_weather" and first.function.arguments == ""
    fragments = [ch.choices[0].delta.tool_calls[0].function.arguments for ch in chunks[1:] if ch.choices[0].delta.tool_calls]
    assert len(fragments) > 2 and json.loads("".join(fragments)) == args
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # a tool result gets a normal answer
    follow = msgs + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ]
    answer = c.chat.completions.create(model="gpt-4o", messages=follow, tools=[WEATHER])
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content


def test_reasoning_models_report_reasoning_tokens(sim: ThreadedSimulator) -> None:
    c = oai(sim)
    r = c.chat.completions.create(model="o3-mini", messages=user("think [[sim:output_tokens=100]]"))
    reasoning = r.usage.completion_tokens_details.reasoning_tokens
    assert r.usage.completion_tokens == 100 and 0 < reasoning < 100
    free = c.chat.completions.create(model="gpt-5-mini", messages=user("think hard"))
    assert free.usage.completion_tokens_details.reasoning_tokens >= 64
    with pytest.raises(openai.BadRequestError, match="max_completion_tokens"):
        c.chat.completions.create(model="o3-mini", messages=user("x"), max_tokens=10)


def test_openai_automatic_prompt_caching(sim: ThreadedSimulator) -> None:
    c = oai(sim)
    system = {"role": "system", "content": "You answer questions about invoices carefully. " * 150}
    first = c.chat.completions.create(model="gpt-4o", messages=[system, *user("first question")])
    second = c.chat.completions.create(model="gpt-4o", messages=[system, *user("second question")])
    assert first.usage.prompt_tokens >= 1024 and first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= 1024 and cached % 128 == 0 and cached <= second.usage.prompt_tokens
    short = c.chat.completions.create(model="gpt-4o", messages=user("short " * 10))
    short2 = c.chat.completions.create(model="gpt-4o", messages=user("short " * 10))
    assert short.usage.prompt_tokens_details.cached_tokens == short2.usage.prompt_tokens_details.cached_tokens == 0


# ---- legacy completions, embeddings, models -----------------------------------------


def test_legacy_completions(sim: ThreadedSimulator) -> None:
    c = oai(sim)
    r = c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test", max_tokens=5)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.choices[0].text
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    default = c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Write an essay")
    assert default.usage.completion_tokens <= 16  # the real default max_tokens
    batch = c.completions.create(model="gpt-3.5-turbo-instruct", prompt=["a [[sim:output_tokens=4]]", "b [[sim:output_tokens=4]]"], n=2)
    assert len(batch.choices) == 4 and batch.usage.completion_tokens == 16
    chunks = list(c.completions.create(model="gpt-3.5-turbo-instruct", prompt="count [[sim:output_tokens=6]]", stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    full = c.completions.create(model="gpt-3.5-turbo-instruct", prompt="count [[sim:output_tokens=6]]")
    assert text == full.choices[0].text and chunks[-1].usage.completion_tokens == 6


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def test_embeddings_base64_default_and_float(sim: ThreadedSimulator) -> None:
    c = oai(sim)
    raw = httpx.post(f"{sim.url}/v1/embeddings", headers={"authorization": f"Bearer {KEY}"}, json={"model": "text-embedding-3-small", "input": "hello", "encoding_format": "base64"})
    assert isinstance(raw.json()["data"][0]["embedding"], str)
    r = c.embeddings.create(model="text-embedding-3-small", input=["hello", "world"])  # the SDK asks for base64
    assert r.object == "list" and [d.index for d in r.data] == [0, 1]
    assert len(r.data[0].embedding) == 1536 and abs(_norm(r.data[0].embedding) - 1) < 1e-4
    assert r.data[0].embedding != r.data[1].embedding
    assert r.usage.prompt_tokens == r.usage.total_tokens > 0
    as_float = c.embeddings.create(model="text-embedding-3-small", input=["hello"], encoding_format="float")
    assert as_float.data[0].embedding == r.data[0].embedding
    small = c.embeddings.create(model="text-embedding-3-small", input="hello", dimensions=256)
    assert len(small.data[0].embedding) == 256 and abs(_norm(small.data[0].embedding) - 1) < 1e-4
    assert c.embeddings.create(model="text-embedding-3-large", input="hello").data[0].embedding.__len__() == 3072
    tokens = c.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3, 4]])
    assert tokens.usage.prompt_tokens == 4
    with pytest.raises(openai.BadRequestError):
        c.embeddings.create(model="text-embedding-3-small", input="x", dimensions=5000)


def test_models_list(sim: ThreadedSimulator) -> None:
    ids = {m.id for m in oai(sim).models.list()}
    assert {"gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3-mini", "text-embedding-3-small", "claude-sonnet-4-5", "gemini-2.5-pro"} <= ids
    assert oai(sim).models.retrieve("gpt-4o").owned_by == "system"
    assert {m.id for m in ant(sim).models.list()} >= {"claude-haiku-4-5"}


# ---- Azure and Gemini paths -----------------------------------------------------------


def test_azure_openai_paths(sim: ThreadedSimulator) -> None:
    az = openai.AzureOpenAI(azure_endpoint=sim.url, api_key=KEY, api_version="2024-10-21", max_retries=0)
    raw = az.chat.completions.with_raw_response.create(model="prod-4o", messages=user("hi [[sim:output_tokens=5]]"))
    r = raw.parse()
    assert r.model == "prod-4o" and r.usage.completion_tokens == 5 and raw.headers["apim-request-id"]
    chunks = list(az.chat.completions.create(model="prod-4o", messages=user("hi [[sim:output_tokens=5]]"), stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == r.choices[0].message.content
    emb = az.embeddings.create(model="embed-deploy", input="hello")
    assert emb.model == "embed-deploy" and len(emb.data[0].embedding) == 1536
    url = f"{sim.url}/openai/deployments/prod-4o/chat/completions"
    missing_version = httpx.post(url, headers={"api-key": KEY}, json={"messages": user("x")})
    assert missing_version.status_code == 400 and "api-version" in missing_version.json()["error"]["message"]
    no_key = httpx.post(url + "?api-version=2024-10-21", json={"messages": user("x")})
    assert no_key.status_code == 401


def test_gemini_openai_compatible_path(sim: ThreadedSimulator) -> None:
    g = openai.OpenAI(base_url=f"{sim.url}/v1beta/openai", api_key=KEY, max_retries=0)
    r = g.chat.completions.create(model="gemini-2.5-flash", messages=user("hi [[sim:output_tokens=6]]"))
    assert r.model == "gemini-2.5-flash" and r.usage.completion_tokens == 6
    assert len(g.embeddings.create(model="gemini-embedding-001", input="x").data[0].embedding) == 1536


# ---- Anthropic ------------------------------------------------------------------------


def test_messages_json(sim: ThreadedSimulator) -> None:
    c = ant(sim)
    raw = c.messages.with_raw_response.create(model="claude-opus-4-1", max_tokens=100, system="Be brief.", messages=user("Hello [[sim:output_tokens=30]]"))
    m = raw.parse()
    assert raw.headers["request-id"].startswith("req_")
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant" and m.model == "claude-opus-4-1"
    assert m.content[0].type == "text" and m.content[0].text and m.stop_reason == "end_turn" and m.stop_sequence is None
    assert m.usage.output_tokens == 30 and m.usage.input_tokens > 0
    assert m.usage.cache_creation_input_tokens == 0 and m.usage.cache_read_input_tokens == 0
    cut = c.messages.create(model="claude-opus-4-1", max_tokens=8, messages=user("Hello [[sim:output_tokens=30]]"))
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 8
    seq = c.messages.create(model="claude-opus-4-1", max_tokens=100, messages=user("Hello [[sim:output_tokens=60]]"), stop_sequences=["."])
    assert seq.stop_reason == "stop_sequence" and seq.stop_sequence == "." and "." not in seq.content[0].text
    counted = c.messages.count_tokens(model="claude-opus-4-1", system="Be brief.", messages=user("Hello [[sim:output_tokens=30]]"))
    assert counted.input_tokens == m.usage.input_tokens
    blocks = c.messages.create(
        model="claude-opus-4-1", max_tokens=100, system=[{"type": "text", "text": "Be brief."}], messages=user("Hello [[sim:output_tokens=30]]")
    )
    assert blocks.content[0].text == m.content[0].text and blocks.usage.input_tokens == m.usage.input_tokens


def test_messages_stream_event_sequence(sim: ThreadedSimulator) -> None:
    c = ant(sim)
    full = c.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=user("Hello [[sim:output_tokens=30]]"))
    with c.messages.stream(model="claude-haiku-4-5", max_tokens=100, messages=user("Hello [[sim:output_tokens=30]]")) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.type for e in events if e.type not in ("text", "input_json")]
    assert kinds == ["message_start", "content_block_start"] + ["content_block_delta"] * 30 + ["content_block_stop", "message_delta", "message_stop"]
    raw = httpx.post(
        f"{sim.url}/v1/messages",
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        json={"model": "claude-haiku-4-5", "max_tokens": 100, "stream": True, "messages": user("Hello [[sim:output_tokens=3]]")},
    )
    names = [block.split("\n")[0] for block in raw.text.split("\n\n") if block]
    assert names == [f"event: {n}" for n in ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * 3 + ["content_block_stop", "message_delta", "message_stop"]]
    assert raw.headers["content-type"].startswith("text/event-stream") and raw.headers["request-id"]
    start = events[0]
    assert start.message.usage.output_tokens == 1 and start.message.usage.input_tokens == full.usage.input_tokens
    assert final.usage.output_tokens == 30 and final.usage.input_tokens == full.usage.input_tokens
    assert final.content[0].text == full.content[0].text and final.stop_reason == "end_turn"


def test_messages_tools(sim: ThreadedSimulator) -> None:
    c = ant(sim)
    tools = [
        {"name": "get_weather", "description": "weather", "input_schema": WEATHER["function"]["parameters"]},
        {"name": "lookup", "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}},
    ]
    m = c.messages.create(model="claude-opus-4-1", max_tokens=200, tools=tools, messages=user("weather in Paris?"))
    block = m.content[0]
    assert m.stop_reason == "tool_use" and block.type == "tool_use" and block.id.startswith("toolu_")
    assert block.name == "get_weather" and block.input["city"] == "Paris"
    named = c.messages.create(model="claude-opus-4-1", max_tokens=200, tools=tools, tool_choice={"type": "tool", "name": "lookup"}, messages=user("x"))
    assert named.content[0].name == "lookup"
    with c.messages.stream(model="claude-opus-4-1", max_tokens=200, tools=tools, messages=user("weather in Paris?")) as stream:
        deltas = [e for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert deltas and all(d.delta.type == "input_json_delta" for d in deltas)
    assert final.content[0].input == block.input and final.stop_reason == "tool_use"
    answered = c.messages.create(
        model="claude-opus-4-1",
        max_tokens=400,  # above the longest default answer: the tool id (random) changes the answer's length
        tools=tools,
        messages=[
            *user("weather in Paris?"),
            {"role": "assistant", "content": [{"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "21C and sunny"}]},
        ],
    )
    assert answered.stop_reason == "end_turn" and answered.content[0].type == "text"


def test_anthropic_prompt_caching_write_then_read(sim: ThreadedSimulator) -> None:
    c = ant(sim)
    system = [
        {"type": "text", "text": "Short preamble."},
        {"type": "text", "text": "You are a careful assistant for the finance team. " * 120, "cache_control": {"type": "ephemeral"}},
    ]
    first = c.messages.create(model="claude-opus-4-1", max_tokens=50, system=system, messages=user("Hi [[sim:output_tokens=12]]"))
    second = c.messages.create(model="claude-opus-4-1", max_tokens=50, system=system, messages=user("Another question [[sim:output_tokens=12]]"))
    total = c.messages.count_tokens(model="claude-opus-4-1", system=system, messages=user("Hi [[sim:output_tokens=12]]")).input_tokens
    u1, u2 = first.usage, second.usage
    assert u1.cache_creation_input_tokens >= 1024 and u1.cache_read_input_tokens == 0
    assert u1.input_tokens + u1.cache_creation_input_tokens == total
    assert u2.cache_read_input_tokens == u1.cache_creation_input_tokens and u2.cache_creation_input_tokens == 0
    assert 0 < u2.input_tokens < 30
    # a different model has its own cache; a too-short breakpoint is not cached at all
    other = c.messages.create(model="claude-haiku-4-5", max_tokens=50, system=system, messages=user("Hi"))
    assert other.usage.cache_creation_input_tokens > 0 and other.usage.cache_read_input_tokens == 0
    tiny = [{"type": "text", "text": "tiny", "cache_control": {"type": "ephemeral"}}]
    for _ in range(2):
        t = c.messages.create(model="claude-opus-4-1", max_tokens=5, system=tiny, messages=user("Hi"))
        assert t.usage.cache_creation_input_tokens == 0 and t.usage.cache_read_input_tokens == 0
    # breakpoints in messages and tools count too, streamed usage says the same
    msgs = [{"role": "user", "content": [{"type": "text", "text": "Context: " + "numbers and facts " * 300, "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "q?"}]}]
    with c.messages.stream(model="claude-haiku-4-5", max_tokens=20, messages=msgs) as s:
        s.until_done()
        w = s.get_final_message().usage
    r = c.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=msgs).usage
    assert w.cache_creation_input_tokens > 1024 and r.cache_read_input_tokens == w.cache_creation_input_tokens


# ---- faults ---------------------------------------------------------------------------


def test_openai_status_faults(sim: ThreadedSimulator) -> None:
    c = oai(sim)
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="gpt-4o", messages=user("x [[sim:fault=429]]"))
    h = info.value.response.headers
    assert h["retry-after"] == "1" and "x-ratelimit-remaining-requests" in h and h["x-request-id"]
    assert info.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError) as info:
        c.chat.completions.create(model="gpt-4o", messages=user("x [[sim:fault=500]]"))
    assert info.value.status_code == 500 and info.value.type == "server_error"
    with pytest.raises(openai.InternalServerError) as info:
        c.chat.completions.create(model="gpt-4o", messages=user("x [[sim:fault=529]]"), stream=True)
    assert info.value.status_code == 503
    with pytest.raises(openai.RateLimitError):
        c.embeddings.create(model="text-embedding-3-small", input="x", extra_headers={"x-sim-fault": "429"})


def test_anthropic_status_faults(sim: ThreadedSimulator) -> None:
    c = ant(sim)
    with pytest.raises(anthropic.RateLimitError) as info:
        c.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=user("x [[sim:fault=429]]"))
    assert info.value.response.headers["retry-after"] == "1" and info.value.body["error"]["type"] == "rate_limit_error"
    with pytest.raises(anthropic.InternalServerError) as info:
        c.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=user("x [[sim:fault=500]]"))
    assert info.value.status_code == 500 and info.value.body["error"]["type"] == "api_error"
    with pytest.raises(anthropic.InternalServerError) as info:
        c.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=user("x"), extra_headers={"x-sim-fault": "529"})
    assert info.value.status_code == 529 and info.value.body["error"]["type"] == "overloaded_error"


def test_timeout_reset_and_cut(sim: ThreadedSimulator) -> None:
    t0 = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        oai(sim, timeout=0.5).chat.completions.create(model="gpt-4o", messages=user("x [[sim:fault=timeout]]"))
    with pytest.raises(anthropic.APITimeoutError):
        ant(sim, timeout=0.5).messages.create(model="claude-haiku-4-5", max_tokens=5, messages=user("x [[sim:fault=timeout]]"))
    assert time.monotonic() - t0 < 5
    with pytest.raises(openai.APIConnectionError) as conn:
        oai(sim).chat.completions.create(model="gpt-4o", messages=user("x [[sim:fault=reset]]"))
    assert not isinstance(conn.value, openai.APITimeoutError)
    with pytest.raises(anthropic.APIConnectionError):
        ant(sim).messages.create(model="claude-haiku-4-5", max_tokens=5, messages=user("x [[sim:fault=cut]]"))
    got: list[Any] = []
    with pytest.raises(STREAM_BROKEN):
        for chunk in oai(sim).chat.completions.create(model="gpt-4o", messages=user("x [[sim:fault=cut]] [[sim:output_tokens=200]]"), stream=True):
            got.append(chunk)
    text = "".join(ch.choices[0].delta.content or "" for ch in got)
    assert 50 <= len([ch for ch in got if ch.choices[0].delta.content]) < 200 and text
    kinds: list[str] = []
    with pytest.raises(STREAM_BROKEN):
        with ant(sim).messages.stream(model="claude-haiku-4-5", max_tokens=500, messages=user("x [[sim:fault=cut]] [[sim:output_tokens=100]]")) as stream:
            for event in stream:
                kinds.append(event.type)
    assert kinds[0] == "message_start" and "content_block_delta" in kinds and "message_stop" not in kinds


def test_random_faults_follow_rate_and_seed() -> None:
    always = ThreadedSimulator(SimulatorSettings(fault_rate=1.0, fault_kinds=["500"]))
    try:
        for _ in range(3):
            with pytest.raises(openai.InternalServerError):
                oai(always).chat.completions.create(model="gpt-4o", messages=user("x"))
    finally:
        always.close()

    def outcomes(seed: int) -> list[int]:
        s = ThreadedSimulator(SimulatorSettings(fault_rate=0.5, fault_kinds=["429", "500"], seed=seed))
        try:
            return [
                httpx.post(f"{s.url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"}, json={"model": "m", "messages": user("x")}).status_code
                for _ in range(20)
            ]
        finally:
            s.close()

    a, b = outcomes(7), outcomes(7)
    assert a == b and 200 in a and ({429, 500} & set(a))
    with pytest.raises(ValueError):
        SimulatorSettings(fault_kinds=["teapot"])


def test_latency_pacing_and_close_releases_hangs() -> None:
    s = ThreadedSimulator(SimulatorSettings(latency_ms=400, tokens_per_second=200))
    try:
        c = oai(s)
        t0 = time.monotonic()
        c.chat.completions.create(model="gpt-4o", messages=user("x [[sim:output_tokens=5]]"))
        assert time.monotonic() - t0 >= 0.4
        t0 = time.monotonic()
        c.chat.completions.create(model="gpt-4o", messages=user("x [[sim:latency_ms=0]] [[sim:output_tokens=5]]"))
        assert time.monotonic() - t0 < 0.3
        t0 = time.monotonic()
        chunks = list(c.chat.completions.create(model="gpt-4o", messages=user("x [[sim:latency_ms=0]] [[sim:output_tokens=60]]"), stream=True))
        assert len(chunks) == 62 and time.monotonic() - t0 >= 0.29  # 60 tokens at 200/s
        done = threading.Event()

        def hang() -> None:
            try:
                httpx.post(f"{s.url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"}, json={"model": "m", "messages": user("[[sim:fault=timeout]]")}, timeout=30)
            except httpx.HTTPError:
                pass
            done.set()

        threading.Thread(target=hang, daemon=True).start()
        time.sleep(0.3)
    finally:
        took = s.close()
    assert took < 3 and done.wait(3)


# ---- errors in each API's shape ------------------------------------------------------


def test_error_bodies(sim: ThreadedSimulator) -> None:
    auth = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    r = httpx.post(f"{sim.url}/v1/chat/completions", content=b"{not json", headers=auth)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error" and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(f"{sim.url}/v1/chat/completions", json={"messages": user("x")}, headers=auth)
    assert r.status_code == 400 and "model" in r.json()["error"]["message"]
    r = httpx.post(f"{sim.url}/v1/chat/completions", json={"model": "gpt-4o"}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages" and r.json()["error"]["code"] == "missing_required_parameter"
    r = httpx.post(f"{sim.url}/v1/chat/completions", json={"model": "gpt-4o", "messages": user("x")})
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        oai(sim).chat.completions.create(model="gpt-4o", messages=[])
    ah = {"x-api-key": KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}
    r = httpx.post(f"{sim.url}/v1/messages", content=b"{not json", headers=ah)
    assert r.status_code == 400 and r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{sim.url}/v1/messages", json={"model": "claude-haiku-4-5", "messages": user("x")}, headers=ah)
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]
    r = httpx.post(f"{sim.url}/v1/messages", json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": user("x")}, headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.BadRequestError):
        ant(sim).messages.create(model="claude-haiku-4-5", max_tokens=0, messages=user("x"))
    r = httpx.post(f"{sim.url}/v1/nope", headers=auth, json={})
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


# ---- the CLI --------------------------------------------------------------------------


def test_cli_prints_url_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "spendgate.cli", "simulate", "--port", "0", "--latency-ms", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        url = line.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")
        r = httpx.post(f"{url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"}, json={"model": "gpt-4o", "messages": user("hi [[sim:output_tokens=3]]")})
        assert r.json()["usage"]["completion_tokens"] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
