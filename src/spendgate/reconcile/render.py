"""Reconciliation output: a table for people, CSV and JSON for tools (money as strings)."""

from __future__ import annotations

import csv
import io

import orjson

from spendgate.analytics.since import format_time
from spendgate.analytics.spreadsheet import safe_cell
from spendgate.reconcile.compare import Reconciliation

_STATUS = {"ok": "", "bypass": "BYPASS? provider > ledger", "ledger-only": "LEDGER-ONLY: ledger > provider"}


def render_json(r: Reconciliation) -> str:
    doc = {
        "since": format_time(r.since),
        "until": format_time(r.until),
        "measure": r.measure,
        "per_model": r.per_model,
        "totals": r.totals(),
        "rows": [g.to_dict() for g in r.rows],
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"


_TEXT = ("model", "status")


def render_csv(r: Reconciliation) -> str:
    buf = io.StringIO()
    rows = [g.to_dict() for g in r.rows]
    cols = list(rows[0]) if rows else ["day", "model", "status"]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for row in rows:
        # model names come from callers and exports: no formulas (money and gaps stay numbers)
        w.writerow({k: "" if v is None else safe_cell(v) if k in _TEXT else v for k, v in row.items()})
    return buf.getvalue()


def render_table(r: Reconciliation) -> str:
    money = r.measure == "cost"
    head = ["day", "model", "provider $" if money else "provider tokens", "ledger $" if money else "ledger tokens",
            "gap", "gap %", ""]  # fmt: skip
    body = []
    for g in r.rows:
        p = (format(g.provider.cost, "f") if g.provider.cost is not None else "-") if money else str(g.provider.tokens)
        led = format(g.ledger.cost or 0, "f") if money else str(g.ledger.tokens)
        pct = "-" if g.gap_pct is None else f"{g.gap_pct}%"
        body.append([g.day, g.model or "(all models)", p, led, format(g.gap, "f"), pct, _STATUS[g.status]])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
    t = r.totals()
    summary = (
        f"{format_time(r.since)} .. {format_time(r.until)}: "
        + (f"provider ${t['provider_cost']} vs ledger ${t['ledger_cost']} (gap ${t['gap']}); " if money else
           f"provider {t['provider_tokens']} vs ledger {t['ledger_tokens']} tokens; ")  # fmt: skip
        + f"{t['flagged']} row(s) flagged: {t['bypass']} bypass, {t['ledger_only']} ledger-only"
    )
    return "\n".join([*lines, "", summary]) + "\n"


RENDERERS = {"table": render_table, "csv": render_csv, "json": render_json}
