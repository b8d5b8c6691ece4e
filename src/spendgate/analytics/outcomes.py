"""Outcomes per feature: the denominator of cost per successful outcome.

Request outcomes (`outcomes`, from `/v1/outcomes` and the feedback API) and
session outcomes (`session_outcomes`) count alike, each in the window of its
own `ts` (when the outcome happened, not when its calls were made); a session
outcome is one row per key and session, so it counts once however many calls
the session made. Labels the learned router reads as good (success, ok,
accepted, ...) count as successes, those it reads as bad as failures; other
labels count as neither. `value` adds up exactly (Decimal) over all counted
outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from spendgate.ledger.outcomes import ensure_schema
from spendgate.ledger.sqlite import EXACT, time_window
from spendgate.routing.outcomes import NEGATIVE, POSITIVE

# cost per outcome is shown to a trillionth of a dollar (half-even): exact for
# every realistic per-token price, and a fixed quantum makes it reproducible
PER_OUTCOME_QUANTUM = Decimal("0.000000000001")


@dataclass(slots=True)
class OutcomeTotals:
    successes: int = 0
    failures: int = 0
    value: Decimal = field(default_factory=Decimal)


def per_outcome(cost: Decimal, successes: int) -> Decimal | None:
    """cost / successes to PER_OUTCOME_QUANTUM (None without successes)."""
    if successes <= 0:
        return None
    with localcontext() as ctx:
        ctx.prec = 60
        return (cost / Decimal(successes)).quantize(PER_OUTCOME_QUANTUM, rounding=ROUND_HALF_EVEN)


def _labels(labels: frozenset[str]) -> str:
    return ", ".join(f"'{label}'" for label in sorted(labels))  # fixed identifiers, no user text


def outcomes_by_feature(store: Any, since: float | None, until: float | None) -> dict[str | None, OutcomeTotals]:
    """feature (None: untagged) -> successes, failures and value of outcomes with since <= ts < until."""
    ensure_schema(store)
    where, window = time_window(since, until, column="ts")
    sql = " UNION ALL ".join(
        f"SELECT feature, "
        f"coalesce(sum(outcome IN ({_labels(POSITIVE)})), 0), coalesce(sum(outcome IN ({_labels(NEGATIVE)})), 0), "
        f"coalesce(dsum(value) FILTER (WHERE outcome IN ({_labels(POSITIVE | NEGATIVE)})), '0') "
        f"FROM {table}{where} GROUP BY feature"
        for table in ("outcomes", "session_outcomes")
    )  # noqa: S608 - table names and labels are constants
    out: dict[str | None, OutcomeTotals] = {}
    for feature, ok, bad, value in store.query(sql, window + window):
        if not ok and not bad:
            continue
        t = out.setdefault(feature or None, OutcomeTotals())
        t.successes += int(ok)
        t.failures += int(bad)
        t.value = EXACT.add(t.value, Decimal(value))
    return out
