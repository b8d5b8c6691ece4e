"""`spendgate report`: spend per group from the ledger.

`spendgate report statement --month 2026-11 --by team|cost_center` writes the
month's showback / chargeback statements instead (spendgate.analytics.statements).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from spendgate.analytics import statement_command
from spendgate.analytics.report import DIMENSIONS, build_report, parse_by, render_csv, render_json, render_table
from spendgate.analytics.since import parse_time
from spendgate.config import load_config
from spendgate.ledger.open import open_ledger, sqlite_path

RENDERERS = {"table": render_table, "csv": render_csv, "json": render_json}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mode", nargs="?", choices=["statement"], help="statement: monthly showback statements per owner")
    parser.add_argument("--config", metavar="PATH", help="config file (its ledger.url is read)")
    parser.add_argument("--ledger", metavar="URL", help="ledger URL or path; overrides the config's ledger.url")
    parser.add_argument(
        "--since",
        metavar="WHEN",
        help="start of the window: 30d, 24h, 90m, 2w, today, 2024-05-01, 2024-05-01T12:00Z "
        "(default: the beginning of the ledger)",
    )
    parser.add_argument("--until", metavar="WHEN", help="end of the window, exclusive (default: now)")
    parser.add_argument(
        "--by",
        default=None,
        metavar="DIMS",
        help=f"comma-separated group-by dimensions (default team,model): {', '.join(DIMENSIONS)}; "
        "for statements: team (default) or cost_center",
    )
    parser.add_argument(
        "--format", choices=sorted({*RENDERERS, *statement_command.FORMATS}), default=None,
        help="output format: table (default), csv, json; for statements md (default), html, csv",
    )  # fmt: skip
    statement_command.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.mode == "statement":
        return statement_command.run(args)
    if args.format not in (None, *RENDERERS) or args.month or args.out:
        print("spendgate report: --month, --out and --format md|html are for `spendgate report statement`", file=sys.stderr)
        return 2
    args.format = args.format or "table"
    args.by = args.by or "team,model"
    try:
        url = args.ledger
        if url is None:
            config, _ = load_config(args.config)
            url = config.ledger.url
        path = sqlite_path(url)
        if path != ":memory:" and not Path(path).expanduser().exists():
            print(f"spendgate report: no ledger at {path} (from {url!r})", file=sys.stderr)
            return 1
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
        by = parse_by(args.by)
    except (ValueError, OSError, yaml.YAMLError) as exc:
        print(f"spendgate report: {exc}", file=sys.stderr)
        return 2
    if since is not None and until is not None and since >= until:
        print("spendgate report: --since must be before --until", file=sys.stderr)
        return 2
    store = open_ledger(url)
    try:
        report = build_report(store, since=since, until=until, by=by)
    finally:
        store.close()
    sys.stdout.write(RENDERERS[args.format](report))
    return 0
