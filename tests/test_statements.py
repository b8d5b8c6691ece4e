"""Showback / chargeback statements: exact allocation, exact totals, three renderings, the CLI."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from spendgate.analytics.allocation import allocate, largest_remainder
from spendgate.analytics.showback_schema import AllocationRule, ShowbackConfig
from spendgate.analytics.statement_render import render_csv, render_html, render_markdown
from spendgate.analytics.statements import UNTAGGED_POOL, build_statement, month_window
from spendgate.config import parse_config
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.sqlite import SQLiteLedger

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "showback.yaml"
NOV, DEC = month_window("2026-11")

amounts = st.decimals(min_value=0, max_value=10**6, places=8, allow_nan=False, allow_infinity=False)
weights = st.lists(st.decimals(min_value=0, max_value=10**4, places=6, allow_nan=False), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(amounts, weights, st.sampled_from(["0.01", "0.000001", "1"]))
def test_largest_remainder_parts_sum_exactly_and_stay_within_a_unit_of_the_exact_quota(
    amount: Decimal, ws: list[Decimal], quantum: str
) -> None:
    if sum(ws) == 0:
        ws = [w + 1 for w in ws]
    parts = largest_remainder(amount, ws, Decimal(quantum))
    assert sum(parts, Decimal(0)) == amount
    unit = min(Decimal(quantum), Decimal(1).scaleb(amount.as_tuple().exponent))
    total = sum(Fraction(w) for w in ws)
    for part, w in zip(parts, ws):
        assert abs(Fraction(part) - Fraction(amount) * Fraction(w) / total) < Fraction(unit)
        assert part % unit == 0


def test_rules_even_proportional_fixed() -> None:
    direct = {"a": Decimal("3"), "b": Decimal("1"), "c": Decimal("0")}
    assert allocate(Decimal("100.00"), ["a", "b", "c"], AllocationRule(rule="even"), direct, Decimal("0.01")) == {
        "a": Decimal("33.34"), "b": Decimal("33.33"), "c": Decimal("33.33")}  # fmt: skip
    assert allocate(Decimal("100.00"), ["a", "b", "c"], AllocationRule(), direct, Decimal("0.01")) == {
        "a": Decimal("75.00"), "b": Decimal("25.00"), "c": Decimal("0.00")}  # fmt: skip
    # proportional with nobody spending anything falls back to equal parts
    assert allocate(Decimal("1"), ["a", "b"], AllocationRule(), {}, Decimal("0.01")) == {"a": Decimal("0.50"), "b": Decimal("0.50")}
    fixed = AllocationRule(rule="fixed", shares={"a": Decimal("12.5"), "z": Decimal("87.5")})
    assert allocate(Decimal("8"), ["a", "b"], fixed, direct) == {"a": Decimal("1.000000"), "b": Decimal("0E-6"), "z": Decimal("7.000000")}


def test_fixed_shares_must_sum_to_100_and_belong_to_the_fixed_rule() -> None:
    for bad in ({"rule": "fixed", "shares": {"a": 60, "b": 30}}, {"rule": "fixed"}, {"rule": "even", "shares": {"a": 100}},
                {"rule": "fixed", "shares": {"a": 110, "b": -10}}, {"rule": "shrug"}):  # fmt: skip
        with pytest.raises(ValidationError):
            AllocationRule.model_validate(bad)
    with pytest.raises(ValidationError, match="two cost centers"):
        ShowbackConfig.model_validate({"cost_centers": {"x": ["t"], "y": ["t"]}})
    with pytest.raises(ValidationError, match="power of ten"):
        ShowbackConfig.model_validate({"quantum": "0.05"})


def _ledger(path: Path) -> SQLiteLedger:
    store = SQLiteLedger(path)
    t = NOV + 3600
    store.append([
        UsageEvent(request_id="1", team="checkout", feature="cart", model_used="gpt-4o-mini", cost=Decimal("0.000123456789"),
                   input_tokens=100, output_tokens=20, saved=Decimal("0.01"), ts_start=t),
        UsageEvent(request_id="2", team="checkout", feature="cart", model_used="gpt-4o", cost=Decimal("1.5"), input_tokens=10, ts_start=t),
        UsageEvent(request_id="2", attempt=2, team="checkout", feature="cart", model_used="gpt-4o", cost=Decimal("0.25"), ts_start=t),
        UsageEvent(request_id="3", team="search", feature="rank", model_used="gpt-4o-mini", cost=Decimal("2"), ts_start=t),
        UsageEvent(request_id="4", team="support", model_used="claude-haiku-4-5", cost=Decimal("0.7"), ts_start=t),
        UsageEvent(request_id="5", team="search", tags={"cost_center": "research"}, model_used="gpt-4o", cost=Decimal("0.3"), ts_start=t),
        UsageEvent(request_id="6", model_used="gpt-4o", cost=Decimal("0.000000000000000007"), ts_start=t),  # untagged
        UsageEvent(request_id="7", team="<script>alert(1)</script>", model_used="m", cost=Decimal("0.01"), ts_start=t),
        UsageEvent(request_id="8", team="checkout", model_used="gpt-4o", cost=Decimal("99"), ts_start=DEC),  # December
    ])  # fmt: skip
    return store


def _showback() -> ShowbackConfig:
    return parse_config(EXAMPLE.read_text()).showback


def test_statement_by_team_totals_are_the_ledgers_digit_for_digit(tmp_path: Path) -> None:
    with _ledger(tmp_path / "l.db") as store:
        s = build_statement(store, "2026-11", "team", ShowbackConfig(shared_costs=[{"name": "cache", "amount": "250.00"}]))
        (ledger_sum,) = store.query("SELECT dsum(cost) FROM usage_events WHERE ts_start >= ? AND ts_start < ?", (NOV, DEC))[0]
    assert s.direct_total == Decimal(ledger_sum) == Decimal("4.760123456789000007")
    assert s.grand_total == Decimal(ledger_sum) + Decimal("250.00")
    owners = {o.owner: o for o in s.owners}
    checkout = owners["checkout"]
    assert (checkout.usage.cost, checkout.usage.requests, checkout.usage.input_tokens, checkout.usage.saved) == (
        Decimal("1.750123456789"), 2, 110, Decimal("0.01"))  # fmt: skip
    assert [(d.model, d.feature, d.usage.cost) for d in checkout.direct] == [("gpt-4o", "cart", Decimal("1.75")),
                                                                           ("gpt-4o-mini", "cart", Decimal("0.000123456789"))]  # fmt: skip
    for pool in s.pools:  # each shared amount is handed out exactly
        assert sum(pool.parts.values(), Decimal(0)) == pool.amount
    untagged = next(p for p in s.pools if p.name == UNTAGGED_POOL)
    assert untagged.amount == Decimal("7E-18") and s.untagged.requests == 1


def test_statement_by_cost_center_uses_the_mapping_and_the_tag(tmp_path: Path) -> None:
    with _ledger(tmp_path / "l.db") as store:
        s = build_statement(store, "2026-11", "cost_center", _showback())
    owners = {o.owner: o for o in s.owners}
    assert set(owners) == {"commerce", "customer-care", "research"}
    assert owners["commerce"].usage.cost == Decimal("3.750123456789")  # checkout + search, less the call tagged research
    assert owners["research"].usage.cost == Decimal("0.3")
    assert s.untagged.cost == Decimal("0.010000000000000007")  # no team in a cost center, and no cost_center tag
    vector = {line.name: line.amount for line in owners["customer-care"].shared}["vector-database"]
    assert vector == Decimal("36.000000")  # fixed 30 % of 120.00
    assert s.grand_total == s.ledger.cost + Decimal("370.00")
    even = next(p for p in s.pools if p.name == UNTAGGED_POOL)
    assert even.rule == "even" and sorted(even.parts.values()) == [Decimal("0.003333333333333335"), Decimal("0.003333333333333336"),
                                                                   Decimal("0.003333333333333336")]  # fmt: skip


def test_renderings_agree_escape_names_and_csv_sums_to_the_grand_total(tmp_path: Path) -> None:
    with _ledger(tmp_path / "l.db") as store:
        s = build_statement(store, "2026-11", "team", _showback())
    md, page, table = render_markdown(s), render_html(s), render_csv(s)
    grand = "$" + f"{s.grand_total:,f}"
    assert "# Showback statement 2026-11, by team" in md and f"**{grand}**" in md
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert f'id="grand-total">{grand}</td>' in page and "http" not in page  # self-contained
    rows = list(csv.DictReader(io.StringIO(table)))
    parts = [Decimal(r["amount"]) for r in rows if r["line"] in ("direct", "shared", "unallocated")]
    assert sum(parts, Decimal(0)) == s.grand_total == Decimal(rows[-1]["amount"])
    assert rows[-1]["line"] == "grand_total" and int(rows[-1]["requests"]) == s.ledger.requests


def test_cli_statement_end_to_end_and_the_plain_report_is_unchanged(tmp_path: Path) -> None:
    _ledger(tmp_path / "l.db").close()
    out = tmp_path / "nov.csv"
    run = subprocess.run(
        [sys.executable, "-m", "spendgate.cli", "report", "statement", "--config", str(EXAMPLE), "--ledger", str(tmp_path / "l.db"),
         "--month", "2026-11", "--by", "cost_center", "--format", "csv", "--out", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(out.open()))
    assert {r["owner"] for r in rows if r["line"] == "total"} == {"commerce", "customer-care", "research"}
    assert Decimal(rows[-1]["amount"]) == Decimal("4.760123456789000007") + Decimal("370.00")
    md = subprocess.run([sys.executable, "-m", "spendgate.cli", "report", "statement", "--ledger", str(tmp_path / "l.db"),
                         "--month", "2026-11"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert md.returncode == 0 and "## checkout" in md.stdout and "Shared: untagged spend (proportional)" in md.stdout
    for bad, words in ((["--month", "2026-13"], "2026-13"), (["--by", "model"], "team or cost_center"), (["--format", "json"], "md, html or csv")):
        r = subprocess.run([sys.executable, "-m", "spendgate.cli", "report", "statement", "--ledger", str(tmp_path / "l.db"), *bad],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert r.returncode == 2 and words in r.stderr, (bad, r.stderr)
    plain = subprocess.run([sys.executable, "-m", "spendgate.cli", "report", "--ledger", str(tmp_path / "l.db"), "--format", "csv"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert plain.returncode == 0 and plain.stdout.startswith("team,model,")


def test_the_example_loads_and_the_docs_quote_it() -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    cfg = parse_config(EXAMPLE.read_text())
    assert [s.name for s in cfg.slos] == ["checkout-cost", "answer-cost"] and len(cfg.showback.shared_costs) == 2
    for page, key in (("showback.md", "showback"), ("unit-economics.md", "slos")):
        guide = (ROOT / "docs" / page).read_text()
        start = guide.index(f"```yaml\n{key}:\n") + len("```yaml\n")
        assert yaml.safe_load(guide[start : guide.index("```", start)]) == {key: example[key]}


def test_the_example_serves_outcomes_and_states_the_month(tmp_path: Path) -> None:
    import time

    import httpx
    import openai

    from conftest import Process, free_port
    from spendgate.analytics.slo import slo_status

    port = free_port()
    p = Process(["serve", "--config", str(EXAMPLE), "--port", str(port)], f"http://127.0.0.1:{port}/healthz", cwd=str(tmp_path))
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-shop-checkout", max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Which size fits me?"}],
                                       extra_headers={"x-spendgate-tags": "feature=checkout,session_id=chat-42"})  # fmt: skip
        r = httpx.post(f"http://127.0.0.1:{port}/v1/outcomes", headers={"Authorization": "Bearer sk-shop-checkout"},
                       json={"session_id": "chat-42", "outcome": "success", "value": "19.90"})  # fmt: skip
        assert r.status_code == 200 and r.json()["feature"] == "checkout", r.text
    finally:
        p.terminate()
    cfg = parse_config(EXAMPLE.read_text())
    with SQLiteLedger(tmp_path / "spendgate.db") as store:
        [checkout, _] = slo_status(store, cfg.slos, time.time() + 1)
    assert checkout.successes == 1 and checkout.cost > 0 and checkout.ok is True  # a cheap call, well under 5 cents
    month = time.strftime("%Y-%m", time.gmtime())
    run = subprocess.run([sys.executable, "-m", "spendgate.cli", "report", "statement", "--config", str(EXAMPLE), "--month", month,
                          "--by", "cost_center"], capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "## commerce" in run.stdout and "Shared: cache-infrastructure (proportional)" in run.stdout
