"""Worst cases: a cascade reserves every step it may run; the per-deployment
affine prices (`controls/unit_prices.py`) give exactly the catalog's amounts."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import orjson
import pytest
from genai_prices import data_snapshot

from spendgate.config import Deployment, parse_config
from spendgate.controls import worst_case as wc
from spendgate.controls.budgets import BudgetStage
from spendgate.controls.unit_prices import PLAIN, WRITES_1H, WRITES_5M, UnitPrices, usage
from spendgate.errors import GatewayError
from spendgate.pipeline import Call
from spendgate.pricing.catalog import Catalog, TokenUsage
from spendgate.routing.router import RouteStage, Router
from spendgate.state.memory import MemoryCounterStore

D = Decimal

CONFIG = """
deployments:
  - {name: mini, provider: openai, model: gpt-4o-mini, base_url: "http://127.0.0.1:9/v1"}
  - {name: mini-eu, provider: openai, model: gpt-4o-mini, base_url: "http://127.0.0.1:9/v1", price: {input_per_mtok: "0.3", output_per_mtok: "1.2"}}
  - {name: big, provider: openai, model: gpt-4o, base_url: "http://127.0.0.1:9/v1"}
  - {name: sonnet, provider: anthropic, model: claude-sonnet-4-5, base_url: "http://127.0.0.1:9/v1"}
  - {name: sonnet-bp, provider: anthropic, model: claude-sonnet-4-5, base_url: "http://127.0.0.1:9/v1", prompt_cache: {insert_breakpoints: true, ttl: 1h}}
  - {name: local, provider: openai_compatible, model: llama, base_url: "http://127.0.0.1:9/v1", gpu_hour: {hourly_rate: "2.5", input_tokens_per_second: 3000, output_tokens_per_second: 30}}
  - {name: nowhere, provider: openai_compatible, model: no-such-model-anywhere, base_url: "http://127.0.0.1:9/v1"}
