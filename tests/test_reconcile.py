"""Reconciliation: provider exports vs the ledger, gaps on the right day and model."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from spendgate.cli import main
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.sqlite import SQLiteLedger
from spendgate.reconcile import anthropic, csvfile, openai
from spendgate.reconcile.compare import compare
from spendgate.reconcile.figures import ReconcileError, normalize_model

DATA = Path(__file__).parent / "data" / "reconcile"
EXAMPLE = Path(__file__).parent.parent / "examples" / "reconcile"


def ts(day: int, hour: int = 12, minute: int = 0, second: int = 0) -> float:
    return datetime(2026, 11, day, hour, minute, second, tzinfo=UTC).timestamp()


def ev(day: int, provider: str, model: str, cost: str, inp: int, out: int, **kw) -> UsageEvent:
    return UsageEvent(ts_start=kw.pop("at", ts(day)), provider=provider, deployment=provider, model_used=model,
                      cost=Decimal(cost), input_tokens=inp, output_tokens=out, **kw)  # fmt: skip


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    """The gateway saw everything on Nov 1; on Nov 2 most gpt-4o-mini traffic went around it."""
    path = tmp_path / "ledger.db"
    with SQLiteLedger(path) as store:
        store.append([
            ev(1, "openai", "gpt-4o", "1.25", 400000, 25000),
            ev(1, "openai", "gpt-4o-mini", "0.03", 50000, 20000),
            ev(2, "openai", "gpt-4o-2024-08-06", "2.5", 840000, 40000),
            ev(2, "openai", "gpt-4o-mini", "0.045", 300000, 75000),
            # a cache hit never reached OpenAI: it must not count against the bill
            ev(2, "openai", "gpt-4o", "0", 999999, 999, cache_status="exact", saved=Decimal("3")),
            ev(1, "anthropic", "claude-sonnet-4", "1.355", 160000, 20000),
            ev(2, "anthropic", "claude-sonnet-4-20250514", "1.5", 200000, 30000),
        ])  # fmt: skip
    return path


def test_model_names_normalise_snapshots_and_prefixes() -> None:
    assert normalize_model("gpt-4o-2024-08-06") == "gpt-4o"
    assert normalize_model("claude-sonnet-4-20250514") == "claude-sonnet-4"
    assert normalize_model("openai/GPT-4o-mini") == "gpt-4o-mini"
    assert normalize_model("o3-mini") == "o3-mini"  # not a date: left alone


def test_openai_costs_importer_is_exact() -> None:
    figs = openai.import_costs(DATA / "openai_costs.json")
    assert len(figs) == 8
    assert {f.model for f in figs} == {"gpt-4o", "gpt-4o-mini"}
    nov2_mini = [f.cost for f in figs if f.day == "2026-11-02" and f.model == "gpt-4o-mini"]
    assert sum(nov2_mini, Decimal(0)) == Decimal("0.5")  # 0.3 + 0.2 exactly, not 0.5000000000000001
    assert sum((f.cost for f in figs), Decimal(0)) == Decimal("4.28")


def test_openai_usage_importer() -> None:
    figs = openai.import_usage(DATA / "openai_usage.json")
    f = next(f for f in figs if f.day == "2026-11-01" and f.model == "gpt-4o")
    assert (f.input_tokens, f.output_tokens, f.cache_read_tokens, f.requests) == (400000, 25000, 100000, 40)
    assert all(f.cost is None for f in figs)


def test_anthropic_usage_counts_cached_and_written_tokens_as_input() -> None:
    figs = anthropic.import_usage(DATA / "anthropic_usage.json")
    f = next(f for f in figs if f.day == "2026-11-01")
    assert f.model == "claude-sonnet-4"
    assert f.input_tokens == 100000 + 50000 + 10000
    assert (f.cache_read_tokens, f.cache_write_tokens, f.output_tokens) == (50000, 10000, 20000)


def test_anthropic_cost_amounts_are_cents() -> None:
    figs = anthropic.import_cost(DATA / "anthropic_cost.json")
    by_day: dict[str, Decimal] = {}
    for f in figs:
        by_day[f.day] = by_day.get(f.day, Decimal(0)) + f.cost
    assert by_day == {"2026-11-01": Decimal("1.355"), "2026-11-02": Decimal("1.05")}


def test_generic_csv_importer() -> None:
    figs = csvfile.import_csv(DATA / "generic.csv")
    assert [f.model for f in figs] == ["gpt-4o", "gpt-4o-mini", "gpt-4o", "gpt-4o-mini"]
    assert figs[3].cost == Decimal("0.5") and figs[3].requests == 500


def test_bypass_found_on_the_right_day_and_model(ledger: Path) -> None:
    with SQLiteLedger(ledger) as store:
        r = compare(store, openai.import_costs(DATA / "openai_costs.json"), providers=["openai"])
    flagged = [(g.day, g.model, g.status, g.gap) for g in r.flagged]
    assert flagged == [("2026-11-02", "gpt-4o-mini", "bypass", Decimal("0.455"))]
    totals = r.totals()
    assert totals["provider_cost"] == "4.28"
    assert totals["ledger_cost"] == "3.825"  # the cache hit and Anthropic traffic excluded
    ok = next(g for g in r.rows if g.day == "2026-11-02" and g.model == "gpt-4o")
    assert ok.status == "ok" and ok.ledger.tokens == 880000  # snapshot name joined with the alias


def test_usage_export_compares_tokens(ledger: Path) -> None:
    with SQLiteLedger(ledger) as store:
        r = compare(store, openai.import_usage(DATA / "openai_usage.json"), providers=["openai"])
    assert r.measure == "tokens"
    assert [(g.day, g.model, g.status) for g in r.flagged] == [("2026-11-02", "gpt-4o-mini", "bypass")]


def test_ledger_only_gap(ledger: Path) -> None:
    with SQLiteLedger(ledger) as store:
        r = compare(store, anthropic.import_cost(DATA / "anthropic_cost.json"), providers=["anthropic"])
    assert [(g.day, g.model, g.status, g.gap) for g in r.flagged] == [
        ("2026-11-02", "claude-sonnet-4", "ledger-only", Decimal("-0.45"))
    ]


def test_within_tolerance_is_not_flagged(ledger: Path, tmp_path: Path) -> None:
    csv = tmp_path / "p.csv"
    csv.write_text("date,model,cost\n2026-11-01,gpt-4o,1.259\n2026-11-01,gpt-4o-mini,0.03\n")
    with SQLiteLedger(ledger) as store:
        r = compare(store, csvfile.import_csv(csv), providers=["openai"])
    assert r.flagged == []  # 0.009 is under both $0.01 and 1%


def test_cli_json_output(ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["reconcile", "--import", str(DATA / "openai_costs.json"), "--format", "openai-costs",
                 "--ledger", str(ledger), "--output", "json"])  # fmt: skip
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"]["gap"] == "0.455"
    assert [r["model"] for r in doc["rows"] if r["status"] == "bypass"] == ["gpt-4o-mini"]


def test_cli_table_and_fail_on_gap(ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["reconcile", "--import", str(DATA / "generic.csv"), "--format", "csv", "--provider", "openai",
                 "--ledger", str(ledger), "--fail-on-gap"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert "BYPASS" in out and "2026-11-02  gpt-4o-mini" in out


@pytest.mark.parametrize("fmt", ["openai-costs", "openai-usage", "anthropic-usage", "anthropic-cost"])
def test_bad_file_is_a_clear_error(fmt: str, ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["reconcile", "--import", str(DATA / "not_a_costs_page.json"), "--format", fmt,
                 "--ledger", str(ledger)])  # fmt: skip
    assert code == 2
    assert "page object" in capsys.readouterr().err


def test_wrong_format_for_the_file_is_a_clear_error(ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["reconcile", "--import", str(DATA / "openai_usage.json"), "--format", "openai-costs",
                 "--ledger", str(ledger)])  # fmt: skip
    assert code == 2
    assert "amount.value" in capsys.readouterr().err


def test_garbage_and_missing_files(ledger: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text("this is not json {")
    assert main(["reconcile", "--import", str(junk), "--format", "openai-costs", "--ledger", str(ledger)]) == 2
    assert "not JSON" in capsys.readouterr().err
    missing = tmp_path / "nope.csv"
    assert main(["reconcile", "--import", str(missing), "--format", "csv", "--ledger", str(ledger)]) == 2
    with pytest.raises(ReconcileError, match="cost"):
        bad = tmp_path / "bad.csv"
        bad.write_text("date,model,cost\n2026-11-01,gpt-4o,twelve\n")
        csvfile.import_csv(bad)


def test_example_export_reconciles(ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """examples/reconcile/ ships a costs export and the command line its README quotes."""
    command = (EXAMPLE / "command.txt").read_text().split()
    assert command[:2] == ["spendgate", "reconcile"]
    args = [a.replace("examples/reconcile/", str(EXAMPLE) + "/") for a in command[1:]]
    args = [str(ledger) if a == "spendgate.db" else a for a in args]
    assert main(args) == 0
    assert "bypass" in capsys.readouterr().out.lower()
