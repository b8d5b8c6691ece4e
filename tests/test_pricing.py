"""The price catalog: hand-computed costs, overrides, and the fast path's exactness."""

from __future__ import annotations

import logging
import random
import time
import warnings
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from genai_prices import calc_price
from genai_prices.data import providers as genai_providers

from spendgate.config import Config, parse_config
from spendgate.pricing.catalog import Catalog, TokenUsage, discounted, quantize_cost
from spendgate.pricing.listprices import GenaiPrices, genai_usage
from spendgate.wire.usage import from_anthropic, from_openai

D = Decimal


def price(cat: Catalog, provider: str | None, model: str, u: TokenUsage, deployment: str | None = None) -> tuple:
    p = cat.price(provider, model, u, deployment)
    return p.cost, p.list_cost, p.status, p.source


@pytest.fixture
def cat() -> Catalog:
    return Catalog(Config())


# --- hand-computed list prices ---------------------------------------------------


def test_gpt_4o_with_cached_input(cat: Catalog) -> None:
    # $2.5 input, $1.25 cached input, $10 output per MTok
    u = from_openai({"prompt_tokens": 1000, "completion_tokens": 500, "prompt_tokens_details": {"cached_tokens": 200}})
    assert price(cat, "openai", "gpt-4o", u) == (
        D("0.00725"),  # (800*2.5 + 200*1.25 + 500*10) / 1e6
        D("0.00725"),
        "priced",
        "genai-prices:openai/gpt-4o",
    )


def test_gpt_4o_mini(cat: Catalog) -> None:
    u = TokenUsage(input_tokens=10_000, output_tokens=2_000)
    assert cat.price("openai", "gpt-4o-mini", u).cost == D("0.0027")  # (10000*0.15 + 2000*0.6) / 1e6


def test_reasoning_tokens_are_billed_once_as_output(cat: Catalog) -> None:
    u = from_openai(
        {"prompt_tokens": 100, "completion_tokens": 1000, "completion_tokens_details": {"reasoning_tokens": 800}}
    )
    assert u.reasoning_tokens == 800 and u.output_tokens == 1000
    assert cat.price("openai", "o3-mini", u).cost == D("0.00451")  # (100*1.1 + 1000*4.4) / 1e6


def test_claude_sonnet_4_5_cache_read_and_write(cat: Catalog) -> None:
    # Anthropic's input_tokens excludes cache reads and writes; normalized input includes them.
    u = from_anthropic(
        {"input_tokens": 1000, "cache_read_input_tokens": 3000, "cache_creation_input_tokens": 2000, "output_tokens": 400}
    )
    assert u == TokenUsage(input_tokens=6000, output_tokens=400, cache_read_tokens=3000, cache_write_tokens=2000)
    # 1000*3 + 3000*0.3 + 2000*3.75 + 400*15 = 17400 per MTok
    assert price(cat, "anthropic", "claude-sonnet-4-5", u) == (
        D("0.0174"),
        D("0.0174"),
        "priced",
        "genai-prices:anthropic/claude-sonnet-4-5",
    )


def test_claude_sonnet_4_5_long_context_tier(cat: Catalog) -> None:
    # Over 200k input tokens every token is billed at the long-context rate ($6 in, $22.5 out).
    at_threshold = TokenUsage(input_tokens=200_000, output_tokens=1000)
    over = TokenUsage(input_tokens=250_000, output_tokens=1000)
    assert cat.price("anthropic", "claude-sonnet-4-5", at_threshold).cost == D("0.615")  # 200000*3 + 1000*15
    assert cat.price("anthropic", "claude-sonnet-4-5", over).cost == D("1.5225")  # 250000*6 + 1000*22.5


def test_claude_haiku_4_5(cat: Catalog) -> None:
    u = from_anthropic(
        {"input_tokens": 2000, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 500, "output_tokens": 300}
    )
    # 2000*1 + 1000*0.1 + 500*1.25 + 300*5 = 4225 per MTok
    assert cat.price("anthropic", "claude-haiku-4-5", u).cost == D("0.004225")


