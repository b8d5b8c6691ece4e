"""Prometheus metrics of the ledger's events, in a registry private to one gateway.

A private `CollectorRegistry` (never prometheus_client's global one) lets
tests and several gateways in one process each expose only their own numbers.

Event metrics are updated by `observe(events)`, the ledger writer's listener:
it runs on the writer thread after a batch is durably written, so /metrics
counts what the ledger holds and the request path never pays for it.
Money counters are floats (Prometheus has no other number type): the ledger
is the exact source, /metrics is for monitoring and alerting.

Budget gauges come from a collector that serves a snapshot of
`budget_status()`; the /metrics handler refreshes the snapshot (awaiting the
async budget state in the event loop) right before each scrape is rendered,
so gauges are as fresh as the scrape and instances that went away vanish.
Instances of a per-user / per-key / per-tenant / per-session budget are
summed into one series per budget (the value masked as `*`) unless
`allow_high_cardinality` is set: one series per end user would both flood
Prometheus and show every user's spend to whoever can scrape.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from spendgate.ledger.events import UsageEvent
from spendgate.telemetry.labels import reader
from spendgate.telemetry.schema import PrometheusConfig

log = logging.getLogger(__name__)

# a cache hit answers in milliseconds, a long generation in minutes
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write", "reasoning")

BudgetSource = Callable[[], Awaitable[list[dict[str, Any]]]]


class PrometheusMetrics:
    """The gateway's metrics: `observe` feeds them, `render` serves a scrape."""

    def __init__(self, config: PrometheusConfig, writer: Any = None) -> None:
        self.config = config
        self.registry = CollectorRegistry(auto_describe=True)
        labels = list(config.labels)
        self._labels = reader(labels)
        req_labels = labels + [n for n in ("status", "cache_status") if n not in labels]
        self._req_labels = reader(req_labels)
        hit_labels = labels + (["cache_status"] if "cache_status" not in labels else [])
        self._hit_labels = reader(hit_labels)
        r = self.registry
        self.spend = Counter("spendgate_spend_usd", "Cost of calls in USD (float; the ledger is exact)", labels, registry=r)
        self.list_cost = Counter("spendgate_list_cost_usd", "Cost at list price in USD, before discounts", labels, registry=r)
        self.saved = Counter("spendgate_saved_usd", "USD saved (cache, routing) versus the call as asked", labels + ["saved_by"], registry=r)
        self.tokens = Counter("spendgate_tokens", "Tokens by type (input counts cached ones too)", labels + ["type"], registry=r)
        self.requests = Counter("spendgate_requests", "Ledger events: upstream attempts and cache hits", req_labels, registry=r)
        self.cache_hits = Counter("spendgate_cache_hits", "Calls answered from the response cache", hit_labels, registry=r)
        self.unpriced = Counter("spendgate_unpriced_calls", "Calls of a model spendgate has no price for", ["model"], registry=r)
        self.duration = Histogram(
            "spendgate_request_duration_seconds", "Call latency as the gateway saw it", labels, buckets=DURATION_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "spendgate_time_to_first_token_seconds", "Streamed calls: time to the first token", labels, buckets=TTFT_BUCKETS, registry=r
        )
        self._metrics = {id(m): m for m in (self.spend, self.list_cost, self.saved, self.tokens, self.requests, self.cache_hits, self.unpriced)}
        self.budgets = _BudgetCollector(per_instance=config.allow_high_cardinality)
        r.register(self.budgets)
        if writer is not None:
            r.register(_WriterCollector(writer))
        self._children: dict[tuple[Any, ...], Any] = {}  # label lookups are the costly part: cache them

    # --- the writer thread -------------------------------------------------

    def observe(self, events: Sequence[UsageEvent]) -> None:
        """Ledger-writer listener: count a durably written batch.

        Counters are summed per label set over the batch first (one `inc`
        per series, not per event: a batch is mostly a few callers);
        histograms take each event's latency."""
        sums: dict[tuple[int, tuple[str, ...]], float] = {}
        for e in events:
            try:
                self._observe(e, sums)
            except Exception:  # noqa: BLE001 - one odd event must not lose the rest of the batch
                log.exception("prometheus: could not count event %s", e.event_id)
        metrics = self._metrics
        for (mid, values), amount in sums.items():
            self._child(metrics[mid], values).inc(amount)

    def _child(self, metric: Any, values: tuple[str, ...]) -> Any:
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def _observe(self, e: UsageEvent, sums: dict[tuple[int, tuple[str, ...]], float]) -> None:
        lv = self._labels(e)

        def add(metric: Any, values: tuple[str, ...], amount: float) -> None:
            key = (id(metric), values)
            sums[key] = sums.get(key, 0.0) + amount

        if e.cost > 0:  # a counter only goes up; refunds and negative savings are the ledger's to tell
            add(self.spend, lv, float(e.cost))
        if e.list_cost > 0:
            add(self.list_cost, lv, float(e.list_cost))
        if e.saved > 0:
            add(self.saved, lv + (e.saved_by or "",), float(e.saved))
        for kind, n in (
            ("input", e.input_tokens),
            ("output", e.output_tokens),
            ("cache_read", e.cache_read_tokens),
            ("cache_write", e.cache_write_tokens),
            ("reasoning", e.reasoning_tokens),
        ):
            if n:
                add(self.tokens, lv + (kind,), n)
        add(self.requests, self._req_labels(e), 1)
        if e.cache_status in ("exact", "semantic"):
            add(self.cache_hits, self._hit_labels(e), 1)
        if e.price_status == "missing":
            add(self.unpriced, (e.model_used or e.model_requested or "",), 1)
        child = self._child
        if e.latency_ms is not None:
            child(self.duration, lv).observe(e.latency_ms / 1000.0)
        if e.streamed and e.ttft_ms is not None:
            child(self.ttft, lv).observe(e.ttft_ms / 1000.0)

    # --- the scrape -------------------------------------------------------

    async def refresh_budgets(self, source: BudgetSource | None) -> None:
        """Take a fresh budget snapshot for the scrape about to be rendered."""
        if source is None:
            return
        try:
            self.budgets.rows = await source()
        except Exception:  # noqa: BLE001 - a scrape still answers with the event metrics
            log.exception("prometheus: reading budget state failed; budget gauges are stale")

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition body and its content type (OpenMetrics when the scraper asks for it)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


