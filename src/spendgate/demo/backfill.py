"""Thirty days of believable history, so the demo's first report has a story.

An empty ledger teaches nothing. `generate_history` writes what a small
company's LLM spend looks like after a month: five teams with their features,
prod/staging/dev, end users and tenants, six models (one self-hosted with no
price), business-hour and weekday seasonality, growth, a feature launch, one
runaway batch job, rate-limit and server errors with retries, prompt-cache
reads, and a legacy key whose spend nobody tagged.

Token counts come from the real Azure trace profile (`demo.profile`); money
comes from the price catalog, exactly as the gateway's meter would price the
same usage. Everything is drawn from one seeded `random.Random`, so a seed and
a `now` give the same events, ids included.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

from spendgate.config import CATALOG_PROVIDER
from spendgate.demo.profile import Profile, Workload
from spendgate.ledger.events import UsageEvent
from spendgate.pricing.catalog import PriceCatalog, TokenUsage

DAY = 86400.0
HOUR = 3600.0
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class DemoModel:
    """A model the demo config serves, with how fast it answers."""

    name: str
    provider: str  # config provider kind
    deployment: str  # deployment name in the demo config
    endpoint: str  # chat.completions | messages | embeddings
    ttft_ms: float
    tokens_per_second: float

    @property
    def wire_format(self) -> str:
        return "anthropic" if self.endpoint == "messages" else "openai"


MODELS: dict[str, DemoModel] = {
    m.name: m
    for m in (
        DemoModel("gpt-4o", "openai", "sim-gpt-4o", "chat.completions", 450, 70),
        DemoModel("gpt-4o-mini", "openai", "sim-gpt-4o-mini", "chat.completions", 300, 110),
        DemoModel("claude-sonnet-4-5", "anthropic", "sim-claude-sonnet-4-5", "messages", 700, 60),
        DemoModel("claude-haiku-4-5", "anthropic", "sim-claude-haiku-4-5", "messages", 400, 140),
        DemoModel("text-embedding-3-small", "openai", "sim-text-embedding-3-small", "embeddings", 60, 0),
        # Self-hosted fine-tune behind an OpenAI-compatible server: no catalog
        # price, so its calls land with price_status=missing (as they would
        # in production until someone adds a `prices:` entry).
        DemoModel("acme-llama-ft", "openai_compatible", "sim-acme-llama-ft", "chat.completions", 250, 45),
    )
}
UNPRICED_MODEL = "acme-llama-ft"


@dataclass(frozen=True, slots=True)
class Feature:
    """One team's feature: how much it calls, which models, what its calls look like."""

    team: str | None  # None: the untagged legacy key
    name: str | None
    workload: str  # profile workload: code | conv (embeddings draw from conv)
    daily_calls: float  # on a weekday at the window's midpoint
    models: tuple[tuple[str, float], ...]
    context_scale: float = 1.0
    output_scale: float = 1.0
    streamed: float = 0.0  # share of chat calls that stream
    cache_share: float = 0.0  # share of calls that read a cached prompt prefix
    customer_facing: bool = False  # prod calls carry end users and tenants
    batch: bool = False  # scheduled jobs: night-heavy, no weekend dip
    weekend: float = 0.5  # weekend volume relative to a weekday
    launched_at: float = 0.0  # fraction of the window before which it did not exist
    experiment: str | None = None
    key_id: str | None = None

    @property
    def key(self) -> str:
        return self.key_id or f"key-{self.team}"


