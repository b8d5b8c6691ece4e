"""Which nearest-neighbour library backs the semantic cache's VectorIndex.

    python bench/ann_choice.py [--n 100000] [--queries 1000] [--json]

Each candidate runs in its own process (so its memory is its own) on the same
vectors: the shipped embedder's vectors of real questions (QQP, when
shared/data/qqp-pairs/ is there; evaluation only, nothing is stored), else
random unit vectors of the same dims. It measures the bulk build, one-at-a-time
inserts (what the cache does), single-query latency at k=4 on one thread,
recall@1 against exact search (for questions not in the index, and for
near-duplicates of indexed ones, cosine ~0.98, which is what a cache hit
looks like), resident memory, and whether — and how fast —
an entry can be removed (cache entries expire and get invalidated). Missing
libraries are skipped; install them with
`pip install hnswlib usearch faiss-cpu sqlite-vec apsw` to compare them all
(sqlite-vec needs apsw: this Python's sqlite3 cannot load extensions).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one gateway core; before faiss/numpy load

import numpy as np

REPO = Path(__file__).resolve().parent.parent
QQP = (REPO.parent / "shared" / "data" / "qqp-pairs" / "qqp_pairs.jsonl.gz", Path("/work/shared/data/qqp-pairs/qqp_pairs.jsonl.gz"))
CANDIDATES = ("numpy", "usearch", "hnswlib", "faiss-hnsw", "faiss-flat", "sqlite-vec", "spendgate")
K = 4
SINGLE_INSERTS = 1000
REMOVES = 1000


def qqp_questions() -> list[str]:
    """The distinct questions of the QQP pairs (evaluation use only; read from ../shared), or [] without them."""
    for path in QQP:
        if path.is_file():
            seen: dict[str, None] = {}
            with gzip.open(path, "rt", encoding="utf-8") as f:
                for line in f:
                    row = json.loads(line)
                    seen.setdefault(row["a"], None)
                    seen.setdefault(row["b"], None)
            return list(seen)
    return []


def vectors(n: int, n_queries: int, cache: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(base, queries, where from): unit float32 rows; cached on disk between the candidates' processes."""
    if cache.exists():
        data = np.load(cache)
        return data["base"], data["queries"], str(data["source"])
    source = "random unit vectors"
    texts = qqp_questions()
    from spendgate.cache.embedding import load_embedder

    embedder = load_embedder()
    if len(texts) >= n + n_queries:
        rng = np.random.default_rng(7)
        order = rng.permutation(len(texts))
        chosen = [texts[i] for i in order[: n + n_queries]]
        all_vectors = embedder.encode(chosen)
        source = f"{embedder.name} embeddings of distinct QQP questions"
    else:
        rng = np.random.default_rng(7)
        all_vectors = rng.standard_normal((n + n_queries, embedder.dims)).astype(np.float32)
        all_vectors /= np.linalg.norm(all_vectors, axis=1, keepdims=True)
    base, queries = all_vectors[:n].copy(), all_vectors[n:].copy()
    np.savez(cache, base=base, queries=queries, source=source)
    return base, queries, source


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Numpy:
    """Brute force over a float32 matrix; removal swaps the last row in."""

    removes = "yes (swap-remove, O(1))"

    def __init__(self, dims: int) -> None:
        self.matrix = np.zeros((0, dims), np.float32)
        self.keys = np.zeros(0, np.int64)
        self.n = 0
        self.slot: dict[int, int] = {}

    def build(self, keys: np.ndarray, data: np.ndarray) -> None:
        self.matrix = np.array(data, np.float32)
        self.keys = keys.copy()
        self.n = len(keys)
        self.slot = {int(k): i for i, k in enumerate(keys)}

    def add(self, key: int, v: np.ndarray) -> None:
        if self.n == len(self.matrix):
            grown = np.zeros((max(8, 2 * self.n), self.matrix.shape[1]), np.float32)
            grown[: self.n] = self.matrix[: self.n]
            self.matrix = grown
            self.keys = np.resize(self.keys, len(grown))
        self.matrix[self.n] = v
        self.keys[self.n] = key
        self.slot[key] = self.n
        self.n += 1

    def search(self, q: np.ndarray, k: int) -> list[int]:
        sims = self.matrix[: self.n] @ q
        top = np.argpartition(-sims, k)[:k] if self.n > k else np.arange(self.n)
        return [int(self.keys[i]) for i in top[np.argsort(-sims[top])]]

    def remove(self, key: int) -> None:
        i = self.slot.pop(key)
        last = self.n - 1
        if i != last:
            self.matrix[i] = self.matrix[last]
            self.keys[i] = self.keys[last]
            self.slot[int(self.keys[i])] = i
        self.n = last


