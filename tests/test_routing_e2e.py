"""Routing end to end: the real SDKs against a gateway process, the simulator upstream.

Failover on every fault kind, Retry-After, cooldown and recovery, streams that
fail before and after their first byte, budget reservations across differently
priced failovers, weighted and least-busy balancing, and the policy aliases.
Cascades have their own file (test_cascade_e2e.py).

Deployments of one public model point at *different* upstream model ids
(gpt-4o-mini, gpt-4.1-mini, ...) so a model-scoped simulator directive
(`[[sim:fault@gpt-4o-mini=500]]`) fails one deployment and not the other.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from conftest import Gateway, base_config, start_gateway

ADMIN_KEY = "sk-admin-routing-e2e"
U = Decimal("0.00001")  # round prices: input free, a gpt-4o-mini output token 1 U, a gpt-4.1 one 10 U
PRICES = [
    {"model": "gpt-4o-mini", "provider": "openai", "price": {"input_per_mtok": "0", "output_per_mtok": "10"}},
    {"model": "gpt-4.1-mini", "provider": "openai", "price": {"input_per_mtok": "0", "output_per_mtok": "10"}},
    {"model": "gpt-4.1", "provider": "openai", "price": {"input_per_mtok": "0", "output_per_mtok": "100"}},
]


def nonce() -> str:
    """Makes a prompt unique: the simulator's `fault_times` counters are keyed on the
    directives, so an unknown `case` directive gives each call its own."""
    return f"[[sim:case={uuid.uuid4().hex[:10]}]]"


def routing_config(simulator: str, ledger: Path, **routing: Any) -> dict[str, Any]:
    sim = f"{simulator}/v1"
    config = base_config(simulator, ledger)
    config["admin"] = {"key_env": "SPENDGATE_ADMIN_KEY"}
    config["prices"] = PRICES
    config["deployments"] += [
        # "ha": primary gpt-4o-mini, backup gpt-4.1-mini (same price), then the dear gpt-4.1
        {"name": "ha-primary", "provider": "openai", "model": "gpt-4o-mini", "serves": ["ha"], "base_url": sim, "timeout_s": 1.0},
        {"name": "ha-backup", "provider": "openai", "model": "gpt-4.1-mini", "serves": ["ha"], "base_url": sim},
        {"name": "big", "provider": "openai", "model": "gpt-4.1", "serves": ["big"], "base_url": sim},
        # single deployments that retry, Retry-After up to 3 s; and a pair to fail over within
        {"name": "patient", "provider": "openai", "model": "gpt-4o-mini", "serves": ["patient"], "base_url": sim, "retries": 1, "retry_max_wait_s": 3},
        {"name": "impatient", "provider": "openai", "model": "gpt-4o-mini", "serves": ["impatient"], "base_url": sim, "retries": 1, "retry_max_wait_s": 3},
        {"name": "backoff", "provider": "openai", "model": "gpt-4o-mini", "serves": ["backoff"], "base_url": sim, "retries": 1},
        {"name": "pair-a", "provider": "openai", "model": "gpt-4o-mini", "serves": ["pair"], "base_url": sim, "retries": 1, "retry_max_wait_s": 3},
        {"name": "pair-b", "provider": "openai", "model": "gpt-4.1-mini", "serves": ["pair"], "base_url": sim},
        # "cool": the cooldown pair
        {"name": "cool-a", "provider": "openai", "model": "gpt-4o-mini", "serves": ["cool"], "base_url": sim},
        {"name": "cool-b", "provider": "openai", "model": "gpt-4.1-mini", "serves": ["cool"], "base_url": sim},
        # "bal": weighted 3:1; "busy": least busy between a slow and a fast deployment
        {"name": "bal-3", "provider": "openai", "model": "gpt-4o-mini", "serves": ["bal"], "base_url": sim, "weight": 3},
        {"name": "bal-1", "provider": "openai", "model": "gpt-4.1-mini", "serves": ["bal"], "base_url": sim, "weight": 1},
        {"name": "busy-slow", "provider": "openai", "model": "gpt-4o-mini", "serves": ["busy"], "base_url": sim},
        {"name": "busy-fast", "provider": "openai", "model": "gpt-4.1-mini", "serves": ["busy"], "base_url": sim},
        # "cheap-first": fails over to a 10x dearer model
        {"name": "cf-cheap", "provider": "openai", "model": "gpt-4o-mini", "serves": ["cheap-first"], "base_url": sim},
        {"name": "cf-dear", "provider": "openai", "model": "gpt-4.1", "serves": ["cheap-first"], "base_url": sim},
    ]
    config["routing"] = {
        "models": {
            "ha": {"context_window_fallbacks": ["big"]},
            "bal": {"strategy": "weighted"},
            "busy": {"strategy": "least_busy"},
        },
        "tiers": {"small": ["ha"], "flagship": ["big"]},
        "policy": {
            "default": "tier:small",
            "rules": [
                {"name": "reports", "match": {"feature": "report"}, "use": "tier:flagship", "enforce": "reject"},
                {"name": "chat", "match": {"feature": "chat"}, "use": "tier:small", "allow": ["big"], "enforce": "rewrite"},
            ],
        },
        "health": {"allowed_fails": 1000, "window_s": 60, "cooldown_s": 30},  # no cooldowns here but the cool pair's
        **routing,
    }
    return config


@pytest.fixture(scope="module")
def gw(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("routing")
    gateway = start_gateway(tmp, routing_config(simulator, tmp / "ledger.db"), env={"SPENDGATE_ADMIN_KEY": ADMIN_KEY})
    yield gateway
    out = gateway.process.terminate()
    assert "Traceback" not in out, out


def oai(gw: Gateway, tags: str | None = None) -> openai.OpenAI:
    headers = {"x-spendgate-tags": tags} if tags else {}
    return openai.OpenAI(base_url=gw.openai_base, api_key="sk-test-plain", max_retries=0, default_headers=headers)


def ask(gw: Gateway, model: str, text: str, tags: str | None = None, **kw: Any) -> tuple[Any, list[dict[str, Any]]]:
    r = oai(gw, tags).chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": text}], **kw)
    rid = r.headers["x-spendgate-request-id"]
    return r, gw.wait_rows("request_id = ?", (rid,))


def rows_of(gw: Gateway, rid: str, count: int) -> list[dict[str, Any]]:
    return gw.wait_rows("request_id = ?", (rid,), count=count)


# ---- failover on each fault kind ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, error_type",
    [
        ("429", "requests"),  # OpenAI's 429 type: requests | tokens
        ("500", "server_error"),
        ("503", "server_error"),
        ("529", "server_error"),
        ("timeout", "timeout"),
        ("reset", "upstream"),
    ],
)
def test_each_fault_kind_fails_over_to_the_next_deployment(gw: Gateway, kind: str, error_type: str) -> None:
    retry = " [[sim:retry_after=0]]" if kind in ("429", "503", "529") else ""
    r, rows = ask(gw, "ha", f"{nonce()} [[sim:fault@gpt-4o-mini={kind}]]{retry}")
    assert r.status_code == 200 and r.parse().choices[0].message.content
    rows = rows_of(gw, r.headers["x-spendgate-request-id"], 2)
    assert [(x["attempt"], x["deployment"], x["route_reason"], x["status"]) for x in rows] == [
        (1, "ha-primary", "direct", "error"),
        (2, "ha-backup", "failover", "ok"),
    ]
    assert rows[0]["error_type"] == error_type and Decimal(rows[0]["cost"]) == 0
    assert Decimal(r.headers["x-spendgate-cost"]) == Decimal(rows[1]["cost"]) > 0


def test_a_prompt_too_long_goes_to_the_context_window_fallback(gw: Gateway) -> None:
    r, _ = ask(gw, "ha", f"{nonce()} [[sim:fault@gpt-4o-mini=context_length]] [[sim:fault@gpt-4.1-mini=context_length]]")
    rows = rows_of(gw, r.headers["x-spendgate-request-id"], 2)
    # not the same-sized backup: straight to the bigger window
    assert [(x["deployment"], x["status"], x["error_type"]) for x in rows] == [
        ("ha-primary", "error", "context_length_exceeded"),
        ("big", "ok", None),
    ]
    assert r.parse().model.startswith("gpt-4.1")


def test_a_prompt_too_long_without_a_fallback_is_the_clients_400(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai(gw).chat.completions.create(model="big", messages=[{"role": "user", "content": f"{nonce()} [[sim:fault=context_length]]"}])
    assert info.value.code == "context_length_exceeded"
    [row] = rows_of(gw, info.value.response.headers["x-spendgate-request-id"], 1)
    assert row["error_type"] == "context_length_exceeded"


def test_every_deployment_failing_returns_the_last_error_with_every_attempt_recorded(gw: Gateway) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        oai(gw).chat.completions.create(model="ha", messages=[{"role": "user", "content": f"{nonce()} [[sim:fault=500]]"}])
    rows = rows_of(gw, info.value.response.headers["x-spendgate-request-id"], 2)
    assert [(x["deployment"], x["route_reason"]) for x in rows] == [("ha-primary", "direct"), ("ha-backup", "failover")]
    assert len({x["request_id"] for x in rows}) == 1


# ---- Retry-After and backoff -------------------------------------------------------------------


def test_retry_after_is_waited_for_before_the_retry_on_the_same_deployment(gw: Gateway) -> None:
    started = time.monotonic()
    r, _ = ask(gw, "patient", f"{nonce()} [[sim:fault@gpt-4o-mini=429]] [[sim:retry_after=1]] [[sim:fault_times=1]]")
    elapsed = time.monotonic() - started
    rows = rows_of(gw, r.headers["x-spendgate-request-id"], 2)
    assert [(x["deployment"], x["route_reason"], x["status"]) for x in rows] == [
        ("patient", "direct", "error"),
        ("patient", "retry", "ok"),
    ]
    assert rows[1]["ts_start"] - rows[0]["ts_end"] >= 0.99  # the provider asked for 1 s
    assert elapsed >= 1.0


def test_with_another_deployment_a_retry_after_fails_over_at_once(gw: Gateway) -> None:
    # pair-a said "not for 1 s": pair-b answers now, and pair-a is left alone until then
    started = time.monotonic()
    r, _ = ask(gw, "pair", f"{nonce()} [[sim:fault@gpt-4o-mini=429]] [[sim:retry_after=1]] [[sim:fault_times=1]]")
    rows = rows_of(gw, r.headers["x-spendgate-request-id"], 2)
    assert [(x["deployment"], x["route_reason"]) for x in rows] == [("pair-a", "direct"), ("pair-b", "failover")]
    assert time.monotonic() - started < 0.9
    _, rows = ask(gw, "pair", nonce())  # within the second: pair-b first
    assert rows[0]["deployment"] == "pair-b"


def test_a_retry_after_longer_than_the_deployment_may_wait_is_the_clients_429(gw: Gateway) -> None:
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        oai(gw).chat.completions.create(
            model="impatient", messages=[{"role": "user", "content": f"{nonce()} [[sim:fault=429]] [[sim:retry_after=30]]"}]
        )
    assert time.monotonic() - started < 3  # not held for 30 s
    assert info.value.response.headers["retry-after"] == "30"
    rows = rows_of(gw, info.value.response.headers["x-spendgate-request-id"], 1)
    assert [x["deployment"] for x in rows] == ["impatient"]


def test_backoff_retries_a_5xx_then_succeeds(gw: Gateway) -> None:
    r, _ = ask(gw, "backoff", f"{nonce()} [[sim:fault@gpt-4o-mini=500]] [[sim:fault_times=1]]")
    rows = rows_of(gw, r.headers["x-spendgate-request-id"], 2)
    assert [(x["deployment"], x["route_reason"], x["status"]) for x in rows] == [
        ("backoff", "direct", "error"),
        ("backoff", "retry", "ok"),
    ]
    gap = rows[1]["ts_start"] - rows[0]["ts_end"]
    assert 0.1 <= gap <= 0.5  # 0.25 s base less up to half of it in jitter


# ---- cooldown and recovery ---------------------------------------------------------------------


def test_a_failing_deployment_cools_down_and_is_probed_back_in(simulator: str, tmp_path: Path) -> None:
    config = routing_config(simulator, tmp_path / "ledger.db", health={"allowed_fails": 2, "window_s": 30, "cooldown_s": 1.0})
    gw = start_gateway(tmp_path, config, env={"SPENDGATE_ADMIN_KEY": ADMIN_KEY})
    admin = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    try:
        first_try = []
        for _ in range(2):  # two failures within the window trip cool-a
            r, _ = ask(gw, "cool", f"{nonce()} [[sim:fault@gpt-4o-mini=500]]")
            first_try.append(rows_of(gw, r.headers["x-spendgate-request-id"], 2)[0]["deployment"])
        assert first_try == ["cool-a", "cool-a"]
        state = admin.get("/admin/routing").json()["deployments"]["cool-a"]
        assert state["state"] == "cooling"
        # while it cools, calls go to cool-b first: no attempt is wasted on cool-a
        r, rows = ask(gw, "cool", nonce())
        assert [x["deployment"] for x in rows] == ["cool-b"]
        time.sleep(1.1)
        # the cooldown is over: the next call probes cool-a, which answers and is healthy again
        r, rows = ask(gw, "cool", nonce())
        assert [x["deployment"] for x in rows] == ["cool-a"]
        assert admin.get("/admin/routing").json()["deployments"]["cool-a"]["state"] == "healthy"
        r, rows = ask(gw, "cool", nonce())
        assert [x["deployment"] for x in rows] == ["cool-a"]
    finally:
        out = gw.process.terminate()
    assert "Traceback" not in out


def test_a_failed_probe_cools_the_deployment_again_for_longer(simulator: str, tmp_path: Path) -> None:
    config = routing_config(simulator, tmp_path / "ledger.db", health={"allowed_fails": 1, "window_s": 30, "cooldown_s": 0.5})
    gw = start_gateway(tmp_path, config, env={"SPENDGATE_ADMIN_KEY": ADMIN_KEY})
    admin = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    try:
        ask(gw, "cool", f"{nonce()} [[sim:fault@gpt-4o-mini=500]]")
        time.sleep(0.6)
        r, _ = ask(gw, "cool", f"{nonce()} [[sim:fault@gpt-4o-mini=500]]")  # the probe fails
        rows = rows_of(gw, r.headers["x-spendgate-request-id"], 2)
        assert [x["deployment"] for x in rows] == ["cool-a", "cool-b"]
        state = admin.get("/admin/routing").json()["deployments"]["cool-a"]
        assert state["state"] == "cooling" and state["cooldown_s"] == 1.0  # doubled
    finally:
        gw.process.terminate()


# ---- streams -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["stream_error", "500", "reset"])
def test_a_stream_failing_before_its_first_byte_fails_over_transparently(gw: Gateway, kind: str) -> None:
    raw = oai(gw).chat.completions.with_raw_response.create(
        model="ha", stream=True, messages=[{"role": "user", "content": f"{nonce()} [[sim:fault@gpt-4o-mini={kind}]]"}]
    )
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text  # a whole answer, from the backup, and no error event on the way
    rows = rows_of(gw, raw.headers["x-spendgate-request-id"], 2)
    assert [(x["deployment"], x["status"], x["streamed"]) for x in rows] == [("ha-primary", "error", 1), ("ha-backup", "ok", 1)]
    assert rows[1]["output_tokens"] > 0 and rows[1]["usage_source"] == "provider"


def test_a_stream_failing_after_its_first_byte_ends_with_a_clean_error_event(gw: Gateway) -> None:
    raw = oai(gw).chat.completions.with_raw_response.create(
        model="ha", stream=True,
        messages=[{"role": "user", "content": f"{nonce()} [[sim:fault@gpt-4o-mini=cut]] [[sim:output_tokens=200]]"}],
    )  # fmt: skip
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in raw.parse():
            if chunk.choices:
                got.append(chunk.choices[0].delta.content or "")
    assert "".join(got)  # the client saw part of the answer, then a clean error
    assert "broke off" in str(info.value)
    rows = rows_of(gw, raw.headers["x-spendgate-request-id"], 1)
    time.sleep(0.3)
    rows = gw.rows("request_id = ?", (raw.headers["x-spendgate-request-id"],))
    assert len(rows) == 1  # no failover once the client has bytes
    assert rows[0]["status"] == "error" and rows[0]["error_type"] == "stream_cut" and rows[0]["output_tokens"] > 0


def test_an_anthropic_client_stream_fails_over_transparently_too(gw: Gateway) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key="sk-test-plain", max_retries=0)
    with client.messages.stream(
        model="ha", max_tokens=50, messages=[{"role": "user", "content": f"{nonce()} [[sim:fault@gpt-4o-mini=stream_error]]"}]
    ) as stream:
        final = stream.get_final_message()
        rid = stream.response.headers["x-spendgate-request-id"]
    assert final.content[0].text
    rows = rows_of(gw, rid, 2)
    assert [(x["deployment"], x["status"]) for x in rows] == [("ha-primary", "error"), ("ha-backup", "ok")]


# ---- budgets across a failover to a dearer model -----------------------------------------------


def test_a_budget_reserves_the_dearest_candidate_and_settles_what_actually_ran(simulator: str, tmp_path: Path) -> None:
    config = routing_config(simulator, tmp_path / "ledger.db")
    config["keys"].append({"key": "sk-test-cf", "id": "key-cf", "team": "cf"})
    config["budgets"] = [{"name": "cf", "scope": {"team": "cf"}, "window": {"rolling": "1h"}, "limit": "0.01"}]  # 1,000 U
    gw = start_gateway(tmp_path, config, env={"SPENDGATE_ADMIN_KEY": ADMIN_KEY})
    admin = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    client = openai.OpenAI(base_url=gw.openai_base, api_key="sk-test-cf", max_retries=0)
    try:
        # 50 output tokens: 50 U on cf-cheap, but 500 U if it fails over to cf-dear: the reservation is the 500
        r = client.chat.completions.with_raw_response.create(
            model="cheap-first", max_tokens=50,
            messages=[{"role": "user", "content": f"{nonce()} [[sim:fault@gpt-4o-mini=500]] [[sim:output_tokens=50]]"}],
        )  # fmt: skip
        assert Decimal(r.headers["x-spendgate-budget-remaining"]) == (1_000 - 500) * U
        rows = rows_of(gw, r.headers["x-spendgate-request-id"], 2)
        assert [(x["deployment"], x["status"]) for x in rows] == [("cf-cheap", "error"), ("cf-dear", "ok")]
        assert Decimal(rows[1]["cost"]) == 500 * U  # the dear model ran: its price, not the cheap one's
        [b] = [b for b in admin.get("/admin/budgets").json()["data"] if b["name"] == "cf"]
        assert Decimal(b["spent"]) == 500 * U and Decimal(b["reserved"]) == 0
        # 600 tokens could cost 6,000 U on the dear fallback: more than is left, so refused up front
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(
                model="cheap-first", max_tokens=600, messages=[{"role": "user", "content": f"{nonce()} [[sim:output_tokens=600]]"}]
            )
        # the ledger and the budget agree to the last digit
        spent = sum(Decimal(x["cost"]) for x in gw.rows("team = 'cf'"))
        [b] = [b for b in admin.get("/admin/budgets").json()["data"] if b["name"] == "cf"]
        assert Decimal(b["spent"]) == spent == 500 * U
    finally:
        gw.process.terminate()


# ---- balancing ---------------------------------------------------------------------------------


def test_weights_are_respected_within_tolerance(gw: Gateway) -> None:
    client = oai(gw)
    rids = [client.chat.completions.with_raw_response.create(model="bal", max_tokens=5, messages=[{"role": "user", "content": "w"}]).headers["x-spendgate-request-id"] for _ in range(200)]  # fmt: skip
    rows = gw.wait_rows("deployment LIKE 'bal-%'", count=200)
    assert {x["request_id"] for x in rows} == set(rids)
    counts = Counter(x["deployment"] for x in rows)
    # 3:1 of 200 is 150:50; binomial sd ≈ 6.1, so ±25 is four sd
    assert 125 <= counts["bal-3"] <= 175, counts


def test_least_busy_sends_most_calls_to_the_faster_deployment(gw: Gateway) -> None:
    # busy-slow (gpt-4o-mini) takes 400 ms a call, busy-fast (gpt-4.1-mini) 20 ms; 8 clients
    # calling back to back: a slow call keeps its deployment busy, so new calls go to the fast one
    text = "[[sim:latency_ms@gpt-4o-mini=400]] [[sim:latency_ms@gpt-4.1-mini=20]]"
    deadline = time.monotonic() + 3.0

    def client_loop() -> None:
        c = oai(gw)
        while time.monotonic() < deadline:
            c.chat.completions.create(model="busy", max_tokens=5, messages=[{"role": "user", "content": text}])

    threads = [threading.Thread(target=client_loop) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = Counter(x["deployment"] for x in gw.wait_rows("deployment LIKE 'busy-%'"))
    assert counts["busy-fast"] > 5 * counts["busy-slow"], counts


# ---- policy aliases ----------------------------------------------------------------------------


def test_auto_resolves_through_the_policy_and_says_why(gw: Gateway) -> None:
    r, rows = ask(gw, "auto", nonce(), tags="feature=anything")
    [row] = rows
    assert (row["model_requested"], row["deployment"], row["route_reason"]) == ("auto", "ha-primary", "policy")
    r, rows = ask(gw, "auto", nonce(), tags="feature=chat")
    assert rows[0]["control_actions"] == "route:chat:auto->tier:small"


def test_tier_alias_and_feature_alias(gw: Gateway) -> None:
    _, rows = ask(gw, "tier:flagship", nonce())
    assert (rows[0]["deployment"], rows[0]["route_reason"]) == ("big", "policy")
    _, rows = ask(gw, "feature:report", nonce())
    assert rows[0]["deployment"] == "big"


def test_enforced_rules_rewrite_or_reject_other_models(gw: Gateway) -> None:
    # chat may ask for big (allowed) and is rewritten to its tier otherwise
    _, rows = ask(gw, "big", nonce(), tags="feature=chat")
    assert rows[0]["deployment"] == "big" and rows[0]["route_reason"] == "direct"
    _, rows = ask(gw, "cheap-first", nonce(), tags="feature=chat")
    assert (rows[0]["deployment"], rows[0]["route_reason"]) == ("ha-primary", "policy")
    assert rows[0]["model_requested"] == "cheap-first"
    # reports must use the flagship tier: anything else is refused, naming what is allowed
    with pytest.raises(openai.BadRequestError) as info:
        oai(gw, "feature=report").chat.completions.create(model="ha", messages=[{"role": "user", "content": "x"}])
    assert "tier:flagship" in info.value.message


def test_unknown_aliases_are_clear_404s(gw: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oai(gw).chat.completions.create(model="tier:huge", messages=[{"role": "user", "content": "x"}])
    assert "tier 'huge'" in info.value.message
    with pytest.raises(openai.NotFoundError):
        oai(gw).chat.completions.create(model="cascade:nope", messages=[{"role": "user", "content": "x"}])
