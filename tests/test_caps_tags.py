"""Caps (max_tokens clamp/reject, input size) and required tags (reject / record)."""

from __future__ import annotations

from typing import Any

import pytest

from spendgate.config import ApiKey, Deployment
from spendgate.controls.caps import CapStage
from spendgate.controls.required_tags import RequiredTagsStage
from spendgate.controls.schema import Cap, RequiredTags
from spendgate.errors import GatewayError
from spendgate.pipeline import Call


def make_call(
    body: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    model: str = "gpt-4o",
    wire: str = "openai",
    endpoint: str = "chat.completions",
    candidates: list[Deployment] | None = None,
) -> Call:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello, world"}], **(body or {})}
    call = Call(wire=wire, endpoint=endpoint, body=body, raw_body=b"{}", headers={}, model=model)
    call.tags = dict(tags or {})
    call.key_id = "k1"
    call.candidates = list(candidates or [])
    return call


async def rejected(stage: Any, call: Call) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await stage(call)
    return info.value


# --- caps -------------------------------------------------------------------------------

FAQ = Cap(name="faq-answers", match={"feature": "faq"}, max_tokens=512)


async def test_clamp_lowers_the_field_the_request_uses() -> None:
    stage = CapStage([FAQ])
    call = make_call({"max_tokens": 2048}, {"feature": "faq"})
    await stage(call)
    assert call.body["max_tokens"] == 512 and call.body_changed
    assert call.max_tokens == 512
    assert call.control_actions == ["cap:faq-answers:max_tokens 2048->512"]
    call = make_call({"max_completion_tokens": 4000}, {"feature": "faq"})
    await stage(call)
    assert call.body["max_completion_tokens"] == 512 and "max_tokens" not in call.body


async def test_within_the_cap_nothing_changes() -> None:
    call = make_call({"max_tokens": 100}, {"feature": "faq"})
    await CapStage([FAQ])(call)
    assert not call.body_changed and call.control_actions == []
    assert call.max_tokens == 100


async def test_unset_bound_gets_the_cap_in_the_right_field() -> None:
    call = make_call(tags={"feature": "faq"})
    await CapStage([FAQ])(call)
    assert call.body["max_tokens"] == 512 and call.max_tokens == 512
    assert call.control_actions == ["cap:faq-answers:max_tokens unset->512"]
    # OpenAI reasoning models refuse max_tokens
    o3 = Deployment(name="o3", provider="openai", model="o3", base_url="http://127.0.0.1:9")
    call = make_call(tags={"feature": "faq"}, model="o3", candidates=[o3])
    await CapStage([FAQ])(call)
    assert call.body["max_completion_tokens"] == 512 and "max_tokens" not in call.body


async def test_reject_action_refuses_a_larger_request() -> None:
    strict = Cap(name="strict", match={"team": "search"}, max_tokens=256, action="reject")
    call = make_call({"max_tokens": 1000}, {"team": "search"})
    err = await rejected(CapStage([strict]), call)
    assert err.status == 400 and err.kind == "invalid_request" and err.param == "max_tokens"
    assert "max_tokens 1000 is above the cap 'strict' (team=search): at most 256" in err.message
    assert call.control_actions == ["cap:strict:max_tokens 1000 refused"]
    ok = make_call({"max_tokens": 200}, {"team": "search"})
    await CapStage([strict])(ok)
    assert ok.max_tokens == 200


async def test_lowest_of_several_caps_wins_and_key_caps_count() -> None:
    key_cap = Cap(name="key:k1", match={"key": "k1"}, max_tokens=300)
    stage = CapStage([FAQ, Cap(name="all", max_tokens=1000)], caps_for=lambda call: [key_cap])
    call = make_call({"max_tokens": 2000}, {"feature": "faq"})
    await stage(call)
    assert call.body["max_tokens"] == 300 and call.max_tokens == 300
    assert call.control_actions == ["cap:key:k1:max_tokens 2000->300"]


async def test_anthropic_max_tokens() -> None:
    body = {"max_tokens": 4096, "messages": [{"role": "user", "content": "Hi"}]}
    call = make_call(body, {"feature": "faq"}, model="claude-sonnet-4-5", wire="anthropic", endpoint="messages")
    await CapStage([FAQ])(call)
    assert call.body["max_tokens"] == 512