def test_provider_kinds_map_to_catalog_ids(cat: Catalog) -> None:
    u = TokenUsage(input_tokens=1000)
    assert cat.price("azure_openai", "gpt-4o", u).source == "genai-prices:azure/gpt-4o"
    assert cat.price("anthropic", "claude-haiku-4-5", u).source == "genai-prices:anthropic/claude-haiku-4-5"


def test_unknown_provider_falls_back_to_any_provider(cat: Catalog) -> None:
    u = TokenUsage(input_tokens=10_000, output_tokens=2_000)
    p = cat.price("my-vllm-box", "gpt-4o-mini", u)
    assert (p.cost, p.status, p.source) == (D("0.0027"), "priced", "genai-prices:openai/gpt-4o-mini")
    assert cat.price(None, "gpt-4o-mini", u).cost == D("0.0027")
    assert cat.price("openai_compatible", "gpt-4o-mini", u).cost == D("0.0027")


# --- config overrides ------------------------------------------------------------

CONFIG = """
prices:
  - {model: house-model, price: {input_per_mtok: 1, output_per_mtok: 2, cache_read_per_mtok: "0.1"}}
  - {model: gpt-4o, provider: openai, discount_percent: 15}
  - {model: gpt-4o-mini, provider: openai, price: {input_per_mtok: "0.1", output_per_mtok: "0.5"}}
  - {model: odd-discount, discount_percent: 10}
  - {model: tiny, provider: openai, gpu_hour: {hourly_rate: 1, input_tokens_per_second: 7, output_tokens_per_second: 7}}
deployments:
  - name: local-llama
    provider: openai_compatible
    model: llama-3.1-8b
    base_url: http://127.0.0.1:8000/v1
    gpu_hour: {hourly_rate: "2.5", input_tokens_per_second: 3000, output_tokens_per_second: 30}
  - name: azure-prod
    provider: azure_openai
    model: prod-4o
    base_url: https://example.openai.azure.com
    api_version: "2024-10-21"
    price_model: gpt-4o
  - name: azure-ptu
    provider: azure_openai
    model: prod-4o
    base_url: https://example.openai.azure.com
    api_version: "2024-10-21"
    price_model: gpt-4o
    price: {input_per_mtok: 2, output_per_mtok: 8}
"""


@pytest.fixture
def cfg_cat() -> Catalog:
    return Catalog(parse_config(CONFIG))


def test_override_price_for_unknown_model(cfg_cat: Catalog) -> None:
    u = TokenUsage(input_tokens=1000, output_tokens=1000, cache_read_tokens=400)
    # 600*1 + 400*0.1 + 1000*2 = 2640 per MTok; no catalog price, so list = cost
    assert price(cfg_cat, "openai", "house-model", u) == (D("0.00264"), D("0.00264"), "priced", "config:prices")


def test_override_price_keeps_catalog_list_price(cfg_cat: Catalog) -> None:
    u = TokenUsage(input_tokens=10_000, output_tokens=2_000)
    # override: 10000*0.1 + 2000*0.5; list: 10000*0.15 + 2000*0.6
    assert price(cfg_cat, "openai", "gpt-4o-mini", u) == (D("0.002"), D("0.0027"), "priced", "config:prices")


def test_discount_percent(cfg_cat: Catalog) -> None:
    u = TokenUsage(input_tokens=1000, output_tokens=500)
    p = cfg_cat.price("openai", "gpt-4o", u)
    assert (p.cost, p.list_cost) == (D("0.006375"), D("0.0075"))  # 15% off (1000*2.5 + 500*10) / 1e6
    assert p.source == "genai-prices:openai/gpt-4o+config:discount"
    # the override names provider openai: Azure's gpt-4o keeps its list price
    assert cfg_cat.price("azure_openai", "gpt-4o", u).cost == D("0.0075")


def test_discount_is_quantized_half_even() -> None:
    one_token = D("0.0000025")  # one gpt-4o input token
    assert discounted(one_token, D("33.3333")) == D("0.000001666668")  # ...667|5 → 668 (7 is odd)
    assert discounted(one_token, D("33.3335")) == D("0.000001666662")  # ...662|5 → 662 (2 is even)
    assert quantize_cost(D(1) / 3) == D("0.333333333333")


