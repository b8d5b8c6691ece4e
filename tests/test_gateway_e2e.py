"""The gateway end to end: real server process, real SDKs, real simulator upstream."""

from __future__ import annotations

from decimal import Decimal

import anthropic
import httpx
import openai
import pytest

from conftest import Gateway

M = Decimal(1_000_000)
# list prices (USD per million tokens) used for hand computation
GPT_4O = {"in": Decimal("2.50"), "cached": Decimal("1.25"), "out": Decimal("10.00")}
SONNET_45 = {"in": Decimal("3"), "read": Decimal("0.30"), "write": Decimal("3.75"), "out": Decimal("15")}


def oai(gw: Gateway, key: str = "sk-test-search") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.openai_base, api_key=key, max_retries=0)


def ant(gw: Gateway, key: str = "sk-test-search") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)


def test_openai_chat_priced_exactly_and_tagged(gateway: Gateway) -> None:
    raw = oai(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "What is the capital of France? [[sim:output_tokens=40]]"}],
        extra_headers={"x-spendgate-tags": "feature=faq,prompt_version=v3", "x-spendgate-tenant": "acme"},
    )
    resp = raw.parse()
    assert resp.choices[0].message.content
    assert resp.usage.completion_tokens == 40
    rid = raw.headers["x-spendgate-request-id"]
    [row] = gateway.by_request(rid)
    u = resp.usage
    cached = u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else 0
    expected = ((u.prompt_tokens - cached) * GPT_4O["in"] + cached * GPT_4O["cached"] + u.completion_tokens * GPT_4O["out"]) / M
    assert Decimal(row["cost"]) == expected
    assert Decimal(raw.headers["x-spendgate-cost"]) == expected
    assert row["price_status"] == "priced"
    assert (row["input_tokens"], row["output_tokens"]) == (u.prompt_tokens, 40)
    assert (row["team"], row["environment"], row["feature"], row["prompt_version"], row["tenant"]) == ("search", "test", "faq", "v3", "acme")
    assert row["key_id"] == "key-search"
    assert row["provider"] == "openai" and row["deployment"] == "oa-gpt-4o" and row["status"] == "ok"
    assert row["finish_reason"] == "stop" and row["streamed"] == 0
    assert row["request_hash"] and row["request_text"] is None and row["response_text"] is None


def test_openai_stream_without_include_usage_is_metered_and_stripped(gateway: Gateway) -> None:
    raw = oai(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Tell me a story [[sim:output_tokens=25]]"}],
        stream=True,
    )
    chunks = list(raw.parse())
    assert all(c.usage is None for c in chunks), "client did not ask for usage, must not see it"
    assert all(c.choices for c in chunks), "the usage-only chunk must be stripped"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text
    [row] = gateway.by_request(raw.headers["x-spendgate-request-id"])
    assert row["streamed"] == 1 and row["output_tokens"] == 25 and row["usage_source"] == "provider"
    assert Decimal(row["cost"]) > 0 and row["ttft_ms"] is not None


def test_openai_stream_with_include_usage_passes_usage(gateway: Gateway) -> None:
    stream = oai(gateway).chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi [[sim:output_tokens=7]]"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7
    assert chunks[-1].choices == []


def test_tools_and_n(gateway: Gateway) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    resp = oai(gateway).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "weather in Paris?"}], tools=tools)
    call = resp.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and resp.choices[0].finish_reason == "tool_calls"
    resp = oai(gateway).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "two please"}], n=2)
    assert len(resp.choices) == 2


def test_completions_embeddings_models(gateway: Gateway) -> None:
    c = oai(gateway)
    comp = c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test", max_tokens=5)
    assert comp.choices[0].text and comp.usage.completion_tokens <= 5
    emb = c.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["hello", "world"])
    parsed = emb.parse()
    assert len(parsed.data) == 2 and len(parsed.data[0].embedding) == 1536
    [row] = gateway.by_request(emb.headers["x-spendgate-request-id"])
    assert row["endpoint"] == "embeddings" and row["input_tokens"] == parsed.usage.prompt_tokens and Decimal(row["cost"]) > 0
    models = {m.id for m in c.models.list()}
    assert {"gpt-4o", "claude-sonnet-4-5", "text-embedding-3-small"} <= models


