"""Spend controls end to end: a real `spendgate serve` in front of the real
simulator, called with the real `openai` and `anthropic` SDKs.

Required tags, caps, rate limits (rpm, tpm, concurrency, batch share) and a
budget's slowdown plan, each checked where a client sees it: the SDK's error
class and message, the response headers, and the ledger rows.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from conftest import Gateway, base_config, start_gateway

ADMIN_KEY = "sk-admin-controls-e2e"
SLOT_S = 5  # the rate limiter's slot length: per-minute limits look at the current slot and the 12 before it
SLOW_MS = 800  # upstream latency of a slow non-streamed call

Launch = Callable[..., Gateway]


@pytest.fixture
def launch(simulator: str, tmp_path: Path) -> Iterator[Launch]:
    """Start a gateway with the test config plus the given control sections."""
    started: list[Gateway] = []

    def _launch(*, keys: list[dict[str, Any]] | None = None, env: dict[str, str] | None = None, **sections: Any) -> Gateway:
        config = base_config(simulator, tmp_path / "ledger.db")
        config["keys"] += keys or []
        config.update(sections)
        gw = start_gateway(tmp_path, config, env=env)
        started.append(gw)
        return gw

    yield _launch
    for gw in started:
        out = gw.process.terminate()
        assert "Traceback" not in out and "finisher failed" not in out, out


def oai(gw: Gateway, key: str = "sk-test-plain", tags: str | None = None, **kw: Any) -> openai.OpenAI:
    headers = {"x-spendgate-tags": tags} if tags else {}
    return openai.OpenAI(base_url=gw.openai_base, api_key=key, max_retries=0, default_headers=headers, **kw)


def ant(gw: Gateway, key: str = "sk-test-plain", tags: str | None = None) -> anthropic.Anthropic:
    headers = {"x-spendgate-tags": tags} if tags else {}
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, default_headers=headers)


def chat(client: openai.OpenAI, prompt: str = "hello", *, model: str = "gpt-4o", out: int = 5, **kw: Any) -> Any:
    """A chat call whose completion is exactly `out` tokens (unless max_tokens cuts it); the raw response."""
    messages = [{"role": "user", "content": f"{prompt} [[sim:output_tokens={out}]]"}]
    return client.chat.completions.with_raw_response.create(model=model, messages=messages, **kw)


def error_message(exc: openai.APIStatusError | anthropic.APIStatusError) -> str:
    return exc.response.json()["error"]["message"]


def rid_of(exc: openai.APIStatusError | anthropic.APIStatusError) -> str:
    return exc.response.headers["x-spendgate-request-id"]


def assert_no_row(gw: Gateway, request_id: str) -> None:
    time.sleep(0.1)  # five ledger flushes
    assert gw.rows("request_id = ?", (request_id,)) == [], "a refused call never reached the upstream"


# ---- required tags ---------------------------------------------------------------------------

REQUIRED_TAGS = [
    {"environments": ["prod"], "tags": ["team", "feature", "environment"], "mode": "reject"},
    {"environments": ["staging"], "tags": ["team", "feature", "tenant"], "mode": "record_untagged"},
]
CAPS = [
    {"name": "faq-answers", "match": {"feature": "faq"}, "max_tokens": 50, "action": "clamp"},
    {"name": "strict-search", "match": {"feature": "strict"}, "max_tokens": 100, "action": "reject"},
    {"name": "prompt-size", "match": {"feature": "bulk"}, "max_input_tokens": 200},
]
OWNER_KEY = {"key": "sk-test-owned", "id": "key-owned", "team": "payments"}


@pytest.fixture(scope="module")
def tags_caps_gw(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("controls-tags")
    config = base_config(simulator, tmp / "ledger.db")
    config["keys"].append(OWNER_KEY)
    config.update(required_tags=REQUIRED_TAGS, caps=CAPS)
    gw = start_gateway(tmp, config)
    yield gw
    out = gw.process.terminate()
    assert "Traceback" not in out, out


def test_prod_rule_in_reject_mode_refuses_untagged_calls_in_both_sdks(tags_caps_gw: Gateway) -> None:
    gw = tags_caps_gw
    with pytest.raises(openai.BadRequestError) as info:
        chat(oai(gw, tags="environment=prod,team=search"))
    assert info.value.status_code == 400
    msg = error_message(info.value)
    assert msg.startswith("Missing required tags: feature (required for environment 'prod')."), msg
    assert "x-spendgate-tags: feature=" in msg
    assert_no_row(gw, rid_of(info.value))

    with pytest.raises(openai.BadRequestError) as info:  # team and feature both missing, named in order
        chat(oai(gw, tags="environment=prod"))
    assert error_message(info.value).startswith("Missing required tags: feature, team (required for environment 'prod').")

    with pytest.raises(anthropic.BadRequestError) as ainfo:
        ant(gw, tags="environment=prod,team=search").messages.create(
            model="claude-haiku-4-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
        )
    assert ainfo.value.status_code == 400
    assert ainfo.value.response.json()["type"] == "error"  # Anthropic's error shape
    assert error_message(ainfo.value).startswith("Missing required tags: feature (required for environment 'prod').")
    assert_no_row(gw, rid_of(ainfo.value))


def test_fully_tagged_prod_calls_pass_and_the_key_owner_counts_as_team(tags_caps_gw: Gateway) -> None:
    gw = tags_caps_gw
    r = chat(oai(gw, tags="environment=prod,team=search,feature=faq-bot"))
    assert "x-spendgate-missing-tags" not in r.headers
    [row] = gw.by_request(r.headers["x-spendgate-request-id"])
    assert (row["environment"], row["team"], row["feature"], row["missing_tags"]) == ("prod", "search", "faq-bot", None)
    # a key owned by a team: its calls carry that team without saying so
    r = chat(oai(gw, key="sk-test-owned", tags="environment=prod,feature=refunds"))
    [row] = gw.by_request(r.headers["x-spendgate-request-id"])
    assert (row["team"], row["missing_tags"]) == ("payments", None)


def test_prod_only_rule_leaves_other_environments_alone(tags_caps_gw: Gateway) -> None:
    gw = tags_caps_gw
    r = chat(oai(gw, tags="environment=dev"))  # no team, no feature
    assert "x-spendgate-missing-tags" not in r.headers
    [row] = gw.by_request(r.headers["x-spendgate-request-id"])
    assert (row["environment"], row["team"], row["feature"], row["missing_tags"]) == ("dev", None, None, None)
    msg = ant(gw, tags="environment=dev").messages.create(model="claude-haiku-4-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert msg.content


def test_record_untagged_rule_lets_the_call_through_and_records_what_it_lacked(tags_caps_gw: Gateway) -> None:
    gw = tags_caps_gw
    r = chat(oai(gw, tags="environment=staging,team=search"))
    assert r.parse().choices[0].message.content
    assert r.headers["x-spendgate-missing-tags"] == "feature,tenant"
    [row] = gw.by_request(r.headers["x-spendgate-request-id"])
    assert row["missing_tags"] == "feature,tenant" and row["status"] == "ok"

    raw = ant(gw, tags="environment=staging,feature=faq,tenant=acme").messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-spendgate-missing-tags"] == "team"
    [row] = gw.by_request(raw.headers["x-spendgate-request-id"])
    assert row["missing_tags"] == "team" and row["wire_format"] == "anthropic"

    r = chat(oai(gw, tags="environment=staging,team=search,feature=faq,tenant=acme"), out=3)
    assert "x-spendgate-missing-tags" not in r.headers
    [row] = gw.by_request(r.headers["x-spendgate-request-id"])
    assert row["missing_tags"] is None


# ---- caps ------------------------------------------------------------------------------------


def test_clamp_cap_lowers_max_tokens_and_is_recorded(tags_caps_gw: Gateway) -> None:
    gw = tags_caps_gw
    r = chat(oai(gw, tags="feature=faq"), out=1000, max_tokens=1000)
    resp = r.parse()
    assert resp.usage.completion_tokens == 50 and resp.choices[0].finish_reason == "length"
    [row] = gw.by_request(r.headers["x-spendgate-request-id"])
    assert row["output_tokens"] == 50 and row["control_actions"] == "cap:faq-answers:max_tokens 1000->50"

    r = chat(oai(gw, tags="feature=faq"), out=1000)  # no bound stated: the cap is written in
    assert r.parse().usage.completion_tokens == 50
    [row] = gw.by_request(r.headers["x-spendgate-request-id"])
    assert row["control_actions"] == "cap:faq-answers:max_tokens unset->50"

    raw = ant(gw, tags="feature=faq").messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=1000, messages=[{"role": "user", "content": "hi [[sim:output_tokens=1000]]"}]
    )
    msg = raw.parse()
    assert msg.usage.output_tokens == 50 and msg.stop_reason == "max_tokens"
    [row] = gw.by_request(raw.headers["x-spendgate-request-id"])
    assert row["control_actions"] == "cap:faq-answers:max_tokens 1000->50"

    r = chat(oai(gw, tags="feature=faq"), out=20, max_tokens=40)  # within the cap: untouched
    assert r.parse().usage.completion_tokens == 20
    [row] = gw.by_request(r.headers["x-spendgate-request-id"])
    assert row["control_actions"] is None

    r = chat(oai(gw, tags="feature=other"), out=300, max_tokens=300)  # not matched: untouched
    assert r.parse().usage.completion_tokens == 300


def test_reject_cap_refuses_larger_requests_with_400(tags_caps_gw: Gateway) -> None:
    gw = tags_caps_gw
    with pytest.raises(openai.BadRequestError) as info:
        chat(oai(gw, tags="feature=strict"), max_tokens=1000)
    msg = error_message(info.value)
    assert msg.startswith("max_tokens 1000 is above the cap 'strict-search' (feature=strict): at most 100 output tokens."), msg
    assert_no_row(gw, rid_of(info.value))
    with pytest.raises(anthropic.BadRequestError) as ainfo:
        ant(gw, tags="feature=strict").messages.create(model="claude-haiku-4-5", max_tokens=101, messages=[{"role": "user", "content": "hi"}])
    assert "above the cap 'strict-search'" in error_message(ainfo.value)

    r = chat(oai(gw, tags="feature=strict"), out=100, max_tokens=100)  # at the cap: fine
    assert r.parse().usage.completion_tokens == 100


def test_max_input_tokens_cap_refuses_large_prompts_naming_the_cap(tags_caps_gw: Gateway) -> None:
    gw = tags_caps_gw
    with pytest.raises(openai.BadRequestError) as info:
        chat(oai(gw, tags="feature=bulk"), "hello " * 400, max_tokens=10)
    msg = error_message(info.value)
    m = re.match(r"The input is too large for the cap 'prompt-size' \(feature=bulk\): (\d+) input tokens; the cap allows 200\.", msg)
    assert m and 400 <= int(m.group(1)) <= 430, msg
    assert_no_row(gw, rid_of(info.value))
    # ~600 bytes: the byte bound says more than 200, the real count (~110) does not
    r = chat(oai(gw, tags="feature=bulk"), "hello " * 100, max_tokens=10)
    assert r.parse().usage.prompt_tokens < 200


# ---- rate limits -----------------------------------------------------------------------------


def expected_retry_after(first: tuple[float, float], refused: tuple[float, float]) -> tuple[int, int]:
    """Bounds of the right `retry-after`: the first call's 5-s slot leaves the window 13 slots
    after it starts; `first` and `refused` are (sent, answered) times seen by the client."""
    earliest_room = (math.floor(first[0] / SLOT_S) + 13) * SLOT_S
    latest_room = (math.floor(first[1] / SLOT_S) + 13) * SLOT_S
    return math.ceil(earliest_room - refused[1]), math.ceil(latest_room - refused[0])


def test_rpm_per_key_refuses_the_sixth_call_with_a_correct_retry_after(launch: Launch) -> None:
    gw = launch(rate_limits=[{"name": "per-key", "scope": {"key": "*"}, "rpm": 5}])
    search = oai(gw, key="sk-test-search")
    t0 = time.time()
    chat(search, out=1)
    first = (t0, time.time())
    for _ in range(4):
        chat(search, out=1)
    with pytest.raises(openai.RateLimitError) as info:
        t1 = time.time()
        try:
            chat(search, out=1)
        finally:
            refused = (t1, time.time())
    h = info.value.response.headers
    assert info.value.status_code == 429
    assert error_message(info.value).startswith(
        "Rate limit 'per-key' (key=key-search): 5 requests per minute; 5 made in the last minute. Try again in "
    )
    assert (h["x-spendgate-ratelimit-name"], h["x-spendgate-ratelimit-limit"], h["x-spendgate-ratelimit-remaining"]) == ("per-key", "5", "0")
    retry = int(h["retry-after"])
    assert h["x-spendgate-ratelimit-reset"] == h["retry-after"]
    lo, hi = expected_retry_after(first, refused)
    assert lo <= retry <= hi, (lo, retry, hi)
    # no 60 s span may hold a 6th call: the wait is at least what is left of the first call's minute
    assert 60 - (refused[1] - first[0]) <= retry <= 65
    assert_no_row(gw, rid_of(info.value))

    # per-key instances: another key has its own five
    plain = oai(gw, key="sk-test-plain")
    for _ in range(5):
        chat(plain, out=1)
    with pytest.raises(openai.RateLimitError) as info:
        chat(plain, out=1)
    assert "(key=key-plain)" in error_message(info.value)

    # the refused calls held nothing, and the countdown runs on: a second later, a smaller wait
    time.sleep(1.1)
    t2 = time.time()
    with pytest.raises(anthropic.RateLimitError) as ainfo:  # the same limit in Anthropic's shape
        ant(gw, key="sk-test-search").messages.create(model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    later = int(ainfo.value.response.headers["retry-after"])
    lo, hi = expected_retry_after(first, (t2, time.time()))
    assert lo <= later <= hi and later < retry, (lo, later, hi, retry)
    assert "5 made in the last minute" in error_message(ainfo.value)


def open_paced_stream(client: openai.OpenAI, tokens: int, prompt: str = "hold", **kw: Any) -> tuple[Any, Iterator[Any]]:
    """A streamed call paced at 10 tokens/s, returned once its first chunk has arrived: from
    then on it has certainly passed the controls and holds what it reserved until it ends."""
    stream = client.chat.completions.create(
        model="gpt-4o",
        stream=True,
        messages=[{"role": "user", "content": f"{prompt} [[sim:output_tokens={tokens}]] [[sim:tokens_per_second=10]]"}],
        **kw,
    )
    chunks = iter(stream)
    next(chunks)
    return stream, chunks


def test_concurrency_limit_refuses_the_third_call_and_frees_slots_however_calls_end(launch: Launch) -> None:
    gw = launch(rate_limits=[{"name": "in-flight", "scope": {"key": "*"}, "concurrency": 2}])

    def hold_both_slots(tokens: int, within_s: float = 5.0) -> list[tuple[Any, Iterator[Any]]]:
        """Two slow calls in flight; tries again while a slot is still on its way back."""
        deadline = time.monotonic() + within_s
        while True:
            held: list[tuple[Any, Iterator[Any]]] = []
            try:
                held.append(open_paced_stream(oai(gw), tokens))
                held.append(open_paced_stream(oai(gw), tokens))
                return held
            except openai.RateLimitError:
                for stream, _ in held:
                    stream.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def third_is_refused() -> openai.RateLimitError:
        with pytest.raises(openai.RateLimitError) as info:
            chat(oai(gw), out=1)
        h = info.value.response.headers
        assert error_message(info.value) == "Rate limit 'in-flight' (key=key-plain): 2 requests in flight; 2 are in flight. Try again in 1 s."
        assert (h["retry-after"], h["x-spendgate-ratelimit-name"], h["x-spendgate-ratelimit-limit"], h["x-spendgate-ratelimit-remaining"]) == ("1", "in-flight", "2", "0")
        return info.value

    # two slow calls in flight: the third is refused, another key is not
    held = hold_both_slots(tokens=20, within_s=0)
    third_is_refused()
    chat(oai(gw, key="sk-test-search"), out=1)
    for _, chunks in held:  # both run to their normal end
        list(chunks)
    time.sleep(1)  # retry-after
    held = hold_both_slots(tokens=100, within_s=0)  # both slots came back at once
    third_is_refused()
    for stream, _ in held:
        stream.close()  # the client stops reading: the slots come back too

    # failed calls free their slots: an upstream 500, a dropped connection
    with pytest.raises(openai.InternalServerError):
        chat(oai(gw), "[[sim:fault=500]]")
    with pytest.raises(openai.APIStatusError) as info:
        chat(oai(gw), "[[sim:fault=reset]]")
    assert info.value.status_code == 502
    # ... and a slow call whose client gave up before the answer (its slot is held until the upstream answers)
    with pytest.raises(openai.APITimeoutError):
        chat(oai(gw, timeout=0.3), f"slow [[sim:latency_ms={SLOW_MS}]]")
    held = hold_both_slots(tokens=100)
    third_is_refused()
    for stream, _ in held:
        stream.close()

    rows = gw.wait_rows("status != 'ok'", count=6)
    assert sorted((r["http_status"], r["error_type"]) for r in rows if r["status"] == "error") == [(500, "server_error"), (502, "upstream")]
    assert sum(r["status"] == "client_disconnect" for r in rows) >= 4  # the streams closed early


def test_tpm_reserves_the_worst_case_and_settles_to_actual_usage(launch: Launch) -> None:
    gw = launch(rate_limits=[{"name": "tokens", "scope": {"key": "*"}, "tpm": 1000}])
    # in flight with up to 900 output tokens reserved (it will use 12)
    stream, chunks = open_paced_stream(oai(gw), 12, "tpm", max_tokens=900, stream_options={"include_usage": True})
    with pytest.raises(openai.RateLimitError) as info:
        chat(oai(gw), "tpm", out=5, max_tokens=900)
    first_usage = list(chunks)[-1].usage
    assert first_usage.completion_tokens == 12
    gw.by_request(stream.response.headers["x-spendgate-request-id"])  # it has ended and settled
    msg = error_message(info.value)
    m = re.match(r"Rate limit 'tokens' \(key=key-plain\): 1000 tokens per minute; (\d+) used or reserved in the last minute, this request needs up to (\d+)\. Try again in (\d+) s\.", msg)
    assert m, msg
    held, needs = int(m.group(1)), int(m.group(2))
    assert 900 < held <= 1000 and 900 < needs < 1000 and held + needs > 1000
    assert info.value.response.headers["x-spendgate-ratelimit-remaining"] == str(1000 - held)

    # the first call settled to what it used, so the same request fits now
    r = chat(oai(gw), "tpm", out=5, max_tokens=900)
    second_usage = r.parse().usage
    gw.by_request(r.headers["x-spendgate-request-id"])
    with pytest.raises(openai.RateLimitError) as info:
        chat(oai(gw), "tpm", out=5, max_tokens=960)
    m = re.match(r"Rate limit 'tokens' \(key=key-plain\): 1000 tokens per minute; (\d+) used or reserved", error_message(info.value))
    assert m and int(m.group(1)) == first_usage.total_tokens + second_usage.total_tokens, (error_message(info.value), first_usage, second_usage)

    with pytest.raises(openai.RateLimitError) as info:  # more than the limit allows at all: no point waiting
        chat(oai(gw, key="sk-test-search"), "tpm", max_tokens=2000)
    assert "more than the limit allows; lower max_tokens or shorten the input" in error_message(info.value)
    assert "retry-after" not in info.value.response.headers


def test_batch_share_refuses_batch_calls_at_half_the_limit_while_interactive_pass(launch: Launch) -> None:
    gw = launch(rate_limits=[{"name": "team-rpm", "scope": {"team": "*"}, "rpm": 4, "batch_share": 0.5}])
    batch = oai(gw, key="sk-test-search", tags="priority=batch")
    interactive = oai(gw, key="sk-test-search")
    for _ in range(2):
        chat(batch, out=1)
    with pytest.raises(openai.RateLimitError) as info:
        chat(batch, out=1)
    h = info.value.response.headers
    assert error_message(info.value).startswith(
        "Rate limit 'team-rpm' (team=search): 2 requests per minute (batch calls may use 50% of its 4); 2 made in the last minute."
    )
    assert (h["x-spendgate-ratelimit-limit"], h["x-spendgate-ratelimit-remaining"]) == ("2", "0") and int(h["retry-after"]) >= 1
    for _ in range(2):  # interactive traffic keeps the other half
        chat(interactive, out=1)
    with pytest.raises(openai.RateLimitError) as info:  # ... and the limit counts batch calls too
        chat(interactive, out=1)
    assert "4 requests per minute; 4 made in the last minute" in error_message(info.value)
    assert info.value.response.headers["x-spendgate-ratelimit-limit"] == "4"
    chat(oai(gw, tags="team=other,priority=batch"), out=1)  # another team: its own counter


# ---- budget slowdown -------------------------------------------------------------------------

# Round prices make every cost exact: input is free, a gpt-4o output token is $0.0001 (10 U)
# and a gpt-4o-mini one $0.00001 (1 U). The budget is $0.10 = 10,000 U, so 1% = 100 U.
U = Decimal("0.00001")
LIMIT_U = 10_000
PRICE_U = {"gpt-4o": 10, "gpt-4o-mini": 1}
SLOWDOWN_CONFIG: dict[str, Any] = {
    "keys": [{"key": "sk-test-shop", "id": "key-shop", "team": "shop"}],
    "prices": [
        {"model": "gpt-4o", "provider": "openai", "price": {"input_per_mtok": "0", "output_per_mtok": "100"}},
        {"model": "gpt-4o-mini", "provider": "openai", "price": {"input_per_mtok": "0", "output_per_mtok": "10"}},
    ],
    "budgets": [
        {
            "name": "shop",
            "scope": {"team": "shop"},
            "window": {"rolling": "1h"},
            "limit": "0.10",
            "slowdown": [
                {"at": 50, "action": "route", "route": {"gpt-4o": "gpt-4o-mini"}, "except_features": ["checkout"]},
                {"at": 70, "action": "cap_max_tokens", "max_tokens": 64},
                {"at": 90, "action": "refuse_batch"},
            ],
        }
    ],
}
ROUTE = "degrade:shop@50%:route gpt-4o->gpt-4o-mini"


class Shop:
    """Calls by the shop team, with the spend they must have caused kept in U."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.spent = 0
        self.admin = httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})

    def call(self, model: str, asked: int, feature: str = "search", batch: bool = False) -> tuple[Any, dict[str, Any]]:
        """A call asking `asked` output tokens (and producing as many as it may); its response and ledger row."""
        tags = f"feature={feature}" + (",priority=batch" if batch else "")
        r = chat(oai(self.gw, key="sk-test-shop", tags=tags), f"shop {feature}", model=model, out=asked, max_tokens=asked)
        [row] = self.gw.by_request(r.headers["x-spendgate-request-id"])  # also: the budget has settled
        resp = r.parse()
        self.spent += resp.usage.completion_tokens * PRICE_U[row["model_used"]]
        assert Decimal(row["cost"]) == resp.usage.completion_tokens * PRICE_U[row["model_used"]] * U
        return r, row

    def refused(self, model: str, asked: int, feature: str = "search", batch: bool = False) -> openai.RateLimitError:
        tags = f"feature={feature}" + (",priority=batch" if batch else "")
        with pytest.raises(openai.RateLimitError) as info:
            chat(oai(self.gw, key="sk-test-shop", tags=tags), f"shop {feature}", model=model, out=asked, max_tokens=asked)
        assert_no_row(self.gw, rid_of(info.value))
        return info.value

    def status(self) -> dict[str, Any]:
        [row] = [b for b in self.admin.get("/admin/budgets").json()["data"] if b["name"] == "shop"]
        return row

    def utilization_u(self) -> int:
        """Spend as the gateway counts it, checked against what the calls cost."""
        st = self.status()
        assert Decimal(st["reserved"]) == 0
        assert Decimal(st["spent"]) == self.spent * U, (st, self.spent)
        return self.spent

    def drive_to(self, target_u: int) -> None:
        """Spend exactly up to `target_u` with checkout calls (never routed): gpt-4o tokens,
        then gpt-4o-mini for the rest; at most 64 tokens a call once the 70% cap holds."""
        while self.spent < target_u:
            need = target_u - self.spent
            per_call = 64 if self.spent >= 7_000 else 1_000
            if need >= 10:
                self.call("gpt-4o", min(need // 10, per_call), feature="checkout")
            else:
                self.call("gpt-4o-mini", need, feature="checkout")
        assert self.utilization_u() == target_u


def degraded(r: Any) -> list[str]:
    return r.headers.get_list("x-spendgate-degraded")


def test_slowdown_plan_fires_each_step_at_its_threshold_and_the_limit_is_a_hard_cap(launch: Launch) -> None:
    gw = launch(env={"SPENDGATE_ADMIN_KEY": ADMIN_KEY}, **SLOWDOWN_CONFIG)
    shop = Shop(gw)
    assert shop.status()["slowdown"] is None

    # below 50%: gpt-4o is served as asked
    r, row = shop.call("gpt-4o", 200)
    assert (row["model_used"], row["route_reason"], row["control_actions"], degraded(r)) == ("gpt-4o", "direct", None, [])
    assert r.headers["x-spendgate-budget-name"] == "shop"
    assert Decimal(r.headers["x-spendgate-budget-remaining"]) == (LIMIT_U - 2_000) * U  # the worst case (= the cost) held
    shop.drive_to(4_990)  # 49.9%
    r, row = shop.call("gpt-4o", 1)  # not before: still gpt-4o; now exactly 50%
    assert (row["model_used"], row["control_actions"], degraded(r)) == ("gpt-4o", None, [])
    assert shop.utilization_u() == 5_000

    # 50%: gpt-4o goes to gpt-4o-mini, except for checkout; max_tokens still as asked
    r, row = shop.call("gpt-4o", 200)
    assert r.parse().model == "gpt-4o-mini" and r.parse().usage.completion_tokens == 200
    assert (row["model_requested"], row["model_used"], row["deployment"], row["route_reason"]) == ("gpt-4o", "gpt-4o-mini", "oa-gpt-4o-mini", "degrade")
    assert row["control_actions"] == ROUTE and degraded(r) == ["shop@50%;route"]
    r, row = shop.call("gpt-4o", 10, feature="checkout")
    assert (row["model_used"], row["route_reason"], row["control_actions"], degraded(r)) == ("gpt-4o", "direct", None, [])
    r, row = shop.call("gpt-4o", 10, batch=True)  # batch is degraded like the rest, not refused
    assert (row["model_used"], row["control_actions"]) == ("gpt-4o-mini", ROUTE)
    with oai(gw, key="sk-test-shop", tags="feature=search").chat.completions.with_streaming_response.create(
        model="gpt-4o", max_tokens=100, stream=True, stream_options={"include_usage": True}, messages=[{"role": "user", "content": "[[sim:output_tokens=100]]"}]
    ) as stream:
        chunks = list(stream.parse())
    assert stream.headers.get_list("x-spendgate-degraded") == ["shop@50%;route"]
    assert chunks[0].model == "gpt-4o-mini" and chunks[-1].usage.completion_tokens == 100
    [row] = gw.by_request(stream.headers["x-spendgate-request-id"])
    assert (row["streamed"], row["model_used"], row["control_actions"], Decimal(row["cost"])) == (1, "gpt-4o-mini", ROUTE, 100 * U)
    shop.spent += 100
    assert shop.status()["slowdown"] == "route@50%"

    # 70%: not before ...
    shop.drive_to(6_900)
    r, row = shop.call("gpt-4o", 100)  # at 69%: routed, 100 tokens as asked; now exactly 70%
    assert r.parse().usage.completion_tokens == 100 and row["control_actions"] == ROUTE
    assert shop.utilization_u() == 7_000
    # ... at 70% max_tokens is lowered to 64, on top of the route
    r, row = shop.call("gpt-4o", 200)
    resp = r.parse()
    assert resp.usage.completion_tokens == 64 and resp.choices[0].finish_reason == "length"
    assert row["model_used"] == "gpt-4o-mini"
    assert row["control_actions"] == f"{ROUTE};degrade:shop@70%:cap_max_tokens 200->64"
    assert degraded(r) == ["shop@50%;route", "shop@70%;cap_max_tokens"]
    r, row = shop.call("gpt-4o", 200, feature="checkout")  # checkout is spared the route, not the cap
    assert (row["model_used"], row["output_tokens"], row["control_actions"]) == ("gpt-4o", 64, "degrade:shop@70%:cap_max_tokens 200->64")
    assert degraded(r) == ["shop@70%;cap_max_tokens"]
    assert shop.status()["slowdown"] == "cap_max_tokens@70%"

    # 90%: batch calls pass until then ...
    shop.drive_to(8_990)
    r, row = shop.call("gpt-4o", 10, batch=True)  # at 89.9%; now exactly 90%
    assert row["model_used"] == "gpt-4o-mini" and row["priority"] == "batch"
    assert shop.utilization_u() == 9_000
    # ... and are refused from then on, while interactive calls still pass
    err = shop.refused("gpt-4o", 10, batch=True)
    h = err.response.headers
    assert error_message(err).startswith("Budget 'shop' (team=shop) is 90% used ($0.09 of $0.10): batch calls are paused until ")
    assert h.get_list("x-spendgate-degraded") == ["shop@90%;refuse_batch"]
    assert (h["x-spendgate-budget-name"], h["x-spendgate-budget-limit"], h["x-spendgate-budget-remaining"]) == ("shop", "0.100000", "0.010000")
    assert int(h["retry-after"]) >= 1 and h["x-spendgate-budget-reset"]
    r, row = shop.call("gpt-4o", 200)
    assert (row["model_used"], row["output_tokens"]) == ("gpt-4o-mini", 64)
    shop.call("gpt-4o", 10, feature="checkout")
    assert shop.status()["slowdown"] == "refuse_batch@90%"

    # 100% is a hard cap: a call is admitted only while its worst case fits
    shop.drive_to(9_800)
    err = shop.refused("gpt-4o", 21, feature="checkout")  # may cost $0.0021, $0.002 left
    h = err.response.headers
    assert error_message(err).startswith("The budget 'shop' (team=shop) has $0.002 left of $0.10 in its rolling 1h window")
    assert error_message(err).endswith("this call may cost up to $0.0021.")
    assert (h["x-spendgate-budget-name"], h["x-spendgate-budget-limit"], h["x-spendgate-budget-remaining"]) == ("shop", "0.100000", "0.002000")
    assert int(h["retry-after"]) >= 1 and h["x-spendgate-budget-reset"]
    r, _ = shop.call("gpt-4o", 20, feature="checkout")  # exactly what is left
    assert Decimal(r.headers["x-spendgate-budget-remaining"]) == 0
    assert shop.utilization_u() == LIMIT_U
    # past the cap everything is refused: routed, checkout, direct mini, batch, Anthropic
    for model, feature, batch in (("gpt-4o", "search", False), ("gpt-4o", "checkout", False), ("gpt-4o-mini", "search", False), ("gpt-4o", "search", True)):
        err = shop.refused(model, 1, feature=feature, batch=batch)
        assert (err.response.headers["x-spendgate-budget-name"], err.response.headers["x-spendgate-budget-remaining"]) == ("shop", "0.000000")
    with pytest.raises(anthropic.RateLimitError) as ainfo:
        ant(gw, key="sk-test-shop", tags="feature=search").messages.create(
            model="claude-haiku-4-5", max_tokens=1, messages=[{"role": "user", "content": "hi"}]
        )
    assert "has $0.00 left of $0.10" in error_message(ainfo.value)
    st = shop.status()
    assert (st["percent"], Decimal(st["remaining"]), st["slowdown"]) == ("100", 0, "refuse_batch@90%")
    # the ledger agrees with the budget to the last digit
    assert sum(Decimal(r["cost"]) for r in gw.rows("team = 'shop'")) == LIMIT_U * U
