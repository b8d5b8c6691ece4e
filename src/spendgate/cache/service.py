"""The response cache as the gateway runs it: backend, embedder, stage,
housekeeping, and what the admin API asks of it (flush, stats).

The embedding model loads only when a policy turns semantic caching on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from spendgate import housekeeping
from spendgate.cache.memory import MemoryCache
from spendgate.cache.schema import CacheConfig
from spendgate.cache.sqlite import SqlitePersistence
from spendgate.cache.stage import CacheStage
from spendgate.cache.store import Invalidation

log = logging.getLogger("spendgate.cache")


class ResponseCache:
    def __init__(self, config: CacheConfig, clock: Callable[[], float] = time.time, expire_interval_s: float = 30.0) -> None:
        self.config = config
        self.clock = clock
        self.expire_interval_s = expire_interval_s
        self.persistence: SqlitePersistence | None = None
        self.backend: MemoryCache | None = None
        embed = None
        threshold = 1.0
        self.embedder_name: str | None = None
        if config.policies:
            self.persistence = SqlitePersistence.open(config.url, config.flush_interval_ms)
            self.backend = MemoryCache(config.max_entries, self.persistence)
            if any(p.semantic for p in config.policies):
                from spendgate.cache.embedding import DEFAULT_THRESHOLD, load_embedder

                embedder = load_embedder()
                embed, threshold = embedder.encode_one, DEFAULT_THRESHOLD
                self.embedder_name = embedder.name
        self.stage = CacheStage(config, self.backend, embed, threshold, clock)
        self._housekeeping: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Before serving: live entries read back from the file; then housekeeping."""
        if self.backend is None:
            return
        if self.persistence is not None:
            entries = self.persistence.load(self.clock(), self.config.max_entries)
            self.backend.restore(entries)
            if entries:
                log.info("cache: %d stored answers loaded from %s", len(entries), self.persistence.path)
            self.persistence.start()
        self._housekeeping = housekeeping.every(self.expire_interval_s, self._keep, "cache", log)

    async def close(self) -> None:
        task, self._housekeeping = self._housekeeping, None
        await housekeeping.stop(task)
        if self.persistence is not None:
            await asyncio.to_thread(self.persistence.close)

    async def _keep(self) -> None:
        assert self.backend is not None
        self.backend.expire(self.clock())

    # ---- admin -----------------------------------------------------------------------------

    def flush(self, what: Invalidation) -> int:
        if self.backend is None:
            return 0
        n = self.backend.invalidate(what)
        log.info("cache: %d entries flushed (%s)", n, what)
        return n

    def status(self) -> dict[str, Any]:
        if self.backend is None:
            return {"enabled": False, "entries": 0, "policies": []}
        s = self.backend.stats()
        return {
            "enabled": True,
            "entries": s.entries,
            "semantic_entries": s.semantic_entries,
            "semantic_partitions": s.partitions,
            "by_scope": s.by_scope,
            "max_entries": self.config.max_entries,
            "storage": self.config.url if self.persistence is not None else "memory",
            "policies": [p.name for p in self.config.policies],
        }
