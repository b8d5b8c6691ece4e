"""Nearest-neighbour search over one cache scope's prompt embeddings.

Why usearch: bench/ann_choice.py compared it with hnswlib, faiss-cpu,
sqlite-vec and numpy brute force at 100,000 entries of 128 dims. Scans are
exact but too slow there (numpy ~5 ms, faiss flat ~2 ms, sqlite-vec ~18 ms a
query); the three HNSW graphs answer in 0.1-0.5 ms with the same recall.
Of those, usearch alone removes entries for real (expired and invalidated
entries must never be served; their slots are reused), grows by itself, and
ships binary wheels: hnswlib only marks deletions, needs manual resizing and a
C++ compiler at install; faiss's HNSW cannot remove at all.

Small indexes — most partitions — are a numpy matrix searched exhaustively,
so their answers are exact and an idle partition costs only its vectors; the
graph is built only past `EXACT_LIMIT` entries, where a scan would cost more
than the lookup budget.
"""

from __future__ import annotations

import numpy as np
from usearch.index import Index

EXACT_LIMIT = 4096
"""Up to this many entries every search is a full scan: exact, and ~0.15 ms at 128 dims, what the graph costs there."""

CONNECTIVITY = 16  # graph degree (HNSW's M)
EXPANSION_ADD = 128  # candidate list while inserting (efConstruction)
EXPANSION_SEARCH = 128  # candidate list while searching (ef): at 100k entries, 0.999 of near-duplicates found


class VectorIndex:
    """Keys (ints chosen by the caller, >= 0) to unit vectors; search by cosine similarity.

    Up to `EXACT_LIMIT` entries the vectors sit in a plain numpy matrix (a scan is
    exact, and an empty usearch index alone costs tens of KB: with one index per
    semantic partition, thousands of small partitions must stay cheap); past it
    they move into a usearch graph. Not safe for concurrent writers: the cache
    stage calls it from one event loop.
    """

    def __init__(self, dims: int) -> None:
        if dims <= 0:
            raise ValueError("dims must be positive")
        self.dims = dims
        self._rows = np.empty((0, dims), dtype=np.float32)  # small mode: one row per key, in `_keys` order
        self._keys: list[int] = []
        self._where: dict[int, int] = {}  # key -> row
        self._index: Index | None = None  # large mode

    def add(self, key: int, vector: np.ndarray) -> None:
        """Store `vector` under `key`, replacing what the key had."""
        key = _check_key(key)
        v = self._unit(vector)
        if self._index is not None:
            if self._index.contains(key):
                self._index.remove(key)
            self._index.add(key, v)
            return
        row = self._where.get(key)
        if row is not None:
            self._rows[row] = v
            return
        if len(self._keys) == len(self._rows):  # grow by doubling: amortised O(1) appends
            grown = np.empty((max(8, 2 * len(self._rows)), self.dims), dtype=np.float32)
            grown[: len(self._keys)] = self._rows[: len(self._keys)]
            self._rows = grown
        self._where[key] = len(self._keys)
        self._rows[len(self._keys)] = v
        self._keys.append(key)
        if len(self._keys) > EXACT_LIMIT:
            self._to_graph()

    def remove(self, key: int) -> None:
        """Forget `key`; nothing happens if it is not there."""
        if key < 0:
            return
        if self._index is not None:
            if self._index.contains(key):
                self._index.remove(key)
            return
        row = self._where.pop(key, None)
        if row is None:
            return
        last = len(self._keys) - 1
        if row != last:  # swap the last row into the hole
            moved = self._keys[last]
            self._rows[row] = self._rows[last]
            self._keys[row] = moved
            self._where[moved] = row
        self._keys.pop()

    def search(self, vector: np.ndarray, k: int = 4) -> list[tuple[int, float]]:
        """Up to `k` (key, cosine similarity) pairs, most similar first; [] when empty."""
        size = len(self)
        if k <= 0 or size == 0:
            return []
        k = min(k, size)
        v = self._unit(vector)
        if self._index is None:
            sims = self._rows[:size] @ v
            best = np.argpartition(-sims, k - 1)[:k] if k < size else np.arange(size)
            best = best[np.argsort(-sims[best], kind="stable")]
            return [(self._keys[i], float(sims[i])) for i in best.tolist()]
        matches = self._index.search(v, k)
        found = len(matches)  # may be fewer than k once the graph has removals
        keys = matches.keys[:found].tolist()
        dists = (1.0 - matches.distances[:found]).tolist()  # usearch's "ip" distance is 1 - dot
        return [(int(key), float(sim)) for key, sim in zip(keys, dists, strict=True)]

    def __len__(self) -> int:
        return len(self._index) if self._index is not None else len(self._keys)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, int) or key < 0:
            return False
        return bool(self._index.contains(key)) if self._index is not None else key in self._where

    def _to_graph(self) -> None:
        index = Index(
            ndim=self.dims,
            metric="ip",  # on unit vectors inner product is cosine, and cheaper
            dtype="f32",  # thresholds sit near 0.99: f16/i8 storage would blur the similarity returned
            connectivity=CONNECTIVITY,
            expansion_add=EXPANSION_ADD,
            expansion_search=EXPANSION_SEARCH,
        )
        n = len(self._keys)
        index.add(np.array(self._keys, dtype=np.uint64), self._rows[:n])
        self._index = index
        self._rows = np.empty((0, self.dims), dtype=np.float32)
        self._keys, self._where = [], {}

    def _unit(self, vector: np.ndarray) -> np.ndarray:
        v = np.asarray(vector, dtype=np.float32).reshape(-1)
        if v.shape[0] != self.dims:
            raise ValueError(f"expected a vector of {self.dims} dims, got {v.shape[0]}")
        norm = float(np.linalg.norm(v))
        return v / norm if norm > 0 and abs(norm - 1.0) > 1e-4 else v


def _check_key(key: int) -> int:
    if not isinstance(key, (int, np.integer)) or key < 0:
        raise ValueError(f"keys are ints >= 0, got {key!r}")
    return int(key)
