"""Prompt-prefix caches, per server: what makes `cached_tokens` and cache reads appear.

Entries expire after a TTL of inactivity (5 minutes, like both providers' default),
and the table is bounded so a long benchmark cannot grow it without limit.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

ANTHROPIC_MIN_CACHEABLE = 1024  # tokens; shorter breakpoints are silently not cached


class PrefixCache:
    def __init__(self, ttl_s: float = 300.0, max_entries: int = 200_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def longest_hit(self, digests: list[bytes]) -> int:
        """Index of the longest prefix seen before (and still live), or -1."""
        now = time.monotonic()
        for i in range(len(digests) - 1, -1, -1):
            expires = self._seen.get(digests[i])
            if expires is not None and expires > now:
                return i
        return -1

    def store(self, digests: list[bytes], ttl_s: float | None = None) -> None:
        expires = time.monotonic() + (ttl_s or self.ttl_s)
        seen = self._seen
        for d in digests:
            seen[d] = expires
            seen.move_to_end(d)
        while len(seen) > self.max_entries:
            seen.popitem(last=False)


@dataclass(slots=True)
class CacheUsage:
    read: int = 0
    written: int = 0
    written_1h: int = 0  # part of `written` with a one-hour TTL (Anthropic)


def openai_cached_tokens(cache: PrefixCache, prefixes: list[tuple[bytes, int]], prompt_tokens: int) -> int:
    """Automatic caching: the longest 1024+128k-token prefix seen before counts as cached."""
    if not prefixes:
        return 0
    digests = [d for d, _ in prefixes]
    hit = cache.longest_hit(digests)
    cache.store(digests)
    if hit < 0:
        return 0
    return min(prefixes[hit][1], prompt_tokens // 128 * 128)


def anthropic_cache_usage(cache: PrefixCache, marks: list[tuple[bytes, int, bool]]) -> CacheUsage:
    """Explicit breakpoints: read the longest cached prefix, write the rest up to the last mark.

    `marks` are (prefix hash, prefix tokens, one-hour TTL) per `cache_control` block.
    """
    usable = [m for m in marks if m[1] >= ANTHROPIC_MIN_CACHEABLE]
    if not usable:
        return CacheUsage()
    digests = [d for d, _, _ in usable]
    hit = cache.longest_hit(digests)
    read = usable[hit][1] if hit >= 0 else 0
    longest = max(t for _, t, _ in usable)
    written = max(0, longest - read)
    longest_1h = max((t for _, t, one_hour in usable if one_hour), default=0)
    for d, _, one_hour in usable:
        cache.store([d], 3600.0 if one_hour else None)
    return CacheUsage(read=read, written=written, written_1h=min(written, max(0, longest_1h - read)))