class Usearch:
    removes = "yes (remove(), graph relinked)"

    def __init__(self, dims: int) -> None:
        from usearch.index import Index

        self.index = Index(ndim=dims, metric="ip", dtype="f32", connectivity=16, expansion_add=128, expansion_search=64)

    def build(self, keys: np.ndarray, data: np.ndarray) -> None:
        self.index.add(keys, data, threads=1)

    def add(self, key: int, v: np.ndarray) -> None:
        self.index.add(key, v)

    def search(self, q: np.ndarray, k: int) -> list[int]:
        return [int(x) for x in self.index.search(q, k).keys]

    def remove(self, key: int) -> None:
        self.index.remove(key)


class Hnswlib:
    removes = "mark_deleted (slot reused by replace_deleted)"

    def __init__(self, dims: int) -> None:
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=dims)
        self.index.init_index(max_elements=1024, M=16, ef_construction=128, allow_replace_deleted=True)
        self.index.set_ef(64)
        self.index.set_num_threads(1)

    def _room(self, extra: int) -> None:
        need = self.index.get_current_count() + extra
        if need > self.index.get_max_elements():
            self.index.resize_index(max(need, 2 * self.index.get_max_elements()))

    def build(self, keys: np.ndarray, data: np.ndarray) -> None:
        self._room(len(keys))
        self.index.add_items(data, keys)

    def add(self, key: int, v: np.ndarray) -> None:
        self._room(1)
        self.index.add_items(v[None, :], [key], replace_deleted=True)

    def search(self, q: np.ndarray, k: int) -> list[int]:
        labels, _ = self.index.knn_query(q, k=k)
        return [int(x) for x in labels[0]]

    def remove(self, key: int) -> None:
        self.index.mark_deleted(key)


class FaissHnsw:
    removes = "no (IndexHNSW has no remove_ids)"

    def __init__(self, dims: int) -> None:
        import faiss

        faiss.omp_set_num_threads(1)
        self.index = faiss.IndexHNSWFlat(dims, 16, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = 128
        self.index.hnsw.efSearch = 64
        self.ids: list[int] = []

    def build(self, keys: np.ndarray, data: np.ndarray) -> None:
        self.index.add(data)
        self.ids.extend(int(k) for k in keys)

    def add(self, key: int, v: np.ndarray) -> None:
        self.index.add(v[None, :])
        self.ids.append(key)

    def search(self, q: np.ndarray, k: int) -> list[int]:
        _, idx = self.index.search(q[None, :], k)
        return [self.ids[i] for i in idx[0] if i >= 0]

    remove = None


class FaissFlat:
    removes = "yes (remove_ids, O(n) per call)"

    def __init__(self, dims: int) -> None:
        import faiss

        faiss.omp_set_num_threads(1)
        self.faiss = faiss
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dims))

    def build(self, keys: np.ndarray, data: np.ndarray) -> None:
        self.index.add_with_ids(data, keys.astype(np.int64))

    def add(self, key: int, v: np.ndarray) -> None:
        self.index.add_with_ids(v[None, :], np.array([key], np.int64))

    def search(self, q: np.ndarray, k: int) -> list[int]:
        _, idx = self.index.search(q[None, :], k)
        return [int(i) for i in idx[0] if i >= 0]

    def remove(self, key: int) -> None:
        self.index.remove_ids(np.array([key], np.int64))


