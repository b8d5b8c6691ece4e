"""The in-process `Cache`: entries in an LRU dict, one vector index per
semantic partition, and (optionally) a `Persistence` that keeps them across
restarts.

Scope isolation is structural: an exact key starts with its scope, and a
semantic partition is scope + everything but the question, with an index of
its own, so no lookup can reach an entry of another scope. Used from the
event loop's thread only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from spendgate.cache.store import CacheStats, Entry, Invalidation


class Index(Protocol):
    def add(self, key: int, vector: Any) -> None: ...
    def remove(self, key: int) -> None: ...
    def search(self, vector: Any, k: int = 4) -> list[tuple[int, float]]: ...
    def __len__(self) -> int: ...


class Persistence(Protocol):
    def saved(self, entry: Entry) -> None: ...
    def dropped(self, keys: list[str]) -> None: ...
    def cleared(self) -> None: ...


def _default_index(dims: int) -> Index:
    from spendgate.cache.vectors import VectorIndex  # numpy & the ANN library load only with semantic caching

    return VectorIndex(dims)


class MemoryCache:
    def __init__(
        self,
        max_entries: int = 100_000,
        persistence: Persistence | None = None,
        index_factory: Callable[[int], Index] = _default_index,
    ) -> None:
        self.max_entries = max_entries
        self.persistence = persistence
        self._entries: OrderedDict[str, Entry] = OrderedDict()  # least recently used first
        self._by_id: dict[int, Entry] = {}
        self._indexes: dict[str, Index] = {}  # semantic partition → its index
        self._next_id = 1
        self._index_factory = index_factory

    # ---- Cache ---------------------------------------------------------------------------

    def get(self, key: str, now: float) -> Entry | None:
        e = self._entries.get(key)
        if e is None:
            return None
        if e.expires <= now:
            self._drop([e])
            return None
        self._entries.move_to_end(key)
        return e

    def nearest(self, partition: str, vector: Any, threshold: float, now: float, guard: str | None = None) -> tuple[Entry, float] | None:
        index = self._indexes.get(partition)
        if index is None:
            return None
        expired = []
        found: tuple[Entry, float] | None = None
        for entry_id, similarity in index.search(vector, 4):
            e = self._by_id.get(entry_id)
            if e is None or e.partition != partition:
                continue  # cannot happen (one index per partition); never serve across one
            if e.expires <= now:
                expired.append(e)
                continue
            if similarity < threshold:
                break  # best first: nothing further is close enough
            if e.guard == guard:
                found = (e, similarity)
                break
        if expired:
            self._drop(expired)
        if found is not None:
            self._entries.move_to_end(found[0].key)
        return found

    def put(self, entry: Entry) -> None:
        old = self._entries.get(entry.key)
        if old is not None:
            self._drop([old], persist=False)
        entry.id = self._next_id
        self._next_id += 1
        self._entries[entry.key] = entry
        self._by_id[entry.id] = entry
        if entry.partition is not None and entry.vector is not None:
            index = self._indexes.get(entry.partition)
            if index is None:
                index = self._indexes[entry.partition] = self._index_factory(len(entry.vector))
            index.add(entry.id, entry.vector)
        if self.persistence is not None:
            self.persistence.saved(entry)
        if len(self._entries) > self.max_entries:
            oldest = next(iter(self._entries.values()))
            self._drop([oldest])

    def invalidate(self, what: Invalidation) -> int:
        if what.is_empty():
            return 0
        if what.everything:
            n = len(self._entries)
            self._entries.clear()
            self._by_id.clear()
            self._indexes.clear()
            if self.persistence is not None:
                self.persistence.cleared()
            return n
        doomed = [e for e in self._entries.values() if what.matches(e)]
        self._drop(doomed)
        return len(doomed)

    def expire(self, now: float) -> int:
        doomed = [e for e in self._entries.values() if e.expires <= now]
        self._drop(doomed)
        return len(doomed)

    def stats(self) -> CacheStats:
        s = CacheStats(entries=len(self._entries), partitions=len(self._indexes))
        for e in self._entries.values():
            s.by_scope[e.scope] = s.by_scope.get(e.scope, 0) + 1
            if e.partition is not None:
                s.semantic_entries += 1
        return s

    def close(self) -> None:
        return None

    # ---- loading (persistence) ------------------------------------------------------------

    def restore(self, entries: list[Entry]) -> None:
        """Entries read back at start-up, oldest first (they are not written again)."""
        persistence, self.persistence = self.persistence, None
        try:
            for e in entries:
                self.put(e)
        finally:
            self.persistence = persistence

    # ---- internals ---------------------------------------------------------------------------

    def _drop(self, entries: list[Entry], persist: bool = True) -> None:
        for e in entries:
            if self._entries.get(e.key) is e:
                del self._entries[e.key]
            self._by_id.pop(e.id, None)
            if e.partition is not None:
                index = self._indexes.get(e.partition)
                if index is not None:
                    index.remove(e.id)
                    if not len(index):
                        del self._indexes[e.partition]
        if persist and entries and self.persistence is not None:
            self.persistence.dropped([e.key for e in entries])
