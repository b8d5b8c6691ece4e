"""The `telemetry:` config section: Prometheus scrape endpoint and OTLP export.

Labels are opt-in beyond a low-cardinality default because every distinct
label combination is a separate time series in Prometheus: a per-user label
on a busy gateway can create millions of series and take the server down.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# event dimension -> how it is read from a UsageEvent (see labels.py)
LOW_CARDINALITY = (
    "model",
    "provider",
    "status",
    "deployment",
    "endpoint",
    "model_requested",
    "route_reason",
    "source",
    "price_status",
    "cache_status",
)
# bounded by how many teams/features/keys a deployment has: fine in the tens or hundreds
MEDIUM_CARDINALITY = (
    "team",
    "feature",
    "environment",
    "key_id",
    "prompt_template",
    "prompt_version",
    "experiment",
    "priority",
)
# unbounded: one series per end user / tenant / session
HIGH_CARDINALITY = ("user", "tenant", "session_id")
ALL_DIMENSIONS = LOW_CARDINALITY + MEDIUM_CARDINALITY + HIGH_CARDINALITY

DEFAULT_LABELS = ["model", "provider", "status"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def check_labels(labels: list[str], allow_high_cardinality: bool, where: str) -> list[str]:
    """Known dimensions only, no duplicates, high-cardinality ones only when allowed."""
    seen: set[str] = set()
    for name in labels:
        if name not in ALL_DIMENSIONS:
            raise ValueError(f"{where}: unknown label {name!r}; known: {', '.join(ALL_DIMENSIONS)}")
        if name in seen:
            raise ValueError(f"{where}: label {name!r} is listed twice")
        seen.add(name)
        if name in HIGH_CARDINALITY and not allow_high_cardinality:
            raise ValueError(
                f"{where}: label {name!r} has one value per {name.replace('_id', '')} and can create "
                "millions of time series; set allow_high_cardinality: true to use it anyway"
            )
    return labels


class PrometheusConfig(_Strict):
    """`GET /metrics` in the Prometheus text format."""

    enabled: bool = True
    path: str = "/metrics"
    labels: list[str] = Field(default_factory=lambda: list(DEFAULT_LABELS))
    # permits user / tenant / session_id as labels, and budget gauges per user / key / tenant / session
    allow_high_cardinality: bool = False
    # who may scrape: "auto" = a bearer token (the admin key or the key_env token) once the gateway
    # has virtual keys or key_env is set, open in first-minute mode (allow_any_key, no keys);
    # "token" = always a token; "none" = never (only behind a network boundary)
    auth: Literal["auto", "token", "none"] = "auto"
    key_env: str | None = None  # a scrape-only bearer token read from this environment variable

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "require_admin_key" in data:
            raise ValueError(
                "telemetry.prometheus.require_admin_key was replaced by auth: auto | token | none "
                "(auto, the default: a bearer token once the gateway has virtual keys; token: always; "
                "none: never, only behind a network boundary); remove require_admin_key"
            )
        return data

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or value.startswith(("/v1/", "/admin")) or value in ("/", "/healthz", "/health"):
            raise ValueError(f"prometheus.path {value!r} must start with '/' and not clash with the gateway's own paths")
        return value

    @model_validator(mode="after")
    def _labels(self) -> "PrometheusConfig":
        check_labels(self.labels, self.allow_high_cardinality, "telemetry.prometheus.labels")
        if self.auth == "none" and self.key_env is not None:
            raise ValueError("telemetry.prometheus: auth: none ignores key_env; remove key_env or use auth: auto / token")
        return self


class OtlpConfig(_Strict):
    """OTLP/HTTP (protobuf) export of a span per usage event and GenAI metrics."""

    enabled: bool = False
    endpoint: str = "http://127.0.0.1:4318"  # the collector's base URL; /v1/traces and /v1/metrics are added
    headers: dict[str, str] = Field(default_factory=dict)  # values may use ${VAR} from the environment
    headers_env: str | None = None  # a variable holding "k1=v1,k2=v2" (like OTEL_EXPORTER_OTLP_HEADERS)
    service_name: str = "spendgate"
    resource_attributes: dict[str, str] = Field(default_factory=dict)
    spans: bool = True
    metrics: bool = True
    span_tags: bool = True  # spendgate.team, spendgate.feature, ... on spans (never prompt text)
    metric_labels: list[str] = Field(default_factory=list)  # extra metric attributes (spendgate.<dim>)
    allow_high_cardinality: bool = False
    export_interval_s: float = Field(10.0, gt=0)
    timeout_s: float = Field(10.0, gt=0)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"otlp.endpoint {value!r} must be an http(s) URL (OTLP/HTTP, e.g. http://127.0.0.1:4318)")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _labels(self) -> "OtlpConfig":
        check_labels(self.metric_labels, self.allow_high_cardinality, "telemetry.otlp.metric_labels")
        return self


class TelemetryConfig(_Strict):
    prometheus: PrometheusConfig = Field(default_factory=PrometheusConfig)
    otlp: OtlpConfig = Field(default_factory=OtlpConfig)
