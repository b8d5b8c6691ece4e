"""`spendgate reconcile`: a provider's usage/cost export vs the ledger, per day and model."""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

import yaml
from pydantic import ValidationError

from spendgate.analytics.since import parse_time
from spendgate.ledger.open import open_ledger, sqlite_path
from spendgate.reconcile.importers import FORMATS, PROVIDERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--import", dest="import_file", required=True, metavar="FILE",
                        help="the provider's export (JSON as the API returns it, or CSV)")  # fmt: skip
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="what FILE is")
    parser.add_argument("--config", metavar="PATH", help="config file (its ledger.url is read)")
    parser.add_argument("--ledger", metavar="URL", help="ledger URL or path; overrides the config's ledger.url")
    parser.add_argument("--since", metavar="WHEN", help="start (default: the first day in the import)")
    parser.add_argument("--until", metavar="WHEN", help="end, exclusive (default: the day after the import's last)")
    parser.add_argument("--provider", metavar="NAMES",
                        help="comma-separated ledger providers to compare with (default: the format's, "
                        "e.g. openai; every provider for csv)")  # fmt: skip
    parser.add_argument("--tolerance-pct", default="1", metavar="PCT", help="gap tolerated, %% of the larger side (default 1)")
    parser.add_argument("--tolerance-abs", default="0.01", metavar="USD", help="gap tolerated in money (default 0.01)")
    parser.add_argument("--output", choices=("table", "csv", "json"), default="table", help="output format")
    parser.add_argument("--fail-on-gap", action="store_true", help="exit 1 when any row is flagged (for cron/CI)")


def _fail(message: str, code: int = 2) -> int:
    print(f"spendgate reconcile: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    from spendgate.reconcile.compare import compare
    from spendgate.reconcile.figures import ReconcileError
    from spendgate.reconcile.importers import import_file
    from spendgate.reconcile.render import RENDERERS

    try:
        url = args.ledger
        if url is None:
            from spendgate.config import load_config

            config, _ = load_config(args.config)
            url = config.ledger.url
        path = sqlite_path(url)
        if path != ":memory:" and not Path(path).expanduser().exists():
            return _fail(f"no ledger at {path} (from {url!r})", 1)
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
        tol_pct, tol_abs = Decimal(args.tolerance_pct), Decimal(args.tolerance_abs)
        if not (tol_pct.is_finite() and tol_abs.is_finite()) or tol_pct < 0 or tol_abs < 0:
            raise ValueError("tolerances must be non-negative numbers")
    except InvalidOperation:
        return _fail("--tolerance-pct/--tolerance-abs must be numbers")
    except (ValueError, OSError, yaml.YAMLError, ValidationError) as exc:
        return _fail(str(exc))
    if since is not None and until is not None and since >= until:
        return _fail("--since must be before --until")
    providers = [p.strip() for p in args.provider.split(",") if p.strip()] if args.provider else PROVIDERS[args.format]
    try:
        figures = import_file(args.format, args.import_file)
        store = open_ledger(url)
        try:
            result = compare(store, figures, since=since, until=until, providers=providers,
                             tolerance_pct=tol_pct, tolerance_abs=tol_abs)  # fmt: skip
        finally:
            store.close()
    except ReconcileError as exc:
        return _fail(f"{args.format}: {exc}")
    sys.stdout.write(RENDERERS[args.output](result))
    return 1 if args.fail_on_gap and result.flagged else 0
