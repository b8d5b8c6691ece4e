"""The `alerts:` config section: notifiers by name, rules that name them.

Everything is checked when the config is read, so a typo in a notifier
name or a rule parameter stops the gateway at start-up rather than
silently never alerting.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from spendgate.ledger.events import TAG_COLUMNS

# the dimensions a rule's `filters` may name (the same as the analytics cube's)
FILTER_DIMS = (
    *TAG_COLUMNS,
    "key_id",
    "model",
    "provider",
    "cache_status",
    "status",
    "price_status",
    "route_reason",
)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_s(text: str) -> float:
    """Seconds in `30m`, `24h`, `7d`, `2w`; ValueError for anything else."""
    m = _DURATION.match(text.strip().lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"duration {text!r}: use a positive N followed by s, m, h, d or w (e.g. 15m, 24h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --- notifiers -------------------------------------------------------------


class _Retrying(Strict):
    timeout_s: float = Field(5.0, gt=0)
    retries: int = Field(2, ge=0, le=10)  # extra attempts after a failure
    retry_wait_s: float = Field(0.5, ge=0)  # doubled after each failed attempt


class WebhookNotifier(_Retrying):
    """POST the alert as JSON. Put tokens in `${ENV}` references, never in the file."""

    kind: Literal["webhook"]
    url: str = Field(repr=False)  # may hold a token: kept out of reprs and logs
    headers: dict[str, str] = Field(default_factory=dict, repr=False)


class SlackNotifier(_Retrying):
    """A Slack-compatible incoming webhook (`text` plus Block Kit `blocks`)."""

    kind: Literal["slack"]
    url: str = Field(repr=False)  # Slack webhook URLs are secrets


class EmailNotifier(_Retrying):
    """Email over SMTP; the password is read from the environment variable `password_env`."""

    kind: Literal["email"]
    host: str
    port: int = Field(587, gt=0, lt=65536)
    starttls: bool = False
    ssl: bool = False  # SMTP over TLS from the first byte (usually port 465)
    username: str | None = None
    password_env: str | None = None
    from_: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    subject_prefix: str = "[spendgate]"
    timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _tls(self) -> "EmailNotifier":
        if self.ssl and self.starttls:
            raise ValueError("email notifier: give either ssl (implicit TLS) or starttls, not both")
        if self.password_env and not self.username:
            raise ValueError("email notifier: password_env needs a username")
        return self


class LogNotifier(Strict):
    """Write the alert to the gateway's log (logger `spendgate.alerts`)."""

    kind: Literal["log"]
    level: Literal["info", "warning", "error"] = "warning"


Notifier = Annotated[WebhookNotifier | SlackNotifier | EmailNotifier | LogNotifier, Field(discriminator="kind")]


# --- rules -----------------------------------------------------------------


class _Rule(Strict):
    name: str = Field(min_length=1)
    notify: list[str] = Field(default_factory=list)  # notifier names
    cooldown_s: float = Field(3600.0, ge=0)  # no repeat notification for the same alert sooner
    notify_resolved: bool = False
    filters: dict[str, str | None] = Field(default_factory=dict)  # dim -> value; null = untagged

    @field_validator("filters")
    @classmethod
    def _known_dims(cls, filters: dict[str, str | None]) -> dict[str, str | None]:
        unknown = sorted(set(filters) - set(FILTER_DIMS))
        if unknown:
            raise ValueError(f"unknown filter dimension(s) {unknown}; use any of {list(FILTER_DIMS)}")
        return filters

    def _no_filters(self) -> None:
        if self.filters:
            raise ValueError(f"rule {self.name!r}: kind {self.kind} takes no filters")  # type: ignore[attr-defined]


class _Windowed(_Rule):
    window: str = "1h"  # the recent window judged
    baseline: str = "7d"  # the trailing window before it, the normal to compare with
    min_requests: int = Field(20, ge=1)  # fewer requests in either window: no judgement

    @model_validator(mode="after")
    def _durations(self) -> "_Windowed":
        duration_s(self.window)
        duration_s(self.baseline)
        return self


class DailySpendRule(_Rule):
    """Today's spend (UTC day) above `above` USD."""

    kind: Literal["daily_spend"]
    above: Decimal = Field(ge=0)


class DailySpendVsAverageRule(_Rule):
    """Today's spend above `factor` × the average of the previous `days` full days."""

    kind: Literal["daily_spend_vs_average"]
    factor: Decimal = Field(gt=0)
    days: int = Field(7, ge=1, le=90)
    min_spend: Decimal = Field(Decimal(0), ge=0)  # today must also be above this (quiet days)


