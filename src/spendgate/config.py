"""The config file's schema, read once into typed objects and passed down.

`${VAR}` and `${VAR:-default}` in string values are replaced from the
environment when the file is loaded; provider secrets are named by
`api_key_env` and read from the environment, never written in the file.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from spendgate.cache.schema import CacheConfig
from spendgate.alerts.schema import AlertsConfig
from spendgate.analytics.focus_schema import FocusConfig
from spendgate.dashboard.schema import DashboardConfig
from spendgate.routing.schema import RoutingConfig
from spendgate.analytics.showback_schema import CostSlo, ShowbackConfig
from spendgate.telemetry.schema import TelemetryConfig
from spendgate.controls.schema import (
    AdminConfig,
    Budget,
    Cap,
    ControlsConfig,
    RateLimit,
    RequiredTags,
    StateConfig,
)

ProviderKind = Literal["openai", "azure_openai", "anthropic", "gemini", "openai_compatible"]

DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com/v1beta/openai",
}

# genai-prices provider ids, used when a deployment gives no `price_provider`.
CATALOG_PROVIDER: dict[str, str | None] = {
    "openai": "openai",
    "azure_openai": "azure",
    "anthropic": "anthropic",
    "gemini": "google",
    "openai_compatible": None,
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenPrice(Strict):
    """Prices per million tokens, in the catalog's currency (USD)."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Decimal | None = None  # default: input price
    cache_write_per_mtok: Decimal | None = None  # default: input price
    cache_write_1h_per_mtok: Decimal | None = None  # Anthropic one-hour writes; default: cache_write price


class GpuHourPrice(Strict):
    """Self-hosted cost: an hourly GPU rate spread over measured throughput."""

    hourly_rate: Decimal
    input_tokens_per_second: Decimal
    output_tokens_per_second: Decimal


