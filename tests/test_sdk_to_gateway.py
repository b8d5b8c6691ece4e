"""The SDK wrapper end to end: a real client calls the provider directly and the
usage reaches a running gateway's ledger through the ingest endpoint."""

from __future__ import annotations

from decimal import Decimal

import anthropic
import openai

import spendgate
from conftest import Gateway
from spendgate.sdk.sinks import GatewaySink

M = Decimal(1_000_000)


def test_instrumented_clients_post_to_gateway(gateway: Gateway, simulator: str) -> None:
    sink = GatewaySink(gateway.url, "sk-test-search", flush_interval_s=0.05)
    oai = spendgate.instrument(
        openai.OpenAI(base_url=f"{simulator}/v1", api_key="sk-direct", max_retries=0),
        tags={"feature": "direct-calls"},
        sink=sink,
        provider="openai",
    )
    resp = oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi [[sim:output_tokens=12]]"}])
    chunks = list(oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hey [[sim:output_tokens=4]]"}], stream=True))
    assert all(c.choices for c in chunks), "the caller never sees the usage chunk it did not ask for"
    claude = spendgate.instrument(anthropic.Anthropic(base_url=simulator, api_key="sk-direct", max_retries=0), tags={"feature": "direct-calls"}, sink=sink)
    msg = claude.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "yo [[sim:output_tokens=3]]"}])
    assert sink.flush(10)
    rows = gateway.wait_rows("feature = ?", ("direct-calls",), count=3)
    assert len(rows) == 3
    assert {r["source"] for r in rows} == {"sdk"} and {r["key_id"] for r in rows} == {"key-search"}
    assert {r["team"] for r in rows} == {"search"}  # the posting key's default tag
    by_model = {r["model_requested"]: r for r in rows}
    u = resp.usage
    cached = u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else 0
    expected = ((u.prompt_tokens - cached) * Decimal("2.50") + cached * Decimal("1.25") + u.completion_tokens * Decimal("10")) / M
    assert Decimal(by_model["gpt-4o"]["cost"]) == expected
    assert by_model["gpt-4o-mini"]["streamed"] == 1 and by_model["gpt-4o-mini"]["output_tokens"] == 4
    assert by_model["claude-haiku-4-5"]["output_tokens"] == msg.usage.output_tokens == 3
    sink.close()