class SingleCallRule(_Rule):
    """One call (one ledger event) costing more than `above` USD; judged per event."""

    kind: Literal["single_call"]
    above: Decimal = Field(ge=0)
    group_by: Literal["model", "request", "key_id", "team", "feature", "user"] = "model"


class BudgetUtilizationRule(_Rule):
    """A budget instance has used `at_percent` % of its (effective) limit."""

    kind: Literal["budget_utilization"]
    at_percent: Decimal = Field(gt=0)
    budget: str | None = None  # None: every budget

    @model_validator(mode="after")
    def _plain(self) -> "BudgetUtilizationRule":
        self._no_filters()
        return self


class ForecastOverBudgetRule(_Rule):
    """The month-end spend forecast exceeds a monthly budget's limit, or `amount` USD."""

    kind: Literal["forecast_over_budget"]
    budget: str | None = None  # a budget with a monthly window
    amount: Decimal | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_target(self) -> "ForecastOverBudgetRule":
        if (self.budget is None) == (self.amount is None):
            raise ValueError(f"rule {self.name!r}: give either budget (a monthly budget's name) or amount")
        if self.budget is not None and self.filters:
            raise ValueError(f"rule {self.name!r}: with budget, the budget's own scope is the filter")
        return self


class UntaggedShareRule(_Rule):
    """Share of spend over `window` lacking any of `tags` above `above_percent` %."""

    kind: Literal["untagged_share"]
    above_percent: Decimal = Field(ge=0, le=100)
    tags: list[str] = Field(default_factory=lambda: ["team"], min_length=1)
    window: str = "24h"
    min_spend: Decimal = Field(Decimal(0), ge=0)  # total spend in the window must exceed this

    @model_validator(mode="after")
    def _check(self) -> "UntaggedShareRule":
        duration_s(self.window)
        bad = sorted(set(self.tags) - set(TAG_COLUMNS))
        if bad:
            raise ValueError(f"rule {self.name!r}: unknown tags {bad}; use any of {list(TAG_COLUMNS)}")
        return self


class UnpricedModelRule(_Rule):
    """A model answered with no known price (cost recorded as 0); judged per event."""

    kind: Literal["unpriced_model"]


class CacheHitRateDropRule(_Windowed):
    """The cache hit rate over `window` fell below `factor` × its rate over `baseline`."""

    kind: Literal["cache_hit_rate_drop"]
    factor: Decimal = Field(Decimal("0.5"), gt=0, le=1)


class ErrorRateSpikeRule(_Windowed):
    """The error rate over `window` is above `above_percent` % and above `factor` × the baseline's."""

    kind: Literal["error_rate_spike"]
    window: str = "15m"
    baseline: str = "24h"
    above_percent: Decimal = Field(Decimal(5), ge=0, le=100)
    factor: Decimal = Field(Decimal(2), gt=0)


class CostSloRule(_Rule):
    """A cost SLO (top-level `slos:`) is broken: cost per successful outcome above target."""

    kind: Literal["cost_slo"]
    slos: list[str] = Field(default_factory=list)  # SLO names; empty: every SLO

    @model_validator(mode="after")
    def _plain(self) -> "CostSloRule":
        self._no_filters()
        return self


Rule = Annotated[
    DailySpendRule
    | DailySpendVsAverageRule
    | SingleCallRule
    | BudgetUtilizationRule
    | ForecastOverBudgetRule
    | UntaggedShareRule
    | UnpricedModelRule
    | CacheHitRateDropRule
    | ErrorRateSpikeRule
    | CostSloRule,
    Field(discriminator="kind"),
]

PER_EVENT_KINDS = frozenset({"single_call", "unpriced_model"})


class AlertsConfig(Strict):
    evaluate_every_s: float = Field(60.0, gt=0)
    notifiers: dict[str, Notifier] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> "AlertsConfig":
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate alert rule names: {dupes}")
        for rule in self.rules:
            unknown = [n for n in rule.notify if n not in self.notifiers]
            if unknown:
                known = sorted(self.notifiers) or "none defined"
                raise ValueError(f"alert rule {rule.name!r}: unknown notifier(s) {unknown} (known: {known})")
        return self

    def rule(self, name: str) -> Any:
        return next(r for r in self.rules if r.name == name)