"""


@pytest.fixture(scope="module")
def cfg() -> Any:
    return parse_config(CONFIG)


@pytest.fixture(scope="module")
def deps(cfg: Any) -> dict[str, Deployment]:
    return {d.name: d for d in cfg.deployments}


def make_call(body: dict[str, Any] | None = None, *, wire: str = "openai", endpoint: str = "chat.completions") -> Call:
    payload = {"model": "m", "max_tokens": 500, "messages": [{"role": "user", "content": "x" * 3000}], **(body or {})}
    return Call(wire=wire, endpoint=endpoint, body=payload, raw_body=orjson.dumps(payload), headers={}, model="m")


def price(cat: Catalog, dep: Deployment, u: TokenUsage) -> Decimal:
    p = cat.price(dep.catalog_provider, dep.model, u, dep.name)
    assert p.status == "priced"
    return p.cost


# ---- cascades ---------------------------------------------------------------------------------


def test_a_cascade_reserves_the_dearest_candidate_of_every_step(cfg: Any, deps: dict[str, Deployment]) -> None:
    cat = Catalog(cfg)
    call = make_call()
    call.route_steps = [[deps["mini"], deps["mini-eu"]], [deps["big"]]]
    call.candidates = [d for step in call.route_steps for d in step]
    n_in = wc.input_tokens(call)
    u = TokenUsage(input_tokens=n_in, output_tokens=500)
    cheap_step = max(price(cat, deps["mini"], u), price(cat, deps["mini-eu"], u))  # failover within the step: the dearest
    assert cheap_step == price(cat, deps["mini-eu"], u) > price(cat, deps["mini"], u)
    expected = cheap_step + price(cat, deps["big"], u)  # both steps may run, and each is billed
    assert wc.worst_case(call, cat) == expected
    assert wc.worst_case(call, cat, UnitPrices(cat)) == expected
    # without steps: the candidates are one failover chain, the dearest counts
    call.route_steps = []
    assert wc.worst_case(call, cat) == price(cat, deps["big"], u)


def test_a_cascade_step_without_a_price_leaves_the_call_without_one(cfg: Any, deps: dict[str, Deployment]) -> None:
    cat = Catalog(cfg)
    call = make_call()
    call.route_steps = [[deps["mini"]], [deps["nowhere"], deps["big"]]]
    call.candidates = [d for step in call.route_steps for d in step]
    assert wc.worst_case(call, cat) is None
    assert wc.worst_case(call, cat, UnitPrices(cat)) is None
    # an unpriced failover target inside a step is skipped, as for a single chain
    call.route_steps = [[deps["mini"]], [deps["big"], deps["nowhere"]]]
    n_in = wc.input_tokens(call)
    u = TokenUsage(input_tokens=n_in, output_tokens=500)
    assert wc.worst_case(call, cat) == price(cat, deps["mini"], u) + price(cat, deps["big"], u)


async def test_a_budget_reserves_the_whole_cascade() -> None:
    cfg = parse_config(
        CONFIG + '\nbudgets:\n  - {name: all, window: {period: month}, limit: "1000"}\n'
    )
    cat = Catalog(cfg)
    deps = {d.name: d for d in cfg.deployments}
    stage = BudgetStage(cfg, cat, MemoryCounterStore(), RouteStage(Router(cfg)))
    call = make_call()
    call.route_steps = [[deps["mini"]], [deps["big"]]]
    call.candidates = [deps["mini"], deps["big"]]
    call.deployment_name = "mini"
    await stage(call)
    [row] = await stage.budget_status()
    n_in = wc.input_tokens(call)
    u = TokenUsage(input_tokens=n_in, output_tokens=500)
    assert row["reserved"] == price(cat, deps["mini"], u) + price(cat, deps["big"], u)
    call.cost = D("0.001")
    await call.finish()
    [row] = await stage.budget_status()
    assert row["reserved"] == 0 and row["spent"] == D("0.001")


async def test_a_cascade_that_does_not_fit_is_refused_whole() -> None:
    # the cheap step alone reserves $0.00075 (3,000 bytes of prompt, 500 output tokens); with
    # gpt-4o as the second step $0.0133, still $0.0063 with the tokenizer's count: over $0.003
    cfg = parse_config(CONFIG + '\nbudgets:\n  - {name: small, window: {period: month}, limit: "0.003"}\n')
    cat = Catalog(cfg)
    deps = {d.name: d for d in cfg.deployments}
    stage = BudgetStage(cfg, cat, MemoryCounterStore(), RouteStage(Router(cfg)))
    call = make_call()
    call.candidates = [deps["mini"]]
    call.deployment_name = "mini"
    await stage(call)  # the cheap step alone fits …
    call2 = make_call()
    call2.route_steps = [[deps["mini"]], [deps["big"]]]  # … the cascade that may also run gpt-4o does not
    call2.candidates = [deps["mini"], deps["big"]]
    call2.deployment_name = "mini"
    with pytest.raises(GatewayError) as info:
        await stage(call2)
    assert info.value.status == 429 and "budget 'small'" in info.value.message
    call3 = make_call()  # no reservation was left behind: the cheap step alone still fits
    call3.candidates = [deps["mini"]]
    call3.deployment_name = "mini"
    await stage(call3)


# ---- affine unit prices -----------------------------------------------------------------------


def test_unit_prices_equal_the_catalog_for_every_catalog_model() -> None:
    """Every genai-prices model (a sample, each usage kind, token counts around
    the tier thresholds): either the catalog's exact amount, or None (ask the catalog)."""
    snapshot = data_snapshot.get_snapshot()
    models = [(p.id, m.id) for p in snapshot.providers for m in p.models]
    rnd = random.Random(7)
    sample = rnd.sample(models, min(400, len(models)))
    lines = ["deployments:"] + [
        f'  - {{name: d{i}, provider: openai_compatible, model: "x{i}", base_url: "http://h/v1", price_model: "{m}", price_provider: "{p}"}}'
        for i, (p, m) in enumerate(sample)
    ]
    cfg = parse_config("\n".join(lines))
    cat = Catalog(cfg)
    prices = UnitPrices(cat)
    counts = [(1, 0), (7, 0), (812, 143), (128_001, 1), (199_999, 4096), (200_001, 10), (272_001, 3), (1_000_000, 100_000)]
    fast = 0
    for dep in cfg.deployments:
        for kind in (PLAIN, WRITES_5M, WRITES_1H):
            for n_in, n_out in counts + [(rnd.randint(1, 2_000_000), rnd.choice([0, rnd.randint(1, 300_000)])) for _ in range(3)]:
                got = prices.cost(dep, kind, n_in, n_out)
                if got is None:
                    continue
                fast += 1
                ref = cat.price(dep.catalog_provider, dep.model, usage(kind, n_in, n_out), dep.name)
                assert ref.status == "priced" and ref.cost == got, (dep.price_provider, dep.price_model, kind, n_in, n_out)
    assert fast > len(sample) * 3  # most models have plain, fixed prices


