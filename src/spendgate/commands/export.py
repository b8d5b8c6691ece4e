"""`spendgate export focus`: the ledger as a FOCUS 1.2 dataset (CSV or Parquet)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from spendgate.analytics.focus_schema import FocusConfig
from spendgate.analytics.since import parse_time
from spendgate.ledger.open import open_ledger, sqlite_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", required=True)
    p = sub.add_parser("focus", help="FOCUS 1.2 cost and usage rows (CSV or Parquet)")
    p.add_argument("--config", metavar="PATH", help="config file (its ledger.url and focus: section are read)")
    p.add_argument("--ledger", metavar="URL", help="ledger URL or path; overrides the config's ledger.url")
    p.add_argument("--month", metavar="YYYY-MM", help="one UTC calendar month, e.g. 2026-11")
    p.add_argument("--since", metavar="WHEN", help="start of the window (instead of --month): 30d, 2026-11-01, ...")
    p.add_argument("--until", metavar="WHEN", help="end of the window, exclusive (default: now)")
    p.add_argument("--grain", choices=("hour", "day", "event"), default="day",
                   help="one row per hour or day and group (default day), or one per ledger event")  # fmt: skip
    p.add_argument("--format", choices=("csv", "parquet"), help="default: from --out's suffix, else csv")
    p.add_argument("--out", metavar="PATH", help="file to write (default: CSV on stdout)")
    p.add_argument("--validate", action="store_true",
                   help="read the written file back and check it against the FOCUS 1.2 column rules")  # fmt: skip


def _fail(message: str, code: int = 2) -> int:
    print(f"spendgate export focus: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    from spendgate.analytics import focus
    from spendgate.analytics.focus_rules import read_any, validate

    try:
        focus_cfg = FocusConfig()
        url = args.ledger
        if args.config or url is None:
            from spendgate.config import load_config

            config, _ = load_config(args.config)
            focus_cfg = config.focus
            url = url or config.ledger.url
        path = sqlite_path(url)
        if path != ":memory:" and not Path(path).expanduser().exists():
            return _fail(f"no ledger at {path} (from {url!r})", 1)
        if args.month and (args.since or args.until):
            return _fail("give --month or --since/--until, not both")
        if args.month:
            since, until = focus.parse_month(args.month)
        else:
            since = parse_time(args.since) if args.since else None
            until = parse_time(args.until) if args.until else None
    except (ValueError, OSError, yaml.YAMLError, ValidationError) as exc:
        return _fail(str(exc))
    if since is not None and until is not None and since >= until:
        return _fail("--since must be before --until")
    fmt = args.format or ("parquet" if args.out and args.out.endswith(".parquet") else "csv")
    if fmt == "parquet" and not args.out:
        return _fail("--format parquet needs --out PATH")
    if args.validate and not args.out:
        return _fail("--validate needs --out PATH (it checks the written file)")

    store = open_ledger(url)
    try:
        rows = focus.focus_rows(store, since=since, until=until, grain=args.grain, config=focus_cfg)
    finally:
        store.close()
    try:
        if fmt == "parquet":
            try:
                focus.write_parquet(rows, args.grain, args.out)
            except ImportError:
                return _fail("Parquet output needs pyarrow: pip install pyarrow (or use --format csv)")
        elif args.out:
            Path(args.out).write_text(focus.to_csv(rows, args.grain), encoding="utf-8")
        else:
            sys.stdout.write(focus.to_csv(rows, args.grain))
    except OSError as exc:
        return _fail(f"cannot write {args.out}: {exc}", 1)
    if args.out:
        print(f"wrote {len(rows)} FOCUS rows, BilledCost total {focus.total_cost(rows):f}, to {args.out}",
              file=sys.stderr)  # fmt: skip
    if args.validate:
        problems = validate(*read_any(args.out))
        for p in problems[:50]:
            print(f"FOCUS: {p}", file=sys.stderr)
        if problems:
            return _fail(f"{len(problems)} FOCUS rule(s) broken", 1)
        print("FOCUS 1.2 column rules: all passed", file=sys.stderr)
    return 0
