"""Provider figures vs the ledger, per UTC day and model, with the gaps flagged.

The ledger side counts only calls that reached the provider: cache hits
(`cache_status` exact/semantic) were answered by the gateway and never billed.
A gap is flagged when it exceeds both tolerances (default 1% of the larger
side and $0.01; tokens: 1% only):
- `bypass`: the provider saw more than the gateway recorded: traffic that went
  around the gateway (or a price the ledger lacks);
- `ledger-only`: the ledger recorded more than the provider billed: a price
  set too high, a test deployment, or an export that is not complete yet.
Cost exports are compared on cost; usage exports (no cost) on tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from spendgate.ledger.sqlite import TABLE, time_window
from spendgate.reconcile.figures import ProviderFigure, ReconcileError, normalize_model

ZERO = Decimal(0)


@dataclass
class Side:
    cost: Decimal | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    seen: bool = False

    def add_figure(self, f: ProviderFigure) -> None:
        self.seen = True
        if f.cost is not None:
            self.cost = (self.cost or ZERO) + f.cost
        self.input_tokens += f.input_tokens or 0
        self.output_tokens += f.output_tokens or 0
        self.requests += f.requests or 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class Gap:
    day: str
    model: str | None
    provider: Side
    ledger: Side
    measure: str  # cost | tokens
    gap: Decimal  # provider - ledger, in the measure's unit
    gap_pct: Decimal | None  # of the ledger figure; None when the ledger has nothing
    status: str  # ok | bypass | ledger-only

    def to_dict(self) -> dict[str, Any]:
        def money(v: Decimal | None) -> str | None:
            return None if v is None else format(v, "f")

        return {
            "day": self.day,
            "model": self.model,
            "measure": self.measure,
            "provider_cost": money(self.provider.cost),
            "ledger_cost": money(self.ledger.cost),
            "provider_input_tokens": self.provider.input_tokens,
            "ledger_input_tokens": self.ledger.input_tokens,
            "provider_output_tokens": self.provider.output_tokens,
            "ledger_output_tokens": self.ledger.output_tokens,
            "provider_requests": self.provider.requests,
            "ledger_requests": self.ledger.requests,
            "gap": format(self.gap, "f"),
            "gap_pct": None if self.gap_pct is None else format(self.gap_pct, "f"),
            "status": self.status,
        }


@dataclass
class Reconciliation:
    since: float
    until: float
    measure: str
    per_model: bool
    rows: list[Gap] = field(default_factory=list)

    @property
    def flagged(self) -> list[Gap]:
        return [r for r in self.rows if r.status != "ok"]

    def totals(self) -> dict[str, Any]:
        p = sum(((r.provider.cost or ZERO) for r in self.rows), ZERO)
        led = sum(((r.ledger.cost or ZERO) for r in self.rows), ZERO)
        return {
            "provider_cost": format(p, "f") if self.measure == "cost" else None,
            "ledger_cost": format(led, "f"),
            "gap": format(p - led, "f") if self.measure == "cost" else None,
            "provider_tokens": sum(r.provider.tokens for r in self.rows),
            "ledger_tokens": sum(r.ledger.tokens for r in self.rows),
            "flagged": len(self.flagged),
            "bypass": sum(r.status == "bypass" for r in self.rows),
            "ledger_only": sum(r.status == "ledger-only" for r in self.rows),
        }


def _day_start(day: str) -> float:
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()


def window_of(figures: Sequence[ProviderFigure]) -> tuple[float, float]:
    """The UTC days the import covers: [first day 00:00, day after the last)."""
    days = sorted({f.day for f in figures})
    end = datetime.strptime(days[-1], "%Y-%m-%d").replace(tzinfo=UTC) + timedelta(days=1)
    return _day_start(days[0]), end.timestamp()


def _ledger(store: Any, since: float, until: float, providers: Sequence[str] | None, per_model: bool) -> dict:
    where, params = time_window(since, until)
    where += " AND cache_status NOT IN ('exact', 'semantic')"
    if providers:
        where += f" AND provider IN ({', '.join('?' * len(providers))})"
        params = [*params, *providers]
    sql = (
        "SELECT strftime('%Y-%m-%d', ts_start, 'unixepoch') AS d, model_used, count(*), "
        "sum(input_tokens), sum(output_tokens), coalesce(dsum(cost), '0') "
        f"FROM {TABLE}{where} GROUP BY d, model_used"
    )
    out: dict[tuple[str, str | None], Side] = {}
    for d, model, n, inp, outp, cost in store.query(sql, params):
        key = (d, normalize_model(model) if per_model else None)
        side = out.setdefault(key, Side(cost=ZERO))
        side.seen = True
        side.requests += int(n)
        side.input_tokens += int(inp or 0)
        side.output_tokens += int(outp or 0)
        side.cost = (side.cost or ZERO) + Decimal(cost)
    return out


def compare(
    store: Any,
    figures: Sequence[ProviderFigure],
    *,
    since: float | None = None,
    until: float | None = None,
    providers: Sequence[str] | None = None,
    tolerance_pct: Decimal = Decimal(1),
    tolerance_abs: Decimal = Decimal("0.01"),
) -> Reconciliation:
    """Join the import with the ledger on (day, model); `providers` limits the
    ledger to the provider the export speaks for."""
    currencies = {f.currency for f in figures} - {"USD"}
    if currencies:
        raise ReconcileError(f"the import is in {', '.join(sorted(currencies))}; the ledger is in USD")
    if not figures and (since is None or until is None):
        raise ReconcileError("the import holds no rows; give --since and --until to compare an empty export")
    if figures:
        f_since, f_until = window_of(figures)
        since = f_since if since is None else since
        until = f_until if until is None else until
    assert since is not None and until is not None
    figures = [f for f in figures if since <= _day_start(f.day) < until]
    measure = "cost" if any(f.cost is not None for f in figures) else "tokens"
    # an export without a model on some rows (e.g. costs without group_by=line_item) is compared per day
    per_model = all(f.model is not None for f in figures)
    provider: dict[tuple[str, str | None], Side] = {}
    for f in figures:
        provider.setdefault((f.day, f.model if per_model else None), Side()).add_figure(f)
    ledger = _ledger(store, since, until, providers, per_model)
    result = Reconciliation(since=since, until=until, measure=measure, per_model=per_model)
    for key in sorted(set(provider) | set(ledger), key=lambda k: (k[0], k[1] or "")):
        p, led = provider.get(key, Side()), ledger.get(key, Side(cost=ZERO))
        if measure == "cost":
            pv, lv, abs_tol = p.cost or ZERO, led.cost or ZERO, tolerance_abs
        else:
            pv, lv, abs_tol = Decimal(p.tokens), Decimal(led.tokens), ZERO
        gap = pv - lv
        pct = (gap / lv * 100).quantize(Decimal("0.01")) if lv else None
        limit = max(abs_tol, max(abs(pv), abs(lv)) * tolerance_pct / 100)
        status = "ok" if abs(gap) <= limit else ("bypass" if gap > 0 else "ledger-only")
        result.rows.append(Gap(key[0], key[1], p, led, measure, gap, pct, status))
    return result
