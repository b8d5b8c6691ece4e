"""`spendgate demo`: the shipped trace profile, the backfill, the live traffic and the whole command."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
from aiohttp import web

from spendgate.config import TagRules, parse_config
from spendgate.controls.tags import header_tags, validate_tags
from spendgate.demo.backfill import ENVIRONMENTS, FEATURES, MODELS, TEAMS, UNPRICED_MODEL, generate_history
from spendgate.demo.command import EXAMPLE_LEDGER_URL, demo_config_yaml
from spendgate.demo.profile import Distribution, load_profile
from spendgate.demo.traffic import build_request, pick, send_traffic
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.sqlite import EXACT, SQLiteLedger
from spendgate.pricing.catalog import Catalog, TokenUsage

REPO = Path(__file__).resolve().parent.parent
PROFILE_FILE = REPO / "src" / "spendgate" / "data" / "demo_profile.json"
TRACE_DIRS = (REPO.parent / "shared" / "data" / "azure-llm-trace-2023", Path("/work/shared/data/azure-llm-trace-2023"))
NOW = 1_730_000_000.0  # fixed, so the history is the same on every run
DAY = 86400.0
M = Decimal(1_000_000)
# List prices per million tokens, written out by hand so the check does not lean on the catalog.
HAND_PRICES = {
    "gpt-4o": {"in": Decimal("2.50"), "read": Decimal("1.25"), "write": Decimal("2.50"), "out": Decimal("10")},
    "claude-sonnet-4-5": {"in": Decimal("3"), "read": Decimal("0.30"), "write": Decimal("3.75"), "out": Decimal("15")},
}


def demo_config():
    return parse_config(demo_config_yaml("sqlite:///:memory:"))


def exact_sum(values) -> Decimal:
    total = Decimal(0)
    for v in values:
        total = EXACT.add(total, v)
    return total


# --- the profile ----------------------------------------------------------


def test_profile_ships_in_the_package_small_and_cited() -> None:
    profile = load_profile()  # importlib.resources, not a path into the repo
    assert set(profile.workloads) == {"code", "conv"}
    assert profile.source["license"] == "CC-BY-4.0"
    assert "AzurePublicDataset" in profile.source["repository"]
    assert PROFILE_FILE.stat().st_size < 8192


def test_profile_keeps_the_traces_shape() -> None:
    """Known facts of the Azure 2023 trace: chat answers are long, code answers short."""
    p = load_profile()
    code, conv = p.workload("code"), p.workload("conv")
    assert (code.requests, conv.requests) == (8819, 19366)
    assert 1000 <= code.context_tokens.median <= 2000 and 5 <= code.generated_tokens.median <= 30
    assert 800 <= conv.context_tokens.median <= 1300 and 80 <= conv.generated_tokens.median <= 200
    assert conv.generated_tokens.median > 5 * code.generated_tokens.median
    assert 1.5 < code.mean_rps < 4 and 4 < conv.mean_rps < 8
    for w in (code, conv):
        assert 50 <= len(w.minute_weights) <= 60
        assert statistics.fmean(w.minute_weights) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("workload", ["code", "conv"])
def test_sampling_reproduces_the_profiles_quantiles(workload: str) -> None:
    w = load_profile().workload(workload)
    rng = random.Random(1)
    for dist in (w.context_tokens, w.generated_tokens):
        draws = sorted(dist.sample(rng) for _ in range(20_000))
        median = draws[len(draws) // 2]
        assert dist.quantile(0.48) - 1 <= median <= dist.quantile(0.52) + 1
        p90 = draws[int(len(draws) * 0.9)]
        assert dist.quantile(0.88) - 1 <= p90 <= dist.quantile(0.92) + 1
        assert draws[0] >= max(1, dist.values[0] - 1) and draws[-1] <= dist.values[-1]


def test_distribution_interpolates_and_validates() -> None:
    d = Distribution((0.0, 0.5, 1.0), (10.0, 20.0, 100.0))
    assert d.quantile(0.25) == 15.0 and d.median == 20.0 and d.quantile(0.75) == 60.0 and d.quantile(1.0) == 100.0
    assert d.sample(random.Random(0), scale=0.0) == 1  # clamped to at least one token
    with pytest.raises(ValueError):
        Distribution((0.0, 1.0), (5.0, 1.0))
    with pytest.raises(ValueError):
        Distribution((0.1, 1.0), (1.0, 2.0))


def test_shipped_profile_is_what_the_script_derives_from_the_trace() -> None:
    trace = next((d for d in TRACE_DIRS if (d / "conv.csv").is_file()), None)
    if trace is None:
        pytest.skip("the Azure trace is not here (it ships beside the repo, not with it)")
    spec = importlib.util.spec_from_file_location("derive_demo_profile", REPO / "scripts" / "derive_demo_profile.py")
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.render(script.derive(trace)) == PROFILE_FILE.read_text()


# --- the backfill ---------------------------------------------------------


@pytest.fixture(scope="module")
def history() -> list[UsageEvent]:
    return list(generate_history(load_profile(), Catalog(demo_config()), days=30, now=NOW, seed=7))


def test_backfill_is_deterministic_for_a_seed() -> None:
    catalog = Catalog(demo_config())
    a = [e.to_dict() for e in generate_history(load_profile(), catalog, days=3, now=NOW, seed=3)]
    b = [e.to_dict() for e in generate_history(load_profile(), catalog, days=3, now=NOW, seed=3)]
    c = [e.to_dict() for e in generate_history(load_profile(), catalog, days=3, now=NOW, seed=4)]
    assert a == b and len(a) > 500
    assert a != c


def test_backfill_volume_and_identity(history: list[UsageEvent]) -> None:
    assert 20_000 <= len(history) <= 45_000
    assert len({e.event_id for e in history}) == len(history)
    assert all(e.request_id and e.source == "demo" and e.prefix_hashes == [] for e in history)
    assert [e.ts_start for e in history] == sorted(e.ts_start for e in history)
    # a retry shares its request id with the failed attempt before it
    by_request: dict[str, list[UsageEvent]] = defaultdict(list)
    for e in history:
        by_request[e.request_id].append(e)
    retried = [evs for evs in by_request.values() if len(evs) > 1]
    assert retried
    for evs in retried:
        assert [e.attempt for e in evs] == [1, 2]
        assert evs[0].status == "error" and evs[1].status == "ok" and evs[1].route_reason == "retry"


def test_backfill_spans_the_window_with_seasonality(history: list[UsageEvent]) -> None:
    start = NOW - 30 * DAY
    assert all(start <= e.ts_start < NOW for e in history)
    assert history[0].ts_start - start < 6 * 3600 and NOW - history[-1].ts_start < 3600
    per_day = Counter(int((e.ts_start - start) // DAY) for e in history)
    assert set(per_day) == set(range(30))
    weekday = [n for d, n in per_day.items() if time.gmtime(start + d * DAY + DAY / 2).tm_wday < 5 and 0 < d < 29]
    weekend = [n for d, n in per_day.items() if time.gmtime(start + d * DAY + DAY / 2).tm_wday >= 5 and 0 < d < 29]
    assert statistics.fmean(weekday) > 1.3 * statistics.fmean(weekend)
    first_week = sum(per_day[d] for d in range(1, 8))
    last_week = sum(per_day[d] for d in range(22, 29))
    assert last_week > first_week * 1.15  # growth
    hours = Counter(time.gmtime(e.ts_start).tm_hour for e in history if e.priority != "batch")
    assert hours[15] > 2 * hours[3]  # business hours


def test_backfill_has_one_cost_spike(history: list[UsageEvent]) -> None:
    cost_per_day: dict[int, Decimal] = defaultdict(Decimal)
    for e in history:
        cost_per_day[int(e.ts_start // DAY)] += e.cost  # UTC calendar days
    days = sorted(cost_per_day.values())
    median = statistics.median(days)
    assert days[-1] > 2 * median
    assert days[-2] < Decimal("1.6") * median  # one spike, not several
    spike_day = max(cost_per_day, key=cost_per_day.__getitem__)
    on_spike = Counter(e.team for e in history if int(e.ts_start // DAY) == spike_day)
    assert on_spike.most_common(1)[0][0] == "research"


def test_backfill_covers_teams_features_environments_models(history: list[UsageEvent]) -> None:
    assert {e.team for e in history} == {*TEAMS, None}
    assert len(TEAMS) >= 5
    assert {e.feature for e in history if e.feature} == {f.name for f in FEATURES if f.name}
    envs = Counter(e.environment for e in history if e.team)
    assert set(envs) == {name for name, _ in ENVIRONMENTS}
    assert envs["prod"] > 0.7 * sum(envs.values())
    assert {e.model_used for e in history} == set(MODELS)
    assert {e.tenant for e in history if e.tenant} >= {"acme-corp", "globex", "initech"}
    assert len({e.user for e in history if e.user}) > 50
    untagged = exact_sum(e.cost for e in history if e.team is None)
    total = exact_sum(e.cost for e in history)
    assert 0 < untagged < total * Decimal("0.05")
    assert any(e.streamed for e in history) and any(e.endpoint == "messages" for e in history)


def test_backfill_prices_known_models_exactly(history: list[UsageEvent]) -> None:
    fresh = Catalog(demo_config())
    checked = Counter()
    for e in history:
        if e.price_status != "priced" or not (e.input_tokens or e.output_tokens):
            continue
        assert isinstance(e.cost, Decimal) and e.cost > 0 and e.list_cost == e.cost
        if e.model_used in HAND_PRICES:
            p = HAND_PRICES[e.model_used]
            plain = e.input_tokens - e.cache_read_tokens - e.cache_write_tokens
            expected = (
                plain * p["in"] + e.cache_read_tokens * p["read"] + e.cache_write_tokens * p["write"] + e.output_tokens * p["out"]
            ) / M
            assert e.cost == expected, e
            checked[e.model_used] += 1
        elif checked[e.model_used] < 200:
            usage = TokenUsage(e.input_tokens, e.output_tokens, e.cache_read_tokens, e.cache_write_tokens)
            assert fresh.price(e.provider, e.model_used, usage, e.deployment).cost == e.cost
            checked[e.model_used] += 1
    assert set(checked) == set(MODELS) - {UNPRICED_MODEL}
    assert checked["gpt-4o"] > 1000 and checked["claude-sonnet-4-5"] > 1000


def test_backfill_flags_the_unpriced_model_as_missing(history: list[UsageEvent]) -> None:
    unpriced = [e for e in history if e.model_used == UNPRICED_MODEL and e.status == "ok"]
    assert len(unpriced) > 500
    assert all(e.price_status == "missing" and e.cost == 0 and e.input_tokens > 0 for e in unpriced)
    assert {e.model_used for e in history if e.price_status == "missing"} == {UNPRICED_MODEL}


def test_backfill_errors_and_prompt_cache(history: list[UsageEvent]) -> None:
    errors = [e for e in history if e.status == "error"]
    assert 0.005 * len(history) < len(errors) < 0.05 * len(history)
    assert {e.http_status for e in errors} == {429, 500}
    assert all(e.output_tokens == 0 and e.cost == 0 and e.error_type for e in errors)
    cached = [e for e in history if e.cache_read_tokens]
    assert len(cached) > 1000
    assert all(0 < e.cache_read_tokens < e.input_tokens for e in cached)
    assert all(e.saved > 0 and e.saved_by == "prompt_cache" for e in cached if not e.cache_write_tokens)
    openai_cached = [e for e in cached if e.provider == "openai"]
    assert openai_cached and all(e.cache_read_tokens % 128 == 0 for e in openai_cached)


def test_backfill_lands_in_the_ledger_exactly(history: list[UsageEvent], tmp_path: Path) -> None:
    with SQLiteLedger(tmp_path / "demo.db") as store:
        assert store.append(history) == len(history)
        ledger_sum = Decimal(store.query("SELECT dsum(cost) FROM usage_events")[0][0])
        missing = store.query("SELECT count(*) FROM usage_events WHERE price_status = 'missing'")[0][0]
    assert ledger_sum == exact_sum(e.cost for e in history)
    assert missing == sum(1 for e in history if e.price_status == "missing")


# --- the config -----------------------------------------------------------


def test_example_config_is_the_one_the_demo_writes() -> None:
    text = (REPO / "examples" / "demo.yaml").read_text()
    assert text == demo_config_yaml(EXAMPLE_LEDGER_URL)
    config = parse_config(text)
    assert config.allow_any_key and config.simulator.enabled
    deployments = {d.name: d for d in config.deployments}
    for model in MODELS.values():
        dep = deployments[model.deployment]
        assert (dep.model, dep.provider, dep.base_url) == (model.name, model.provider, "simulator")


# --- live traffic ---------------------------------------------------------


def test_live_requests_are_well_formed_and_tagged() -> None:
    rng = random.Random(5)
    profile = load_profile()
    kinds = Counter()
    systems: dict[str, set[str]] = defaultdict(set)
    for _ in range(400):
        feature, model = pick(rng)
        req = build_request(rng, profile, feature, model)
        kinds[req.kind] += 1
        assert req.body["model"] == model.name
        if feature.cache_share and model.endpoint == "messages":
            [block] = req.body["system"]
            assert block["cache_control"] == {"type": "ephemeral"}
            systems[feature.name].add(block["text"])
        elif feature.cache_share:
            systems[feature.name].add(req.body["messages"][0]["content"])
        tags = header_tags(req.headers)
        validate_tags(tags, TagRules())
        if feature.team:
            assert tags["team"] == feature.team and tags["feature"] == feature.name and tags["environment"]
        else:
            assert tags == {}
        if req.path == "/v1/messages":
            assert req.headers["x-api-key"] and req.headers["anthropic-version"]
        else:
            assert req.headers["authorization"].startswith("Bearer ")
    assert set(kinds) == {"chat", "chat-stream", "messages", "messages-stream", "embeddings"}
    # features that cache repeat their long instructions verbatim, so the prompt cache can hit
    assert systems and all(len(texts) == 1 and len(next(iter(texts))) > 4 * 1024 for texts in systems.values())


async def test_send_traffic_bounds_concurrency_and_counts() -> None:
    """Against a stand-in server: every request counted once, never more than 4 at a time."""
    seen: list[str] = []
    active = 0
    peak = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        body = await request.json()
        seen.append(request.path)
        await asyncio.sleep(0.01)
        active -= 1
        fault = re.search(r"\[\[sim:fault=(\d+)\]\]", json.dumps(body))
        return web.json_response({"ok": fault is None}, status=int(fault.group(1)) if fault else 200)

    app = web.Application()
    app.router.add_post("/v1/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        result = await send_traffic(f"http://127.0.0.1:{port}", load_profile(), 1.5, concurrency=4, rate=200)
    finally:
        await runner.cleanup()
    assert result.sent == len(seen) > 50
    assert result.ok + result.errors == result.sent
    assert result.by_status[500] + result.by_status[429] == result.errors
    assert peak <= 4
    assert set(seen) == {"/v1/chat/completions", "/v1/messages", "/v1/embeddings"}
    assert 1.4 < result.elapsed_s < 5


# --- the whole command ----------------------------------------------------

HAS_GATEWAY = all(importlib.util.find_spec(m) is not None for m in ("spendgate.app", "spendgate.simulator.app"))


def _run_demo(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spendgate.cli", "demo", "--dir", str(tmp_path / "demo"), "--port", "0", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.skipif(not HAS_GATEWAY, reason="the gateway or its simulator is not built yet")
def test_demo_end_to_end(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = _run_demo(tmp_path, "--live-seconds", "2")
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert elapsed < 60, out

    db = tmp_path / "demo" / "spendgate.db"
    con = sqlite3.connect(db)
    con.create_aggregate("dsum", 1, _DSum)
    try:
        ledger_total = Decimal(con.execute("SELECT dsum(cost) FROM usage_events").fetchone()[0])
        demo_rows = con.execute("SELECT count(*) FROM usage_events WHERE source = 'demo'").fetchone()[0]
        fired = {r[0] for r in con.execute("SELECT rule FROM alert_history WHERE event = 'fired'")}
        live = con.execute(
            "SELECT endpoint, streamed, team, status, cost, http_status FROM usage_events WHERE source = 'proxy'"
        ).fetchall()
    finally:
        con.close()

    # the report's TOTAL line shows the ledger's exact sum
    [total_line] = [line for line in out.splitlines() if line.startswith("TOTAL")]
    report_total = Decimal(re.search(r"\$([\d,]+\.\d+)", total_line).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert report_total == ledger_total
    assert "MISSING PRICES" in out and UNPRICED_MODEL in out
    assert "untagged spend" in out and "where to look next" in out
    assert f"{demo_rows:,} events over 30 days" in out
    # the gateway judged its alert rules on the history: the untagged share fired (and is in the ledger)
    assert "alerts fired" in out and "untagged-spend" in out and "untagged-spend" in fired
    key_file = tmp_path / "demo" / "admin-key"
    assert key_file.stat().st_mode & 0o077 == 0, "the dashboard's admin key is readable by its owner only"
    assert "/dashboard" in out

    # live calls went through the real HTTP path and were metered there, every one of them
    sent = int(re.search(r"(\d+) requests in [\d.]+ s", out).group(1))  # type: ignore[union-attr]
    assert sent >= 10 and len(live) >= sent
    endpoints = {row[0] for row in live}
    assert {"chat.completions", "messages", "embeddings"} <= endpoints
    assert any(row[1] for row in live), "some live calls stream"
    assert sum(1 for row in live if row[2]) > 0.8 * len(live), "live calls carry their tags"
    assert sum(Decimal(row[4]) for row in live if row[3] == "ok") > 0
    # the only failures are the ones the traffic asks the simulator for
    assert {row[5] for row in live if row[3] != "ok"} <= {429, 500}
    assert sum(1 for row in live if row[3] == "ok") > 0.8 * len(live)

    # running it again keeps the history instead of doubling it
    again = _run_demo(tmp_path, "--live-seconds", "0")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already in" in again.stdout
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT count(*) FROM usage_events WHERE source = 'demo'").fetchone()[0] == demo_rows
    finally:
        con.close()


class _DSum:
    def __init__(self) -> None:
        self.total = Decimal(0)

    def step(self, value: str | None) -> None:
        if value is not None:
            self.total = EXACT.add(self.total, Decimal(value))

    def finalize(self) -> str:
        return format(self.total, "f")
