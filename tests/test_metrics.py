"""/metrics on a real gateway: what a scrape says equals what the ledger holds."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import Gateway, base_config, start_gateway
from spendgate.config import parse_config
from spendgate.ledger.events import UsageEvent
from spendgate.telemetry.prometheus import PrometheusMetrics
from spendgate.telemetry.schema import PrometheusConfig
from spendgate.telemetry.service import Telemetry

Samples = dict[str, list[tuple[dict[str, str], float]]]
ADMIN = "sg-admin-metrics-7d1"
SCRAPE = "scrape-secret-44b"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


def scrape(gw: Gateway, headers: dict[str, str] | None = None) -> Samples:
    r = httpx.get(f"{gw.url}/metrics", headers=AS_ADMIN if headers is None else headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: Samples = defaultdict(list)
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[s.name].append((s.labels, s.value))
    return out


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(v for labels, v in samples.get(name, []) if all(labels.get(k) == m for k, m in match.items()))


def ledger_rows(gw: Gateway) -> list[dict[str, Any]]:
    return gw.rows()


def wait_written(gw: Gateway, count: int) -> Samples:
    """Scrape until the writer has written `count` events (the listener runs after the write)."""
    deadline = time.monotonic() + 10
    while True:
        s = scrape(gw)
        if total(s, "spendgate_ledger_events_written_total") >= count or time.monotonic() > deadline:
            time.sleep(0.1)
            return scrape(gw)
        time.sleep(0.05)


@pytest.fixture(scope="module")
def gw(simulator: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("metrics")
    cfg = base_config(simulator, tmp / "ledger.db")
    cfg["budgets"] = [
        {"name": "team-daily", "scope": {"team": "*"}, "window": {"period": "day"}, "limit": "25"},
        {"name": "everything", "scope": {}, "window": {"period": "month"}, "limit": "1000", "on_missing_price": "allow"},
        {"name": "user-daily", "scope": {"user": "*"}, "window": {"period": "day"}, "limit": "10"},
    ]
    cfg["telemetry"] = {"prometheus": {"key_env": "SCRAPE_TOKEN"}}
    cfg["cache"] = {"url": f"sqlite:///{tmp / 'cache.db'}", "policies": [{"name": "faq", "match": {"feature": "faq"}, "scope": {"team": "*"}, "exact": True}]}
    g = start_gateway(tmp, cfg, env={"SPENDGATE_ADMIN_KEY": ADMIN, "SCRAPE_TOKEN": SCRAPE})
    yield g
    g.process.terminate()


def oai(gw: Gateway, key: str = "sk-test-search") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.openai_base, api_key=key, max_retries=0)


def test_a_scrape_matches_the_ledger(gw: Gateway) -> None:
    client = oai(gw)
    for i in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"hello {i}"}])
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "a longer question [[sim:output_tokens=40]]"}])
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream please"}], stream=True, stream_options={"include_usage": True}
    )
    for _ in stream:
        pass
    client.embeddings.create(model="text-embedding-3-small", input="embed me")
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x [[sim:fault=500]]"}])
    faq = {"role": "user", "content": "what are your opening hours?"}
    for _ in range(2):  # a miss, then an exact hit
        client.chat.completions.create(model="gpt-4o-mini", messages=[faq], temperature=0, extra_headers={"x-spendgate-tags": "feature=faq"})
    plain = oai(gw, "sk-test-plain")
    plain.chat.completions.create(model="acme-internal-llm", messages=[{"role": "user", "content": "unpriced"}])

    s = wait_written(gw, 10)
    rows = ledger_rows(gw)
    assert len(rows) == 10

    # money: the float counter equals the ledger's exact sum
    for metric, column in (("spendgate_spend_usd_total", "cost"), ("spendgate_list_cost_usd_total", "list_cost")):
        exact = sum((Decimal(r[column]) for r in rows), Decimal(0))
        assert exact > 0
        assert total(s, metric) == pytest.approx(float(exact), rel=1e-9)
        for model in {r["model_used"] for r in rows}:
            per_model = sum((Decimal(r[column]) for r in rows if r["model_used"] == model), Decimal(0))
            assert total(s, metric, model=model) == pytest.approx(float(per_model), rel=1e-9, abs=1e-15)
    saved = sum((Decimal(r["saved"]) for r in rows), Decimal(0))
    assert saved > 0  # the cache hit saved a call
    assert total(s, "spendgate_saved_usd_total") == pytest.approx(float(saved), rel=1e-9)
    assert total(s, "spendgate_saved_usd_total", saved_by="cache", model="gpt-4o-mini") == pytest.approx(float(saved), rel=1e-9)

    # tokens: exact per type
    for kind, column in (("input", "input_tokens"), ("output", "output_tokens"), ("cache_read", "cache_read_tokens")):
        assert total(s, "spendgate_tokens_total", type=kind) == sum(r[column] for r in rows), kind
    assert total(s, "spendgate_tokens_total", type="output", model="gpt-4o") == sum(
        r["output_tokens"] for r in rows if r["model_used"] == "gpt-4o"
    )

    # requests by status and cache status; hits; unpriced
    assert total(s, "spendgate_requests_total") == 10
    assert total(s, "spendgate_requests_total", status="error") == 1
    assert total(s, "spendgate_requests_total", status="error", model="gpt-4o") == 1
    assert total(s, "spendgate_requests_total", cache_status="exact") == 1
    assert total(s, "spendgate_cache_hits_total", cache_status="exact", model="gpt-4o-mini") == 1
    assert total(s, "spendgate_unpriced_calls_total", model="acme-internal-llm") == 1

    # latency histograms: one observation per event with a latency; TTFT for the stream only
    with_latency = [r for r in rows if r["latency_ms"] is not None]
    assert total(s, "spendgate_request_duration_seconds_count") == len(with_latency)
    assert total(s, "spendgate_request_duration_seconds_sum") == pytest.approx(sum(r["latency_ms"] for r in with_latency) / 1000, rel=1e-6)
    assert total(s, "spendgate_request_duration_seconds_bucket", le="+Inf") == len(with_latency)
    assert total(s, "spendgate_time_to_first_token_seconds_count") == sum(1 for r in rows if r["streamed"] and r["ttft_ms"] is not None) == 1

    # the writer's health
    assert total(s, "spendgate_ledger_queue_depth") == 0
    assert total(s, "spendgate_ledger_events_rejected_total") == 0


def test_budget_gauges_show_each_instance(gw: Gateway) -> None:
    oai(gw).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "budgeted"}])
    time.sleep(0.3)  # budgets settle as the call ends; the gauges are read at scrape time
    s = scrape(gw)
    def gauge(name: str) -> dict[tuple[str, str], float]:
        return {(l["budget"], l["budget_instance"]): v for l, v in s[name]}

    assert gauge("spendgate_budget_limit_usd") == {("team-daily", "team=search"): 25.0, ("everything", "global"): 1000.0}
    assert gauge("spendgate_budget_instances") == {("team-daily", "team=search"): 1, ("everything", "global"): 1}
    search = ("team-daily", "team=search")
    spent = gauge("spendgate_budget_spent_usd")[search]
    remaining = gauge("spendgate_budget_remaining_usd")[search]
    ratio = gauge("spendgate_budget_utilization_ratio")[search]
    assert spent > 0 and remaining == pytest.approx(25.0 - spent, abs=1e-6)
    assert ratio == pytest.approx(spent / 25.0, abs=1e-4)
    # team-search spend as the ledger has it (today) is what the gauge shows
    con = sqlite3.connect(gw.ledger)
    ledger_spent = sum(Decimal(c) for (c,) in con.execute("SELECT cost FROM usage_events WHERE team = 'search'"))
    assert spent == pytest.approx(float(ledger_spent), rel=1e-9)


def test_per_user_budget_gauges_are_summed_by_default(gw: Gateway) -> None:
    client = oai(gw)
    for user in ("alice", "bob", "alice"):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "mine"}], extra_headers={"x-spendgate-tags": f"user={user}"}
        )
    time.sleep(0.3)
    r = httpx.get(f"{gw.url}/metrics", headers=AS_ADMIN)
    assert "alice" not in r.text and "bob" not in r.text  # no one's spend is readable from /metrics
    s = scrape(gw)
    def gauge(name: str) -> dict[str, float]:
        return {l["budget_instance"]: v for l, v in s[name] if l["budget"] == "user-daily"}

    assert gauge("spendgate_budget_instances") == {"user=*": 2}
    assert gauge("spendgate_budget_limit_usd") == {"user=*": 20.0}  # two users' limits of 10
    con = sqlite3.connect(gw.ledger)
    ledger_spent = sum(Decimal(c) for (c,) in con.execute("SELECT cost FROM usage_events WHERE user IN ('alice', 'bob')"))
    assert gauge("spendgate_budget_spent_usd")["user=*"] == pytest.approx(float(ledger_spent), rel=1e-9)
    assert gauge("spendgate_budget_remaining_usd")["user=*"] == pytest.approx(20.0 - float(ledger_spent), abs=1e-6)
    alice = float(sum(Decimal(c) for (c,) in con.execute("SELECT cost FROM usage_events WHERE user = 'alice'")))
    assert gauge("spendgate_budget_utilization_ratio")["user=*"] == pytest.approx(alice / 10, abs=1e-4)  # the highest user


def test_metrics_need_a_token_on_a_shared_gateway(gw: Gateway) -> None:
    url = f"{gw.url}/metrics"
    bare = httpx.get(url)
    assert bare.status_code == 401 and bare.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in bare.json()["error"]["message"]
    assert "spendgate_" not in bare.text
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer sk-test-search"}).status_code == 401  # a virtual key is no scrape token
    assert httpx.get(url, headers={"Authorization": f"Basic {ADMIN}"}).status_code == 401
    for token in (ADMIN, SCRAPE):
        ok = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and "spendgate_ledger_queue_depth" in ok.text


def test_first_minute_mode_is_open_until_a_key_exists(simulator: str, tmp_path: Path) -> None:
    cfg = base_config(simulator, tmp_path / "ledger.db")
    del cfg["keys"]
    cfg["allow_any_key"] = True
    g = start_gateway(tmp_path, cfg, env={"SPENDGATE_ADMIN_KEY": ADMIN})
    try:
        assert httpx.get(f"{g.url}/metrics").status_code == 200  # curl localhost:4000/metrics on a laptop
        created = httpx.post(f"{g.url}/admin/keys", json={"name": "first", "team": "ops"}, headers=AS_ADMIN)
        assert created.status_code in (200, 201), created.text
        assert httpx.get(f"{g.url}/metrics").status_code == 401  # the first managed key makes it a shared gateway
        assert httpx.get(f"{g.url}/metrics", headers=AS_ADMIN).status_code == 200
    finally:
        g.process.terminate()


def test_default_labels_are_low_cardinality(gw: Gateway) -> None:
    s = scrape(gw)
    assert {tuple(sorted(l)) for l, _ in s["spendgate_spend_usd_total"]} == {("model", "provider", "status")}
    assert {tuple(sorted(l)) for l, _ in s["spendgate_tokens_total"]} == {("model", "provider", "status", "type")}
    # no per-key, per-user or per-team series unless asked for
    every_label = {k for samples in s.values() for labels, _ in samples for k in labels}
    assert not every_label & {"user", "team", "key_id", "session_id", "tenant", "request_id"}


def test_openmetrics_on_request(gw: Gateway) -> None:
    r = httpx.get(f"{gw.url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0", **AS_ADMIN})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


def test_high_cardinality_labels_need_an_explicit_yes() -> None:
    with pytest.raises(ValueError, match="allow_high_cardinality"):
        parse_config("telemetry: {prometheus: {labels: [model, user]}}")
    with pytest.raises(ValueError, match="unknown label 'prompt'"):
        parse_config("telemetry: {prometheus: {labels: [model, prompt]}}")
    c = parse_config("telemetry: {prometheus: {labels: [model, user], allow_high_cardinality: true}}")
    assert c.telemetry.prometheus.labels == ["model", "user"]


def test_extra_labels_and_untagged_values() -> None:
    m = PrometheusMetrics(PrometheusConfig(labels=["model", "team", "feature"]))
    m.observe([
        UsageEvent(model_used="gpt-4o", team="search", feature="faq", cost=Decimal("0.1")),
        UsageEvent(model_used="gpt-4o", team="search", cost=Decimal("0.2")),
        UsageEvent(model_used="gpt-4o", team="search", feature="faq", cost=Decimal("0.3")),
    ])
    body, _ = m.render()
    s = {(tuple(sorted(x.labels.items())), x.name): x.value for f in text_string_to_metric_families(body.decode()) for x in f.samples}
    assert s[((("feature", "faq"), ("model", "gpt-4o"), ("team", "search")), "spendgate_spend_usd_total")] == pytest.approx(0.4)
    assert s[((("feature", ""), ("model", "gpt-4o"), ("team", "search")), "spendgate_spend_usd_total")] == pytest.approx(0.2)


def test_two_gateways_in_one_process_do_not_share_metrics() -> None:
    a, b = PrometheusMetrics(PrometheusConfig()), PrometheusMetrics(PrometheusConfig())
    a.observe([UsageEvent(model_used="gpt-4o", provider="openai", cost=Decimal("1.5"))])
    assert b"1.5" in a.render()[0] and b"spendgate_spend_usd_total{" not in b.render()[0]


def test_scrape_token(simulator: str, tmp_path: Path) -> None:
    cfg = base_config(simulator, tmp_path / "ledger.db")
    cfg["telemetry"] = {"prometheus": {"key_env": "SCRAPE_TOKEN", "path": "/internal/metrics"}}
    g = start_gateway(tmp_path, cfg, env={"SCRAPE_TOKEN": "scrape-secret"})
    try:
        assert httpx.get(f"{g.url}/internal/metrics").status_code == 401
        assert httpx.get(f"{g.url}/internal/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{g.url}/metrics").status_code == 404
        ok = httpx.get(f"{g.url}/internal/metrics", headers={"Authorization": "Bearer scrape-secret"})
        assert ok.status_code == 200 and "spendgate_ledger_queue_depth" in ok.text
    finally:
        g.process.terminate()


def test_the_metrics_guide_quotes_the_example() -> None:
    root = Path(__file__).resolve().parent.parent
    example = yaml.safe_load((root / "examples" / "telemetry.yaml").read_text())
    guide = (root / "docs" / "metrics.md").read_text()
    start = guide.index("```yaml\ntelemetry:\n") + len("```yaml\n")
    assert yaml.safe_load(guide[start : guide.index("```", start)]) == {"telemetry": example["telemetry"]}
    assert "docs/grafana/spendgate-dashboard.json" in guide


class _Writer:
    queue_depth, written, rejected, failed_batches = 0, 0, 0, 0


def asgi_scrape(telemetry: Telemetry, authorization: str | None = None) -> tuple[int, dict[str, Any]]:
    """GET /metrics through the handler itself: (status, JSON error body or {})."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"authorization", authorization.encode())] if authorization is not None else []
    asyncio.run(telemetry.serve_metrics({"type": "http", "path": "/metrics", "headers": headers}, send, None))
    status = sent[0]["status"]
    return status, (orjson.loads(sent[1]["body"]) if status != 200 else {})