def test_discount_on_unknown_model_is_missing(cfg_cat: Catalog) -> None:
    p = cfg_cat.price(None, "odd-discount", TokenUsage(input_tokens=5))
    assert (p.cost, p.status) == (D(0), "missing")


def test_gpu_hour_deployment(cfg_cat: Catalog) -> None:
    # 3000 in at 3000/s + 30 out at 30/s = 2 GPU-seconds at $2.5/h = 5/3600 = 0.0013888…
    u = TokenUsage(input_tokens=3000, output_tokens=30)
    assert price(cfg_cat, "openai_compatible", "llama-3.1-8b", u, "local-llama") == (
        D("0.001388888889"),
        D("0.001388888889"),
        "priced",
        "config:deployment/local-llama:gpu_hour",
    )


def test_gpu_hour_override(cfg_cat: Catalog) -> None:
    # 1 + 1 tokens at 7/s = 2/7 s at $1/h = 1/12600 = 0.0000793650793650…
    p = cfg_cat.price("openai", "tiny", TokenUsage(input_tokens=1, output_tokens=1))
    assert (p.cost, p.source) == (D("0.000079365079"), "config:prices:gpu_hour")


def test_deployment_price_model_and_price(cfg_cat: Catalog) -> None:
    u = TokenUsage(input_tokens=1000, output_tokens=500)
    p = cfg_cat.price("azure_openai", "prod-4o", u, "azure-prod")
    assert (p.cost, p.source) == (D("0.0075"), "genai-prices:azure/gpt-4o")
    p = cfg_cat.price("azure_openai", "prod-4o", u, "azure-ptu")
    assert (p.cost, p.list_cost, p.source) == (D("0.006"), D("0.0075"), "config:deployment/azure-ptu")


# --- missing prices ----------------------------------------------------------------


def test_missing_model_warns_once(cat: Catalog, caplog: pytest.LogCaptureFixture) -> None:
    u = TokenUsage(input_tokens=100, output_tokens=10)
    with caplog.at_level(logging.WARNING, logger="spendgate.pricing"):
        first = cat.price("openai", "no-such-model-xyz", u)
        second = cat.price("openai", "no-such-model-xyz", u)
    assert first == second
    assert (first.cost, first.list_cost, first.status, first.source) == (D(0), D(0), "missing", None)
    warnings_logged = [r for r in caplog.records if "no-such-model-xyz" in r.getMessage()]
    assert len(warnings_logged) == 1 and warnings_logged[0].levelno == logging.WARNING
    assert cat.missing_models() == {("openai", "no-such-model-xyz")}


def test_usage_the_catalog_cannot_decompose_is_missing_not_a_crash(cat: Catalog) -> None:
    bad = TokenUsage(input_tokens=10, output_tokens=1, cache_read_tokens=100)  # more cached than input
    with pytest.raises(ValueError):
        calc_price(genai_usage(bad), "gpt-4o", provider_id="openai")
    with pytest.raises(ValueError):
        GenaiPrices().price("openai", "gpt-4o", bad)
    assert cat.price("openai", "gpt-4o", bad).status == "missing"


# --- the fast path equals genai-prices --------------------------------------------


def _random_usage(rng: random.Random) -> TokenUsage:
    inp = rng.choice([0, 1, 17, 999, rng.randint(0, 400_000), 199_999, 200_000, 200_001, 1_500_000])
    read = rng.choice([0, 0, rng.randint(0, inp)])
    write = rng.choice([0, 0, rng.randint(0, inp - read)])
    out = rng.choice([0, 7, rng.randint(0, 50_000), 300_000])
    reasoning = rng.choice([0, 0, rng.randint(0, out)])
    return TokenUsage(inp, out, read, write, reasoning)


def _reference(provider: str | None, model: str, u: TokenUsage, at: datetime | None = None) -> Decimal:
    return calc_price(genai_usage(u), model, provider_id=provider, genai_request_timestamp=at).total_price


