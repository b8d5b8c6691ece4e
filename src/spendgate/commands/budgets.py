"""`spendgate budgets`: see where every budget stands, and grant temporary bursts.

A burst adds to a budget's limit until a time, for one scope (e.g. the search
team before a launch), without editing the config or restarting the gateway.
Talks to a running gateway's admin API.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from decimal import Decimal, InvalidOperation
from typing import Any

from spendgate.admin.client import AdminClient, AdminError, add_connection_arguments
from spendgate.keys.times import iso, parse_when

SCOPE_FLAGS = ("team", "feature", "user", "tenant", "key", "model")
# columns shown first when budget_status rows carry them; the rest follow
_PREFERRED = ("name", "budget", "instance", "scope", "window", "limit", "burst", "effective_limit", "spent", "reserved", "remaining", "percent", "resets_at")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)

    p = sub.add_parser("list", help="every budget: limit, bursts, spent, reserved")
    add_connection_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON (for scripts)")

    p = sub.add_parser("burst", help="add to a budget's limit until a time, e.g. +50 --team search --until 2026-12-01")
    add_connection_arguments(p)
    p.add_argument("amount", help="USD to add, e.g. +50")
    p.add_argument("--until", required=True, help="when the grant ends: 2026-12-01 (00:00 UTC), an ISO time, or 7d from now")
    p.add_argument("--budget", help="the budget's name (default: every budget covering the scope)")
    p.add_argument("--reason", default="", help="why, for the audit trail")
    for flag in SCOPE_FLAGS:
        p.add_argument(f"--{flag}", help=f"scope: the {flag} the grant is for")
    p.add_argument("--json", action="store_true", help="print JSON (for scripts)")


def run(args: argparse.Namespace) -> int:
    try:
        client = AdminClient.from_args(args)
        return _list(client, args) if args.action == "list" else _burst(client, args)
    except AdminError as exc:
        print(f"spendgate: {exc}", file=sys.stderr)
        return 1


def burst_body(args: argparse.Namespace, now: float) -> dict[str, Any]:
    try:
        amount = Decimal(args.amount.strip().lstrip("+$"))
    except InvalidOperation:
        amount = Decimal(0)
    if not amount.is_finite() or amount <= 0:
        raise AdminError(f"amount {args.amount!r}: give a positive number of USD, e.g. +50")
    try:
        until = iso(parse_when(args.until, now))
    except ValueError as exc:
        raise AdminError(f"--until: {exc}") from None
    scope = {flag: getattr(args, flag) for flag in SCOPE_FLAGS if getattr(args, flag)}
    if not scope and not args.budget:
        raise AdminError("say what the burst is for: --budget NAME and/or a scope such as --team search")
    return {"budget": args.budget, "scope": scope, "amount": str(amount), "until": until, "reason": args.reason}


def _burst(client: AdminClient, args: argparse.Namespace) -> int:
    body = burst_body(args, time.time())
    result = client.request("POST", "budgets/burst", body)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    target = args.budget or "every budget covering"
    scope = ",".join(f"{k}={v}" for k, v in body["scope"].items())
    print(f"Granted +${body['amount']} to {target}{' ' + scope if scope else ''} until {body['until']}.")
    for name, value in (result or {}).items():
        if not isinstance(value, (dict, list)):
            print(f"  {name}: {value}")
    return 0


def _list(client: AdminClient, args: argparse.Namespace) -> int:
    rows = client.request("GET", "budgets")["data"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("No budgets. Add `budgets:` to the config file, or a budget to a key (spendgate keys update ID --budget 200/month).")
        return 0
    names: list[str] = [c for c in _PREFERRED if any(c in r for r in rows)]
    names += sorted({k for r in rows for k in r} - set(names))
    columns = [n for n in names if all(not isinstance(r.get(n), (dict, list)) for r in rows) or n in ("scope",)]
    table = [[_cell(r.get(c)) for c in columns] for r in rows]
    header = [c.upper() for c in columns]
    widths = [max(len(x) for x in col) for col in zip(header, *table)]
    for line in [header, *table]:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip())
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "global"
    return str(value)
