"""Reusable-prefix share: how much of the prompt traffic a prompt cache could serve.

Input: each request's prefix-block ids, in time order — the ledger's
`prefix_hashes` (chained hashes of fixed-size prompt blocks, see
`fingerprint.py`), or any trace with the same meaning, such as Mooncake's
`hash_ids` (512-token blocks). Two requests share the first k ids exactly when
they share that prefix.

A block is *reusable* when an earlier request had the same prefix up to and
including it: a prompt cache that never evicts would have served it. A
provider cache can only serve a leading run of blocks, so each request counts
the longest leading run of blocks seen before; with chained ids that is the
same as counting every block seen before. The share is reusable blocks over
all blocks — the upper bound on what provider prompt caching can discount.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO


@dataclass(frozen=True, slots=True)
class PrefixReuse:
    requests: int
    blocks: int
    reusable_blocks: int

    @property
    def share(self) -> float:
        """Reusable blocks / all blocks (0.0 with no blocks)."""
        return self.reusable_blocks / self.blocks if self.blocks else 0.0


def prefix_reuse(requests: Iterable[Sequence[Hashable]]) -> PrefixReuse:
    """Reusable-prefix share of time-ordered requests under an unbounded prompt cache."""
    seen: set[Hashable] = set()
    n = blocks = reusable = 0
    for ids in requests:
        n += 1
        blocks += len(ids)
        run = 0
        for block in ids:
            if block not in seen:
                break
            run += 1
        reusable += run
        seen.update(ids)
    return PrefixReuse(n, blocks, reusable)


def mooncake_hash_ids(lines: Iterable[str] | IO[str]) -> Iterable[list[int]]:
    """`hash_ids` of a Mooncake trace (JSON lines), in timestamp order (stable for ties)."""
    rows = [json.loads(line) for line in lines if line.strip()]
    rows.sort(key=lambda r: r["timestamp"])
    return [r["hash_ids"] for r in rows]


def mooncake_prefix_reuse(path: str | Path) -> PrefixReuse:
    """`prefix_reuse` of a Mooncake trace file (`.jsonl`, or `.jsonl.gz`)."""
    path = Path(path)
    if path.suffix == ".gz":
        import gzip

        with gzip.open(path, "rt") as f:
            return prefix_reuse(mooncake_hash_ids(f))
    with path.open() as f:
        return prefix_reuse(mooncake_hash_ids(f))
