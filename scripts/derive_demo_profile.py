#!/usr/bin/env python3
"""Derive `spendgate/data/demo_profile.json` from the Azure LLM inference trace 2023.

Why a derived profile and not the trace: the demo must run on a fresh machine
without `../shared`, and a wheel should not carry a megabyte of CSV. A few
quantiles per workload keep the trace's shape (medians, tails, modes) in a few
KB; `spendgate.demo.profile` samples from them.

Usage:
    python scripts/derive_demo_profile.py [TRACE_DIR] [--out PATH] [--check]

TRACE_DIR defaults to ../shared/data/azure-llm-trace-2023 next to the repo
(then /work/shared/...). `--check` compares with the shipped file instead of
writing it (exit 1 when they differ).

Source: Azure/AzurePublicDataset @ b469a113, data/AzureLLMInferenceTrace_{code,conv}.csv,
licensed CC-BY 4.0; first published with Patel et al., "Splitwise: Efficient
Generative LLM Inference Using Phase Splitting", ISCA 2024.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "src" / "spendgate" / "data" / "demo_profile.json"
TRACE_CANDIDATES = (
    REPO.parent / "shared" / "data" / "azure-llm-trace-2023",
    Path("/work/shared/data/azure-llm-trace-2023"),
)
WORKLOADS = ("code", "conv")

# Dense in the tails, where the cost of a workload hides.
PROBABILITIES = (
    0.0, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
    0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 0.995, 0.999, 1.0,
)

SOURCE = {
    "name": "Azure LLM inference trace 2023",
    "repository": "https://github.com/Azure/AzurePublicDataset",
    "commit": "b469a113",
    "files": ["data/AzureLLMInferenceTrace_code.csv", "data/AzureLLMInferenceTrace_conv.csv"],
    "license": "CC-BY-4.0",
    "license_url": "https://creativecommons.org/licenses/by/4.0/",
    "attribution": "Microsoft Azure; Patel et al., Splitwise: Efficient Generative LLM Inference "
    "Using Phase Splitting, ISCA 2024",
    "changes": "reduced by scripts/derive_demo_profile.py to quantiles of ContextTokens and "
    "GeneratedTokens and per-minute arrival counts per workload; no individual request is kept",
}


def quantile(sorted_values: list[int], p: float) -> float:
    """Linear-interpolation quantile (Hyndman & Fan type 7, numpy's default)."""
    n = len(sorted_values)
    h = (n - 1) * p
    lo = math.floor(h)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


def _parse_ts(text: str) -> float:
    day, _, frac = text.strip().partition(".")
    return datetime.strptime(day, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp() + float("0." + (frac or "0"))


def summarize(path: Path) -> dict[str, object]:
    """One workload's profile: token quantiles and per-minute arrival shape."""
    stamps: list[float] = []
    context: list[int] = []
    generated: list[int] = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            stamps.append(_parse_ts(row["TIMESTAMP"]))
            context.append(int(row["ContextTokens"]))
            generated.append(int(row["GeneratedTokens"]))
    if not stamps:
        raise ValueError(f"{path}: no rows")
    start, end = min(stamps), max(stamps)
    minutes = max(1, int((end - start) // 60))  # whole minutes only: the last one is partial
    counts = [0] * minutes
    for t in stamps:
        i = int((t - start) // 60)
        if i < minutes:
            counts[i] += 1
    mean = sum(counts) / minutes
    context.sort()
    generated.sort()
    return {
        "requests": len(stamps),
        "duration_s": round(end - start, 3),
        "context_tokens": [round(quantile(context, p), 1) for p in PROBABILITIES],
        "generated_tokens": [round(quantile(generated, p), 1) for p in PROBABILITIES],
        "minute_weights": [round(c / mean, 3) for c in counts],
    }


def derive(trace_dir: Path) -> dict[str, object]:
    return {
        "format": 1,
        "about": "Token shapes for `spendgate demo`: quantiles of context and generated tokens and "
        "per-minute arrival weights per workload of a real production LLM trace.",
        "source": SOURCE,
        "probabilities": list(PROBABILITIES),
        "workloads": {w: summarize(trace_dir / f"{w}.csv") for w in WORKLOADS},
    }


_NUMBER_LIST = re.compile(r"\[\s*(-?[0-9.e+-]+(?:,\s*-?[0-9.e+-]+)*)\s*\]")


def render(profile: dict[str, object]) -> str:
    """Indented JSON with number lists on one line: small, and reviewable in a diff."""
    text = json.dumps(profile, indent=1, separators=(",", ": "))
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def find_trace_dir() -> Path | None:
    for candidate in TRACE_CANDIDATES:
        if all((candidate / f"{w}.csv").is_file() for w in WORKLOADS):
            return candidate
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace_dir", nargs="?", type=Path, help="folder holding code.csv and conv.csv")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args(argv)
    trace_dir = args.trace_dir or find_trace_dir()
    if trace_dir is None:
        print("derive_demo_profile: trace not found; pass its folder", file=sys.stderr)
        return 2
    text = render(derive(trace_dir))
    if args.check:
        same = args.out.is_file() and args.out.read_text() == text
        print(f"{args.out}: {'up to date' if same else 'differs from the trace'}")
        return 0 if same else 1
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
