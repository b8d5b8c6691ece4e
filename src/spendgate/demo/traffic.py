"""Live demo traffic: real HTTP calls through the gateway, as real clients send them.

The backfill shows what a month looks like; this shows that the numbers come
from the real path. Each call is an OpenAI chat completion (streamed or not),
an OpenAI embedding or an Anthropic message, tagged with the same
team/feature/environment mix as the history (through `x-spendgate-tags` or
single `x-spendgate-<tag>` headers, as users would), sized from the trace
profile, and sent by a few concurrent workers at a modest pace so a 2-core
machine keeps up.

The simulator reads `[[sim:output_tokens=N]]` and `[[sim:fault=429]]` (or 500) from
the prompt; the demo uses them to make answers the size the trace says and to
have a few upstream failures show up in the ledger. Features that cache in the
history send the same long instructions first on every call (with
`cache_control` for Anthropic), so live prompt-cache reads show up too.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from spendgate.demo.backfill import FEATURES, MODELS, DemoModel, Feature, feature_tags
from spendgate.demo.profile import Profile

DEMO_API_KEY = "sk-spendgate-demo"  # any key passes: the demo config sets allow_any_key
MAX_LIVE_CONTEXT = 3000  # tokens; keeps request bodies small on a laptop
MAX_LIVE_OUTPUT = 400
FAULT_RATE = 0.02
SYSTEM_PROMPT_TOKENS = 1300  # features that cache: long fixed instructions, over the 1,024-token minimum

_WORDS = (
    "the customer asked about invoice refund order shipping delay search result ranking query "
    "summary ticket priority account password reset latency budget model prompt cache token "
    "function review diff test failure deploy staging production metric dashboard export"
).split()


@dataclass(frozen=True, slots=True)
class LiveRequest:
    kind: str  # chat | chat-stream | messages | messages-stream | embeddings
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass(slots=True)
class TrafficResult:
    """What the live run did, for the demo's summary line."""

    sent: int = 0
    ok: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)  # 0: no HTTP answer (connection failed)

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.by_kind.items()))
        text = f"{self.sent} requests in {self.elapsed_s:.1f} s ({kinds}): {self.ok} ok, {self.errors} errors"
        failed = sorted((s, n) for s, n in self.by_status.items() if s != 200)
        if failed:
            text += " (" + ", ".join(f"{'no answer' if s == 0 else f'HTTP {s}'} x{n}" for s, n in failed) + ")"
        return text


def _text(rng: random.Random, tokens: int) -> str:
    """About `tokens` tokens of filler at ~4 bytes a token (tiktoken's rate for English, and the simulator's)."""
    words: list[str] = []
    size, want = 0, max(1, tokens) * 4
    while size < want:
        word = rng.choice(_WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)


@functools.lru_cache(maxsize=None)
def _system_prompt(feature: str) -> str:
    """A feature's instructions: the same text on every call, so the prompt cache can hit."""
    return f"You are the {feature} assistant. " + _text(random.Random(feature), SYSTEM_PROMPT_TOKENS)


def _tag_headers(rng: random.Random, tags: dict[str, str]) -> dict[str, str]:
    """Both ways clients send tags: mostly the combined header, sometimes one header per tag."""
    if not tags:
        return {}
    if rng.random() < 0.8:
        return {"x-spendgate-tags": ",".join(f"{k}={v}" for k, v in tags.items())}
    return {f"x-spendgate-{k.replace('_', '-')}": v for k, v in tags.items()}


