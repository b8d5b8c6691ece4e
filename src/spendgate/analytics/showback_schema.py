"""Config for unit economics and showback: `slos:` and `showback:`.

Kept apart from the code that uses it so `spendgate.config` can import it
without pulling in the ledger. Money is Decimal (write amounts as strings in
YAML, "250.00", to keep every digit).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_seconds(text: str) -> float:
    """'7d' -> 604800.0; ValueError for anything else."""
    m = _DURATION.match(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"window {text!r}: a duration such as 24h, 7d or 4w")
    return float(m.group(1)) * _UNITS[m.group(2)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CostSlo(_Strict):
    """Cost per successful outcome of a feature, over a trailing window, must stay <= the target."""

    name: str = Field(min_length=1)
    feature: str = Field(min_length=1)
    max_cost_per_outcome: Decimal
    window: str = "7d"

    @field_validator("max_cost_per_outcome")
    @classmethod
    def _positive(cls, v: Decimal) -> Decimal:
        if not v.is_finite() or v <= 0:
            raise ValueError("max_cost_per_outcome: a positive amount, e.g. \"0.05\"")
        return v

    @field_validator("window")
    @classmethod
    def _window(cls, v: str) -> str:
        duration_seconds(v)
        return v.strip()

    @property
    def window_seconds(self) -> float:
        return duration_seconds(self.window)


class AllocationRule(_Strict):
    """How a shared amount is split among owners.

    proportional: to each owner's direct spend in the month (evenly when none
    has any); even: equal parts; fixed: `shares` in percent, summing to 100,
    keyed by owner (a team or cost center, whichever the statement is by).
    """

    rule: Literal["proportional", "even", "fixed"] = "proportional"
    shares: dict[str, Decimal] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _shares(self) -> "AllocationRule":
        if self.rule != "fixed":
            if self.shares:
                raise ValueError(f"shares are for rule: fixed (this rule is {self.rule})")
            return self
        if not self.shares:
            raise ValueError("rule fixed needs shares: {owner: percent, ...} summing to 100")
        bad = [k for k, v in self.shares.items() if not v.is_finite() or v < 0]
        if bad:
            raise ValueError(f"shares must be non-negative percentages: {bad}")
        total = sum(self.shares.values(), Decimal(0))
        if total != 100:
            raise ValueError(f"fixed shares must sum to 100, they sum to {total}")
        return self


class SharedCost(_Strict):
    """A fixed monthly amount spent for everyone (cache infrastructure, a vector DB)."""

    name: str = Field(min_length=1)
    amount: Decimal
    allocation: AllocationRule | None = None  # default: showback.allocation

    @field_validator("amount")
    @classmethod
    def _amount(cls, v: Decimal) -> Decimal:
        if not v.is_finite() or v < 0:
            raise ValueError("amount: a non-negative monthly amount, e.g. \"250.00\"")
        return v


class ShowbackConfig(_Strict):
    """Monthly statements per team or cost center (`spendgate report statement`)."""

    cost_centers: dict[str, list[str]] = Field(default_factory=dict)  # cost center -> its teams
    cost_center_tag: str = "cost_center"  # a call tagged cost_center=X belongs to X whatever its team
    allocation: AllocationRule = Field(default_factory=AllocationRule)  # default rule
    untagged: AllocationRule | None = None  # rule for spend without an owner; default: allocation
    shared_costs: list[SharedCost] = Field(default_factory=list)
    quantum: Decimal = Decimal("0.000001")  # smallest part an allocation hands out

    @field_validator("cost_centers")
    @classmethod
    def _one_center_per_team(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        seen: dict[str, str] = {}
        for center, teams in v.items():
            for team in teams:
                if team in seen:
                    raise ValueError(f"team {team!r} is in two cost centers: {seen[team]!r} and {center!r}")
                seen[team] = center
        return v

    @field_validator("shared_costs")
    @classmethod
    def _unique(cls, v: list[SharedCost]) -> list[SharedCost]:
        names = [s.name for s in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate shared cost names: {dupes}")
        return v

    @field_validator("quantum")
    @classmethod
    def _quantum(cls, v: Decimal) -> Decimal:
        if not v.is_finite() or v <= 0 or v != Decimal(1).scaleb(v.adjusted()):
            raise ValueError("quantum: a power of ten such as \"0.01\" or \"0.000001\"")
        return v

    def team_centers(self) -> dict[str, str]:
        return {team: center for center, teams in self.cost_centers.items() for team in teams}
