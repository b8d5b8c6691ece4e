"""The `spendgate` command: serve, simulate, report, demo."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module with `add_arguments(parser)` and `run(args) -> int`
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("spendgate.commands.serve", "run the gateway"),
    "simulate": ("spendgate.simulator.command", "run the provider simulator"),
    "report": ("spendgate.analytics.command", "spend per group from the ledger"),
    "demo": ("spendgate.demo.command", "simulator + gateway + 30 days of history + live traffic"),
    "keys": ("spendgate.commands.keys", "create, list, rotate and revoke virtual keys on a running gateway"),
    "budgets": ("spendgate.commands.budgets", "budget status and burst grants on a running gateway"),
    "cache": ("spendgate.commands.cache", "response-cache status and flushes on a running gateway"),
    "eval-router": ("spendgate.commands.eval_router", "score routing and cascade strategies on RouteLLM's eval data"),
    "router": ("spendgate.commands.router", "train the learned routing check from your own outcomes"),
    "policy": ("spendgate.commands.policy", "explain what a call would be routed to, and why"),
    "routing": ("spendgate.commands.policy", "deployment health (cooling, in flight, latency) on a running gateway"),
    "export": ("spendgate.commands.export", "the ledger as a FOCUS 1.2 dataset (CSV or Parquet) for FinOps tools"),
    "reconcile": ("spendgate.commands.reconcile", "compare a provider's usage/cost export with the ledger per day and model"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spendgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(_module=module_name)
        if name == chosen:  # import only the command that runs: start-up stays fast
            importlib.import_module(module_name).add_arguments(p)
    args = parser.parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