@pytest.mark.parametrize(
    "provider,model",
    [
        ("openai", "gpt-4o"),
        ("openai", "gpt-4o-mini"),
        ("openai", "o3-mini"),
        ("openai", "text-embedding-3-small"),
        ("anthropic", "claude-sonnet-4-5"),
        ("anthropic", "claude-haiku-4-5"),
        ("azure", "gpt-4o"),
        ("google", "gemini-2.5-pro"),
        ("perplexity", "sonar-deep-research"),  # prices reasoning separately
        ("perplexity", "sonar"),  # a per-request price
    ],
)
def test_cached_lookup_equals_calc_price(cat: Catalog, provider: str, model: str) -> None:
    rng = random.Random(f"{provider}/{model}")
    for _ in range(300):
        u = _random_usage(rng)
        got = cat.price(provider, model, u).list_cost
        ref = _reference(provider, model, u)
        assert got == ref and str(got) == str(ref), u


def test_fast_path_equals_calc_price_for_every_catalog_model() -> None:
    fast = GenaiPrices()
    rng = random.Random(1)
    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # genai-prices warns about a few of its own price keys
        for provider in genai_providers:
            for model in provider.models:
                for _ in range(3):
                    u = _random_usage(rng)
                    try:
                        ref: object = _reference(provider.id, model.id, u)
                    except (LookupError, ValueError) as e:
                        ref = type(e)
                    try:
                        found = fast.price(provider.id, model.id, u)
                        got: object = found.total if found is not None else LookupError
                    except ValueError:
                        got = ValueError
                    assert got == ref, (provider.id, model.id, u)
                    checked += 1
    assert checked > 1000


def test_date_conditional_prices_follow_the_request_time(cat: Catalog) -> None:
    # claude-opus-4-6 drops its long-context tier from 2026-03-13.
    u = TokenUsage(input_tokens=250_000, output_tokens=1000)
    before, after = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 20, tzinfo=UTC)
    p_before = cat.price("anthropic", "claude-opus-4-6", u, at=before).cost
    p_after = cat.price("anthropic", "claude-opus-4-6", u, at=after).cost
    assert p_before == _reference("anthropic", "claude-opus-4-6", u, before)
    assert p_after == _reference("anthropic", "claude-opus-4-6", u, after)
    assert p_before != p_after


def test_cached_lookup_is_much_faster_than_calc_price(cat: Catalog) -> None:
    usages = [_random_usage(random.Random(i)) for i in range(200)]
    cat.price("anthropic", "claude-sonnet-4-5", usages[0])  # warm the caches

    def timed(fn) -> float:  # best of 3, robust to a busy machine
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for u in usages:
                fn(u)
            best = min(best, time.perf_counter() - t0)
        return best

    fast = timed(lambda u: cat.price("anthropic", "claude-sonnet-4-5", u))
    slow = timed(lambda u: _reference("anthropic", "claude-sonnet-4-5", u))
    assert fast * 4 < slow, (fast, slow)


def test_override_provider_may_be_a_kind_or_a_catalog_id() -> None:
    cat = Catalog(
        parse_config(
            """
prices:
  - {model: gpt-4o, provider: azure_openai, discount_percent: 10}
  - {model: my-llama, provider: openai_compatible, price: {input_per_mtok: 1, output_per_mtok: 1}}
deployments:
  - {name: az, provider: azure_openai, model: gpt-4o, base_url: "https://x.openai.azure.com", api_version: "2024-10-21"}
  - {name: vllm, provider: openai_compatible, model: my-llama, base_url: "http://127.0.0.1:8000/v1"}
"""
        )
    )
    u = TokenUsage(input_tokens=1000, output_tokens=500)
    assert cat.price("azure", "gpt-4o", u).cost == D("0.00675")  # the catalog id
    assert cat.price("azure_openai", "gpt-4o", u).cost == D("0.00675")  # the kind
    assert cat.price("azure", "gpt-4o", u, "az").cost == D("0.00675")  # via the deployment
    assert cat.price("openai", "gpt-4o", u).cost == D("0.0075")  # another provider: list price
    assert cat.price(None, "my-llama", u, "vllm").cost == D("0.0015")  # kind without a catalog id
    assert cat.price("openai_compatible", "my-llama", u).cost == D("0.0015")
    assert cat.price("openai", "my-llama", u).status == "missing"