async def test_caps_do_not_touch_embeddings() -> None:
    body = {"input": "hello"}
    call = make_call(body, {"feature": "faq"}, model="text-embedding-3-small", endpoint="embeddings")
    await CapStage([FAQ])(call)
    assert not call.body_changed and call.max_tokens is None


async def test_max_input_tokens_rejects_with_the_counts() -> None:
    cap = Cap(name="short-prompts", match={"feature": "chat"}, max_input_tokens=50)
    call = make_call({"messages": [{"role": "user", "content": "word " * 200}]}, {"feature": "chat"})
    err = await rejected(CapStage([cap]), call)
    assert err.status == 400
    assert "cap 'short-prompts' (feature=chat): 208 input tokens; the cap allows 50" in err.message
    assert call.control_actions == ["cap:short-prompts:max_input_tokens 208 refused"]


async def test_max_input_tokens_counts_for_real_before_refusing() -> None:
    """~900 bytes of English is ~200 tokens: the byte bound alone would refuse it."""
    cap = Cap(name="input", max_input_tokens=400)
    call = make_call({"messages": [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 20}]})
    await CapStage([cap])(call)
    assert call.input_tokens_estimate < 400


async def test_max_input_tokens_without_a_tokenizer_says_it_is_a_bound() -> None:
    cap = Cap(name="input", max_input_tokens=100)
    body = {"max_tokens": 10, "messages": [{"role": "user", "content": "x" * 500}]}
    call = make_call(body, model="claude-sonnet-4-5", wire="anthropic", endpoint="messages")
    err = await rejected(CapStage([cap]), call)
    assert "UTF-8 byte" in err.message


# --- required tags --------------------------------------------------------------------

PROD = RequiredTags(environments=["prod"], tags=["team", "feature"])


async def test_reject_names_the_missing_tags() -> None:
    call = make_call(tags={"environment": "prod"})
    err = await rejected(RequiredTagsStage([PROD]), call)
    assert err.status == 400 and err.kind == "invalid_request"
    assert err.message == (
        "Missing required tags: feature, team (required for environment 'prod'). "
        "Send them as x-spendgate-tags: feature=…,team=…"
    )


async def test_tagged_calls_and_other_environments_pass() -> None:
    stage = RequiredTagsStage([PROD])
    await stage(make_call(tags={"environment": "prod", "team": "search", "feature": "faq"}))
    await stage(make_call(tags={"environment": "staging"}))
    await stage(make_call())  # no environment tag: a prod-only rule does not apply


async def test_star_applies_to_every_call_even_without_environment() -> None:
    stage = RequiredTagsStage([RequiredTags(environments=["*"], tags=["team"])])
    err = await rejected(stage, make_call())
    assert "Missing required tags: team (required for calls without an environment tag)" in err.message
    await rejected(stage, make_call(tags={"environment": "dev"}))


async def test_key_owner_team_counts_as_the_team_tag() -> None:
    call = make_call(tags={"environment": "prod", "feature": "faq"})
    call.key = ApiKey(id="k1", team="search")
    await RequiredTagsStage([PROD])(call)


async def test_record_untagged_lets_the_call_through_and_records() -> None:
    rule = RequiredTags(environments=["*"], tags=["team", "feature"], mode="record_untagged")
    call = make_call(tags={"team": "search"})
    await RequiredTagsStage([rule])(call)
    assert call.missing_tags == ["feature"]
    assert (b"x-spendgate-missing-tags", b"feature") in call.response_headers


async def test_reject_rule_wins_over_record_rule() -> None:
    stage = RequiredTagsStage(
        [PROD, RequiredTags(environments=["prod", "staging"], tags=["user"], mode="record_untagged")]
    )
    err = await rejected(stage, make_call(tags={"environment": "prod", "team": "t"}))
    assert "Missing required tags: feature (" in err.message
    call = make_call(tags={"environment": "staging"})
    await stage(call)
    assert call.missing_tags == ["user"]