class SqliteVec:
    removes = "yes (DELETE)"

    def __init__(self, dims: int) -> None:
        import apsw
        import sqlite_vec

        self.db = apsw.Connection(":memory:")
        self.db.enable_load_extension(True)
        self.db.load_extension(sqlite_vec.loadable_path())
        self.db.execute(f"CREATE VIRTUAL TABLE v USING vec0(embedding float[{dims}] distance_metric=cosine)")

    def build(self, keys: np.ndarray, data: np.ndarray) -> None:
        with self.db:
            self.db.executemany(
                "INSERT INTO v(rowid, embedding) VALUES (?, ?)", ((int(k), row.tobytes()) for k, row in zip(keys, data))
            )

    def add(self, key: int, v: np.ndarray) -> None:
        self.db.execute("INSERT INTO v(rowid, embedding) VALUES (?, ?)", (key, v.tobytes()))

    def search(self, q: np.ndarray, k: int) -> list[int]:
        rows = self.db.execute("SELECT rowid FROM v WHERE embedding MATCH ? AND k = ? ORDER BY distance", (q.tobytes(), k))
        return [r[0] for r in rows]

    def remove(self, key: int) -> None:
        self.db.execute("DELETE FROM v WHERE rowid = ?", (key,))


class Spendgate:
    """spendgate.cache.vectors.VectorIndex itself: usearch as configured there (a wider search than the
    ef=64 the candidates share above), exact scans up to its EXACT_LIMIT."""

    removes = "yes"

    def __init__(self, dims: int) -> None:
        from spendgate.cache.vectors import VectorIndex

        self.index = VectorIndex(dims)

    def build(self, keys: np.ndarray, data: np.ndarray) -> None:
        for key, row in zip(keys, data):
            self.index.add(int(key), row)

    def add(self, key: int, v: np.ndarray) -> None:
        self.index.add(key, v)

    def search(self, q: np.ndarray, k: int) -> list[int]:
        return [key for key, _ in self.index.search(q, k)]

    def remove(self, key: int) -> None:
        self.index.remove(key)


IMPLS = {"numpy": Numpy, "usearch": Usearch, "hnswlib": Hnswlib, "faiss-hnsw": FaissHnsw,
         "faiss-flat": FaissFlat, "sqlite-vec": SqliteVec, "spendgate": Spendgate}


def percentile_ms(samples: list[float], p: float) -> float:
    return float(np.percentile(np.array(samples) * 1000, p))


