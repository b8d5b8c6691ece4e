"""FOCUS 1.2 export: the written files obey the spec's column rules and add up to the ledger."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from spendgate.analytics import focus
from spendgate.analytics.focus_rules import MANDATORY, read_csv, read_parquet, validate
from spendgate.cli import main
from spendgate.config import load_config
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.sqlite import SQLiteLedger

EXAMPLE = Path(__file__).parent.parent / "examples" / "focus.yaml"


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def ev(when: str, model: str = "gpt-4o", cost: str = "0.001", **kw) -> UsageEvent:
    kw.setdefault("provider", "openai")
    kw.setdefault("deployment", f"{kw['provider']}-{model}")
    return UsageEvent(ts_start=at(when), ts_end=at(when) + 0.8, model_used=model, cost=Decimal(cost),
                      list_cost=Decimal(cost) * 2, input_tokens=120, output_tokens=30, **kw)  # fmt: skip


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    with SQLiteLedger(path) as store:
        store.append([
            ev("2026-10-31T23:59:59", cost="100"),  # October: not in the November export
            ev("2026-11-01T00:00:00", cost="0.000000000001", team="search", feature="answer"),
            ev("2026-11-03T10:15:00", cost="12.345678901234", team="search", feature="answer", key_id="k1",
               tags={"cost_center": "cc-42"}),  # fmt: skip
            ev("2026-11-03T10:45:00", cost="0.1", team="search", feature="answer", key_id="k1",
               tags={"cost_center": "cc-42"}),  # fmt: skip
            ev("2026-11-03T11:00:00", cost="0.2", team="search", feature="answer", key_id="k1",
               tags={"cost_center": "cc-42"}),  # fmt: skip
            ev("2026-11-04T08:00:00", model="claude-sonnet-4-5", provider="anthropic", cost="0.333333333333",
               cache_read_tokens=100, cache_write_tokens=10),  # fmt: skip
            ev("2026-11-05T09:00:00", cost="0", cache_status="exact", saved=Decimal("0.02")),
            ev("2026-11-06T09:00:00", model="mystery-model", provider="openai_compatible", cost="0",
               price_status="missing"),  # fmt: skip
            ev("2026-11-07T09:00:00", cost="0", status="error", http_status=500),
            ev("2026-11-30T23:59:59", cost="0.5"),  # last second of November: in
            ev("2026-12-01T00:00:00", cost="1000"),  # first second of December: out
        ])  # fmt: skip
    return path


def ledger_total(path: Path, since: float, until: float) -> str:
    with SQLiteLedger(path) as store:
        rows = store.query("SELECT dsum(cost) FROM usage_events WHERE ts_start >= ? AND ts_start < ?", (since, until))
    return rows[0][0]


def export(ledger: Path, out: Path, *extra: str) -> int:
    return main(["export", "focus", "--ledger", str(ledger), "--month", "2026-11", "--out", str(out), *extra])


@pytest.mark.parametrize("grain", ["day", "hour", "event"])
def test_csv_and_parquet_pass_the_focus_rules(ledger: Path, tmp_path: Path, grain: str) -> None:
    csv_path, pq_path = tmp_path / "f.csv", tmp_path / "f.parquet"
    assert export(ledger, csv_path, "--grain", grain) == 0
    assert export(ledger, pq_path, "--grain", grain) == 0
    for header, rows in (read_csv(csv_path), read_parquet(pq_path)):
        assert set(MANDATORY) <= set(header)
        assert validate(header, rows) == []
        assert rows


def test_totals_equal_the_ledger_digit_for_digit(ledger: Path, tmp_path: Path) -> None:
    since, until = focus.parse_month("2026-11")
    expected = ledger_total(ledger, since, until)
    assert expected == "13.479012234568"  # Oct 31 23:59:59 and Dec 1 00:00:00 left out
    export(ledger, tmp_path / "f.csv")
    export(ledger, tmp_path / "f.parquet")
    _, csv_rows = read_csv(tmp_path / "f.csv")
    csv_total = sum((Decimal(r["BilledCost"]) for r in csv_rows), Decimal(0))
    table = pq.read_table(tmp_path / "f.parquet")
    pq_total = sum(table.column("BilledCost").to_pylist(), Decimal(0))
    assert format(csv_total, "f") == expected
    assert format(pq_total.normalize(), "f") == expected
    assert str(table.schema.field("BilledCost").type) == "decimal128(38, 12)"
    for r in csv_rows:
        assert r["EffectiveCost"] == r["BilledCost"] == r["ContractedCost"]
    assert sum(Decimal(r["ListCost"]) for r in csv_rows) == Decimal(expected) * 2


def test_month_boundaries(ledger: Path, tmp_path: Path) -> None:
    export(ledger, tmp_path / "f.csv", "--grain", "event")
    _, rows = read_csv(tmp_path / "f.csv")
    starts = sorted(r["ChargePeriodStart"] for r in rows)
    assert starts[0] == "2026-11-01T00:00:00Z"
    assert starts[-1] == "2026-11-30T23:59:59Z"
    last = next(r for r in rows if r["ChargePeriodStart"] == "2026-11-30T23:59:59Z")
    assert last["ChargePeriodEnd"] == "2026-12-01T00:00:00Z" == last["BillingPeriodEnd"]
    assert {r["BillingPeriodStart"] for r in rows} == {"2026-11-01T00:00:00Z"}
    assert len(rows) == 9 and all(r["x_EventId"] for r in rows)


def test_day_grain_groups_and_tags(ledger: Path, tmp_path: Path) -> None:
    export(ledger, tmp_path / "f.csv")
    _, rows = read_csv(tmp_path / "f.csv")
    search = [r for r in rows if r["ChargePeriodStart"] == "2026-11-03T00:00:00Z"]
    assert len(search) == 1  # three calls, one day, one group
    r = search[0]
    assert r["BilledCost"] == "12.645678901234"
    assert r["x_RequestCount"] == "3" and r["ConsumedQuantity"] == "450" and r["ConsumedUnit"] == "Tokens"
    assert json.loads(r["Tags"]) == {"cost_center": "cc-42", "feature": "answer", "team": "search"}
    assert (r["SkuId"], r["ProviderName"], r["x_KeyId"]) == ("gpt-4o", "OpenAI", "k1")
    assert r["ChargePeriodEnd"] == "2026-11-04T00:00:00Z"
    assert r["ServiceCategory"] == "AI and Machine Learning" and r["ServiceSubcategory"] == "Generative AI"
    assert r["ChargeClass"] is None and r["ChargeCategory"] == "Usage"
    claude = next(r for r in rows if r["SkuId"] == "claude-sonnet-4-5")
    assert (claude["ProviderName"], claude["x_CacheReadTokens"], claude["x_CacheWriteTokens"]) == ("Anthropic", "100", "10")


def test_unpriced_and_cache_rows_are_flagged_not_silent(ledger: Path, tmp_path: Path) -> None:
    export(ledger, tmp_path / "f.csv")
    _, rows = read_csv(tmp_path / "f.csv")
    mystery = [r for r in rows if r["SkuId"] == "mystery-model"]
    assert len(mystery) == 1
    assert mystery[0]["x_PriceStatus"] == "missing" and "unpriced" in mystery[0]["ChargeDescription"]
    assert {r["x_PriceStatus"] for r in rows if r["SkuId"] != "mystery-model"} == {"priced"}
    hit = next(r for r in rows if r["x_CacheStatus"] == "exact")
    assert hit["BilledCost"] == "0" and hit["x_SavedCost"] == "0.02"
    assert next(r for r in rows if r["ChargePeriodStart"] == "2026-11-07T00:00:00Z")["x_ErrorCount"] == "1"


def test_billing_account_from_the_example_config(ledger: Path, tmp_path: Path, monkeypatch) -> None:
    config, _ = load_config(EXAMPLE)
    assert config.focus.billing_account_id == "acme-ai-gateway"
    with SQLiteLedger(ledger) as store:
        since, until = focus.parse_month("2026-11")
        rows = focus.focus_rows(store, since=since, until=until, config=config.focus)
    assert {r["BillingAccountId"] for r in rows} == {"acme-ai-gateway"}
    assert {r["ServiceName"] for r in rows if r["ProviderName"] == "Anthropic"} == {"Claude API"}
    # the example is a runnable command line too: --config and --ledger together
    out = tmp_path / "f.parquet"
    code = main(["export", "focus", "--config", str(EXAMPLE), "--ledger", str(ledger), "--month", "2026-11",
                 "--out", str(out), "--validate"])  # fmt: skip
    assert code == 0
    assert set(pq.read_table(out).column("BillingAccountName").to_pylist()) == {"ACME AI gateway"}


def test_validator_catches_broken_files(ledger: Path, tmp_path: Path) -> None:
    export(ledger, tmp_path / "f.csv")
    header, rows = read_csv(tmp_path / "f.csv")
    assert validate(header, rows) == []
    assert validate([c for c in header if c != "BilledCost"], rows) == ["missing mandatory column BilledCost"]
    assert any("x_ prefix" in p for p in validate([*header, "RequestCount"], rows))
    broken = [dict(rows[0], ChargePeriodStart="2026-11-03 00:00:00"), dict(rows[0], ChargeClass="Refund"),
              dict(rows[0], ConsumedQuantity=None), dict(rows[0], BilledCost="1,000.00"),
              dict(rows[0], BillingCurrency="usd"), dict(rows[0], ChargePeriodEnd=rows[0]["ChargePeriodStart"]),
              dict(rows[0], ServiceCategory="AI"), dict(rows[0], ChargePeriodEnd="2026-12-02T00:00:00Z")]  # fmt: skip
    problems = validate(header, broken)
    for i, needle in enumerate(["ChargePeriodStart", "ChargeClass", "ConsumedQuantity", "BilledCost",
                                "BillingCurrency", "not before", "ServiceCategory", "inside the billing"], 1):  # fmt: skip
        assert any(p.startswith(f"row {i}:") and needle in p for p in problems), (i, needle, problems)


def test_cli_errors(ledger: Path, tmp_path: Path, capsys) -> None:
    assert main(["export", "focus", "--ledger", str(ledger), "--month", "November"]) == 2
    assert "YYYY-MM" in capsys.readouterr().err
    assert main(["export", "focus", "--ledger", str(ledger), "--month", "2026-11", "--format", "parquet"]) == 2
    assert main(["export", "focus", "--ledger", str(tmp_path / "none.db"), "--month", "2026-11"]) == 1


def test_since_until_and_stdout(ledger: Path, capsys) -> None:
    code = main(["export", "focus", "--ledger", str(ledger), "--since", "2026-11-30", "--until", "2026-12-02"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3  # header + Nov 30 + Dec 1, each in its own billing period
    assert "2026-12-01T00:00:00Z,2026-11-01T00:00:00Z" in lines[1] and "1000" in lines[2]
