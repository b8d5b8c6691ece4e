"""Token log-probabilities for OpenAI's `logprobs` (chat) and `logprobs: k` (legacy).

Values are deterministic per answer: surprisal is spread over the tokens like an
exponential distribution (most tokens near 0, a few uncertain ones), scaled so
the mean is exactly the `logprob` directive (default DEFAULT_MEAN, a confident
answer). Alternatives share the probability the sampled token leaves, so a
token's alternatives never add up past 1.
"""

from __future__ import annotations

import math
import random
from typing import Any

DEFAULT_MEAN = -0.05
MAX_TOP_CHAT = 20
MAX_TOP_LEGACY = 5
FLOOR = -40.0  # what a zero-probability alternative reports
_ALTERNATIVES = (
    "the", "a", "this", "that", "it", "and", "of", "to", "in", "is", "for", "on", "with", "as", "be", "by", "not",
    "or", "an", "at", "one", "all", "some", "its", "their", "more", "also", "can", "will", "but",
)


def json_confidence(mean: float | None) -> float:
    """The `confidence` a `json` reply states: exp(mean logprob), 2 places (0.95 by default)."""
    return round(math.exp(DEFAULT_MEAN if mean is None else mean), 2)


def token_logprobs(seed: int, count: int, mean: float | None) -> list[float]:
    """`count` logprobs (≤ 0) whose mean is `mean` (DEFAULT_MEAN when None)."""
    if count <= 0:
        return []
    target = DEFAULT_MEAN if mean is None else mean
    if target == 0:
        return [0.0] * count
    rng = random.Random(seed ^ 0x5EED)
    weights = [-math.log(1.0 - rng.random() * 0.999) + 0.02 for _ in range(count)]
    scale = target * count / sum(weights)
    return [w * scale for w in weights]


def alternatives(token: str, logprob: float, k: int, seed: int) -> list[tuple[str, float]]:
    """The `k` most likely tokens at this position, the sampled one among them when it is likely enough."""
    if k <= 0:
        return []
    left = 1.0 - math.exp(logprob)
    space = " " if token.startswith(" ") else ""
    out = [(token, logprob)]
    j = 0
    i = seed % len(_ALTERNATIVES)
    while len(out) < k + 1:
        word = space + _ALTERNATIVES[i % len(_ALTERNATIVES)]
        i += 1
        if word == token:
            continue
        share = left * 0.7 * 0.3**j
        out.append((word, math.log(share) if share > 0 else FLOOR))
        j += 1
    out.sort(key=lambda t: -t[1])
    return out[:k]


def chat_entry(token: str, logprob: float, k: int, seed: int) -> dict[str, Any]:
    """One `choices[].logprobs.content[]` entry."""
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alternatives(token, logprob, k, seed)],
    }


def chat_logprobs(pieces: list[str], values: list[float], k: int, seed: int) -> list[dict[str, Any]]:
    return [chat_entry(p, lp, k, seed + i) for i, (p, lp) in enumerate(zip(pieces, values))]


def legacy_top(token: str, logprob: float, k: int, seed: int) -> dict[str, float]:
    """Legacy `top_logprobs` entry: the k likeliest tokens, plus the sampled one (up to k + 1)."""
    top = dict(alternatives(token, logprob, k, seed))
    top.setdefault(token, logprob)
    return top


def legacy_logprobs(
    tokens: list[str], values: list[float | None], k: int, seed: int, offset: int
) -> dict[str, Any]:
    """A legacy completion's `logprobs` object (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`)."""
    offsets: list[int] = []
    tops: list[dict[str, float] | None] = []
    pos = offset
    for i, (t, lp) in enumerate(zip(tokens, values)):
        offsets.append(pos)
        pos += len(t)
        tops.append(None if lp is None else legacy_top(t, lp, k, seed + i))
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