def run_one(name: str, n: int, n_queries: int, cache: Path) -> dict:
    base, queries, source = vectors(n, n_queries, cache)
    # Exact best similarity per query (keys = row numbers). A hit counts when the first key returned is as
    # similar as the exact best: near-identical questions tie, and either answer is right.
    best = np.max(queries @ base.T, axis=1)
    dims = base.shape[1]
    rss0 = rss_mb()
    try:
        index = IMPLS[name](dims)
    except ImportError as e:
        return {"name": name, "skipped": f"not installed ({e.name})"}
    bulk_n = n - SINGLE_INSERTS
    start = time.perf_counter()
    index.build(np.arange(bulk_n, dtype=np.int64), base[:bulk_n])
    build_s = time.perf_counter() - start
    inserts = []
    for key in range(bulk_n, n):
        t = time.perf_counter()
        index.add(key, base[key])
        inserts.append(time.perf_counter() - t)
    memory = rss_mb() - rss0
    lat, correct = [], 0
    for qi, q in enumerate(queries):
        t = time.perf_counter()
        found = index.search(q, K)
        lat.append(time.perf_counter() - t)
        correct += bool(found) and float(base[found[0]] @ q) >= best[qi] - 1e-5
    # What the cache needs most: a stored entry close to the query (cosine ~0.98) must be found.
    rng = np.random.default_rng(5)
    near = base[rng.choice(n, len(queries), replace=False)]
    near = near + rng.standard_normal(near.shape).astype(np.float32) * (0.2 / np.sqrt(dims))
    near = (near / np.linalg.norm(near, axis=1, keepdims=True)).astype(np.float32)
    near_best = np.max(near @ base.T, axis=1)
    near_ok = 0
    for qi, q in enumerate(near):
        found = index.search(q, K)
        near_ok += bool(found) and float(base[found[0]] @ q) >= near_best[qi] - 1e-5
    result = {
        "name": name, "source": source, "n": n, "dims": dims, "build_s": build_s,
        "build_rate": bulk_n / build_s, "insert_p50_ms": percentile_ms(inserts, 50),
        "query_p50_ms": percentile_ms(lat, 50), "query_p99_ms": percentile_ms(lat, 99),
        "recall_at_1": correct / len(queries), "near_recall": near_ok / len(near), "rss_mb": memory,
        "removes": index.removes,
    }
    if index.remove is not None:
        gone = np.random.default_rng(3).choice(n, REMOVES, replace=False)
        times = []
        for key in gone:
            t = time.perf_counter()
            index.remove(int(key))
            times.append(time.perf_counter() - t)
        result["remove_p50_ms"] = percentile_ms(times, 50)
        # A removed entry must never come back, and the exact answer among the rest must still be found.
        alive = np.ones(n, bool)
        alive[gone] = False
        sims = queries @ base.T
        sims[:, ~alive] = -np.inf
        best2 = np.max(sims, axis=1)
        hits2, leaked = 0, 0
        for qi, q in enumerate(queries):
            found = index.search(q, K)
            leaked += any(not alive[f] for f in found)
            hits2 += bool(found) and float(base[found[0]] @ q) >= best2[qi] - 1e-5
        result["recall_after_remove"] = hits2 / len(queries)
        result["leaked_removed"] = leaked
    return result


def table(results: list[dict]) -> str:
    first = next(r for r in results if "source" in r)
    lines = [
        f"{first['n']:,} entries × {first['dims']} dims ({first['source']}), k={K}, one thread; "
        f"{SINGLE_INSERTS} of the entries inserted one at a time, then {REMOVES} removed.",
        "",
        "| index | bulk build s | single insert p50 ms | query p50 ms | query p99 ms | recall@1 | near-duplicate recall@1 | RSS MB | remove | remove p50 ms | recall@1 after removes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['name']} | {r['skipped']} ||||||||||")
            continue
        rm = f"{r['remove_p50_ms']:.3f}" if "remove_p50_ms" in r else "-"
        after = f"{r['recall_after_remove']:.3f}" if "recall_after_remove" in r else "-"
        if r.get("leaked_removed"):
            after += f" ({r['leaked_removed']} leaked)"
        lines.append(
            f"| {r['name']} | {r['build_s']:.1f} | {r['insert_p50_ms']:.3f} | {r['query_p50_ms']:.3f} | "
            f"{r['query_p99_ms']:.3f} | {r['recall_at_1']:.3f} | {r['near_recall']:.3f} | {r['rss_mb']:.0f} | "
            f"{r['removes']} | {rm} | {after} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--only", nargs="*", choices=CANDIDATES, help="candidates to run (default: all)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--one", choices=CANDIDATES, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/spendgate-ann-vectors.npz"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.n, args.queries, args.cache)))
        return 0
    args.cache.unlink(missing_ok=True)
    vectors(args.n, args.queries, args.cache)  # once, before the candidates' processes
    results = []
    for name in args.only or CANDIDATES:
        out = subprocess.run(
            [sys.executable, __file__, "--one", name, "--n", str(args.n), "--queries", str(args.queries),
             "--cache", str(args.cache)], capture_output=True, text=True, check=False,
        )
        if out.returncode != 0:
            results.append({"name": name, "skipped": f"failed: {out.stderr.strip().splitlines()[-1:]}"})
        else:
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{name}: done", file=sys.stderr, flush=True)
    args.cache.unlink(missing_ok=True)
    print(json.dumps(results, indent=1) if args.json else table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