def telemetry(prometheus: dict[str, Any], shared: bool, admin: str | None = ADMIN, environ: dict[str, str] | None = None) -> Telemetry:
    config = parse_config(yaml.safe_dump({"telemetry": {"prometheus": prometheus}})).telemetry
    return Telemetry(config, _Writer(), admin, environ=environ or {}, shared=shared)


@pytest.mark.parametrize(
    ("prometheus", "shared", "token", "status"),
    [
        ({}, False, None, 200),  # first-minute mode: open
        ({}, True, None, 401),  # virtual keys: a token
        ({}, True, f"Bearer {ADMIN}", 200),
        ({"key_env": "T"}, True, f"Bearer {SCRAPE}", 200),
        ({"key_env": "T"}, True, f"Bearer {ADMIN}", 200),
        ({"key_env": "T"}, False, None, 401),  # a scrape token configured: asked for even in first-minute mode
        ({"auth": "none"}, True, None, 200),  # behind a network boundary only
        ({"auth": "token"}, False, None, 401),
        ({"auth": "token"}, False, f"Bearer {ADMIN}", 200),
        ({"auth": "token"}, False, f"bearer  {ADMIN} ", 200),
    ],
)
def test_auth_matrix(prometheus: dict[str, Any], shared: bool, token: str | None, status: int) -> None:
    t = telemetry(prometheus, shared, environ={"T": SCRAPE})
    code, body = asgi_scrape(t, token)
    assert code == status, body
    if code == 401:
        assert body["error"]["type"] == "authentication_error"