class PriceOverride(Strict):
    """Replace the catalog price for a model (negotiated or custom)."""

    model: str
    provider: str | None = None  # None: any provider
    price: TokenPrice | None = None
    gpu_hour: GpuHourPrice | None = None
    discount_percent: Decimal | None = None  # applied to the catalog list price

    @model_validator(mode="after")
    def _one_kind(self) -> "PriceOverride":
        kinds = [x for x in (self.price, self.gpu_hour, self.discount_percent) if x is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of price, gpu_hour or discount_percent")
        return self


class PromptCacheConfig(Strict):
    """Provider prompt caching: spendgate may add Anthropic `cache_control` breakpoints."""

    insert_breakpoints: bool = False  # mark the last tool and the last system block when long enough
    ttl: Literal["5m", "1h"] = "5m"
    min_tokens: int | None = None  # override the model's minimum cacheable length


class Deployment(Strict):
    """One upstream model endpoint the gateway may send calls to."""

    name: str
    provider: ProviderKind
    model: str  # the model id the upstream expects (Azure: the deployment name)
    serves: list[str] = Field(default_factory=list)  # public names; default [model]
    base_url: str | None = None  # "simulator" = the built-in simulator
    api_key_env: str | None = None
    api_version: str | None = None  # Azure OpenAI
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    retries: int = 0  # extra attempts on 429/5xx/timeout/connection errors
    retry_max_wait_s: float = 10.0
    # balancing (routing.strategy): share of calls, and the provider's limits to stay under
    weight: float = Field(1.0, ge=0)
    rpm: int | None = None  # requests per minute this deployment accepts
    tpm: int | None = None  # tokens per minute (input bound + max output)
    # pricing
    price_model: str | None = None  # catalog model id, default `model`
    price_provider: str | None = None  # catalog provider id
    price: TokenPrice | None = None
    gpu_hour: GpuHourPrice | None = None
    prompt_cache: PromptCacheConfig | None = None  # None: the top-level `prompt_cache`

    @model_validator(mode="after")
    def _defaults(self) -> "Deployment":
        if not self.serves:
            self.serves = [self.model]
        if self.base_url is None:
            if self.provider not in DEFAULT_BASE_URLS:
                raise ValueError(f"deployment {self.name!r}: base_url is required for {self.provider}")
            self.base_url = DEFAULT_BASE_URLS[self.provider]
        if self.provider == "azure_openai" and not self.api_version:
            raise ValueError(f"deployment {self.name!r}: api_version is required for azure_openai")
        return self

    @property
    def wire(self) -> Literal["openai", "anthropic"]:
        return "anthropic" if self.provider == "anthropic" else "openai"

    @property
    def catalog_provider(self) -> str | None:
        return self.price_provider or CATALOG_PROVIDER[self.provider]


class ApiKey(Strict):
    """A virtual key. Static ones come from config; managed ones from the key
    store (secret kept only as a hash). The secret is never logged."""

    key: str = ""  # the secret (static keys); empty for managed keys
    id: str
    tags: dict[str, str] = Field(default_factory=dict)  # defaults for its calls
    team: str | None = None  # owner
    user: str | None = None
    service: str | None = None
    allowed_models: list[str] = Field(default_factory=list)  # empty: any model


class TagRules(Strict):
    max_name_length: int = 64
    max_value_length: int = 256
    max_tags: int = 32


class LedgerConfig(Strict):
    url: str = "sqlite:///spendgate.db"
    batch_size: int = 500
    flush_interval_ms: int = 50  # small batches keep the writer's GIL holds short (p99)


class PrivacyConfig(Strict):
    store_text: bool = False  # keep prompt and response text in the ledger
    prefix_block_chars: int = 2048  # fingerprint granularity for prefix hashes


class SimulatorConfig(Strict):
    """The built-in simulator the gateway starts beside itself."""

    enabled: bool = False
    latency_ms: float = 0.0
    tokens_per_second: float = 0.0  # 0 = as fast as possible


class ServerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = 4000
    graceful_timeout_s: float = 30.0
    log_level: str = "info"


class IngestConfig(Strict):
    enabled: bool = True  # POST /v1/spendgate/events, for authenticated keys


class Config(Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    deployments: list[Deployment] = Field(default_factory=list)
    keys: list[ApiKey] = Field(default_factory=list)
    allow_any_key: bool = False  # first-minute mode: any key passes (loudly)
    tags: TagRules = Field(default_factory=TagRules)
    prices: list[PriceOverride] = Field(default_factory=list)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    simulator: SimulatorConfig = Field(default_factory=SimulatorConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    controls: ControlsConfig = Field(default_factory=ControlsConfig)
    required_tags: list[RequiredTags] = Field(default_factory=list)
    budgets: list[Budget] = Field(default_factory=list)
    rate_limits: list[RateLimit] = Field(default_factory=list)
    caps: list[Cap] = Field(default_factory=list)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    prompt_cache: PromptCacheConfig = Field(default_factory=PromptCacheConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    slos: list[CostSlo] = Field(default_factory=list)  # cost per successful outcome targets
    showback: ShowbackConfig = Field(default_factory=ShowbackConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    focus: FocusConfig = Field(default_factory=FocusConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)  # rules and notifiers (docs/alerts.md)

    @field_validator("budgets", "rate_limits", "caps")
    @classmethod
    def _unique_control_names(cls, items: list[Any]) -> list[Any]:
        names = [i.name for i in items]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"duplicate names: {sorted(dupes)}")
        return items

    @field_validator("deployments")
    @classmethod
    def _unique_names(cls, deployments: list[Deployment]) -> list[Deployment]:
        seen: set[str] = set()
        for d in deployments:
            if d.name in seen:
                raise ValueError(f"duplicate deployment name {d.name!r}")
            seen.add(d.name)
        return deployments

    @model_validator(mode="after")
    def _simulator_needed(self) -> "Config":
        if any(d.base_url == "simulator" for d in self.deployments) and not self.simulator.enabled:
            self.simulator.enabled = True
        return self

    @model_validator(mode="after")
    def _prompt_cache_defaults(self) -> "Config":
        for d in self.deployments:  # a deployment's own block replaces the top-level one
            if d.prompt_cache is None:
                d.prompt_cache = self.prompt_cache
        return self


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            found = os.environ.get(m.group(1))
            if found is None:
                if m.group(2) is None:
                    raise ValueError(f"environment variable {m.group(1)} is not set")
                return m.group(2)
            return found

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    return value


DEFAULT_CONFIG_YAML = """\
# spendgate's embedded default: the built-in simulator as the only upstream,
# serving real model names so calls are priced at real list prices.
allow_any_key: true
ledger:
  url: sqlite:///spendgate.db
deployments:
  - {name: sim-gpt-4o, provider: openai, model: gpt-4o, base_url: simulator}
  - {name: sim-gpt-4o-mini, provider: openai, model: gpt-4o-mini, base_url: simulator}
  - {name: sim-text-embedding-3-small, provider: openai, model: text-embedding-3-small, base_url: simulator}
  - {name: sim-gpt-3.5-turbo-instruct, provider: openai, model: gpt-3.5-turbo-instruct, base_url: simulator}
  - {name: sim-claude-sonnet-4-5, provider: anthropic, model: claude-sonnet-4-5, base_url: simulator}
  - {name: sim-claude-haiku-4-5, provider: anthropic, model: claude-haiku-4-5, base_url: simulator}
"""


def parse_config(text: str) -> Config:
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise ValueError("the config file must be a mapping")
    return Config.model_validate(_interpolate(raw))


def load_config(path: str | Path | None) -> tuple[Config, bool]:
    """Read the config file; with no path, the embedded default (second value True)."""
    if path is None:
        return parse_config(DEFAULT_CONFIG_YAML), True
    return parse_config(Path(path).read_text()), False