def test_anthropic_messages_with_prompt_cache_priced(gateway: Gateway) -> None:
    system = [{"type": "text", "text": "You are a careful assistant. " * 400, "cache_control": {"type": "ephemeral"}}]
    client = ant(gateway)
    first = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=50, system=system, messages=[{"role": "user", "content": "Hi [[sim:output_tokens=12]]"}])
    second = client.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=50, system=system, messages=[{"role": "user", "content": "Hi [[sim:output_tokens=12]]"}])
    m1, m2 = first.parse(), second.parse()
    assert m1.usage.cache_creation_input_tokens and m2.usage.cache_read_input_tokens
    for raw, msg in ((first, m1), (second, m2)):
        [row] = gateway.by_request(raw.headers["x-spendgate-request-id"])
        u = msg.usage
        expected = (
            u.input_tokens * SONNET_45["in"]
            + (u.cache_read_input_tokens or 0) * SONNET_45["read"]
            + (u.cache_creation_input_tokens or 0) * SONNET_45["write"]
            + u.output_tokens * SONNET_45["out"]
        ) / M
        assert Decimal(row["cost"]) == expected
        assert row["input_tokens"] == u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0)
        assert row["cache_read_tokens"] == (u.cache_read_input_tokens or 0)
        assert row["cache_write_tokens"] == (u.cache_creation_input_tokens or 0)


def test_anthropic_stream_full_event_sequence(gateway: Gateway) -> None:
    with ant(gateway).messages.stream(model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": "Hello [[sim:output_tokens=30]]"}]) as stream:
        kinds = [ev.type for ev in stream]
        final = stream.get_final_message()
        rid = stream.response.headers["x-spendgate-request-id"]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds and "message_delta" in kinds
    assert final.usage.output_tokens == 30
    [row] = gateway.by_request(rid)
    assert row["output_tokens"] == 30 and row["streamed"] == 1 and row["finish_reason"] == "end_turn"


def test_openai_client_served_by_anthropic_deployment(gateway: Gateway) -> None:
    c = oai(gateway)
    resp = c.chat.completions.with_raw_response.create(
        model="claude-sonnet-4-5",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi [[sim:output_tokens=9]]"}],
    )
    parsed = resp.parse()
    assert parsed.object == "chat.completion" and parsed.choices[0].message.content
    assert parsed.usage.completion_tokens == 9
    [row] = gateway.by_request(resp.headers["x-spendgate-request-id"])
    assert row["provider"] == "anthropic" and row["wire_format"] == "openai" and row["output_tokens"] == 9
    chunks = list(c.chat.completions.create(model="claude-haiku-4-5", messages=[{"role": "user", "content": "Hi [[sim:output_tokens=6]]"}], stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert chunks[-1].usage.completion_tokens == 6
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
    tool_resp = c.chat.completions.create(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "search cats"}], tools=tools)
    assert tool_resp.choices[0].message.tool_calls[0].function.name == "lookup"


def test_anthropic_client_served_by_openai_deployment(gateway: Gateway) -> None:
    client = ant(gateway)
    msg = client.messages.create(model="gpt-4o", max_tokens=64, system="Be brief.", messages=[{"role": "user", "content": "Hi [[sim:output_tokens=11]]"}])
    assert msg.type == "message" and msg.content[0].text and msg.usage.output_tokens == 11
    with client.messages.stream(model="gpt-4o-mini", max_tokens=64, messages=[{"role": "user", "content": "Hi [[sim:output_tokens=8]]"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        rid = stream.response.headers["x-spendgate-request-id"]
    assert text and final.usage.output_tokens == 8
    [row] = gateway.by_request(rid)
    assert row["provider"] == "openai" and row["wire_format"] == "anthropic" and row["output_tokens"] == 8


def test_azure_and_gemini_deployments(gateway: Gateway) -> None:
    c = oai(gateway)
    r = c.chat.completions.with_raw_response.create(model="azure-gpt-4o", messages=[{"role": "user", "content": "hi [[sim:output_tokens=5]]"}])
    [row] = gateway.by_request(r.headers["x-spendgate-request-id"])
    assert row["provider"] == "azure_openai" and row["price_status"] == "priced" and Decimal(row["cost"]) > 0
    r = c.chat.completions.with_raw_response.create(model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi [[sim:output_tokens=5]]"}])
    [row] = gateway.by_request(r.headers["x-spendgate-request-id"])
    assert row["provider"] == "gemini" and row["price_status"] == "priced" and "google" in row["price_source"]


def test_missing_price_is_flagged_not_zero(gateway: Gateway) -> None:
    r = oai(gateway).chat.completions.with_raw_response.create(model="acme-internal-llm", messages=[{"role": "user", "content": "hi"}])
    [row] = gateway.by_request(r.headers["x-spendgate-request-id"])
    assert row["price_status"] == "missing" and row["price_source"] is None and row["output_tokens"] > 0
    # the report lists it loudly instead of counting it as free
    from spendgate.analytics.report import build_report
    from spendgate.ledger.open import open_ledger

    report = build_report(open_ledger(f"sqlite:///{gateway.ledger}"), None, None, ["model"])
    assert "acme-internal-llm" in {m.model for m in report.missing_prices}


def test_config_price_for_self_hosted(gateway: Gateway) -> None:
    r = oai(gateway).chat.completions.with_raw_response.create(model="llama-3.1-8b-instruct", messages=[{"role": "user", "content": "hi [[sim:output_tokens=10]]"}])
    u = r.parse().usage
    [row] = gateway.by_request(r.headers["x-spendgate-request-id"])
    assert Decimal(row["cost"]) == (u.prompt_tokens * Decimal("0.10") + u.completion_tokens * Decimal("0.20")) / M


def test_malformed_json_gets_400_in_each_format(gateway: Gateway) -> None:
    r = httpx.post(f"{gateway.url}/v1/chat/completions", content=b"{not json", headers={"authorization": "Bearer sk-test-search", "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{gateway.url}/v1/messages", content=b"{not json", headers={"x-api-key": "sk-test-search", "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        oai(gateway).chat.completions.create(model="gpt-4o", messages=[])
    with pytest.raises(anthropic.BadRequestError):
        ant(gateway).messages.create(model="claude-haiku-4-5", messages=[{"role": "user", "content": "x"}], max_tokens=0)


def test_unknown_key_and_unknown_model(gateway: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        oai(gateway, key="sk-wrong").chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.AuthenticationError):
        ant(gateway, key="sk-wrong").messages.create(model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        oai(gateway).chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])


def test_invalid_tags_get_clear_400(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError, match="Invalid tag name"):
        oai(gateway).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}], extra_headers={"x-spendgate-tags": "Bad Name!=x"})
    with pytest.raises(anthropic.BadRequestError, match="Invalid value"):
        ant(gateway).messages.create(model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}], extra_headers={"x-spendgate-team": "a" * 300})


def test_tags_from_body_metadata_and_user(gateway: Gateway) -> None:
    r = oai(gateway, key="sk-test-plain").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], user="u-42", metadata={"team": "growth", "feature": "onboarding"}
    )
    [row] = gateway.by_request(r.headers["x-spendgate-request-id"])
    assert (row["user"], row["team"], row["feature"], row["key_id"]) == ("u-42", "growth", "onboarding", "key-plain")
    r2 = ant(gateway, key="sk-test-plain").messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}], metadata={"user_id": "u-7"}
    )
    [row] = gateway.by_request(r2.headers["x-spendgate-request-id"])
    assert row["user"] == "u-7"