def build_request(rng: random.Random, profile: Profile, feature: Feature, model: DemoModel) -> LiveRequest:
    """One request body and its headers, sized by the trace profile."""
    tags = feature_tags(rng, feature, weekend=time.gmtime().tm_wday >= 5)
    headers = _tag_headers(rng, tags)
    workload = profile.workload(feature.workload)
    context = workload.context_tokens.sample(rng, feature.context_scale, high=MAX_LIVE_CONTEXT)
    if model.endpoint == "embeddings":
        headers["authorization"] = f"Bearer {DEMO_API_KEY}"
        return LiveRequest("embeddings", "/v1/embeddings", headers, {"model": model.name, "input": _text(rng, context)})
    output = workload.generated_tokens.sample(rng, feature.output_scale, high=MAX_LIVE_OUTPUT)
    directive = f"[[sim:output_tokens={output}]]"
    if rng.random() < FAULT_RATE:
        directive += f" [[sim:fault={rng.choice(('429', '429', '500'))}]]"
    task = f"{feature.team or 'legacy'}/{feature.name or 'batch'}: {_text(rng, 12)} {directive}"
    cached = feature.cache_share > 0
    if cached:  # the feature's fixed instructions first, then this call's own context
        system = _system_prompt(feature.name or "")
        task = f"{_text(rng, max(1, context - SYSTEM_PROMPT_TOKENS))}\n\n{task}"
    else:
        system = _text(rng, max(1, context - 20))
    stream = rng.random() < feature.streamed
    if model.endpoint == "messages":
        headers.update({"x-api-key": DEMO_API_KEY, "anthropic-version": "2023-06-01"})
        system_block: dict[str, Any] = {"type": "text", "text": system}
        if cached:
            system_block["cache_control"] = {"type": "ephemeral"}
        body: dict[str, Any] = {
            "model": model.name,
            "max_tokens": MAX_LIVE_OUTPUT,
            "system": [system_block],
            "messages": [{"role": "user", "content": task}],
        }
        if stream:
            body["stream"] = True
        return LiveRequest("messages-stream" if stream else "messages", "/v1/messages", headers, body)
    headers["authorization"] = f"Bearer {DEMO_API_KEY}"
    body = {
        "model": model.name,
        "max_tokens": MAX_LIVE_OUTPUT,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": task}],
    }
    if stream:
        body["stream"] = True
        if rng.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
    return LiveRequest("chat-stream" if stream else "chat", "/v1/chat/completions", headers, body)


def pick(rng: random.Random) -> tuple[Feature, DemoModel]:
    """A feature in proportion to its daily volume, then one of its models."""
    feature = rng.choices(FEATURES, [f.daily_calls for f in FEATURES])[0]
    names = [m for m, _ in feature.models]
    model = MODELS[rng.choices(names, [w for _, w in feature.models])[0]]
    return feature, model


async def send_traffic(
    base_url: str,
    profile: Profile,
    seconds: float = 10.0,
    *,
    concurrency: int = 4,
    rate: float = 20.0,
    seed: int = 11,
    request_timeout_s: float = 30.0,
) -> TrafficResult:
    """Send requests to `base_url` (e.g. http://127.0.0.1:4000) for `seconds`.

    `concurrency` workers each pause about `concurrency / rate` seconds between
    calls, so the whole run sends near `rate` requests a second. A request
    started before the deadline is always finished and counted.
    """
    result = TrafficResult()
    rng = random.Random(seed)
    start = time.monotonic()
    deadline = start + seconds
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url.rstrip("/"), timeout=timeout, connector=connector) as session:

        async def worker() -> None:
            while time.monotonic() < deadline:
                req = build_request(rng, profile, *pick(rng))
                await _send(session, req, result)
                pause = min(rng.expovariate(rate / concurrency), max(0.0, deadline - time.monotonic()))
                await asyncio.sleep(pause)

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    result.elapsed_s = time.monotonic() - start
    return result


async def _send(session: aiohttp.ClientSession, req: LiveRequest, result: TrafficResult) -> None:
    result.sent += 1
    result.by_kind[req.kind] += 1
    try:
        async with session.post(req.path, json=req.body, headers=req.headers) as resp:
            await resp.read()  # the whole body, streams included: a client reads to the end
            status = resp.status
    except (aiohttp.ClientError, asyncio.TimeoutError):
        status = 0
    result.by_status[status] += 1
    if status == 200:
        result.ok += 1
    else:
        result.errors += 1
