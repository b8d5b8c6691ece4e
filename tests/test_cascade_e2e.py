"""Cascades end to end: cheap model first, escalation on each check kind, both attempts
in the ledger under one request id, savings against the baseline, streams replayed
in the client's format, and the budget reserving the whole cascade.

Prices are round (input free; gpt-4o-mini output 1 U a token, gpt-4.1 10 U) so the
ledger's costs and savings can be checked to the last digit.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from conftest import Gateway, base_config, start_gateway

ADMIN_KEY = "sk-admin-cascade-e2e"
U = Decimal("0.00001")
PRICES = [
    {"model": "gpt-4o-mini", "provider": "openai", "price": {"input_per_mtok": "0", "output_per_mtok": "10"}},
    {"model": "gpt-4.1", "provider": "openai", "price": {"input_per_mtok": "0", "output_per_mtok": "100"}},
    {"model": "claude-haiku-4-5", "provider": "anthropic", "price": {"input_per_mtok": "0", "output_per_mtok": "10"}},
]
ANSWER_SCHEMA = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}}


def cascade_config(simulator: str, tmp: Path) -> dict[str, Any]:
    sim = f"{simulator}/v1"
    config = base_config(simulator, tmp / "ledger.db")
    config["admin"] = {"key_env": "SPENDGATE_ADMIN_KEY"}
    config["prices"] = PRICES
    config["keys"].append({"key": "sk-test-budget", "id": "key-budget", "team": "budgeted"})
    config["budgets"] = [{"name": "b", "scope": {"team": "budgeted"}, "window": {"rolling": "1h"}, "limit": "0.01"}]
    config["deployments"] += [
        {"name": "c-small", "provider": "openai", "model": "gpt-4o-mini", "serves": ["c-small"], "base_url": sim},
        {"name": "c-big", "provider": "openai", "model": "gpt-4.1", "serves": ["c-big"], "base_url": sim},
        {"name": "c-haiku", "provider": "anthropic", "model": "claude-haiku-4-5", "serves": ["c-haiku"], "base_url": simulator},
    ]
    steps = ["c-small", "c-big"]
    config["routing"] = {
        "cascades": [
            {"name": "refusal", "steps": steps, "checks": [{"kind": "refusal"}]},
            {"name": "logprob", "steps": steps, "checks": [{"kind": "logprob", "min_mean": -0.5}]},
            {"name": "schema", "steps": steps, "checks": [{"kind": "json_schema", "schema": ANSWER_SCHEMA}]},
            {"name": "fields", "steps": steps, "checks": [{"kind": "required_fields", "fields": ["answer", "confidence"]}]},
            {"name": "regex", "steps": steps, "checks": [{"kind": "regex", "pattern": "^\\{", "must_match": True}]},
            {"name": "haiku-logprob", "steps": ["c-haiku", "c-big"], "checks": [{"kind": "logprob"}]},
            {"name": "haiku-accept", "steps": ["c-haiku", "c-big"], "checks": [{"kind": "logprob", "when_unavailable": "accept"}]},
            {"name": "learned", "steps": steps, "checks": [{"kind": "learned", "model_path": str(learned_model(tmp)), "threshold": 0.5}]},
        ],
        "policy": {"rules": [{"name": "faq", "match": {"feature": "faq"}, "use": "cascade:refusal"}]},
    }
    return config


def learned_model(tmp: Path) -> Path:
    """A prompt-only router trained on outcomes where the cheap model fails proofs and does greetings."""
    from spendgate.routing.learned import train_from_examples

    topics = ["triangles", "primes", "groups", "limits", "graphs", "integrals", "matrices", "sets", "series", "rings"]
    names = ["Ann", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal", "Ivy", "Jo"]
    pairs = [(f"Prove the theorem about {t} rigorously, step by step", False) for t in topics]
    pairs += [(f"Derive and prove the lemma on {t} with a formal proof", False) for t in topics]
    pairs += [(f"Hello {n}, thanks for the quick reply!", True) for n in names]
    pairs += [(f"Say hi to {n} and wish a nice day", True) for n in names]
    path = tmp / "router.json"
    train_from_examples(pairs, l2=1.0).save(path)
    return path


@pytest.fixture(scope="module")
def gw(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("cascade")
    gateway = start_gateway(tmp, cascade_config(simulator, tmp), env={"SPENDGATE_ADMIN_KEY": ADMIN_KEY})
    yield gateway
    out = gateway.process.terminate()
    assert "Traceback" not in out, out


def case() -> str:
    return f"[[sim:case={uuid.uuid4().hex[:10]}]]"


def oai(gw: Gateway, key: str = "sk-test-plain", tags: str | None = None) -> openai.OpenAI:
    headers = {"x-spendgate-tags": tags} if tags else {}
    return openai.OpenAI(base_url=gw.openai_base, api_key=key, max_retries=0, default_headers=headers)


def run(gw: Gateway, cascade: str, text: str, count: int, **kw: Any) -> tuple[Any, list[dict[str, Any]]]:
    r = oai(gw).chat.completions.with_raw_response.create(
        model=f"cascade:{cascade}", messages=[{"role": "user", "content": f"{case()} {text}"}], **kw
    )
    return r, gw.wait_rows("request_id = ?", (r.headers["x-spendgate-request-id"],), count=count)


def assert_escalated(r: Any, rows: list[dict[str, Any]], check: str) -> None:
    assert [(x["attempt"], x["deployment"], x["route_reason"], x["status"]) for x in rows] == [
        (1, "c-small", "cascade", "ok"),
        (2, "c-big", "cascade-escalation", "ok"),
    ]
    assert f"escalate-step1:{check}" in rows[1]["control_actions"]
    assert r.parse().model.startswith("gpt-4.1")  # the client got the strong model's answer
    # both attempts are paid for; the cheap one saved nothing (minus its cost)
    small, big = (Decimal(x["cost"]) for x in rows)
    assert small == rows[0]["output_tokens"] * U and big == rows[1]["output_tokens"] * 10 * U
    assert Decimal(rows[0]["saved"]) == -small and Decimal(rows[1]["saved"]) == 0
    assert Decimal(r.headers["x-spendgate-cost"]) == small + big


def assert_kept(r: Any, rows: list[dict[str, Any]]) -> None:
    [row] = rows
    assert (row["deployment"], row["route_reason"], row["status"]) == ("c-small", "cascade", "ok")
    assert r.parse().model.startswith("gpt-4o-mini")
    tokens = row["output_tokens"]
    # saved against always asking gpt-4.1 for the same tokens: 10 U - 1 U a token
    assert Decimal(row["cost"]) == tokens * U and Decimal(row["saved"]) == tokens * 9 * U and row["saved_by"] == "routing"


def test_refusal_escalates_and_a_plain_answer_is_kept(gw: Gateway) -> None:
    assert_escalated(*run(gw, "refusal", "[[sim:reply@gpt-4o-mini=refusal]]", 2), "refusal")
    assert_escalated(*run(gw, "refusal", "[[sim:reply@gpt-4o-mini=unsure]]", 2), "refusal")
    assert_kept(*run(gw, "refusal", "What is our refund policy?", 1))


def test_low_logprobs_escalate_and_the_client_never_sees_logprobs_it_did_not_ask_for(gw: Gateway) -> None:
    assert_escalated(*run(gw, "logprob", "[[sim:logprob@gpt-4o-mini=-2]]", 2), "logprob")
    r, rows = run(gw, "logprob", "[[sim:logprob@gpt-4o-mini=-0.1]]", 1)
    assert_kept(r, rows)
    assert r.parse().choices[0].logprobs is None  # the gateway asked for them, for its check
    r, rows = run(gw, "logprob", "[[sim:logprob@gpt-4o-mini=-0.1]]", 1, logprobs=True)
    assert r.parse().choices[0].logprobs.content  # the client asked: they stay


def test_json_schema_escalates_invalid_json(gw: Gateway) -> None:
    assert_escalated(*run(gw, "schema", "[[sim:reply@gpt-4o-mini=bad_json]]", 2), "json_schema")
    assert_kept(*run(gw, "schema", "[[sim:reply@gpt-4o-mini=json]]", 1))


def test_required_fields_escalate_when_missing(gw: Gateway) -> None:
    assert_escalated(*run(gw, "fields", "prose please", 2), "required_fields")
    assert_kept(*run(gw, "fields", "[[sim:reply@gpt-4o-mini=json]]", 1))


def test_regex_check(gw: Gateway) -> None:
    assert_escalated(*run(gw, "regex", "prose please", 2), "regex")
    assert_kept(*run(gw, "regex", "[[sim:reply@gpt-4o-mini=json]]", 1))


def test_a_cheap_step_that_fails_outright_escalates_too(gw: Gateway) -> None:
    r, rows = run(gw, "refusal", "[[sim:fault@gpt-4o-mini=500]]", 2)
    assert [(x["deployment"], x["route_reason"], x["status"]) for x in rows] == [
        ("c-small", "cascade", "error"),
        ("c-big", "cascade-escalation", "ok"),
    ]
    assert "escalate-step1:error:server" in rows[1]["control_actions"]  # the action is known once step 1 is over


def test_logprobs_unavailable_escalate_or_accept_as_configured(gw: Gateway) -> None:
    # Anthropic gives no token log-probabilities
    r = oai(gw).chat.completions.with_raw_response.create(model="cascade:haiku-logprob", messages=[{"role": "user", "content": case()}])
    rows = gw.wait_rows("request_id = ?", (r.headers["x-spendgate-request-id"],), count=2)
    assert [x["deployment"] for x in rows] == ["c-haiku", "c-big"]
    r = oai(gw).chat.completions.with_raw_response.create(model="cascade:haiku-accept", messages=[{"role": "user", "content": case()}])
    rows = gw.wait_rows("request_id = ?", (r.headers["x-spendgate-request-id"],))
    assert [x["deployment"] for x in rows] == ["c-haiku"]


def test_a_kept_cheap_answer_is_streamed_to_a_streaming_client(gw: Gateway) -> None:
    raw = oai(gw).chat.completions.with_raw_response.create(
        model="cascade:refusal", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": f"{case()} [[sim:output_tokens=40]]"}],
    )  # fmt: skip
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 40
    [row] = gw.wait_rows("request_id = ?", (raw.headers["x-spendgate-request-id"],))
    assert (row["deployment"], row["output_tokens"]) == ("c-small", 40)


def test_an_escalated_stream_comes_from_the_strong_model(gw: Gateway) -> None:
    raw = oai(gw).chat.completions.with_raw_response.create(
        model="cascade:refusal", stream=True, messages=[{"role": "user", "content": f"{case()} [[sim:reply@gpt-4o-mini=refusal]]"}]
    )
    chunks = list(raw.parse())
    assert chunks[0].model.startswith("gpt-4.1")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "sorry" not in text.lower()
    rows = gw.wait_rows("request_id = ?", (raw.headers["x-spendgate-request-id"],), count=2)
    assert [x["deployment"] for x in rows] == ["c-small", "c-big"]


def test_an_anthropic_client_gets_the_cascade_in_its_own_format(gw: Gateway) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key="sk-test-plain", max_retries=0)
    r = client.messages.with_raw_response.create(
        model="cascade:refusal", max_tokens=100, messages=[{"role": "user", "content": f"{case()} [[sim:reply@gpt-4o-mini=refusal]]"}]
    )
    msg = r.parse()
    assert msg.type == "message" and msg.content[0].text and "sorry" not in msg.content[0].text.lower()
    rows = gw.wait_rows("request_id = ?", (r.headers["x-spendgate-request-id"],), count=2)
    assert [x["deployment"] for x in rows] == ["c-small", "c-big"]
    content = f"{case()} [[sim:output_tokens=30]]"  # within max_tokens: a cut-off answer would escalate
    with client.messages.stream(model="cascade:refusal", max_tokens=100, messages=[{"role": "user", "content": content}]) as stream:
        final = stream.get_final_message()
    assert final.content[0].text and final.usage.output_tokens > 0


def test_auto_through_a_policy_rule_to_a_cascade(gw: Gateway) -> None:
    r = oai(gw, tags="feature=faq").chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": f"{case()} [[sim:reply@gpt-4o-mini=refusal]]"}]
    )
    rows = gw.wait_rows("request_id = ?", (r.headers["x-spendgate-request-id"],), count=2)
    assert [(x["model_requested"], x["route_reason"]) for x in rows] == [("auto", "cascade"), ("auto", "cascade-escalation")]
    assert rows[0]["control_actions"].startswith("route:faq:auto->cascade:refusal")


def test_a_budget_reserves_both_steps_of_a_cascade(gw: Gateway) -> None:
    # the budget is $0.01 = 1,000 U; a cascade may pay for both steps, so 100 output tokens
    # reserve 100 U + 1,000 U (does not fit) and 90 tokens 90 U + 900 U (fits)
    client = oai(gw, key="sk-test-budget")
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="cascade:refusal", max_tokens=100, messages=[{"role": "user", "content": case()}])
    r = client.chat.completions.with_raw_response.create(
        model="cascade:refusal", max_tokens=90, messages=[{"role": "user", "content": f"{case()} [[sim:output_tokens=90]]"}]
    )
    assert Decimal(r.headers["x-spendgate-budget-remaining"]) == (1_000 - 990) * U
    admin = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    [b] = [b for b in admin.get("/admin/budgets").json()["data"] if b["name"] == "b"]
    assert Decimal(b["spent"]) == 90 * U and Decimal(b["reserved"]) == 0  # the kept cheap answer is all it cost


def test_a_learned_check_skips_the_cheap_step_it_predicts_would_fail(gw: Gateway) -> None:
    r, rows = run(gw, "learned", "Prove the theorem about polygons rigorously, step by step", 1)
    [row] = rows
    # the cheap model was never called (nor paid): straight to the strong one
    assert (row["deployment"], row["route_reason"], row["attempt"]) == ("c-big", "cascade-escalation", 1)
    assert "cascade:learned:skip-step1:learned p=" in row["control_actions"]
    assert r.parse().model.startswith("gpt-4.1")
    r, rows = run(gw, "learned", "Hello Kim, thanks for the quick reply!", 1)
    assert_kept(r, rows)


def test_an_anthropic_client_gets_the_logprob_check_of_an_openai_cheap_model(gw: Gateway) -> None:
    # the client speaks Anthropic (no logprobs), the cheap deployment is OpenAI: the gateway
    # asks it for logprobs upstream, so a confident answer is kept
    client = anthropic.Anthropic(base_url=gw.url, api_key="sk-test-plain", max_retries=0)
    r = client.messages.with_raw_response.create(
        model="cascade:logprob", max_tokens=100, messages=[{"role": "user", "content": f"{case()} [[sim:logprob@gpt-4o-mini=-0.1]] [[sim:output_tokens=30]]"}]
    )
    rows = gw.wait_rows("request_id = ?", (r.headers["x-spendgate-request-id"],))
    assert [x["deployment"] for x in rows] == ["c-small"]
    assert r.parse().content[0].text


def test_a_client_that_said_logprobs_false_gets_none(gw: Gateway) -> None:
    r, rows = run(gw, "logprob", "[[sim:logprob@gpt-4o-mini=-0.1]]", 1, logprobs=False)
    assert_kept(r, rows)
    assert r.parse().choices[0].logprobs is None
