"""Simulator features for routing tests: model-scoped directives, context-length,
503 and in-stream faults, Retry-After, faults that clear, logprobs and reply kinds.

Driven through the official SDKs and raw HTTP, on both wire formats.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from spendgate.simulator import faults as faults_mod
from spendgate.simulator.app import RunningSimulator, SimulatorSettings, start_simulator
from spendgate.simulator.content import REFUSAL_TEXT, split_pieces
from spendgate.simulator.directives import parse_directives, read_controls, resolve_directives
from spendgate.simulator.faults import Faults

KEY = "sk-sim-test"
OAI_H = {"authorization": f"Bearer {KEY}"}
ANT_H = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
STREAM_BROKEN = (httpx.HTTPError, httpx2.HTTPError, openai.APIError, anthropic.APIError)


class ThreadedSimulator:
    def __init__(self, settings: SimulatorSettings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sim: RunningSimulator = asyncio.run_coroutine_threadsafe(start_simulator(settings=settings), self.loop).result(10)
        self.url = self.sim.url

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def sim() -> Iterator[ThreadedSimulator]:
    s = ThreadedSimulator(SimulatorSettings())
    yield s
    s.close()


def oai(sim: ThreadedSimulator, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{sim.url}/v1", api_key=KEY, max_retries=kw.pop("max_retries", 0), **kw)


def azure(sim: ThreadedSimulator) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=sim.url, api_key=KEY, api_version="2024-10-21", max_retries=0)


def ant(sim: ThreadedSimulator, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.url, api_key=KEY, max_retries=kw.pop("max_retries", 0), **kw)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def uniq(text: str) -> str:
    """A prompt no other test sends (fault_times counters are per directive set)."""
    return f"{text} [[sim:case={uuid.uuid4().hex[:12]}]]"


def chat_raw(sim: ThreadedSimulator, model: str, text: str, **extra: Any) -> httpx.Response:
    return httpx.post(f"{sim.url}/v1/chat/completions", headers=OAI_H, json={"model": model, "messages": user(text), **extra})


def messages_raw(sim: ThreadedSimulator, model: str, text: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "max_tokens": 200, "messages": user(text), **extra}
    return httpx.post(f"{sim.url}/v1/messages", headers=ANT_H, json=body)


def sse_data(raw: httpx.Response) -> list[Any]:
    """The JSON payloads of an OpenAI stream (without [DONE])."""
    events = [e for e in raw.text.split("\n\n") if e]
    return [json.loads(e[6:]) for e in events if e.startswith("data: ") and e != "data: [DONE]"]


# ---- model-scoped directives ---------------------------------------------------------


def test_parse_and_resolve_scoped_directives() -> None:
    d = parse_directives("[[sim:fault=500]] [[sim:fault@gpt-4o-mini=429]] [[sim:fault@gpt-4o*=529]] [[sim:output_tokens@claude-*=7]]")
    assert d == {"fault": "500", "fault@gpt-4o-mini": "429", "fault@gpt-4o*": "529", "output_tokens@claude-*": "7"}
    assert resolve_directives(d, "gpt-4o-mini") == {"fault": "429"}  # exact beats glob beats unscoped
    assert resolve_directives(d, "gpt-4o") == {"fault": "529"}
    assert resolve_directives(d, "gpt-4.1") == {"fault": "500"}
    assert resolve_directives(d, "claude-haiku-4-5") == {"fault": "500", "output_tokens": "7"}
    longer = parse_directives("[[sim:reply@gpt-*=unsure]] [[sim:reply@gpt-4o-*=refusal]]")
    assert resolve_directives(longer, "gpt-4o-mini") == {"reply": "refusal"}  # the longer glob is more specific
    assert resolve_directives({"fault": "500"}, "m") == {"fault": "500"}
    c = read_controls(d, None, "gpt-4o-mini")
    assert c.fault == "429"


def test_scoped_fault_fails_one_model_and_not_another(sim: ThreadedSimulator) -> None:
    prompt = "Which plan? [[sim:fault@gpt-4o-mini=500]] [[sim:output_tokens=6]]"
    with pytest.raises(openai.InternalServerError):
        oai(sim).chat.completions.create(model="gpt-4o-mini", messages=user(prompt))
    ok = oai(sim).chat.completions.create(model="gpt-4o", messages=user(prompt))
    assert ok.usage.completion_tokens == 6
    glob = "x [[sim:fault@gpt-4o*=429]]"
    for model in ("gpt-4o", "gpt-4o-mini"):
        assert chat_raw(sim, model, glob).status_code == 429
    assert chat_raw(sim, "gpt-4.1", glob).status_code == 200
    # a scoped directive for the request's model wins over an unscoped one
    both = "x [[sim:output_tokens=5]] [[sim:output_tokens@gpt-4o=9]]"
    assert chat_raw(sim, "gpt-4o", both).json()["usage"]["completion_tokens"] == 9
    assert chat_raw(sim, "gpt-4o-mini", both).json()["usage"]["completion_tokens"] == 5
    # Azure: the model is the deployment in the URL
    with pytest.raises(openai.RateLimitError):
        azure(sim).chat.completions.create(model="prod-mini", messages=user("x [[sim:fault@prod-mini=429]]"))
    assert azure(sim).chat.completions.create(model="prod-4o", messages=user("x [[sim:fault@prod-mini=429]]")).choices[0].message.content
    # Anthropic, and the header still applies to every model
    with pytest.raises(anthropic.InternalServerError) as info:
        ant(sim).messages.create(model="claude-haiku-4-5", max_tokens=20, messages=user("x [[sim:fault@claude-haiku-4-5=529]]"))
    assert info.value.status_code == 529
    assert ant(sim).messages.create(model="claude-opus-4-1", max_tokens=20, messages=user("x [[sim:fault@claude-haiku-4-5=529]]")).content
    assert chat_raw(sim, "gpt-4o", "x [[sim:fault@other=500]]", stream=False).status_code == 200
    # legacy completions and embeddings read scoped directives too
    legacy = {"model": "gpt-3.5-turbo-instruct", "prompt": "x [[sim:fault@gpt-3.5-turbo-instruct=500]]"}
    assert httpx.post(f"{sim.url}/v1/completions", headers=OAI_H, json=legacy).status_code == 500
    emb = {"model": "text-embedding-3-large", "input": "x [[sim:fault@text-embedding-3-small=429]]"}
    assert httpx.post(f"{sim.url}/v1/embeddings", headers=OAI_H, json=emb).status_code == 200
    emb["model"] = "text-embedding-3-small"
    assert httpx.post(f"{sim.url}/v1/embeddings", headers=OAI_H, json=emb).status_code == 429


# ---- context length -------------------------------------------------------------------


def test_context_length_fault_bodies(sim: ThreadedSimulator) -> None:
    r = chat_raw(sim, "gpt-4o", "x [[sim:fault=context_length]]")
    err = r.json()["error"]
    assert r.status_code == 400 and set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == "messages" and err["code"] == "context_length_exceeded"
    assert err["message"].startswith("This model's maximum context length is 128000 tokens. However, your messages resulted in ")
    assert err["message"].endswith(" tokens. Please reduce the length of the messages.")
    with pytest.raises(openai.BadRequestError) as info:
        oai(sim).chat.completions.create(model="gpt-4o", messages=user("x [[sim:fault=context_length]]"), stream=True)
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:
        azure(sim).chat.completions.create(model="prod-4o", messages=user("x [[sim:fault=context_length]]"))
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(anthropic.BadRequestError) as ainfo:
        ant(sim).messages.create(model="claude-haiku-4-5", max_tokens=10, messages=user("x [[sim:fault=context_length]]"))
    body = ainfo.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    n, m = body["error"]["message"].removeprefix("prompt is too long: ").split(" tokens > ")
    assert m == "200000 maximum" and int(n) > 200000
    legacy = httpx.post(f"{sim.url}/v1/completions", headers=OAI_H, json={"model": "gpt-3.5-turbo-instruct", "prompt": "x [[sim:fault=context_length]]", "max_tokens": 10})
    msg = legacy.json()["error"]["message"]
    assert legacy.status_code == 400 and msg.startswith("This model's maximum context length is 4096 tokens, however you requested ")
    assert "for the completion). Please reduce your prompt; or completion length." in msg and "; 10 for the completion" in msg
    emb = httpx.post(f"{sim.url}/v1/embeddings", headers=OAI_H, json={"model": "text-embedding-3-small", "input": "x [[sim:fault=context_length]]"})
    assert emb.status_code == 400 and "maximum context length is 8192 tokens" in emb.json()["error"]["message"] and "; 0 for the completion" in emb.json()["error"]["message"]


def test_context_window_directive_checks_the_real_prompt(sim: ThreadedSimulator) -> None:
    long_prompt = "Summarise the quarterly numbers carefully. " * 30 + "[[sim:context_window@gpt-4o-mini=200]]"
    r = chat_raw(sim, "gpt-4o-mini", long_prompt)
    tokens = chat_raw(sim, "gpt-4o", long_prompt).json()["usage"]["prompt_tokens"]
    assert r.status_code == 400 and tokens > 200
    assert r.json()["error"]["message"] == (
        f"This model's maximum context length is 200 tokens. However, your messages resulted in {tokens} tokens. "
        "Please reduce the length of the messages."
    )
    assert chat_raw(sim, "gpt-4o-mini", "short [[sim:context_window=200]]").status_code == 200
    big = messages_raw(sim, "claude-haiku-4-5", long_prompt.replace("gpt-4o-mini", "claude-haiku-4-5"))
    counted = httpx.post(f"{sim.url}/v1/messages/count_tokens", headers=ANT_H, json={"model": "claude-haiku-4-5", "messages": user(long_prompt.replace("gpt-4o-mini", "claude-haiku-4-5"))})
    assert big.status_code == 400
    assert big.json()["error"]["message"] == f"prompt is too long: {counted.json()['input_tokens']} tokens > 200 maximum"


# ---- 503, stream_error, cut ----------------------------------------------------------------


def test_503_fault(sim: ThreadedSimulator) -> None:
    r = chat_raw(sim, "gpt-4o", "x [[sim:fault=503]]")
    err = r.json()["error"]
    assert r.status_code == 503 and err["type"] == "server_error" and err["code"] is None
    assert r.headers["x-request-id"] in err["message"] and "retry-after" not in r.headers
    with pytest.raises(openai.InternalServerError) as info:
        azure(sim).chat.completions.create(model="prod-4o", messages=user("x [[sim:fault=503]]"))
    assert info.value.status_code == 503
    a = messages_raw(sim, "claude-haiku-4-5", "x [[sim:fault=503]]")
    assert a.status_code == 529 and a.json()["error"]["type"] == "overloaded_error"  # Anthropic's overload is 529


def test_stream_error_before_the_first_byte_openai(sim: ThreadedSimulator) -> None:
    raw = chat_raw(sim, "gpt-4o", "x [[sim:fault=stream_error]]", stream=True)
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream") and raw.headers["x-request-id"]
    events = [e for e in raw.text.split("\n\n") if e]
    assert len(events) == 1 and "[DONE]" not in raw.text
    assert json.loads(events[0].removeprefix("data: ")) == {
        "error": {"message": faults_mod.OPENAI_SERVER_ERROR, "type": "server_error", "param": None, "code": None}
    }
    got: list[Any] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in oai(sim).chat.completions.create(model="gpt-4o", messages=user("x [[sim:fault=stream_error]]"), stream=True):
            got.append(chunk)
    assert got == [] and info.value.message == faults_mod.OPENAI_SERVER_ERROR
    legacy = httpx.post(f"{sim.url}/v1/completions", headers=OAI_H, json={"model": "gpt-3.5-turbo-instruct", "prompt": "x [[sim:fault=stream_error]]", "stream": True})
    assert legacy.status_code == 200 and legacy.text.startswith('data: {"error":') and "[DONE]" not in legacy.text
    az = httpx.post(f"{sim.url}/openai/deployments/d/chat/completions?api-version=2024-10-21", headers={"api-key": KEY}, json={"messages": user("x [[sim:fault=stream_error]]"), "stream": True})
    assert az.status_code == 200 and az.text.startswith('data: {"error":')
    # not streaming: the same failure as a status
    plain = chat_raw(sim, "gpt-4o", "x [[sim:fault=stream_error]]")
    assert plain.status_code == 500 and plain.json()["error"]["type"] == "server_error"


def test_stream_error_before_the_first_byte_anthropic(sim: ThreadedSimulator) -> None:
    raw = messages_raw(sim, "claude-haiku-4-5", "x [[sim:fault=stream_error]]", stream=True)
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream") and raw.headers["request-id"]
    assert raw.text == 'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    kinds: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        with ant(sim).messages.stream(model="claude-haiku-4-5", max_tokens=20, messages=user("x [[sim:fault=stream_error]]")) as stream:
            for event in stream:
                kinds.append(event.type)
    assert kinds == [] and info.value.body["error"]["type"] == "overloaded_error"
    plain = messages_raw(sim, "claude-haiku-4-5", "x [[sim:fault=stream_error]]")
    assert plain.status_code == 529 and plain.json()["error"]["type"] == "overloaded_error"


def test_cut_sends_content_before_dropping_even_for_one_token(sim: ThreadedSimulator) -> None:
    got: list[Any] = []
    with pytest.raises(STREAM_BROKEN):
        for chunk in oai(sim).chat.completions.create(model="gpt-4o", messages=user("x [[sim:fault=cut]] [[sim:output_tokens=1]]"), stream=True):
            got.append(chunk)
    assert [c.choices[0].delta.content for c in got if c.choices and c.choices[0].delta.content]  # the first byte went out
    assert not any(c.choices and c.choices[0].finish_reason for c in got)
    texts: list[str] = []
    with pytest.raises(STREAM_BROKEN):
        for chunk in oai(sim).completions.create(model="gpt-3.5-turbo-instruct", prompt="x [[sim:fault=cut]] [[sim:output_tokens=1]]", stream=True):
            texts.append(chunk.choices[0].text)
    assert texts and texts[0]
    kinds: list[str] = []
    with pytest.raises(STREAM_BROKEN):
        with ant(sim).messages.stream(model="claude-haiku-4-5", max_tokens=20, messages=user("x [[sim:fault=cut]] [[sim:output_tokens=1]]")) as stream:
            for event in stream:
                kinds.append(event.type)
    assert "content_block_delta" in kinds and "message_stop" not in kinds


# ---- Retry-After ---------------------------------------------------------------------------


def test_retry_after_directive(sim: ThreadedSimulator) -> None:
    r = chat_raw(sim, "gpt-4o", "x [[sim:fault=429]] [[sim:retry_after=0]]")
    assert r.status_code == 429 and r.headers["retry-after"] == "0"
    r = chat_raw(sim, "gpt-4o", "x [[sim:fault=429]] [[sim:retry_after=2.5]]")
    assert r.headers["retry-after"] == "2.5" and r.headers["x-ratelimit-reset-requests"] == "2.5s"
    assert "Please try again in 2.5s." in r.json()["error"]["message"]
    r = chat_raw(sim, "gpt-4o", "x [[sim:fault=429]] [[sim:retry_after=0.25]]")
    assert r.headers["retry-after"] == "0.25" and r.headers["x-ratelimit-reset-requests"] == "250ms"
    assert chat_raw(sim, "gpt-4o", "x [[sim:fault=429]]").headers["retry-after"] == "1"  # the default
    az = httpx.post(f"{sim.url}/openai/deployments/d/chat/completions?api-version=2024-10-21", headers={"api-key": KEY}, json={"messages": user("x [[sim:fault=429]] [[sim:retry_after=2.5]]")})
    assert az.status_code == 429 and az.headers["retry-after"] == "2.5" and az.headers["retry-after-ms"] == "2500"
    assert "Please retry after 3 seconds." in az.json()["error"]["message"]
    a = messages_raw(sim, "claude-haiku-4-5", "x [[sim:fault=429]] [[sim:retry_after=7]]")
    assert a.status_code == 429 and a.headers["retry-after"] == "7"
    # 503 / 529 carry one only when asked
    assert "retry-after" not in chat_raw(sim, "gpt-4o", "x [[sim:fault=529]]").headers
    assert chat_raw(sim, "gpt-4o", "x [[sim:fault=503]] [[sim:retry_after=3]]").headers["retry-after"] == "3"
    assert chat_raw(sim, "gpt-4o", "x [[sim:fault=529]] [[sim:retry_after=0.5]]").headers["retry-after"] == "0.5"
    assert "retry-after" not in messages_raw(sim, "claude-haiku-4-5", "x [[sim:fault=529]]").headers
    assert messages_raw(sim, "claude-haiku-4-5", "x [[sim:fault=529]] [[sim:retry_after=4]]").headers["retry-after"] == "4"
    assert messages_raw(sim, "claude-haiku-4-5", "x [[sim:fault=503]] [[sim:retry_after=4]]").headers["retry-after"] == "4"


# ---- faults that clear ----------------------------------------------------------------


def test_fault_times_then_success(sim: ThreadedSimulator) -> None:
    prompt = uniq("x [[sim:fault=500]] [[sim:fault_times=2]] [[sim:output_tokens=4]]")
    assert [chat_raw(sim, "gpt-4o", prompt).status_code for _ in range(4)] == [500, 500, 200, 200]
    # the counter is per model: another model starts its own
    assert [chat_raw(sim, "gpt-4o-mini", prompt).status_code for _ in range(3)] == [500, 500, 200]
    # the key is the directive set, not the rest of the text: a deployment "recovers" for every question
    tag = uuid.uuid4().hex[:8]
    seq = [chat_raw(sim, "gpt-4o", f"question {i} [[sim:fault=429]] [[sim:fault_times=3]] [[sim:case={tag}]]").status_code for i in range(5)]
    assert seq == [429, 429, 429, 200, 200]
    # scoped: only the scoped model's requests count
    scoped = uniq("x [[sim:fault@gpt-4o-mini=503]] [[sim:fault_times=1]]")
    assert chat_raw(sim, "gpt-4o", scoped).status_code == 200
    assert [chat_raw(sim, "gpt-4o-mini", scoped).status_code for _ in range(2)] == [503, 200]
    # Anthropic, streaming faults, the header
    a = uniq("x [[sim:fault=529]] [[sim:fault_times=1]]")
    assert [messages_raw(sim, "claude-haiku-4-5", a).status_code for _ in range(2)] == [529, 200]
    s = uniq("x [[sim:fault=stream_error]] [[sim:fault_times=1]] [[sim:output_tokens=3]]")
    first, second = (messages_raw(sim, "claude-haiku-4-5", s, stream=True) for _ in range(2))
    assert first.text.startswith("event: error") and "event: message_stop" in second.text
    h = uniq("x [[sim:fault_times=1]]")
    statuses = [httpx.post(f"{sim.url}/v1/chat/completions", headers={**OAI_H, "x-sim-fault": "500"}, json={"model": "m", "messages": user(h)}).status_code for _ in range(2)]
    assert statuses == [500, 200]
    assert [chat_raw(sim, "gpt-4o", uniq("x [[sim:fault=500]] [[sim:fault_times=0]]")).status_code] == [200]


def test_sdk_retry_then_succeed(sim: ThreadedSimulator) -> None:
    prompt = uniq("x [[sim:fault=429]] [[sim:fault_times=1]] [[sim:retry_after=0.05]] [[sim:output_tokens=3]]")
    r = oai(sim, max_retries=1).chat.completions.create(model="gpt-4o", messages=user(prompt))
    assert r.usage.completion_tokens == 3
    prompt = uniq("x [[sim:fault=529]] [[sim:fault_times=1]] [[sim:retry_after=0.05]]")
    assert ant(sim, max_retries=1).messages.create(model="claude-haiku-4-5", max_tokens=10, messages=user(prompt)).content


def test_fault_counters_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faults_mod, "MAX_FAULT_KEYS", 3)
    f = Faults(SimulatorSettings(), asyncio.Event())
    controls = [read_controls({"fault": "500", "fault_times": "1", "case": str(i)}, None, "m") for i in range(5)]
    assert [f.pick(c) for c in controls] == ["500"] * 5
    assert len(f._served) == 3
    assert f.pick(controls[4]) is None and f.pick(controls[0]) == "500"  # 0 was dropped: it fails again


# ---- logprobs ------------------------------------------------------------------------------


def test_chat_logprobs_json_and_stream(sim: ThreadedSimulator) -> None:
    c = oai(sim)
    assert c.chat.completions.create(model="gpt-4o", messages=user("x [[sim:output_tokens=5]]")).choices[0].logprobs is None
    r = c.chat.completions.create(model="gpt-4o", messages=user("Explain budgets [[sim:output_tokens=40]]"), logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert r.choices[0].logprobs.refusal is None
    assert len(content) == r.usage.completion_tokens == 40
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.bytes == list(t.token.encode()) and t.logprob <= 0
        assert len(t.top_logprobs) == 3 and [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
        assert sum(math.exp(a.logprob) for a in t.top_logprobs) <= 1 + 1e-9
        assert t.top_logprobs[0].token == t.token  # confident: the sampled token is the likeliest
    mean = sum(t.logprob for t in content) / len(content)
    assert mean == pytest.approx(-0.05, abs=1e-9)
    again = c.chat.completions.create(model="gpt-4o", messages=user("Explain budgets [[sim:output_tokens=40]]"), logprobs=True, top_logprobs=3)
    assert [t.logprob for t in again.choices[0].logprobs.content] == [t.logprob for t in content]
    unsure = c.chat.completions.create(model="gpt-4o", messages=user("Explain budgets [[sim:output_tokens=40]] [[sim:logprob=-1.7]]"), logprobs=True)
    values = [t.logprob for t in unsure.choices[0].logprobs.content]
    assert sum(values) / len(values) == pytest.approx(-1.7, abs=1e-9) and all(v <= 0 for v in values)
    assert all(t.top_logprobs == [] for t in unsure.choices[0].logprobs.content)  # no top_logprobs asked for
    # streamed: the role chunk has an empty list, each content chunk its token's entry
    raw = chat_raw(sim, "gpt-4o", "Explain budgets [[sim:output_tokens=40]]", logprobs=True, top_logprobs=3, stream=True)
    chunks = sse_data(raw)
    assert chunks[0]["choices"][0]["logprobs"] == {"content": [], "refusal": None}
    streamed = [e for ch in chunks[1:-1] for e in ch["choices"][0]["logprobs"]["content"]]
    assert all(len(ch["choices"][0]["logprobs"]["content"]) == 1 for ch in chunks[1:-1])
    assert streamed == r.model_dump()["choices"][0]["logprobs"]["content"]
    assert chunks[-1]["choices"][0]["logprobs"] is None and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    sdk_chunks = list(c.chat.completions.create(model="gpt-4o", messages=user("Explain budgets [[sim:output_tokens=40]]"), logprobs=True, stream=True))
    assert sum(len(ch.choices[0].logprobs.content) for ch in sdk_chunks if ch.choices[0].logprobs) == 40
    # per choice, and scoped
    two = c.chat.completions.create(model="gpt-4o-mini", messages=user("x [[sim:output_tokens=6]] [[sim:logprob@gpt-4o-mini=-2]]"), logprobs=True, n=2)
    for ch in two.choices:
        assert len(ch.logprobs.content) == 6 and sum(t.logprob for t in ch.logprobs.content) / 6 == pytest.approx(-2)
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        c.chat.completions.create(model="gpt-4o", messages=user("x"), logprobs=True, top_logprobs=21)
    tool = c.chat.completions.create(
        model="gpt-4o", messages=user("x"), logprobs=True, tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    )
    assert tool.choices[0].logprobs.content is None


def test_legacy_logprobs_json_and_stream(sim: ThreadedSimulator) -> None:
    c = oai(sim)
    prompt = "Say something [[sim:output_tokens=12]] [[sim:logprob=-0.8]]"
    r = c.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompt, logprobs=2)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.tokens) == r.usage.completion_tokens == 12
    assert sum(lp.token_logprobs) / 12 == pytest.approx(-0.8)
    assert lp.text_offset[0] == len(prompt) and all(b - a == len(t) for a, b, t in zip(lp.text_offset, lp.text_offset[1:], lp.tokens))
    for tok, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert 2 <= len(top) <= 3 and top[tok] == value
    assert c.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompt).choices[0].logprobs is None
    zero = c.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompt, logprobs=0).choices[0].logprobs
    assert all(list(top) == [tok] for tok, top in zip(zero.tokens, zero.top_logprobs))
    chunks = list(c.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompt, logprobs=2, stream=True))
    tokens = [t for ch in chunks if ch.choices[0].logprobs for t in ch.choices[0].logprobs.tokens]
    values = [v for ch in chunks if ch.choices[0].logprobs for v in ch.choices[0].logprobs.token_logprobs]
    assert tokens == lp.tokens and values == lp.token_logprobs
    echo = c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hello there [[sim:output_tokens=3]]", logprobs=1, echo=True)
    elp = echo.choices[0].logprobs
    assert elp.token_logprobs[0] is None and elp.top_logprobs[0] is None and elp.text_offset[0] == 0
    assert "".join(elp.tokens) == echo.choices[0].text and echo.choices[0].text.startswith("Hello there")
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        c.completions.create(model="gpt-3.5-turbo-instruct", prompt="x", logprobs=6)


# ---- reply kinds ---------------------------------------------------------------------------


def _consistent_chat(sim: ThreadedSimulator, model: str, text: str, **extra: Any) -> tuple[str, int]:
    """The answer's text and tokens, checked equal between JSON and SSE (one token per content chunk)."""
    r = chat_raw(sim, model, text, **extra).json()
    content = r["choices"][0]["message"]["content"]
    raw = chat_raw(sim, model, text, stream=True, stream_options={"include_usage": True}, **extra)
    chunks = sse_data(raw)
    pieces = [ch["choices"][0]["delta"]["content"] for ch in chunks if ch["choices"] and ch["choices"][0]["delta"].get("content")]
    assert "".join(pieces) == content and len(pieces) == r["usage"]["completion_tokens"] == chunks[-1]["usage"]["completion_tokens"]
    return content, r["usage"]["completion_tokens"]


