"""`spendgate router train`: fit the learned routing check from your own outcomes.

Each line of the examples file is one JSON object: the prompt and whether the
cheap model's answer was good enough, optionally with a task tag:

    {"prompt": "Summarize this ticket: …", "ok": true}
    {"prompt": "Prove that …", "ok": false, "group": "math"}

The model file it writes is what a cascade's `learned` check loads
(`checks: [{kind: learned, model_path: router.json, threshold: 0.5}]`);
a task tag is matched against the call's tag named by the check's `group_tag`.
When every line also has the cheap model's `"answer"`, the model is a
verifier: the cascade runs the cheap step and judges its answer with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spendgate.routing.learned import train_from_examples


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("train", help="fit a model from a JSONL file of {prompt, ok} outcomes, or from the ledger")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--examples", type=Path, help='JSONL, one {"prompt": ..., "ok": true/false} per line')
    source.add_argument("--cascade", metavar="NAME", help="learn from the ledger: this cascade's escalations and the feedback on its kept answers")
    p.add_argument("--config", metavar="PATH", help="with --cascade: the gateway's config (its ledger.url)")
    p.add_argument("--ledger", metavar="URL", help="with --cascade: ledger URL or path (overrides the config's)")
    p.add_argument("--since", metavar="WHEN", help="with --cascade: only requests since (30d, 2026-01-01, ...)")
    p.add_argument("--group-tag", metavar="TAG", help="with --cascade: the tag whose value is the task group (e.g. feature)")
    p.add_argument("--out", type=Path, required=True, help="where to write the model (JSON)")
    p.add_argument("--l2", type=float, default=None, help="L2 penalty on the standardized features (default: chosen by cross-validation)")
    p.add_argument("--json", action="store_true", help="print the model's metadata as JSON")

    p = sub.add_parser("predict", help="P(cheap model is good enough) for prompts, one per line on stdin")
    p.add_argument("--model", type=Path, required=True, help="a prompt router written by `router train`")
    p.add_argument("--group", default=None, help="the task tag to score the prompts under")


def read_examples(path: Path) -> tuple[list[tuple[str, bool, str | None]], list[str] | None]:
    """(prompt, ok, group) triples from a JSONL file, and the answers if every line has one."""
    examples: list[tuple[str, bool, str | None]] = []
    answers: list[str | None] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not isinstance(row.get("ok"), bool):
                raise ValueError(f'{path}:{n}: expected {{"prompt": "<text>", "ok": true|false}}')
            group = row.get("group")
            examples.append((row["prompt"], row["ok"], None if group is None else str(group)))
            answer = row.get("answer")
            answers.append(answer if isinstance(answer, str) else None)
    if not examples:
        raise ValueError(f"{path}: no examples")
    if all(a is not None for a in answers):
        return examples, [a for a in answers if a is not None]
    if any(a is not None for a in answers):
        raise ValueError(f"{path}: some lines have an answer and some do not; give all or none")
    return examples, None


def _from_ledger(args: argparse.Namespace) -> list[tuple[str, bool, str | None]]:
    """The cascade's labelled requests (routing/outcomes.py), with a word on what was skipped."""
    from spendgate.analytics.since import parse_time
    from spendgate.config import load_config
    from spendgate.ledger.open import open_ledger
    from spendgate.routing.outcomes import harvest

    url = args.ledger or load_config(args.config)[0].ledger.url
    store = open_ledger(url)
    try:
        found = harvest(store, args.cascade, group_tag=args.group_tag, since=parse_time(args.since) if args.since else None)
    finally:
        store.close()
    print(
        f"{len(found.examples)} examples from cascade '{args.cascade}': {found.escalated} escalated by its checks, "
        f"{found.reported} kept answers with feedback; skipped {found.unlabelled} kept answers without feedback "
        f"and {found.without_text} requests without stored prompt text.",
        file=sys.stderr,
    )
    if not found.examples:
        hint = " Prompts are stored only with `privacy.store_text: true`." if found.without_text else ""
        raise ValueError(f"nothing to learn from in {url} for cascade '{args.cascade}'.{hint}")
    return found.examples


def run(args: argparse.Namespace) -> int:
    if args.action == "predict":
        from spendgate.routing.learned import LearnedRouter

        router = LearnedRouter.load(args.model)
        if router.needs_answers:
            print("spendgate: this model is a verifier: it judges answers, not prompts alone", file=sys.stderr)
            return 1
        for line in sys.stdin:
            text = line.rstrip("\n")
            if text:
                print(f"{router.predict_one(text, args.group):.4f}\t{text}")
        return 0
    try:
        if args.cascade:
            examples, answers, source = _from_ledger(args), None, f"ledger:cascade:{args.cascade}"
        else:
            (examples, answers), source = read_examples(args.examples), str(args.examples)
        router = train_from_examples(examples, answers=answers, l2=args.l2, source=source)
    except (OSError, ValueError) as exc:
        print(f"spendgate: {exc}", file=sys.stderr)
        return 1
    router.save(args.out)
    meta = router.metadata
    if args.json:
        print(json.dumps({"model_path": str(args.out), **meta}, indent=2))
    else:
        ok = round(meta["positive_share"] * meta["training_size"])
        kind = "a verifier of the cheap answer" if router.needs_answers else "a prompt router"
        print(
            f"Trained {kind} on {meta['training_size']} examples ({ok} ok), features {', '.join(meta['features'])}"
            f"{', ' + str(meta['groups']) + ' task tags' if meta['groups'] else ''}; wrote {args.out}."
        )
        print(f"Use it in a cascade: checks: [{{kind: learned, model_path: {args.out}, threshold: 0.5}}]")
    return 0