def test_token_required_but_none_configured_is_403() -> None:
    code, body = asgi_scrape(telemetry({}, shared=True, admin=None))
    assert code == 403 and body["error"]["type"] == "permission_error"
    assert "telemetry.prometheus.key_env" in body["error"]["message"]
    code, body = asgi_scrape(telemetry({"key_env": "MISSING_TOKEN"}, shared=False, admin=None))
    assert code == 403 and "MISSING_TOKEN is not set" in body["error"]["message"]


def test_shared_is_asked_at_each_scrape() -> None:
    state = {"shared": False}
    config = parse_config("{}").telemetry
    t = Telemetry(config, _Writer(), ADMIN, environ={}, shared=lambda: state["shared"])
    assert asgi_scrape(t)[0] == 200
    state["shared"] = True
    assert asgi_scrape(t)[0] == 401


def test_auth_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="require_admin_key was replaced by auth"):
        parse_config("telemetry: {prometheus: {require_admin_key: false}}")
    with pytest.raises(ValueError, match="auth: none ignores key_env"):
        parse_config("telemetry: {prometheus: {auth: none, key_env: T}}")
    with pytest.raises(ValueError, match="auth"):
        parse_config("telemetry: {prometheus: {auth: maybe}}")
    assert parse_config("{}").telemetry.prometheus.auth == "auto"


