#!/usr/bin/env python3
"""Reusable-prefix share of the Mooncake traces, by spendgate's own method.

The advisor estimates what provider prompt caching can save from the ledger's
prefix-block fingerprints (`spendgate.analytics.prefix_reuse`). This applies
the same function to Mooncake's public traces, whose `hash_ids` are 512-token
prefix blocks, as a check on real traffic: it must give the traces' own reuse
for an unbounded cache, 36.6 % (conversation) and 64.0 % (synthetic).

Usage:
    python scripts/mooncake_prefix_reuse.py [TRACE_DIR]

TRACE_DIR holds `{conversation,synthetic}_trace.jsonl`; it defaults to
../shared/data/mooncake-traces next to the repo (then /work/shared/...), else
the gzipped copies in tests/data.

Source: kvcache-ai/Mooncake @ 3b5a5941, FAST25-release/traces/, Apache-2.0.
"""

from __future__ import annotations

import sys
from pathlib import Path

from spendgate.analytics.prefix_reuse import mooncake_prefix_reuse

ROOT = Path(__file__).resolve().parent.parent
TRACES = ("conversation", "synthetic")


def trace_files(directory: Path | None) -> dict[str, Path]:
    candidates = [directory] if directory else [ROOT.parent / "shared/data/mooncake-traces", Path("/work/shared/data/mooncake-traces")]
    for d in candidates:
        files = {name: d / f"{name}_trace.jsonl" for name in TRACES}
        if all(f.exists() for f in files.values()):
            return files
    if directory:
        raise SystemExit(f"{directory}: no {{conversation,synthetic}}_trace.jsonl there")
    return {name: ROOT / "tests/data" / f"mooncake_{name}_trace.jsonl.gz" for name in TRACES}


def main(argv: list[str]) -> int:
    files = trace_files(Path(argv[0]) if argv else None)
    print(f"{'trace':<14}{'requests':>10}{'blocks':>10}{'reusable':>10}{'share':>9}")
    for name, path in files.items():
        r = mooncake_prefix_reuse(path)
        print(f"{name:<14}{r.requests:>10,}{r.blocks:>10,}{r.reusable_blocks:>10,}{r.share:>9.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
