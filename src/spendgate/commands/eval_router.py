"""`spendgate eval-router`: score routing and cascade strategies offline on RouteLLM's eval data.

For MMLU, GSM8K and MT-Bench it prints, per strategy, the cost reduction and
quality ratio against "always GPT-4" on a held-out test split, at the
threshold chosen on the training split, plus the cost-vs-quality curve and a
cross-dataset run. The data is not shipped with spendgate: by default it is
read from `../shared/data/routellm-evals` (see docs/routing-eval.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from spendgate.routing.evaluation import (
    DATASETS,
    DEFAULT_STRONG_PRICE,
    DEFAULT_WEAK_PRICE,
    EvalOptions,
    default_data_dir,
    evaluate,
    thin,
    to_json,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None, help="the routellm-evals folder (default: ../shared/data/routellm-evals)")
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, from {', '.join(DATASETS)} (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split and the folds (default 0)")
    parser.add_argument("--test-fraction", type=float, default=0.5, help="share of distinct prompts held out (default 0.5)")
    parser.add_argument("--folds", type=int, default=5, help="folds for out-of-fold scores on the training split (default 5)")
    parser.add_argument("--target", type=float, default=0.95, help="quality to keep, as a fraction of always-strong (default 0.95)")
    parser.add_argument("--limit", type=int, default=None, help="use a seeded random N prompts per dataset (quick runs, tests)")
    parser.add_argument("--no-cross", action="store_true", help="skip the cross-dataset runs")
    parser.add_argument("--strong-price", default=DEFAULT_STRONG_PRICE, help=f"PROVIDER:MODEL in genai-prices (default {DEFAULT_STRONG_PRICE})")
    parser.add_argument("--weak-price", default=DEFAULT_WEAK_PRICE, help=f"PROVIDER:MODEL in genai-prices (default {DEFAULT_WEAK_PRICE})")
    parser.add_argument("--curve-points", type=int, default=11, help="points of each printed curve (default 11)")
    parser.add_argument("--json", action="store_true", help="print JSON (per dataset: cost_reduction, quality_ratio, …)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    data_dir = args.data if args.data is not None else default_data_dir()
    if not data_dir.is_dir():
        print(f"spendgate: no eval data at {data_dir}; pass --data DIR (the routellm-evals folder)", file=sys.stderr)
        return 2
    datasets = tuple(d.strip() for d in args.datasets.split(",") if d.strip())
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown or not datasets:
        print(f"spendgate: unknown datasets {unknown}; choose from {', '.join(DATASETS)}", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 10:
        print("spendgate: --limit must be at least 10", file=sys.stderr)
        return 2
    options = EvalOptions(
        data_dir=data_dir,
        datasets=datasets,
        seed=args.seed,
        test_fraction=args.test_fraction,
        folds=args.folds,
        target=args.target,
        limit=args.limit,
        cross=not args.no_cross,
        strong_price=args.strong_price,
        weak_price=args.weak_price,
    )
    started = time.monotonic()

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"[{time.monotonic() - started:5.1f}s] {message}", file=sys.stderr)

    try:
        report = evaluate(options, progress)
    except (OSError, ValueError, KeyError) as exc:
        print(f"spendgate: {exc}", file=sys.stderr)
        return 1
    report["data"] = str(data_dir)
    if args.json:
        print(json.dumps(to_json(report), indent=2))
    else:
        print(render(report, args.curve_points))
    return 0


# --- text ---------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def render(report: dict[str, Any], curve_points: int = 11) -> str:
    target = report["target_quality_ratio"]
    lines = [
        f"Router evaluation on {report.get('data', 'routellm-evals')} (RouteLLM eval data, lm-sys/RouteLLM, Apache-2.0)",
        "",
        "Prices (genai-prices list prices, USD per million tokens):",
    ]
    for role in ("strong", "weak"):
        m = report["models"][role]
        lines.append(
            f"  {role:6s} {m['model']:38s} priced as {m['priced_as']:28s} "
            f"input {m['input_per_mtok']:>5s}  output {m['output_per_mtok']:>5s}  ({m['source']})"
        )
    method = report["method"]
    lines += [
        f"Split: {method['split']}.",
        f"Threshold: {method['threshold']}.",
        f"Tokens: {method['tokens']}.",
    ]
    if method.get("limit"):
        lines.append(f"Subset: a seeded random {method['limit']} prompts per dataset (--limit).")
    lines.append("cost↓ = 1 − cost / cost(always strong); quality = quality / quality(always strong).")
    for name, d in report["datasets"].items():
        test = d["test"]
        lines += [
            "",
            f"== {name}: {d['all']['items']} prompts ({d['train']['items']} train / {test['items']} test); quality = {d['quality']}",
            f"   test split, always strong: quality {test['strong_quality']:.3f}, cost ${float(test['strong_cost']):.4f}; "
            f"always weak: quality {test['weak_quality']:.3f} ({_pct(test['weak_quality'] / test['strong_quality'] if test['strong_quality'] else None)}), "
            f"cost ${float(test['weak_cost']):.4f} ({_pct(test['weak_cost_share'])})",
            f"   {'strategy':26s} {'uses':22s} │ {'held-out at chosen threshold':^30s} │ {'train out-of-fold':^17s} │ {f'test curve at {target:g}':^30s}",
            f"   {'':26s} {'':22s} │ {'cost↓':>8s} {'quality':>9s} {'strong':>10s} │ {'cost↓':>8s} {'quality':>8s} │ {'cost↓':>8s} {'quality':>9s} {'strong':>10s}",
        ]
        for s in d["strategies"].values():
            t, o, b = s["test"], s["train_oof"], s["test_curve_at_target"]
            best = (
                f"{_pct(b['cost_reduction']):>8s} {_pct(b['quality_ratio']):>9s} {_pct(b['strong_calls']):>10s}"
                if b
                else f"{'–':>8s} {'–':>9s} {'–':>10s}"
            )
            lines.append(
                f"   {s['name']:26s} {s['uses']:22s} │ {_pct(t['cost_reduction']):>8s} {_pct(t['quality_ratio']):>9s} "
                f"{_pct(t['strong_calls']):>10s} │ {_pct(o['cost_reduction']):>8s} {_pct(o['quality_ratio']):>8s} │ {best}"
            )
        lines.append(
            f"   headline (chosen on the training split): {d['headline']}: cost_reduction {_pct(d['cost_reduction'])} "
            f"at quality_ratio {_pct(d['quality_ratio'])} (held out)"
        )
        if d["prompt_only"]:
            p = d["prompt_only"]
            lines.append(
                f"   prompt only: {p['strategy']}: cost_reduction {_pct(p['cost_reduction'])} at quality_ratio {_pct(p['quality_ratio'])}"
            )
        head = next(r for r in d["_results"] if r.name == d["headline"])
        if head.threshold is not None or head.name == "random":
            lines.append(f"   cost vs quality on the test split ({head.name}):")
            lines.append(f"     {'threshold':>12s} {'weak kept':>10s} {'strong calls':>13s} {'cost↓':>8s} {'quality':>8s}")
            for p in thin(head.curve, curve_points):
                thr = "–" if p.threshold is None else ("all strong" if p.threshold == float("inf") else f"{p.threshold:.4g}")
                lines.append(
                    f"     {thr:>12s} {_pct(p.weak_kept):>10s} {_pct(p.strong_calls):>13s} "
                    f"{_pct(p.cost_reduction):>8s} {_pct(p.quality_ratio):>8s}"
                )
    if report["cross_dataset"]:
        lines += [
            "",
            "== cross-dataset: trained on one dataset, tested on another's test split (prompt only)",
            f"   {'train → test':28s} {'strategy':12s} │ {'at threshold from training data':^30s} │ {f'test curve at {target:g}':^30s}",
            f"   {'':28s} {'':12s} │ {'cost↓':>8s} {'quality':>9s} {'strong':>10s} │ {'cost↓':>8s} {'quality':>9s} {'strong':>10s}",
        ]
        for c in report["cross_dataset"]:
            t, b = c["at_threshold"], c["test_curve_at_target"]
            best = (
                f"{_pct(b['cost_reduction']):>8s} {_pct(b['quality_ratio']):>9s} {_pct(b['strong_calls']):>10s}"
                if b
                else f"{'–':>8s} {'–':>9s} {'–':>10s}"
            )
            route = f"{'+'.join(c['train'])} → {c['test']}"
            lines.append(
                f"   {route:28s} {c['strategy']:12s} │ {_pct(t['cost_reduction']):>8s} {_pct(t['quality_ratio']):>9s} "
                f"{_pct(t['strong_calls']):>10s} │ {best}"
            )
    return "\n".join(lines)