@pytest.mark.parametrize("fault,exc,status", [("500", openai.InternalServerError, 500), ("429", openai.RateLimitError, 429)])
def test_upstream_errors_reach_client_and_ledger(gateway: Gateway, fault: str, exc: type[Exception], status: int) -> None:
    with pytest.raises(exc) as info:
        oai(gateway).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": f"x [[sim:fault={fault}]]"}])
    rid = info.value.response.headers["x-spendgate-request-id"]
    [row] = gateway.by_request(rid)
    assert row["status"] == "error" and row["http_status"] == status and row["error_type"]
    assert Decimal(row["cost"]) == 0


def test_anthropic_overloaded_529(gateway: Gateway) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        ant(gateway).messages.create(model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x [[sim:fault=529]]"}])
    assert info.value.status_code == 529
    [row] = gateway.by_request(info.value.response.headers["x-spendgate-request-id"])
    assert row["error_type"] == "overloaded_error"


def test_retries_record_one_event_per_attempt(gateway: Gateway) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        oai(gateway).chat.completions.create(model="flaky-model", messages=[{"role": "user", "content": "x [[sim:fault=500]]"}])
    rows = gateway.by_request(info.value.response.headers["x-spendgate-request-id"], count=3)
    assert [r["attempt"] for r in rows] == [1, 2, 3]
    assert [r["route_reason"] for r in rows] == ["direct", "retry", "retry"]


def test_upstream_timeout_gives_504_and_event(gateway: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        oai(gateway).chat.completions.create(model="slow-model", messages=[{"role": "user", "content": "x [[sim:fault=timeout]]"}])
    assert info.value.status_code == 504
    [row] = gateway.by_request(info.value.response.headers["x-spendgate-request-id"])
    assert row["status"] == "error" and row["error_type"] == "timeout"


def test_stream_cut_upstream_reports_error_and_partial_usage(gateway: Gateway) -> None:
    stream = oai(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "x [[sim:fault=cut]] [[sim:output_tokens=200]]"}], stream=True
    )
    rid = stream.headers["x-spendgate-request-id"]
    with pytest.raises(openai.APIError):
        for _ in stream.parse():
            pass
    [row] = gateway.by_request(rid)
    assert row["status"] == "error" and row["error_type"] == "stream_cut"
    assert row["usage_source"] == "estimated" and row["output_tokens"] > 0 and row["price_status"] == "estimated"