def test_reply_kinds_openai(sim: ThreadedSimulator) -> None:
    text, tokens = _consistent_chat(sim, "gpt-4o", "Help me [[sim:reply=refusal]]")
    assert text == REFUSAL_TEXT and tokens == len(split_pieces(REFUSAL_TEXT))
    text, _ = _consistent_chat(sim, "gpt-4o", "Help me [[sim:reply=unsure]]")
    assert text.startswith("I'm not sure, but ") and text[18].islower()
    text, _ = _consistent_chat(sim, "gpt-4o", "Help me [[sim:reply=json]]")
    obj = json.loads(text)
    assert set(obj) == {"answer", "confidence"} and obj["answer"] and obj["confidence"] == 0.95
    text, _ = _consistent_chat(sim, "gpt-4o", "Help me [[sim:reply=json]] [[sim:logprob=-1.7]]")
    assert json.loads(text)["confidence"] == round(math.exp(-1.7), 2)
    text, _ = _consistent_chat(sim, "gpt-4o", "Help me [[sim:reply=bad_json]]")
    assert text.startswith('{"answer": "')
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    text, _ = _consistent_chat(sim, "gpt-4o", "Help me [[sim:reply=text]]")
    assert text == chat_raw(sim, "gpt-4o", "Help me [[sim:reply=text]]").json()["choices"][0]["message"]["content"]
    assert chat_raw(sim, "gpt-4o", "x [[sim:reply=poem]]").status_code == 200  # unknown kinds are ignored
    # exactly output_tokens, and cut by max_tokens
    for kind in ("refusal", "unsure", "json"):
        _, tokens = _consistent_chat(sim, "gpt-4o", f"x [[sim:reply={kind}]] [[sim:output_tokens=30]]")
        assert tokens == 30
    assert json.loads(chat_raw(sim, "gpt-4o", "x [[sim:reply=json]] [[sim:output_tokens=30]]").json()["choices"][0]["message"]["content"])
    cut = chat_raw(sim, "gpt-4o", "x [[sim:reply=json]]", max_tokens=5).json()
    assert cut["choices"][0]["finish_reason"] == "length" and cut["usage"]["completion_tokens"] == 5
    # the cascade case: the cheap model refuses, the strong one answers
    prompt = "What is our refund policy? [[sim:reply@gpt-4o-mini=refusal]]"
    assert chat_raw(sim, "gpt-4o-mini", prompt).json()["choices"][0]["message"]["content"] == REFUSAL_TEXT
    assert "sorry" not in chat_raw(sim, "gpt-4o", prompt).json()["choices"][0]["message"]["content"]
    # a forced reply kind answers in text even when tools are given
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert chat_raw(sim, "gpt-4o", "x [[sim:reply=unsure]]", tools=tools).json()["choices"][0]["message"]["content"].startswith("I'm not sure")


SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "temperature": {"type": "number"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city", "temperature", "unit"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True}}


def test_structured_outputs_and_refusals_openai(sim: ThreadedSimulator) -> None:
    text, _ = _consistent_chat(sim, "gpt-4o", "Weather in Paris?", response_format=RESPONSE_FORMAT)
    obj = json.loads(text)
    assert set(obj) == {"city", "temperature", "unit"} and obj["city"] == "Paris" and obj["unit"] in ("c", "f")
    assert json.loads(_consistent_chat(sim, "gpt-4o", "Weather?", response_format={"type": "json_object"})[0])["answer"]
    bad = chat_raw(sim, "gpt-4o", "Weather? [[sim:reply=bad_json]]", response_format=RESPONSE_FORMAT).json()["choices"][0]["message"]["content"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad)
    # a refusal under Structured Outputs is message.refusal, with content null
    r = chat_raw(sim, "gpt-4o", "Weather? [[sim:reply=refusal]]", response_format=RESPONSE_FORMAT, logprobs=True).json()
    choice = r["choices"][0]
    assert choice["message"]["content"] is None and choice["message"]["refusal"] == REFUSAL_TEXT
    assert choice["logprobs"]["content"] is None and "".join(t["token"] for t in choice["logprobs"]["refusal"]) == REFUSAL_TEXT
    assert r["usage"]["completion_tokens"] == len(choice["logprobs"]["refusal"])
    chunks = sse_data(chat_raw(sim, "gpt-4o", "Weather? [[sim:reply=refusal]]", response_format=RESPONSE_FORMAT, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None, "refusal": ""}
    assert "".join(ch["choices"][0]["delta"].get("refusal") or "" for ch in chunks) == REFUSAL_TEXT
    sdk = oai(sim).chat.completions.create(model="gpt-4o", messages=user("x [[sim:reply=refusal_flag]]"))
    assert sdk.choices[0].message.refusal == REFUSAL_TEXT and sdk.choices[0].message.content is None
    # plain chat: a refusal is ordinary text
    assert oai(sim).chat.completions.create(model="gpt-4o", messages=user("x [[sim:reply=refusal]]")).choices[0].message.refusal is None


def test_reply_kinds_anthropic(sim: ThreadedSimulator) -> None:
    c = ant(sim)
    for kind, check in (
        ("refusal", lambda t: t == REFUSAL_TEXT),
        ("unsure", lambda t: t.startswith("I'm not sure, but ")),
        ("json", lambda t: set(json.loads(t)) == {"answer", "confidence"}),
        ("bad_json", lambda t: t.startswith("{") and t.endswith(",}")),
    ):
        m = c.messages.create(model="claude-haiku-4-5", max_tokens=300, messages=user(f"Help [[sim:reply={kind}]]"))
        assert check(m.content[0].text) and m.stop_reason == "end_turn"
        with c.messages.stream(model="claude-haiku-4-5", max_tokens=300, messages=user(f"Help [[sim:reply={kind}]]")) as stream:
            deltas = [e for e in stream if e.type == "content_block_delta"]
            final = stream.get_final_message()
        assert final.content[0].text == m.content[0].text and len(deltas) == final.usage.output_tokens == m.usage.output_tokens
    scoped = "Refund policy? [[sim:reply@claude-haiku-4-5=refusal]]"
    assert c.messages.create(model="claude-haiku-4-5", max_tokens=300, messages=user(scoped)).content[0].text == REFUSAL_TEXT
    assert c.messages.create(model="claude-opus-4-1", max_tokens=300, messages=user(scoped)).content[0].text != REFUSAL_TEXT
    # Claude's own refusal stop
    flagged = messages_raw(sim, "claude-haiku-4-5", "x [[sim:reply=refusal_flag]]").json()
    assert flagged["stop_reason"] == "refusal" and flagged["content"][0]["text"] == REFUSAL_TEXT
    streamed = messages_raw(sim, "claude-haiku-4-5", "x [[sim:reply=refusal_flag]]", stream=True).text
    assert '"stop_reason":"refusal"' in streamed
    # Structured Outputs
    out = c.messages.create(
        model="claude-opus-4-1", max_tokens=300, messages=user("Weather in Paris?"), extra_body={"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}}
    )
    assert set(json.loads(out.content[0].text)) == {"city", "temperature", "unit"}
