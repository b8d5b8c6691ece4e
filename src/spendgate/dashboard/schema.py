"""Config schema of the web dashboard (`dashboard:`).

Viewer keys open the dashboard read-only. Like the admin key, their secrets
live in environment variables the config names (`key_env`), never in the file,
so a config can be committed and shared.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Tag dimensions a call can be attributed by (the ledger's tag columns).
TAG_DIMS = (
    "team",
    "feature",
    "environment",
    "user",
    "tenant",
    "session_id",
    "prompt_template",
    "prompt_version",
    "experiment",
    "priority",
)
RANGES = ("24h", "7d", "30d", "90d", "mtd")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ViewerKey(Strict):
    """One read-only key: a name (shown on the page, in logs) and the variable holding its secret."""

    name: str = Field(min_length=1, max_length=64)
    key_env: str = Field(min_length=1)


class DashboardConfig(Strict):
    enabled: bool = True
    title: str = "spendgate"
    viewers: list[ViewerKey] = Field(default_factory=list)
    session_ttl_s: float = Field(12 * 3600, gt=0)  # how long a browser login lasts
    top_n: int = Field(10, ge=1, le=200)  # rows in "top cost drivers" tables
    default_range: Literal["24h", "7d", "30d", "90d", "mtd"] = "30d"
    # a call missing any of these tags counts as untagged
    attribution_tags: list[str] = Field(default_factory=lambda: ["team", "feature"])

    @field_validator("attribution_tags")
    @classmethod
    def _known_tags(cls, tags: list[str]) -> list[str]:
        unknown = [t for t in tags if t not in TAG_DIMS]
        if unknown:
            raise ValueError(f"unknown attribution tags {unknown}: use {', '.join(TAG_DIMS)}")
        if not tags:
            raise ValueError("give at least one attribution tag")
        return tags

    @field_validator("viewers")
    @classmethod
    def _unique_viewers(cls, viewers: list[ViewerKey]) -> list[ViewerKey]:
        names = [v.name for v in viewers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate viewer names: {dupes}")
        return viewers


def viewer_keys_from(config: DashboardConfig, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """name -> secret for every viewer whose variable is set (unset ones stay closed)."""
    return {v.name: environ[v.key_env] for v in config.viewers if environ.get(v.key_env)}
