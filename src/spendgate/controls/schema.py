"""Config schema of the spend controls: budgets, slowdown, rate limits, caps,
required tags, admin access and the state store.

Scopes are `{dimension: value}` maps over a call's attributes (`key`,
`team`, `feature`, `environment`, `user`, `tenant`, `model`, `deployment`,
`priority`, or `tag:NAME`). `{}` is global; a value of `"*"` means one
separate counter per distinct value (e.g. `{user: "*"}` = a budget per user).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCOPE_DIMENSIONS = frozenset(
    {"key", "team", "feature", "environment", "user", "tenant", "model", "deployment", "priority", "service"}
)
_ROLLING = re.compile(r"^(\d+)([mhdw])$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 604800}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_scope(scope: dict[str, str]) -> dict[str, str]:
    for dim in scope:
        if dim not in SCOPE_DIMENSIONS and not dim.startswith("tag:"):
            raise ValueError(f"unknown scope dimension {dim!r}; use one of {sorted(SCOPE_DIMENSIONS)} or tag:NAME")
    return scope


class Window(Strict):
    """A calendar window (`period` in `timezone`) or a rolling one (`rolling: 24h`)."""

    period: Literal["hour", "day", "week", "month"] | None = None
    rolling: str | None = None  # "30m", "24h", "7d", "4w"
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _one(self) -> "Window":
        if (self.period is None) == (self.rolling is None):
            raise ValueError("a window is either `period` (hour|day|week|month) or `rolling` (e.g. 24h)")
        if self.rolling is not None and not _ROLLING.match(self.rolling):
            raise ValueError(f"rolling window {self.rolling!r}: use N followed by m, h, d or w")
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {self.timezone!r} (use an IANA name like Europe/Berlin)") from None
        return self

    @property
    def rolling_seconds(self) -> int | None:
        if self.rolling is None:
            return None
        m = _ROLLING.match(self.rolling)
        assert m is not None
        return int(m.group(1)) * _UNIT_S[m.group(2)]


class SlowdownStep(Strict):
    """What happens once a budget is `at` percent used (reservations included)."""

    at: Decimal  # percent of the effective limit (baseline + active bursts)
    action: Literal["notify", "route", "cap_max_tokens", "refuse_batch", "reject"]
    route: dict[str, str] = Field(default_factory=dict)  # model -> cheaper model (action: route)
    max_tokens: int | None = None  # action: cap_max_tokens
    except_features: list[str] = Field(default_factory=list)  # critical features left alone

    @model_validator(mode="after")
    def _args(self) -> "SlowdownStep":
        if self.action == "route" and not self.route:
            raise ValueError("slowdown action `route` needs a `route:` map (model: cheaper model)")
        if self.action == "cap_max_tokens" and not self.max_tokens:
            raise ValueError("slowdown action `cap_max_tokens` needs `max_tokens`")
        return self


class Budget(Strict):
    name: str
    scope: dict[str, str] = Field(default_factory=dict)
    window: Window
    limit: Decimal  # the baseline allowance in USD; burst grants add to it
    slowdown: list[SlowdownStep] = Field(default_factory=list)
    on_missing_price: Literal["reject", "allow"] = "reject"  # calls to models with no price

    _scope = field_validator("scope")(classmethod(lambda cls, v: check_scope(v)))

    @field_validator("slowdown")
    @classmethod
    def _ordered(cls, steps: list[SlowdownStep]) -> list[SlowdownStep]:
        return sorted(steps, key=lambda s: s.at)


class RateLimit(Strict):
    name: str
    scope: dict[str, str] = Field(default_factory=dict)
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute (reserved by estimate, settled to actual)
    concurrency: int | None = None  # requests in flight
    batch_share: Decimal = Decimal(1)  # priority=batch calls may use at most this share of each limit

    _scope = field_validator("scope")(classmethod(lambda cls, v: check_scope(v)))


class Cap(Strict):
    """max_tokens and input-size caps for the calls a `match` selects."""

    name: str
    match: dict[str, str] = Field(default_factory=dict)
    max_tokens: int | None = None
    max_input_tokens: int | None = None
    action: Literal["clamp", "reject"] = "clamp"  # clamp applies to max_tokens only; input is rejected

    _match = field_validator("match")(classmethod(lambda cls, v: check_scope(v)))


class RequiredTags(Strict):
    environments: list[str] = Field(default_factory=lambda: ["*"])  # the call's `environment` tag
    tags: list[str]
    mode: Literal["reject", "record_untagged"] = "reject"


class AdminConfig(Strict):
    key_env: str = "SPENDGATE_ADMIN_KEY"  # environment variable holding the admin key
    key: str | None = None  # or the key itself (prefer key_env)


class StateConfig(Strict):
    url: str = "sqlite:///spendgate-state.db"  # keys, burst grants, open reservations
    reservation_ttl_s: float = 900.0  # an unsettled reservation is released after this
    flush_interval_ms: int = 50


class ControlsConfig(Strict):
    default_max_tokens: int = 4096  # set on calls that give none, so a reservation is a true worst case
    reject_missing_price: bool = True  # under a budget, a model with no price cannot be reserved