FEATURES: tuple[Feature, ...] = (
    Feature("search", "query-rewrite", "conv", 230, (("gpt-4o-mini", 1),), 0.25, 0.2, customer_facing=True),
    Feature(
        "search", "answer", "conv", 150, (("gpt-4o", 0.6), ("claude-sonnet-4-5", 0.4)), 2.0, 1.0,
        streamed=0.9, cache_share=0.3, customer_facing=True, experiment="answer-model-ab",
    ),
    Feature("search", "embed-index", "conv", 170, (("text-embedding-3-small", 1),), 0.6, batch=True),
    Feature("support", "ticket-triage", "conv", 130, (("claude-haiku-4-5", 1),), 1.2, 0.15, cache_share=0.7, customer_facing=True),
    Feature(
        "support", "reply-draft", "conv", 90, (("claude-sonnet-4-5", 1),), 1.5, 1.0,
        streamed=0.8, cache_share=0.6, customer_facing=True,
    ),
    Feature("support", "faq", "conv", 80, (("gpt-4o-mini", 1),), 1.0, 0.8, streamed=0.7, cache_share=0.4, customer_facing=True),
    Feature("growth", "email-copy", "conv", 60, (("gpt-4o", 1),), 0.8, 1.5, weekend=0.2, launched_at=0.6),
    Feature("growth", "subject-lines", "conv", 70, (("gpt-4o-mini", 1),), 0.4, 0.3, weekend=0.2),
    Feature("platform", "code-review", "code", 80, (("claude-sonnet-4-5", 1),), 1.5, 6.0, streamed=0.5, cache_share=0.5, weekend=0.15),
    Feature("platform", "internal-assistant", "conv", 110, ((UNPRICED_MODEL, 1),), 1.0, 1.0, streamed=0.9, weekend=0.2),
    Feature(
        "research", "eval-harness", "code", 50, (("gpt-4o", 0.5), ("claude-sonnet-4-5", 0.3), ("claude-haiku-4-5", 0.2)),
        1.0, 3.0, batch=True,
    ),
    Feature("research", "summarize", "conv", 45, (("claude-haiku-4-5", 1),), 3.0, 1.0, weekend=0.3),
    Feature(None, None, "conv", 35, (("gpt-4o-mini", 0.7), ("gpt-4o", 0.3)), 1.0, 1.0, key_id="key-legacy-batch"),
)

TEAMS: tuple[str, ...] = tuple(dict.fromkeys(f.team for f in FEATURES if f.team))
ENVIRONMENTS: tuple[tuple[str, float], ...] = (("prod", 0.82), ("staging", 0.11), ("dev", 0.07))
TENANTS: tuple[tuple[str, float], ...] = (
    ("acme-corp", 0.38), ("globex", 0.24), ("initech", 0.16), ("umbrella", 0.13), ("hooli", 0.09),
)
ENGINEERS: dict[str, tuple[str, ...]] = {
    "search": ("ana", "ben", "chen"),
    "support": ("dara", "eli"),
    "growth": ("fatima", "gus"),
    "platform": ("hana", "ivan", "jo"),
    "research": ("kai", "lena"),
}

# Mid-window the support team ships a longer reply-draft prompt (v4).
PROMPT_VERSIONS: dict[str, tuple[tuple[float, str, float], ...]] = {
    "reply-draft": ((0.0, "v3", 1.0), (0.62, "v4", 1.35)),
}

RATE_LIMIT_RATE = 0.012
SERVER_ERROR_RATE = 0.004
SPIKE_RATE_LIMIT_RATE = 0.10
SPIKE_HOURS = (2, 8)  # UTC hours of the runaway job
SPIKE_CALLS_PER_HOUR = 260


def _hour_weights(batch: bool) -> tuple[float, ...]:
    """Relative volume per UTC hour (mean 1): business hours, or a night job window."""
    if batch:
        raw = [2.2 if 1 <= h < 5 else 0.7 for h in range(24)]
    else:
        raw = [0.2 + math.exp(-(((h - 15) / 4.5) ** 2)) for h in range(24)]
    mean = sum(raw) / 24
    return tuple(w / mean for w in raw)


