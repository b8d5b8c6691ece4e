"""OTLP/HTTP export: a span per usage event and GenAI client metrics.

Spans are made after the fact from the ledger event (its ts_start/ts_end), on
the ledger writer's thread, and batched out by the SDK's own export thread:
the request path never waits for a collector. The gateway owns its tracer and
meter providers (the global ones are left to the host application).

Attributes follow the OpenTelemetry GenAI semantic conventions
(`gen_ai.operation.name`, `gen_ai.provider.name` plus the older
`gen_ai.system`, `gen_ai.request.model`, `gen_ai.usage.input_tokens`, ...).
spendgate adds `spendgate.cost_usd` as a *string* holding the exact decimal
from the ledger (a double would round it), `spendgate.cost_usd_double` for
backends that can only sum numbers, tags as `spendgate.<tag>`, and the
cache status and request id. Prompt and response text are never exported.

Needs the `otel` extra: `pip install 'spendgate[otel]'`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from spendgate.ledger.events import TAG_COLUMNS, UsageEvent
from spendgate.telemetry.labels import reader
from spendgate.telemetry.schema import OtlpConfig

log = logging.getLogger(__name__)

# spendgate endpoint -> gen_ai.operation.name
OPERATIONS = {
    "chat.completions": "chat",
    "messages": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}
# deployment provider kind -> gen_ai.provider.name (well-known values of the conventions)
PROVIDERS = {"azure_openai": "azure.ai.openai", "gemini": "gcp.gemini"}
# bucket boundaries the conventions recommend
TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]

MISSING_PACKAGES = (
    "telemetry.otlp.enabled is true but the OpenTelemetry packages are not installed; "
    "install them with: pip install 'spendgate[otel]' "
    "(opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http)"
)


def parse_headers(text: str) -> dict[str, str]:
    """`k1=v1,k2=v2` (the OTEL_EXPORTER_OTLP_HEADERS format) into a dict."""
    out: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"OTLP header {part.strip()!r} is not name=value")
        out[name.strip()] = value.strip()
    return out


def operation(e: UsageEvent) -> str:
    return OPERATIONS.get(e.endpoint, e.endpoint or "chat")


def provider(e: UsageEvent) -> str:
    return PROVIDERS.get(e.provider, e.provider)


def span_name(e: UsageEvent) -> str:
    return f"{operation(e)} {e.model_requested or e.model_used}".strip()


def span_attributes(e: UsageEvent, with_tags: bool = True) -> dict[str, Any]:
    """The span's attributes: GenAI conventions plus spendgate's own; never any text."""
    prov = provider(e)
    a: dict[str, Any] = {
        "gen_ai.operation.name": operation(e),
        "gen_ai.provider.name": prov,
        "gen_ai.system": prov,  # the name before semconv 1.37, still read by many backends
        "gen_ai.request.model": e.model_requested or e.model_used,
        "gen_ai.usage.input_tokens": e.input_tokens,
        "gen_ai.usage.output_tokens": e.output_tokens,
        "spendgate.cost_usd": format(e.cost, "f"),
        "spendgate.cost_usd_double": float(e.cost),
        "spendgate.list_cost_usd": format(e.list_cost, "f"),
        "spendgate.cache_status": e.cache_status,
        "spendgate.request_id": e.request_id,
        "spendgate.attempt": e.attempt,
        "spendgate.status": e.status,
        "spendgate.price_status": e.price_status,
        "spendgate.route_reason": e.route_reason,
        "spendgate.deployment": e.deployment,
    }
    if e.model_used:
        a["gen_ai.response.model"] = e.model_used
    if e.finish_reason:
        a["gen_ai.response.finish_reasons"] = [e.finish_reason]
    if e.cache_read_tokens:
        a["gen_ai.usage.cache_read.input_tokens"] = e.cache_read_tokens
    if e.cache_write_tokens:
        a["gen_ai.usage.cache_creation.input_tokens"] = e.cache_write_tokens
    if e.reasoning_tokens:
        a["spendgate.usage.reasoning_tokens"] = e.reasoning_tokens
    if e.saved:
        a["spendgate.saved_usd"] = format(e.saved, "f")
        if e.saved_by:
            a["spendgate.saved_by"] = e.saved_by
    if e.status != "ok":
        a["error.type"] = e.error_type or (str(e.http_status) if e.http_status else e.status)
    if e.http_status is not None:
        a["http.response.status_code"] = e.http_status
    if e.ttft_ms is not None and e.streamed:
        a["spendgate.time_to_first_token_s"] = e.ttft_ms / 1000.0
    if with_tags:
        if e.key_id:
            a["spendgate.key_id"] = e.key_id
        for name in TAG_COLUMNS:
            value = getattr(e, name)
            if value is not None:
                a[f"spendgate.{name}"] = value
        for name, value in e.tags.items():
            a[f"spendgate.tags.{name}"] = value
    return a


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


class OtlpExporter:
    """Turns written ledger events into OTLP spans and metrics."""

    def __init__(self, config: OtlpConfig, environ: Mapping[str, str] = os.environ) -> None:
        try:
            from opentelemetry.context import Context
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.metrics import Histogram, MeterProvider
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
            from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace import SpanKind, Status, StatusCode
        except ImportError as exc:
            raise RuntimeError(MISSING_PACKAGES) from exc
        self.config = config
        headers = dict(config.headers)
        if config.headers_env:
            raw = environ.get(config.headers_env)
            if raw is None:
                raise ValueError(f"telemetry.otlp.headers_env: environment variable {config.headers_env} is not set")
            headers.update(parse_headers(raw))
        resource = Resource.create({"service.name": config.service_name, **config.resource_attributes})
        self._context = Context()  # every span a root: the writer thread has no request context
        self._kind = SpanKind.CLIENT
        self._error = Status(StatusCode.ERROR)
        self.tracer_provider: Any = None
        self.meter_provider: Any = None
        self._tracer: Any = None
        if config.spans:
            self.tracer_provider = TracerProvider(resource=resource)
            exporter = OTLPSpanExporter(endpoint=f"{config.endpoint}/v1/traces", headers=headers, timeout=config.timeout_s)
            # a full queue drops spans rather than stall the ledger writer; 8192 rides out bursts
            self.tracer_provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=8192, max_export_batch_size=512))
            self._tracer = self.tracer_provider.get_tracer("spendgate")
        if config.metrics:
            reader_ = PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=f"{config.endpoint}/v1/metrics", headers=headers, timeout=config.timeout_s),
                export_interval_millis=config.export_interval_s * 1000,
            )
            views = [
                View(instrument_type=Histogram, instrument_name="gen_ai.client.token.usage",
                     aggregation=ExplicitBucketHistogramAggregation(TOKEN_BUCKETS)),
                View(instrument_type=Histogram, instrument_name="gen_ai.client.operation.duration",
                     aggregation=ExplicitBucketHistogramAggregation(DURATION_BUCKETS)),
            ]
            self.meter_provider = MeterProvider(metric_readers=[reader_], resource=resource, views=views)
            meter = self.meter_provider.get_meter("spendgate")
            self._tokens = meter.create_histogram(
                "gen_ai.client.token.usage", unit="{token}", description="Number of input and output tokens used"
            )
            self._duration = meter.create_histogram(
                "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration"
            )
            self._cost = meter.create_counter("spendgate.cost", unit="USD", description="Cost of calls in USD (the ledger is exact)")
        self._extra = reader(config.metric_labels)
        self._extra_names = [f"spendgate.{n}" for n in config.metric_labels]

    # --- the writer thread -------------------------------------------------

    def observe(self, events: Sequence[UsageEvent]) -> None:
        """Ledger-writer listener: one span per event, and the metrics."""
        for e in events:
            try:
                if self._tracer is not None:
                    self._span(e)
                if self.meter_provider is not None:
                    self._record(e)
            except Exception:  # noqa: BLE001 - one odd event must not lose the rest
                log.exception("otlp: could not export event %s", e.event_id)

    def _span(self, e: UsageEvent) -> None:
        start = _ns(e.ts_start)
        end = _ns(e.ts_end) if e.ts_end >= e.ts_start else start
        span = self._tracer.start_span(
            span_name(e),
            context=self._context,
            kind=self._kind,
            attributes=span_attributes(e, self.config.span_tags),
            start_time=start,
        )
        if e.status != "ok":
            span.set_status(self._error)
        span.end(end_time=end)

    def _record(self, e: UsageEvent) -> None:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation(e),
            "gen_ai.provider.name": provider(e),
            "gen_ai.request.model": e.model_requested or e.model_used,
        }
        if e.model_used:
            attrs["gen_ai.response.model"] = e.model_used
        if e.status != "ok":
            attrs["error.type"] = e.error_type or e.status
        for name, value in zip(self._extra_names, self._extra(e)):
            attrs[name] = value
        if e.status == "ok" or e.input_tokens or e.output_tokens:
            self._tokens.record(e.input_tokens, {**attrs, "gen_ai.token.type": "input"})
            self._tokens.record(e.output_tokens, {**attrs, "gen_ai.token.type": "output"})
        if e.latency_ms is not None:
            self._duration.record(e.latency_ms / 1000.0, attrs)
        if e.cost > 0:
            self._cost.add(float(e.cost), attrs)

    # --- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        """Flush and stop: called after the ledger writer has written its last batch."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()