# budget scope dimensions with one value per end user, virtual key, tenant or session
# (also as `tag:<name>`): their instances are summed unless allow_high_cardinality
PER_PRINCIPAL_SCOPES = frozenset({"user", "key", "key_id", "tenant", "session", "session_id"})
MASK = "*"


def per_principal(dim: str) -> bool:
    return (dim[4:] if dim.startswith("tag:") else dim) in PER_PRINCIPAL_SCOPES


def _scope(row: dict[str, Any]) -> dict[str, str]:
    scope = row.get("scope")
    if isinstance(scope, dict):
        return {str(k): str(v) for k, v in scope.items()}
    instance = str(row.get("instance", ""))
    return {} if instance == "global" else dict(p.split("=", 1) for p in instance.split(",") if "=" in p)


def series_of(row: dict[str, Any], per_instance: bool) -> tuple[str, str]:
    """(budget, budget_instance) labels for a `budget_status()` row: its own, or with
    per-user / key / tenant / session values masked as `*` (managed keys' own
    budgets, named `key:<id>`, all become `key:*`)."""
    name, instance = str(row.get("name", "")), str(row.get("instance", ""))
    if per_instance:
        return name, instance
    scope = _scope(row)
    if not any(per_principal(d) for d in scope):
        return name, instance
    if name.startswith("key:") and "key" in scope:
        name = "key:" + MASK
    return name, ",".join(f"{d}={MASK if per_principal(d) else v}" for d, v in sorted(scope.items()))


class _BudgetCollector(Collector):
    """Budget gauges from the last `budget_status()` snapshot.

    One series per budget instance, except instances of per-user / per-key /
    per-tenant / per-session scopes without `per_instance`: those are summed into
    one series per budget (and per value of its other scope dimensions), with
    limit, spent and remaining the sums and utilization the highest instance's.
    `spendgate_budget_instances` says how many instances each series stands for.
    """

    def __init__(self, per_instance: bool = False) -> None:
        self.rows: list[dict[str, Any]] = []
        self.per_instance = per_instance

    def series(self) -> dict[tuple[str, str], list[float]]:
        """(budget, budget_instance) -> [limit, spent, remaining, utilization, instances]."""
        out: dict[tuple[str, str], list[float]] = {}
        for row in self.rows:
            key = series_of(row, self.per_instance)
            values = [
                _num(row.get("effective_limit", row.get("limit"))),
                _num(row.get("spent")),
                _num(row.get("remaining")),
                _num(row.get("utilization")),
            ]
            have = out.get(key)
            if have is None:
                out[key] = [*values, 1.0]
                continue
            for i in range(3):
                have[i] += values[i]
            have[3] = _max(have[3], values[3])
            have[4] += 1
        return out

    def collect(self) -> Iterable[Metric]:
        labels = ["budget", "budget_instance"]  # "instance" is the scrape target's label
        remaining = GaugeMetricFamily("spendgate_budget_remaining_usd", "Budget left in the current window, USD", labels=labels)
        limit = GaugeMetricFamily(
            "spendgate_budget_limit_usd", "Budget limit in force (burst grants included), USD", labels=labels
        )
        spent = GaugeMetricFamily("spendgate_budget_spent_usd", "Settled spend in the current window, USD", labels=labels)
        ratio = GaugeMetricFamily(
            "spendgate_budget_utilization_ratio", "(settled + reserved) / limit; 1 = exhausted (summed series: the highest instance)", labels=labels
        )
        count = GaugeMetricFamily(
            "spendgate_budget_instances", "Budget instances a budget series stands for (more than 1: per-user/key/tenant/session summed)", labels=labels
        )
        for (name, instance), (lim, spe, rem, util, n) in self.series().items():
            lv = [name, instance]
            remaining.add_metric(lv, rem)
            limit.add_metric(lv, lim)
            spent.add_metric(lv, spe)
            ratio.add_metric(lv, util)
            count.add_metric(lv, n)
        return [remaining, limit, spent, ratio, count]


def _max(a: float, b: float) -> float:
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return max(a, b)


class _WriterCollector(Collector):
    """The ledger writer's health, read at scrape time (cheap attribute reads)."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def collect(self) -> Iterable[Metric]:
        w = self.writer
        depth = GaugeMetricFamily("spendgate_ledger_queue_depth", "Events accepted but not yet written to the ledger")
        depth.add_metric([], w.queue_depth)
        written = CounterMetricFamily("spendgate_ledger_events_written", "Events written to the ledger (duplicates included)")
        written.add_metric([], w.written)
        rejected = CounterMetricFamily("spendgate_ledger_events_rejected", "Events the ledger refused as invalid (spilled)")
        rejected.add_metric([], w.rejected)
        failed = CounterMetricFamily("spendgate_ledger_failed_batches", "Ledger writes that failed and were retried")
        failed.add_metric([], w.failed_batches)
        return [depth, written, rejected, failed]


def _num(value: Any) -> float:
    if value is None:
        return float("nan")
    try:
        return float(Decimal(str(value)))
    except Exception:  # noqa: BLE001 - e.g. "inf" parses; anything else is unknown
        return float("nan")
