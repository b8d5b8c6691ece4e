"""`spendgate keys`: create, list, show, update, rotate and revoke virtual keys.

Talks to a running gateway's admin API (`--url`, `--admin-key`), so the
gateway's in-memory key index changes at once and every check it makes on
input applies here too.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any

from spendgate.admin.client import AdminClient, AdminError, add_connection_arguments
from spendgate.keys.times import iso, parse_duration, parse_when

_BUDGET = re.compile(r"^\s*\$?(\d+(?:\.\d+)?)\s*/\s*(hour|day|week|month|\d+[mhdw])\s*$")
_CLEAR = ("none", "never", "")
CLEARED = object()  # `--rpm none`: remove the setting


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)

    p = sub.add_parser("create", help="create a key and print its secret (once)")
    _connection(p)
    p.add_argument("--name", required=True, help="what the key is for, e.g. search-faq-bot")
    _settings(p, update=False)

    p = sub.add_parser("list", help="list keys")
    _connection(p)
    p.add_argument("--team", help="only keys owned by this team")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--revoked", action="store_true", help="only revoked keys")
    state.add_argument("--active", action="store_true", help="only keys not revoked")

    p = sub.add_parser("show", help="show one key")
    _connection(p)
    p.add_argument("id")

    p = sub.add_parser("update", help="change a key's settings (never its secret: see rotate)")
    _connection(p)
    p.add_argument("id")
    p.add_argument("--name")
    _settings(p, update=True)

    p = sub.add_parser("rotate", help="issue a new secret; the old one works for --grace, then stops")
    _connection(p)
    p.add_argument("id")
    p.add_argument("--grace", default="0", help="how long the old secret keeps working, e.g. 1h (default: 0, stops now)")

    p = sub.add_parser("revoke", help="stop a key at once (final)")
    _connection(p)
    p.add_argument("id")


def _connection(p: argparse.ArgumentParser) -> None:
    add_connection_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON (for scripts)")


def _settings(p: argparse.ArgumentParser, update: bool) -> None:
    clear = " ('none' clears)" if update else ""
    p.add_argument("--team", help=f"owning team; its calls are tagged team=…{clear}")
    p.add_argument("--user", help=f"owning user{clear}")
    p.add_argument("--service", help=f"owning service{clear}")
    p.add_argument("--feature", help="default feature tag for its calls")
    p.add_argument("--tag", action="append", default=[], metavar="NAME=VALUE", help="a default tag (repeatable)")
    if update:
        p.add_argument("--untag", action="append", default=[], metavar="NAME", help="remove a default tag (repeatable)")
    p.add_argument("--budget", help=f"spend limit: 200/month (calendar: hour|day|week|month) or 50/24h (rolling){clear}")
    p.add_argument("--timezone", help="the budget's calendar timezone, e.g. Europe/Berlin (default UTC)")
    p.add_argument("--models", help=f"allowed models, comma-separated; 'prefix*' globs allowed{' (empty: any)' if update else ''}")
    p.add_argument("--rpm", type=_int_or_none, help=f"requests per minute{clear}")
    p.add_argument("--tpm", type=_int_or_none, help=f"tokens per minute{clear}")
    p.add_argument("--concurrency", type=_int_or_none, help=f"requests in flight{clear}")
    p.add_argument("--max-tokens", type=_int_or_none, help=f"max_tokens cap per call{clear}")
    p.add_argument("--expires", help=f"when it stops working: 2026-12-31 (00:00 UTC), an ISO time, or 90d from now{' (never: clear)' if update else ''}")


def _int_or_none(text: str) -> int | object:
    if text.strip().lower() in _CLEAR:
        return CLEARED
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def parse_budget(text: str, timezone: str | None = None) -> dict[str, Any]:
    """`200/month` → {limit: "200", period: month}; `50/24h` → {limit: "50", rolling: 24h}."""
    m = _BUDGET.match(text)
    if not m:
        raise AdminError(f"budget {text!r}: write AMOUNT/PERIOD, e.g. 200/month, 20/day or 50/24h (rolling)")
    limit, per = m.groups()
    out: dict[str, Any] = {"limit": limit}
    if per[0].isdigit():
        out["rolling"] = per
        if timezone:
            raise AdminError("--timezone applies to calendar budgets (hour|day|week|month), not rolling ones")
    else:
        out["period"] = per
        if timezone:
            out["timezone"] = timezone
    return out


def _tag_pairs(items: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise AdminError(f"--tag {item!r}: write NAME=VALUE")
        tags[name.strip()] = value.strip()
    return tags


def settings_body(args: argparse.Namespace, current: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON fields the flags set. For updates, `current` is the key as it is now."""
    update = current is not None
    body: dict[str, Any] = {}
    if args.name is not None:
        body["name"] = args.name
    for name in ("team", "user", "service"):
        value = getattr(args, name)
        if value is not None:
            body[name] = None if update and value.strip().lower() in _CLEAR else value
    tags = _tag_pairs(args.tag)
    if args.feature is not None:
        tags["feature"] = args.feature
    untag = getattr(args, "untag", [])
    if tags or untag or not update:
        merged = dict(current["tags"]) if update else {}
        merged.update(tags)
        for name in untag:
            merged.pop(name, None)
        if merged or update:
            body["tags"] = merged
    if args.budget is not None:
        body["budget"] = None if update and args.budget.strip().lower() in _CLEAR else parse_budget(args.budget, args.timezone)
    elif args.timezone is not None:
        if not update or not current or not current.get("budget"):
            raise AdminError("--timezone needs a budget: add --budget, e.g. --budget 200/month")
        body["budget"] = {**current["budget"], "timezone": args.timezone}
    if args.models is not None:
        body["allowed_models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    for flag, field in (("rpm", "rpm"), ("tpm", "tpm"), ("concurrency", "concurrency"), ("max_tokens", "max_tokens")):
        value = getattr(args, flag)
        if value is CLEARED:
            if update:
                body[field] = None
        elif value is not None:
            body[field] = value
    if args.expires is not None:
        if update and args.expires.strip().lower() in _CLEAR:
            body["expires_at"] = None
        else:
            try:
                body["expires_at"] = iso(parse_when(args.expires, time.time()))
            except ValueError as exc:
                raise AdminError(f"--expires: {exc}") from None
    return body


def run(args: argparse.Namespace) -> int:
    try:
        client = AdminClient.from_args(args)
        return _ACTIONS[args.action](client, args)
    except AdminError as exc:
        print(f"spendgate: {exc}", file=sys.stderr)
        return 1


def _create(client: AdminClient, args: argparse.Namespace) -> int:
    record = client.request("POST", "keys", settings_body(args))
    if args.json:
        _print_json(record)
        return 0
    owner = ", ".join(f"{k} {record[k]}" for k in ("team", "user", "service") if record.get(k))
    print(f"Created key {record['id']} ({record['name']}{', ' + owner if owner else ''}).")
    print()
    print(f"    {record['secret']}")
    print()
    print("Store this secret now: it is shown only this once. spendgate keeps only its hash;")
    print(f"if it is lost, rotate the key: spendgate keys rotate {record['id']}")
    return 0


def _list(client: AdminClient, args: argparse.Namespace) -> int:
    query: dict[str, str] = {}
    if args.team:
        query["team"] = args.team
    if args.revoked or args.active:
        query["revoked"] = "true" if args.revoked else "false"
    records = client.request("GET", "keys", query=query)["data"]
    if args.json:
        _print_json(records)
        return 0
    if not records:
        print("No keys. Create one: spendgate keys create --name NAME --team TEAM")
        return 0
    rows = [
        [r["id"], r["name"], r["prefix"] + "…", r["status"], r.get("team") or "-", _budget_text(r.get("budget")),
         ",".join(r["allowed_models"]) or "any", _limits_text(r), (r.get("expires_at") or "-")[:10]]
        for r in records
    ]
    _table(["ID", "NAME", "SECRET", "STATUS", "TEAM", "BUDGET", "MODELS", "LIMITS", "EXPIRES"], rows)
    return 0


def _show(client: AdminClient, args: argparse.Namespace) -> int:
    _print_record(client.request("GET", f"keys/{args.id}"), args.json)
    return 0


def _update(client: AdminClient, args: argparse.Namespace) -> int:
    current = client.request("GET", f"keys/{args.id}")
    body = settings_body(args, current)
    if not body:
        raise AdminError("nothing to change: give at least one setting, e.g. --budget 300/month")
    _print_record(client.request("PATCH", f"keys/{args.id}", body), args.json)
    return 0


def _rotate(client: AdminClient, args: argparse.Namespace) -> int:
    try:
        grace = parse_duration(args.grace)
    except ValueError as exc:
        raise AdminError(f"--grace: {exc}") from None
    record = client.request("POST", f"keys/{args.id}/rotate", {"grace_s": grace})
    if args.json:
        _print_json(record)
        return 0
    print(f"Rotated key {record['id']} ({record['name']}). New secret:")
    print()
    print(f"    {record['secret']}")
    print()
    print("Store this secret now: it is shown only this once.")
    until = record.get("previous_secret_valid_until")
    print(f"The old secret works until {until}." if until else "The old secret has stopped working.")
    return 0


def _revoke(client: AdminClient, args: argparse.Namespace) -> int:
    record = client.request("POST", f"keys/{args.id}/revoke")
    if args.json:
        _print_json(record)
    else:
        print(f"Revoked key {record['id']} ({record['name']}) at {record['revoked_at']}: its calls now get 401.")
    return 0


_ACTIONS = {"create": _create, "list": _list, "show": _show, "update": _update, "rotate": _rotate, "revoke": _revoke}


def _print_record(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(record)
        return
    shown = dict(record)
    shown.pop("object", None)
    shown["prefix"] = record["prefix"] + "…"
    shown["budget"] = _budget_text(record.get("budget"))
    shown["allowed_models"] = ", ".join(record["allowed_models"]) or "any"
    shown["tags"] = ", ".join(f"{k}={v}" for k, v in sorted(record["tags"].items())) or "-"
    width = max(len(k) for k in shown)
    for name, value in shown.items():
        print(f"{name + ':':<{width + 1}} {'-' if value is None else value}")


def _budget_text(budget: dict[str, Any] | None) -> str:
    if not budget:
        return "-"
    per = budget.get("period") or budget.get("rolling")
    tz = budget.get("timezone")
    return f"${budget['limit']}/{per}" + (f" ({tz})" if tz and tz != "UTC" and budget.get("period") else "")


def _limits_text(r: dict[str, Any]) -> str:
    parts = [f"{name} {r[name]}" for name in ("rpm", "tpm", "concurrency", "max_tokens") if r.get(name) is not None]
    return ", ".join(parts) or "-"


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))