def _disconnect_after_first_bytes(url: str, headers: dict[str, str], body: dict) -> str:
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", url, headers=headers, json=body) as resp:
            rid = resp.headers["x-spendgate-request-id"]
            next(resp.iter_bytes())
    return rid  # leaving the block closed the connection mid-stream


def test_client_disconnect_mid_stream_records_partial_usage(gateway: Gateway) -> None:
    rid = _disconnect_after_first_bytes(
        f"{gateway.url}/v1/messages",
        {"x-api-key": "sk-test-search", "anthropic-version": "2023-06-01"},
        {"model": "claude-haiku-4-5", "max_tokens": 2000, "stream": True,
         "messages": [{"role": "user", "content": "long [[sim:output_tokens=1500]] [[sim:tokens_per_second=200]]"}]},
    )
    [row] = gateway.by_request(rid)
    assert row["status"] == "client_disconnect"
    assert row["input_tokens"] > 0  # known from message_start
    assert 0 < row["output_tokens"] < 1500
    assert Decimal(row["cost"]) > 0
    assert row["latency_ms"] < 5000, "upstream must be abandoned, not read to the end"


def test_client_disconnect_openai_stream_estimates_usage(gateway: Gateway) -> None:
    rid = _disconnect_after_first_bytes(
        f"{gateway.openai_base}/chat/completions",
        {"authorization": "Bearer sk-test-search"},
        {"model": "gpt-4o", "stream": True,
         "messages": [{"role": "user", "content": "long [[sim:output_tokens=1500]] [[sim:tokens_per_second=200]]"}]},
    )
    [row] = gateway.by_request(rid)
    assert row["status"] == "client_disconnect" and row["usage_source"] == "estimated"
    assert row["price_status"] == "estimated"
    assert row["input_tokens"] > 0 and 0 < row["output_tokens"] < 1500


def test_provider_key_never_reaches_client(gateway: Gateway) -> None:
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": "Bearer sk-test-search"},
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x [[sim:fault=500]]"}]},
    )
    assert "sk-upstream-openai-secret" not in r.text and "sk-upstream-openai-secret" not in str(r.headers)


def test_text_is_stored_only_when_turned_on(simulator: str, tmp_path) -> None:
    from conftest import base_config, start_gateway

    config = base_config(simulator, tmp_path / "ledger.db")
    config["privacy"] = {"store_text": True}
    gw = start_gateway(tmp_path, config, log_level="debug")
    try:
        r = oai(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "secret plan [[sim:output_tokens=5]]"}])
        answer = r.parse().choices[0].message.content
        stream = oai(gw).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "streamed plan"}], stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in stream.parse())
        [row] = gw.by_request(r.headers["x-spendgate-request-id"])
        assert "secret plan" in row["request_text"] and row["response_text"] == answer
        [row] = gw.by_request(stream.headers["x-spendgate-request-id"])
        assert "streamed plan" in row["request_text"] and row["response_text"] == streamed
    finally:
        out = gw.process.terminate()
    assert "secret plan" not in out  # text goes to the ledger, never to the log


def test_prompt_cache_reads_are_recorded_as_savings(gateway: Gateway) -> None:
    system = [{"type": "text", "text": "Reference manual. " * 600, "cache_control": {"type": "ephemeral"}}]
    client = ant(gateway)
    for _ in range(2):
        raw = client.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=20, system=system, messages=[{"role": "user", "content": "q [[sim:output_tokens=5]]"}])
    msg = raw.parse()
    assert msg.usage.cache_read_input_tokens
    [row] = gateway.by_request(raw.headers["x-spendgate-request-id"])
    # haiku 4.5: input $1/M, cache read $0.10/M -> each cached token saved $0.90/M
    assert Decimal(row["saved"]) == msg.usage.cache_read_input_tokens * Decimal("0.90") / M
    assert row["saved_by"] == "prompt_cache"


def test_failover_to_next_deployment_records_both_attempts(gateway: Gateway) -> None:
    r = oai(gateway).chat.completions.with_raw_response.create(model="ha-model", messages=[{"role": "user", "content": "hi [[sim:output_tokens=3]]"}])
    assert r.parse().choices[0].message.content
    rows = gateway.by_request(r.headers["x-spendgate-request-id"], count=2)
    assert [(x["deployment"], x["status"], x["route_reason"]) for x in rows] == [("dead", "error", "direct"), ("alive", "ok", "failover")]
    assert rows[0]["http_status"] == 502 and rows[0]["error_type"] == "upstream"