def budget_row(name: str, instance: str, limit: str, spent: str, utilization: str) -> dict[str, Any]:
    scope = {} if instance == "global" else dict(p.split("=", 1) for p in instance.split(","))
    return {"name": name, "instance": instance, "scope": scope, "limit": Decimal(limit), "effective_limit": Decimal(limit),
            "spent": Decimal(spent), "remaining": Decimal(limit) - Decimal(spent), "utilization": utilization}


ROWS = [
    budget_row("team-daily", "team=search", "25", "5", "0.2000"),
    budget_row("per-user", "user=alice", "10", "9", "0.9000"),
    budget_row("per-user", "user=bob", "10", "1", "0.1000"),
    budget_row("team-user", "team=search,user=alice", "5", "1", "0.2000"),
    budget_row("team-user", "team=search,user=bob", "5", "2", "0.4000"),
    budget_row("team-user", "team=ads,user=carol", "5", "3", "0.6000"),
    budget_row("per-tenant", "tag:tenant=acme", "100", "50", "0.5000"),
    budget_row("key:k-123", "key=k-123", "20", "4", "0.2000"),
    budget_row("key:k-456", "key=k-456", "20", "8", "0.4000"),
]


def budget_gauges(allow_high_cardinality: bool) -> tuple[str, dict[str, dict[tuple[str, str], float]]]:
    m = PrometheusMetrics(PrometheusConfig(allow_high_cardinality=allow_high_cardinality))
    m.budgets.rows = ROWS
    text = m.render()[0].decode()
    out: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for x in family.samples:
            if x.name.startswith("spendgate_budget_"):
                out[x.name][(x.labels["budget"], x.labels["budget_instance"])] = x.value
    return text, out


