"""`spendgate report statement`: the month's showback / chargeback statements.

Reads `showback:` (cost centers, shared costs, allocation rules) from
--config; with only --ledger, statements carry direct spend and the untagged
spend split proportionally, and no fixed shared costs.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pydantic
import yaml

from spendgate.analytics.showback_schema import ShowbackConfig
from spendgate.analytics.statement_render import RENDERERS
from spendgate.analytics.statements import BY_CHOICES, build_statement, month_window

FORMATS = tuple(RENDERERS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--month", metavar="YYYY-MM", help="statement month, UTC (default: the current month)")
    parser.add_argument("--out", metavar="FILE", help="write the statement to FILE instead of stdout")


def run(args: argparse.Namespace) -> int:
    from spendgate.config import load_config
    from spendgate.ledger.open import open_ledger, sqlite_path

    fmt = args.format or "md"
    by = args.by or "team"
    month = args.month or datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m")
    try:
        if fmt not in RENDERERS:
            raise ValueError(f"--format {fmt!r}: statements are md, html or csv")
        if by not in BY_CHOICES:
            raise ValueError(f"--by {by!r}: statements are by team or cost_center")
        if args.since or args.until:
            raise ValueError("statements cover one --month; --since/--until are for the spend report")
        month_window(month)
        showback = ShowbackConfig()
        url = args.ledger
        if args.config or url is None:
            config, _ = load_config(args.config)
            showback = config.showback
            url = url or config.ledger.url
        path = sqlite_path(url)
        if path != ":memory:" and not Path(path).expanduser().exists():
            raise ValueError(f"no ledger at {path} (from {url!r})")
    except (ValueError, OSError, yaml.YAMLError, pydantic.ValidationError) as exc:
        print(f"spendgate report statement: {exc}", file=sys.stderr)
        return 2
    store = open_ledger(url)
    try:
        statement = build_statement(store, month, by, showback)
    except ValueError as exc:
        print(f"spendgate report statement: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    text = RENDERERS[fmt](statement)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"spendgate report statement: wrote {args.out} ({len(statement.owners)} owners, grand total "
              f"{format(statement.grand_total, 'f')})", file=sys.stderr)  # fmt: skip
    else:
        sys.stdout.write(text)
    return 0
