"""The managed key record, and what the admin API accepts to create or change one.

Times are kept as UNIX seconds (floats) inside spendgate and shown as ISO 8601
UTC (`2026-12-31T00:00:00Z`) at the edges. The secret is not part of the
record: only its hash is stored, and it is handed out once, beside the record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from spendgate.controls.schema import Window
from spendgate.keys.times import iso

KeyStatus = Literal["active", "revoked", "expired"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyBudget(Strict):
    """A key's own spend limit: `limit` USD per calendar `period` in `timezone`,
    or per `rolling` window (e.g. `24h`)."""

    limit: Decimal = Field(gt=0)
    period: Literal["hour", "day", "week", "month"] | None = None
    rolling: str | None = None
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {v!r}; use an IANA name such as Europe/Berlin") from None
        return v

    @model_validator(mode="after")
    def _window(self) -> "KeyBudget":
        self.window()  # one of period/rolling, a known timezone
        return self

    def window(self) -> Window:
        return Window(period=self.period, rolling=self.rolling, timezone=self.timezone)

    def describe(self) -> str:
        per = self.period or self.rolling
        tz = "" if self.timezone == "UTC" or self.rolling else f" ({self.timezone})"
        return f"${self.limit}/{per}{tz}"


def check_model_patterns(patterns: list[str]) -> list[str]:
    """Exact names, or a `prefix*` glob (the only wildcard: at the end)."""
    cleaned = [p.strip() for p in patterns if p.strip()]
    for p in cleaned:
        if "*" in p[:-1]:
            raise ValueError(f"model pattern {p!r}: '*' may only end a pattern (e.g. claude-haiku*)")
    return cleaned


class KeyFields(Strict):
    """The settable parts of a key. For updates every field is optional and only
    the fields sent change (`null` clears an optional one)."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    team: str | None = None
    user: str | None = None
    service: str | None = None
    tags: dict[str, str] | None = None
    allowed_models: list[str] | None = None
    budget: KeyBudget | None = None
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    expires_at: datetime | None = None  # a bare date means 00:00 UTC that day

    @field_validator("allowed_models")
    @classmethod
    def _patterns(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else check_model_patterns(v)

    @field_validator("expires_at")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        return v

    def owner_tags(self) -> dict[str, str]:
        """Owner fields and tags together, for tag-rule validation."""
        out = {k: v for k, v in (("team", self.team), ("user", self.user), ("service", self.service)) if v is not None}
        out.update(self.tags or {})
        return out


class KeyCreate(KeyFields):
    name: str = Field(min_length=1, max_length=200)


@dataclass(frozen=True, slots=True)
class VirtualKey:
    """One managed key, as stored (minus secrets) and as the admin API shows it."""

    id: str
    name: str
    prefix: str  # first characters of the current secret, to recognise it
    created_at: float
    updated_at: float
    team: str | None = None
    user: str | None = None
    service: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    allowed_models: tuple[str, ...] = ()
    budget: KeyBudget | None = None
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    max_tokens: int | None = None
    expires_at: float | None = None
    revoked_at: float | None = None
    rotated_at: float | None = None
    grace_until: float | None = None  # the previous secret works until then

    def status(self, now: float) -> KeyStatus:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def to_json(self, now: float) -> dict[str, Any]:
        grace = self.grace_until if self.grace_until is not None and self.grace_until > now else None
        return {
            "id": self.id,
            "object": "spendgate.key",
            "name": self.name,
            "prefix": self.prefix,
            "status": self.status(now),
            "team": self.team,
            "user": self.user,
            "service": self.service,
            "tags": dict(self.tags),
            "allowed_models": list(self.allowed_models),
            "budget": None if self.budget is None else self.budget.model_dump(mode="json", exclude_none=True),
            "rpm": self.rpm,
            "tpm": self.tpm,
            "concurrency": self.concurrency,
            "max_tokens": self.max_tokens,
            "expires_at": iso(self.expires_at),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "revoked_at": iso(self.revoked_at),
            "rotated_at": iso(self.rotated_at),
            "previous_secret_valid_until": iso(grace),
        }
