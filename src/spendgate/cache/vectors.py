"""Nearest-neighbour search over one cache scope's prompt embeddings.

Why usearch: bench/ann_choice.py compared it with hnswlib, faiss-cpu,
sqlite-vec and numpy brute force at 100,000 entries of 128 dims. Scans are
exact but too slow there (numpy ~5 ms, faiss flat ~2 ms, sqlite-vec ~18 ms a
query); the three HNSW graphs answer in 0.1-0.5 ms with the same recall.
Of those, usearch alone removes entries for real (expired and invalidated
entries must never be served; their slots are reused), grows by itself, and
ships binary wheels: hnswlib only marks deletions, needs manual resizing and a
C++ compiler at install; faiss's HNSW cannot remove at all.

Small indexes — most scopes — are searched exhaustively (usearch's exact
mode), so their answers are exact; the graph is used only past
`EXACT_LIMIT` entries, where a scan would cost more than the lookup budget.
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

    Not safe for concurrent writers: the cache stage calls it from one event loop.
    """

    def __init__(self, dims: int) -> None:
        if dims <= 0:
            raise ValueError("dims must be positive")
        self.dims = dims
        self._index = Index(
            ndim=dims,
            metric="ip",  # on unit vectors inner product is cosine, and cheaper
            dtype="f32",  # thresholds sit near 0.99: f16/i8 storage would blur the similarity returned
            connectivity=CONNECTIVITY,
            expansion_add=EXPANSION_ADD,
            expansion_search=EXPANSION_SEARCH,
        )

    def add(self, key: int, vector: np.ndarray) -> None:
        """Store `vector` under `key`, replacing what the key had."""
        key = _check_key(key)
        if self._index.contains(key):
            self._index.remove(key)
        self._index.add(key, self._unit(vector))

    def remove(self, key: int) -> None:
        """Forget `key`; nothing happens if it is not there."""
        if key >= 0 and self._index.contains(key):
            self._index.remove(key)

    def search(self, vector: np.ndarray, k: int = 4) -> list[tuple[int, float]]:
        """Up to `k` (key, cosine similarity) pairs, most similar first; [] when empty."""
        size = len(self._index)
        if k <= 0 or size == 0:
            return []
        k = min(k, size)
        matches = self._index.search(self._unit(vector), k, exact=size <= EXACT_LIMIT)
        found = len(matches)  # may be fewer than k once the graph has removals
        keys = matches.keys[:found].tolist()
        sims = (1.0 - matches.distances[:found]).tolist()  # usearch's "ip" distance is 1 - dot
        return [(int(key), float(sim)) for key, sim in zip(keys, sims, strict=True)]

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and key >= 0 and bool(self._index.contains(key))

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
