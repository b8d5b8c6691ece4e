"""`spendgate cache`: what the response cache holds, and flushing it.

Flush after a prompt, policy or model change that makes stored answers
wrong: by scope (e.g. `tenant=acme`), feature, prompt template/version,
model, policy, or everything. Talks to a running gateway's admin API.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from spendgate.admin.client import AdminClient, AdminError, add_connection_arguments

# flag → admin API field
FILTERS = {"scope": "scope", "feature": "feature", "template": "prompt_template", "version": "prompt_version", "model": "model", "policy": "policy"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("status", help="entries per scope, storage, policies")
    add_connection_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON (for scripts)")

    p = sub.add_parser("flush", help="drop stored answers, e.g. --feature faq --version v2, or --all")
    add_connection_arguments(p)
    p.add_argument("--scope", help="a data boundary as shown by `cache status`, e.g. tenant=acme or pool:faq")
    p.add_argument("--feature", help="answers given to this feature")
    p.add_argument("--template", help="answers given to this prompt template")
    p.add_argument("--version", help="answers given to this prompt version")
    p.add_argument("--model", help="answers to calls for this model (as the client named it)")
    p.add_argument("--policy", help="answers stored under this cache policy")
    p.add_argument("--all", action="store_true", help="everything")
    p.add_argument("--json", action="store_true", help="print JSON (for scripts)")


def flush_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {field: getattr(args, flag) for flag, field in FILTERS.items() if getattr(args, flag)}
    if args.all:
        if body:
            raise AdminError("--all flushes everything; do not combine it with filters")
        body["all"] = True
    if not body:
        raise AdminError("say what to flush: --scope, --feature, --template, --version, --model, --policy, or --all")
    return body


def run(args: argparse.Namespace) -> int:
    try:
        client = AdminClient.from_args(args)
        if args.action == "status":
            result = client.request("GET", "cache")
            if args.json:
                print(json.dumps(result, indent=2))
            elif not result.get("enabled"):
                print("The response cache is off: add `cache: {policies: [...]}` to the config (docs/caching.md).")
            else:
                print(f"{result['entries']} stored answers ({result['semantic_entries']} semantic) in {result['storage']}; "
                      f"policies: {', '.join(result['policies'])}")  # fmt: skip
                for scope, n in sorted(result["by_scope"].items()):
                    print(f"  {scope}: {n}")
            return 0
        result = client.request("POST", "cache/flush", flush_body(args))
        print(json.dumps(result, indent=2) if args.json else f"Flushed {result['flushed']} stored answers.")
        return 0
    except AdminError as exc:
        print(f"spendgate: {exc}", file=sys.stderr)
        return 1