def test_budget_gauges_of_per_user_key_and_tenant_budgets_are_summed_by_default() -> None:
    text, g = budget_gauges(False)
    for who in ("alice", "bob", "carol", "acme", "k-123", "k-456"):
        assert who not in text
    assert g["spendgate_budget_instances"] == {
        ("team-daily", "team=search"): 1,
        ("per-user", "user=*"): 2,
        ("team-user", "team=ads,user=*"): 1,
        ("team-user", "team=search,user=*"): 2,
        ("per-tenant", "tag:tenant=*"): 1,
        ("key:*", "key=*"): 2,
    }
    assert g["spendgate_budget_limit_usd"][("per-user", "user=*")] == 20
    assert g["spendgate_budget_spent_usd"][("per-user", "user=*")] == 10
    assert g["spendgate_budget_remaining_usd"][("per-user", "user=*")] == 10
    assert g["spendgate_budget_utilization_ratio"][("per-user", "user=*")] == 0.9  # the highest user's
    assert g["spendgate_budget_spent_usd"][("team-user", "team=search,user=*")] == 3
    assert g["spendgate_budget_spent_usd"][("key:*", "key=*")] == 12
    assert g["spendgate_budget_limit_usd"][("team-daily", "team=search")] == 25


def test_budget_gauges_per_instance_with_the_opt_in() -> None:
    _, g = budget_gauges(True)
    assert set(g["spendgate_budget_spent_usd"]) == {(r["name"], r["instance"]) for r in ROWS}
    assert g["spendgate_budget_spent_usd"][("per-user", "user=alice")] == 9
    assert g["spendgate_budget_utilization_ratio"][("key:k-456", "key=k-456")] == 0.4
    assert set(g["spendgate_budget_instances"].values()) == {1}
    assert parse_config("telemetry: {prometheus: {allow_high_cardinality: true}}").telemetry.prometheus.allow_high_cardinality
