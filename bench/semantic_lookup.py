"""Semantic cache lookup latency: embed a prompt, then search one scope of 100,000 entries.

    python bench/semantic_lookup.py [--n 100000] [--lookups 2000] [--json]

The issue's target: p50 <= 5 ms for the whole lookup on one core of this
machine. The index is a spendgate VectorIndex filled with the shipped
embedder's vectors of real questions (QQP's distinct questions when
shared/data/qqp-pairs/ is there: evaluation use only, nothing stored), else
random unit vectors. The prompts looked up are made up here, in three sizes: a
short question, a typical chat request, and a long one with a system prompt
and context (~2,000 tokens), since the embedding cost grows with the text.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from spendgate.cache.embedding import DEFAULT_THRESHOLD, load_embedder
from spendgate.cache.vectors import VectorIndex

from ann_choice import qqp_questions  # bench/ is on sys.path when run as `python bench/semantic_lookup.py`


SHORT = [
    "How do I reset my password?",
    "What are your opening hours on Sunday?",
    "Can I get a refund for an annual plan?",
    "What's the difference between a Roth IRA and a traditional IRA?",
    "How long should I boil an egg for a runny yolk?",
]
TYPICAL = [
    "I'm writing a Python script that reads a CSV of orders and I need to group them by customer and sum "
    "the totals, but some rows have missing customer ids. What's the cleanest way to do this with pandas, "
    "and how should I handle the missing ids so they don't get silently dropped?",
    "Our team is planning a three-day offsite in Lisbon for twelve people in late May. Suggest an agenda "
    "that mixes strategy workshops with some outdoor activities, and list what we should book in advance.",
    "Explain to a new engineer how database indexes speed up queries, when they slow down writes, and how "
    "to decide which columns to index in a table of a few million rows that is read far more than written.",
]
SYSTEM = (
    "You are a helpful support assistant for Acme Cloud. Answer only questions about Acme products. Be "
    "concise, cite the relevant documentation section, and never reveal internal tooling. "
)


def long_prompt(i: int) -> str:
    context = " ".join(TYPICAL) * 13  # ~2,000 tokens of pasted context
    return f"{SYSTEM}\n\nContext:\n{context}\n\nQuestion {i}: {SHORT[i % len(SHORT)]}"


def fill_vectors(n: int, dims: int) -> tuple[np.ndarray, str]:
    embedder = load_embedder()
    texts = qqp_questions()[:n]
    if len(texts) == n:
        return embedder.encode(texts), f"{embedder.name} embeddings of distinct QQP questions"
    rows = np.random.default_rng(0).standard_normal((n, dims)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True), "random unit vectors"


def pct(samples: list[int], p: float) -> float:
    return float(np.percentile(np.array(samples) / 1e6, p))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    t0 = time.perf_counter()
    embedder = load_embedder()
    load_s = time.perf_counter() - t0
    vectors, source = fill_vectors(args.n, embedder.dims)
    index = VectorIndex(embedder.dims)
    t0 = time.perf_counter()
    for key, row in enumerate(vectors):
        index.add(key, row)
    fill_s = time.perf_counter() - t0

    rows = []
    for label, prompts in (
        ("short question (~10 tokens)", SHORT),
        ("typical request (~60 tokens)", TYPICAL),
        ("long prompt (~2,000 tokens)", [long_prompt(i) for i in range(5)]),
    ):
        tokens = int(np.mean([len(embedder._model.tokenize([p])[0]) for p in prompts]))  # noqa: SLF001
        for p in prompts[:2]:  # warm up
            index.search(embedder.encode_one(p), k=4)
        embed, search, total, hits = [], [], [], 0
        for i in range(args.lookups):
            prompt = prompts[i % len(prompts)]
            a = time.perf_counter_ns()
            v = embedder.encode_one(prompt)
            b = time.perf_counter_ns()
            found = index.search(v, k=4)
            c = time.perf_counter_ns()
            embed.append(b - a)
            search.append(c - b)
            total.append(c - a)
            hits += bool(found) and found[0][1] >= DEFAULT_THRESHOLD
        rows.append({
            "prompt": label, "tokens": tokens,
            "embed_p50_ms": pct(embed, 50), "embed_p99_ms": pct(embed, 99),
            "search_p50_ms": pct(search, 50), "search_p99_ms": pct(search, 99),
            "total_p50_ms": pct(total, 50), "total_p99_ms": pct(total, 99),
        })

    info = {
        "entries": len(index), "dims": embedder.dims, "model": embedder.name, "source": source,
        "load_s": load_s, "fill_s": fill_s, "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "lookups": args.lookups,
    }
    if args.json:
        print(json.dumps({"info": info, "rows": rows}, indent=1))
        return 0
    print(
        f"{info['entries']:,} entries × {info['dims']} dims in one VectorIndex ({source}); embedder "
        f"{info['model']} (load {load_s:.2f} s); index filled one add() at a time in {fill_s:.1f} s; "
        f"{args.lookups} lookups per prompt size, k=4, one thread, {info['cpus']} vCPU, Python {info['python']}.\n"
    )
    print("| prompt | tokens | embed p50 ms | embed p99 ms | search p50 ms | search p99 ms | **total p50 ms** | total p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['prompt']} | {r['tokens']} | {r['embed_p50_ms']:.3f} | {r['embed_p99_ms']:.3f} | "
            f"{r['search_p50_ms']:.3f} | {r['search_p99_ms']:.3f} | **{r['total_p50_ms']:.3f}** | {r['total_p99_ms']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