_INTERACTIVE_HOURS = _hour_weights(False)
_BATCH_HOURS = _hour_weights(True)


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _pick(rng: random.Random, options: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([o for o, _ in options], [w for _, w in options])[0]


def feature_tags(
    rng: random.Random, feature: Feature, *, weekend: bool = False, prompt_version: str | None = None, spike: bool = False
) -> dict[str, str]:
    """The tags one call of `feature` carries (shared by the backfill and the live traffic)."""
    if feature.team is None:
        return {}  # the legacy key sends no tags at all
    env = "prod" if spike or feature.batch or (weekend and rng.random() < 0.9) else _pick(rng, ENVIRONMENTS)
    tags = {"team": feature.team, "environment": env}
    if feature.name:
        tags["feature"] = feature.name
        tags["prompt_template"] = feature.name
        tags["prompt_version"] = prompt_version or latest_prompt_version(feature.name)
    if feature.customer_facing and env == "prod":
        tenant = _pick(rng, TENANTS)
        tags["tenant"] = tenant
        # a few heavy users per tenant, a long tail of light ones
        tags["user"] = f"{tenant.split('-')[0]}-u{int(200 * rng.random() ** 3) + 1:03d}"
    elif not feature.batch:
        tags["user"] = rng.choice(ENGINEERS[feature.team])
    if feature.experiment:
        tags["experiment"] = feature.experiment
    if feature.batch:
        tags["priority"] = "batch"
    if spike:
        tags["experiment"] = "eval-sweep-nightly"
    return tags


def latest_prompt_version(feature: str) -> str:
    versions = PROMPT_VERSIONS.get(feature)
    return versions[-1][1] if versions else "v1"


def _event_id(rng: random.Random, ts: float) -> str:
    # Same shape as ledger.events.new_id (time prefix), but from the seeded rng.
    return f"{int(ts * 1e9):x}{rng.getrandbits(48):012x}"


class _Generator:
    """Holds the run's state so each step stays a small method."""

    def __init__(self, profile: Profile, catalog: PriceCatalog, days: float, now: float, seed: int, scale: float) -> None:
        self.profile = profile
        self.catalog = catalog
        self.days = days
        self.now = now
        self.start = now - days * DAY
        self.rng = random.Random(seed)
        self.scale = scale
        spike_day = max(0.0, days - 9) if days >= 10 else days / 2
        day0 = math.floor(self.start / DAY) * DAY
        self.spike_start = day0 + math.floor(spike_day) * DAY + SPIKE_HOURS[0] * HOUR
        self.spike_end = self.spike_start + (SPIKE_HOURS[1] - SPIKE_HOURS[0]) * HOUR
        self.spike_feature = next(f for f in FEATURES if f.name == "eval-harness")
        self.minute_cum: dict[str, list[float]] = {}
        for name, w in profile.workloads.items():
            cum, total = [], 0.0
            for x in w.minute_weights or (1.0,):
                total += x
                cum.append(total)
            self.minute_cum[name] = cum
        self.noise: dict[tuple[int, str | None], float] = {}

    def events(self) -> Iterator[UsageEvent]:
        hour = math.floor(self.start / HOUR) * HOUR
        while hour < self.now:
            batch: list[UsageEvent] = []
            for feature in FEATURES:
                for ts in self._arrivals(feature, hour):
                    batch.extend(self._call(feature, ts))
            if self.spike_start <= hour < self.spike_end:
                for ts in self._times(self.spike_feature.workload, hour, _poisson(self.rng, SPIKE_CALLS_PER_HOUR * self.scale)):
                    batch.extend(self._call(self.spike_feature, ts, spike=True))
            batch.sort(key=lambda e: (e.ts_start, e.event_id))
            for event in batch:
                if self.start <= event.ts_start < self.now:
                    yield event
            hour += HOUR

    # volume

    def _rate(self, feature: Feature, hour: float) -> float:
        frac = (hour - self.start) / (self.days * DAY)
        if frac < feature.launched_at:
            return 0.0
        growth = 0.75 + 0.5 * max(0.0, min(1.0, frac))
        day = int(hour // DAY)
        weekday = time.gmtime(hour).tm_wday
        weekend = weekday >= 5 and not feature.batch
        hours = _BATCH_HOURS if feature.batch else _INTERACTIVE_HOURS
        key = (day, feature.name)
        if key not in self.noise:
            self.noise[key] = math.exp(self.rng.gauss(0.0, 0.12))
        hour_of_day = time.gmtime(hour).tm_hour
        return (
            feature.daily_calls / 24 * hours[hour_of_day] * (feature.weekend if weekend else 1.0)
            * growth * self.noise[key] * self.scale
        )

    def _arrivals(self, feature: Feature, hour: float) -> list[float]:
        return self._times(feature.workload, hour, _poisson(self.rng, self._rate(feature, hour)))

    def _times(self, workload: str, hour: float, n: int) -> list[float]:
        """Arrival times within the hour, bunched like the trace's minutes."""
        cum = self.minute_cum.get(workload) or self.minute_cum["conv"]
        minutes = len(cum)
        out = []
        for _ in range(n):
            minute = self.rng.choices(range(minutes), cum_weights=cum)[0]
            out.append(hour + (minute + self.rng.random()) * (3600.0 / minutes))
        return out

    # one call (and its retry)

    def _call(self, feature: Feature, ts: float, spike: bool = False) -> list[UsageEvent]:
        rng = self.rng
        model = MODELS[_pick(rng, feature.models)]
        if spike:
            model = MODELS["gpt-4o"]
        request_id = f"req_{rng.getrandbits(64):016x}"
        tags = self._tags(feature, ts, spike)
        limited = SPIKE_RATE_LIMIT_RATE if spike else RATE_LIMIT_RATE
        roll = rng.random()
        if roll < limited + SERVER_ERROR_RATE:
            status = 429 if roll < limited else 500
            failed = self._error(feature, model, request_id, ts, tags, status)
            if rng.random() > (0.8 if status == 429 else 0.5):
                return [failed]  # the client gave up
            retry_ts = failed.ts_end + rng.uniform(0.25, 4.0)
            return [failed, self._success(feature, model, request_id, retry_ts, tags, attempt=2)]
        return [self._success(feature, model, request_id, ts, tags)]

    def _tags(self, feature: Feature, ts: float, spike: bool) -> dict[str, str]:
        version = self._prompt_version(feature.name, ts)[0] if feature.name else "v1"
        return feature_tags(self.rng, feature, weekend=time.gmtime(ts).tm_wday >= 5, prompt_version=version, spike=spike)

    def _prompt_version(self, feature: str, ts: float) -> tuple[str, float]:
        versions = PROMPT_VERSIONS.get(feature)
        if not versions:
            return "v1", 1.0
        frac = (ts - self.start) / (self.days * DAY)
        current = versions[0]
        for v in versions:
            if frac >= v[0]:
                current = v
        return current[1], current[2]

    def _base(self, feature: Feature, model: DemoModel, request_id: str, ts: float, tags: dict[str, str], attempt: int) -> UsageEvent:
        event = UsageEvent(
            event_id=_event_id(self.rng, ts),
            request_id=request_id,
            attempt=attempt,
            ts_start=ts,
            endpoint=model.endpoint,
            wire_format=model.wire_format,
            provider=model.provider,
            deployment=model.deployment,
            model_requested=model.name,
            model_used=model.name,
            route_reason="direct" if attempt == 1 else "retry",
            source="demo",
            key_id=feature.key,
        )
        event.apply_tags(tags)
        return event

    def _error(self, feature: Feature, model: DemoModel, request_id: str, ts: float, tags: dict[str, str], status: int) -> UsageEvent:
        e = self._base(feature, model, request_id, ts, tags, attempt=1)
        latency = self.rng.uniform(40, 400) if status == 429 else self.rng.uniform(300, 3000)
        e.ts_end = ts + latency / 1000
        e.latency_ms = round(latency, 3)
        e.status = "error"
        e.http_status = status
        anthropic = model.wire_format == "anthropic"
        if status == 429:
            e.error_type = "rate_limit_error" if anthropic else "rate_limit_exceeded"
        else:
            e.error_type = "api_error" if anthropic else "server_error"
        e.usage_source = "none"
        e.price_status = "priced"  # nothing was used, so nothing is owed: the meter's rule
        e.price_source = "no-usage"
        return e

    def _success(
        self, feature: Feature, model: DemoModel, request_id: str, ts: float, tags: dict[str, str], attempt: int = 1
    ) -> UsageEvent:
        rng = self.rng
        e = self._base(feature, model, request_id, ts, tags, attempt)
        e.http_status = 200
        usage = self._usage(feature, model, ts)
        e.input_tokens, e.output_tokens = usage.input_tokens, usage.output_tokens
        e.cache_read_tokens, e.cache_write_tokens = usage.cache_read_tokens, usage.cache_write_tokens
        e.streamed = model.endpoint != "embeddings" and rng.random() < feature.streamed
        prefill_ms = usage.input_tokens * 0.03
        if model.endpoint == "embeddings":
            latency = model.ttft_ms * rng.lognormvariate(0, 0.3) + prefill_ms * 0.2
        else:
            first = model.ttft_ms * rng.lognormvariate(0, 0.35) + prefill_ms
            latency = first + usage.output_tokens / model.tokens_per_second * 1000 * rng.lognormvariate(0, 0.2)
            e.ttft_ms = round(first, 3) if e.streamed else None
            e.finish_reason = self._finish_reason(model)
        e.latency_ms = round(latency, 3)
        e.ts_end = ts + latency / 1000
        provider = CATALOG_PROVIDER.get(model.provider)
        priced = self.catalog.price(provider, model.name, usage, model.deployment)
        e.cost, e.list_cost, e.price_status, e.price_source = priced.cost, priced.list_cost, priced.status, priced.source
        if usage.cache_read_tokens and not usage.cache_write_tokens and priced.status == "priced":
            uncached = self.catalog.price(provider, model.name, TokenUsage(usage.input_tokens, usage.output_tokens), model.deployment)
            if uncached.cost > priced.cost:
                e.saved, e.saved_by = uncached.cost - priced.cost, "prompt_cache"
        return e

    def _finish_reason(self, model: DemoModel) -> str:
        truncated = self.rng.random() < 0.03
        if model.wire_format == "anthropic":
            return "max_tokens" if truncated else "end_turn"
        return "length" if truncated else "stop"

    def _usage(self, feature: Feature, model: DemoModel, ts: float) -> TokenUsage:
        rng = self.rng
        workload: Workload = self.profile.workload(feature.workload)
        scale = feature.context_scale * (self._prompt_version(feature.name, ts)[1] if feature.name else 1.0)
        if model.endpoint == "embeddings":
            return TokenUsage(input_tokens=workload.context_tokens.sample(rng, scale, high=8191))
        inp = workload.context_tokens.sample(rng, scale, high=190_000)
        out = workload.generated_tokens.sample(rng, feature.output_scale, high=16_000)
        read = write = 0
        if inp >= 1024 and rng.random() < feature.cache_share:
            share = rng.uniform(0.45, 0.9)
            if model.wire_format == "anthropic":
                if rng.random() < 0.1:
                    write = int(inp * share)  # the first call after the cache expired
                else:
                    read = int(inp * share)
            else:
                read = int(inp * share) // 128 * 128  # OpenAI caches in 128-token steps
        return TokenUsage(input_tokens=inp, output_tokens=out, cache_read_tokens=read, cache_write_tokens=write)


def generate_history(
    profile: Profile,
    catalog: PriceCatalog,
    days: float = 30,
    now: float | None = None,
    seed: int = 7,
    scale: float = 1.0,
) -> Iterator[UsageEvent]:
    """Demo usage events with `now - days*86400 <= ts_start < now`, oldest first.

    `scale` multiplies every feature's volume (1.0 gives roughly 1,000 calls a
    day). Deterministic for a given (profile, days, now, seed, scale).
    """
    if days <= 0:
        raise ValueError("days must be positive")
    return _Generator(profile, catalog, float(days), time.time() if now is None else float(now), seed, scale).events()