def test_unit_prices_leave_rounded_dated_tiered_and_overridden_prices_to_the_catalog(cfg: Any, deps: dict[str, Deployment]) -> None:
    cat = Catalog(cfg)
    prices = UnitPrices(cat)
    assert prices.cost(deps["local"], PLAIN, 1000, 10) is None  # GPU-hour: rounded, not affine
    assert prices.cost(deps["nowhere"], PLAIN, 1000, 10) is None  # no price: the catalog records it missing
    assert prices.cost(deps["mini-eu"], PLAIN, 1000, 10) == price(cat, deps["mini-eu"], TokenUsage(input_tokens=1000, output_tokens=10))
    tiered = parse_config('deployments:\n  - {name: t, provider: anthropic, model: claude-sonnet-4-5, base_url: "http://h/v1"}')
    t_cat = Catalog(tiered)
    assert UnitPrices(t_cat).cost(tiered.deployments[0], PLAIN, 1000, 10) is None  # priced by prompt size (>200k)
    overridden = parse_config(CONFIG + "\nprices:\n  - {model: gpt-4o-mini, discount_percent: 10}\n")
    o_cat = Catalog(overridden)
    mini = next(d for d in overridden.deployments if d.name == "mini")
    assert UnitPrices(o_cat).cost(mini, PLAIN, 1000, 10) is None  # overrides stay the catalog's business


class OtherCatalog:
    """A catalog that is not `Catalog`: its prices are its own business."""

    def __init__(self, inner: Catalog) -> None:
        self.inner = inner

    def price(self, provider: str | None, model: str, usage: TokenUsage, deployment: str | None = None) -> Any:
        return self.inner.price(provider, model, usage, deployment)

    def missing_models(self) -> set[tuple[str | None, str]]:
        return set()


def test_unit_prices_only_read_the_stock_catalog(cfg: Any, deps: dict[str, Deployment]) -> None:
    assert UnitPrices(OtherCatalog(Catalog(cfg))).cost(deps["mini"], PLAIN, 1000, 10) is None  # type: ignore[arg-type]


def test_openai_cache_writes_never_cost_more_than_input_anthropic_ones_do(cfg: Any, deps: dict[str, Deployment]) -> None:
    prices = UnitPrices(Catalog(cfg))

    def never_dearer(name: str, output: bool) -> bool:
        f = prices.affine(deps[name], PLAIN, output)
        return f is not None and f.writes_never_dearer

    assert never_dearer("mini", True) and never_dearer("mini-eu", False)
    assert not never_dearer("sonnet-bp", True)
    assert prices.affine(deps["local"], PLAIN, True) is None  # not affine: priced by the catalog every time


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"n": 3},
        {"best_of": 2, "n": 1},
        {"max_tokens": None, "max_completion_tokens": 77},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "y" * 5000, "cache_control": {"type": "ephemeral"}}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]},
        {"metadata": {"note": "cache_control"}},
    ],
)
@pytest.mark.parametrize("chain", [["mini"], ["sonnet"], ["sonnet-bp"], ["mini", "sonnet-bp", "local"], ["local"], ["nowhere", "mini"], ["mini", "nowhere"]])
def test_worst_case_is_the_same_with_and_without_unit_prices(cfg: Any, deps: dict[str, Deployment], body: dict[str, Any], chain: list[str]) -> None:
    cat = Catalog(cfg)
    prices = UnitPrices(cat)
    for wire in ("openai", "anthropic"):
        call = make_call(body, wire=wire, endpoint="chat.completions" if wire == "openai" else "messages")
        call.candidates = [deps[n] for n in chain]
        assert wc.worst_case(call, cat, prices) == wc.worst_case(call, cat)
        assert wc.worst_case(call, cat, prices, wc.max_tokens(call)) == wc.worst_case(call, cat)


def test_the_cache_control_mark_is_found_wherever_it_is() -> None:
    mark = b'"cache_control"'
    rnd = random.Random(3)
    fixed = [b"", b"_", b"_" * 40 + mark, mark, b"x" + mark, b'"cache__control"', b'"cache_control', b"_a_b_c_d_e_f_g_h_i_j_" + mark + b"_"]
    for raw in fixed + [bytes(rnd.choice(b'"cache_ontrl_x') for _ in range(rnd.randint(0, 80))) for _ in range(20_000)]:
        assert wc._marked(raw) == (mark in raw), raw
