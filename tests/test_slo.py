"""Cost SLOs: cost per successful outcome over a trailing window, judged exactly."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from spendgate.analytics.outcomes import outcomes_by_feature
from spendgate.analytics.slo import CostSlo, slo_status
from spendgate.config import parse_config
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.outcomes import record_request_outcome, record_session_outcome
from spendgate.ledger.sqlite import SQLiteLedger

NOW = 1_800_000_000.0
DAY = 86400.0


@pytest.fixture
def store(tmp_path: Path) -> SQLiteLedger:
    s = SQLiteLedger(tmp_path / "l.db")
    events = [
        UsageEvent(request_id="r1", feature="checkout", cost=Decimal("0.10"), ts_start=NOW - 1 * DAY),
        UsageEvent(request_id="r2", feature="checkout", cost=Decimal("0.05"), ts_start=NOW - 2 * DAY),
        UsageEvent(request_id="r2", attempt=2, feature="checkout", cost=Decimal("0.000000000000000001"), ts_start=NOW - 2 * DAY),
        UsageEvent(request_id="old", feature="checkout", cost=Decimal("9"), ts_start=NOW - 8 * DAY),  # outside 7d
        UsageEvent(request_id="s", feature="search", cost=Decimal("1"), ts_start=NOW - DAY, session_id="x"),
    ]
    s.append(events)
    record_request_outcome(s, "r1", "success", key_id="k", ts=NOW - DAY, value=Decimal("12.5"), feature="checkout")
    record_request_outcome(s, "r2", "failure", key_id="k", ts=NOW - DAY, feature="checkout")
    record_session_outcome(s, "sess", "success", key_id="k", ts=NOW - 3 * DAY, value=Decimal("0.5"), feature="checkout")
    record_request_outcome(s, "old", "success", key_id="k", ts=NOW - 9 * DAY, feature="checkout")  # outside 7d
    yield s
    s.close()


def slo(target: str, feature: str = "checkout", window: str = "7d") -> CostSlo:
    return CostSlo(name="checkout-cost", feature=feature, max_cost_per_outcome=Decimal(target), window=window)


def test_outcomes_count_in_the_window_of_their_own_time(store: SQLiteLedger) -> None:
    week = outcomes_by_feature(store, NOW - 7 * DAY, NOW)["checkout"]
    assert (week.successes, week.failures, week.value) == (2, 1, Decimal("13.0"))
    everything = outcomes_by_feature(store, None, None)["checkout"]
    assert everything.successes == 3
    assert "checkout" not in outcomes_by_feature(store, NOW - 0.5 * DAY, NOW)


def test_cost_per_outcome_is_window_cost_over_successes_and_judged_exactly(store: SQLiteLedger) -> None:
    cost = Decimal("0.150000000000000001")  # every attempt in the window, to the last digit
    [s] = slo_status(store, [slo("0.075")], NOW)
    assert (s.cost, s.successes, s.failures) == (cost, 2, 1)
    assert s.cost_per_outcome == Decimal("0.075000000000")  # to the documented quantum
    assert s.ok is False  # 0.150000000000000001 > 2 x 0.075, although the rounded ratio equals the target
    [s] = slo_status(store, [slo("0.0750000000000000005")], NOW)
    assert s.ok is True
    assert s.to_dict()["cost"] == "0.150000000000000001" and s.to_dict()["target"] == "0.0750000000000000005"


def test_no_successes_yet_means_no_verdict(store: SQLiteLedger) -> None:
    [search, short] = slo_status(store, [slo("1", feature="search"), slo("1", window="12h")], NOW)
    assert (search.cost, search.successes, search.cost_per_outcome, search.ok) == (Decimal("1"), 0, None, None)
    assert (short.cost, short.successes, short.ok) == (Decimal("0"), 0, None)


def test_slos_are_read_from_config_and_bad_ones_refused() -> None:
    cfg = parse_config('slos:\n  - {name: c, feature: checkout, max_cost_per_outcome: "0.05", window: 30d}\n')
    assert cfg.slos[0].max_cost_per_outcome == Decimal("0.05") and cfg.slos[0].window_seconds == 30 * DAY
    for bad in ('{name: c, feature: f, max_cost_per_outcome: "-1"}', '{name: c, feature: f, max_cost_per_outcome: "1", window: soon}',
                '{name: c, feature: f, max_cost_per_outcome: "1", extra: 1}'):  # fmt: skip
        with pytest.raises(ValidationError):
            parse_config(f"slos:\n  - {bad}\n")
