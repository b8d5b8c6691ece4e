"""Reusable-prefix share: the method the advisor uses on the ledger's prefix fingerprints,
checked against the Mooncake traces' own 512-token-block reuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from spendgate.analytics.prefix_reuse import PrefixReuse, mooncake_prefix_reuse, prefix_reuse
from spendgate.fingerprint import prefix_hashes

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(("trace", "expected"), [("conversation", 36.6), ("synthetic", 64.0)])
def test_mooncake_traces_reproduce_their_own_prefix_reuse(trace: str, expected: float) -> None:
    r = mooncake_prefix_reuse(DATA / f"mooncake_{trace}_trace.jsonl.gz")
    assert abs(r.share * 100 - expected) < 0.05, r  # to 0.1 percentage point
    assert r.requests == {"conversation": 12_031, "synthetic": 3_993}[trace]


def test_counts_the_leading_run_seen_before() -> None:
    r = prefix_reuse([["a", "b", "c"], ["a", "b", "x"], ["a", "y"], ["z"], ["a", "b", "c", "d"]])
    assert r == PrefixReuse(requests=5, blocks=13, reusable_blocks=2 + 1 + 0 + 3)
    # an id seen before but after a miss is not servable by a prefix cache
    assert prefix_reuse([["p", "q"], ["r", "q"]]).reusable_blocks == 0
    assert prefix_reuse([]).share == 0.0


def test_ledger_fingerprints_are_chained_prefixes() -> None:
    """The ledger's `prefix_hashes` are chained: equal id = equal whole prefix, so the
    share computed from them is the prompt-cache reuse of the texts."""
    system = "You are a careful assistant for the finance team. " * 100  # 5,000 chars
    a = prefix_hashes(system + "question one " * 50, 512)
    b = prefix_hashes(system + "question two " * 50, 512)
    c = prefix_hashes("other preamble " + system, 512)
    shared = len(system) // 512
    assert a[:shared] == b[:shared] and a[shared] != b[shared]
    assert not set(c) & set(a)  # the same blocks after a different start are different ids
    r = prefix_reuse([a, b, c])
    assert r.reusable_blocks == shared and r.blocks == len(a) + len(b) + len(c)
