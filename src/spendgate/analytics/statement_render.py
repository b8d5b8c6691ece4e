"""A statement as Markdown, self-contained HTML, or CSV.

Money shows every digit (format_money never rounds); CSV carries plain exact
decimals, and its `direct`, `shared` and `unallocated` amounts add up to the
`grand_total` row exactly. HTML escapes every name (teams and features are
caller-chosen tags) and needs nothing from the network.
"""

from __future__ import annotations

import csv
import html
import io
from decimal import Decimal

from spendgate.analytics.report import format_money
from spendgate.analytics.since import format_time
from spendgate.analytics.spreadsheet import safe_text
from spendgate.analytics.statements import Statement

NONE = "(none)"
CSV_HEADER = ["month", "by", "owner", "line", "model", "feature", "shared_cost", "rule",
              "requests", "input_tokens", "output_tokens", "saved", "amount"]  # fmt: skip


def _plain(d: Decimal) -> str:
    return format(d, "f")


_cell = safe_text  # a name safe in a spreadsheet (CSV injection)


def _title(s: Statement) -> str:
    return f"Showback statement {s.month}, by {s.by.replace('_', ' ')}"


def _period(s: Statement) -> str:
    return f"{format_time(s.since)} to {format_time(s.until)} (UTC, end exclusive)"


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _rows(s: Statement) -> list[tuple[str, list[list[str]]]]:
    """Per owner: table rows [item, feature, requests, input, output, saved, amount]."""
    out = []
    for o in s.owners:
        rows = [[d.model or NONE, d.feature or NONE, f"{d.usage.requests:,}", f"{d.usage.input_tokens:,}",
                 f"{d.usage.output_tokens:,}", format_money(d.usage.saved), format_money(d.usage.cost)] for d in o.direct]  # fmt: skip
        u = o.usage
        rows.append(["Direct spend", "", f"{u.requests:,}", f"{u.input_tokens:,}", f"{u.output_tokens:,}",
                     format_money(u.saved), format_money(u.cost)])  # fmt: skip
        for line in o.shared:
            rows.append([f"Shared: {line.name} ({line.rule})", "", "", "", "", "", format_money(line.amount)])
        rows.append(["Total", "", "", "", "", "", format_money(o.total)])
        out.append((o.owner, rows))
    return out


def _summary(s: Statement) -> list[str]:
    lines = [
        f"Ledger spend for the month: {format_money(s.ledger.cost)} ({s.ledger.requests:,} requests), "
        f"of which untagged {format_money(s.untagged.cost)} ({s.untagged.requests:,} requests), allocated as a shared cost.",
        f"Fixed shared costs: {format_money(s.fixed_shared)}.",
    ]
    for p in s.pools:
        lines.append(f"{p.name}: {format_money(p.amount)} split {p.rule}.")
    if s.unallocated:
        lines.append(f"Unallocated (nobody to charge): {format_money(s.unallocated)}.")
    lines.append(f"Grand total: {format_money(s.grand_total)} = ledger spend + fixed shared costs. "
                 f"Allocations are exact to {_plain(s.quantum)} (largest remainder).")  # fmt: skip
    return lines


HEAD = ["Model", "Feature", "Requests", "Input tokens", "Output tokens", "Saved", "Amount"]


def render_markdown(s: Statement) -> str:
    out = [f"# {_title(s)}", "", f"Period: {_period(s)}", ""]
    for owner, rows in _rows(s):
        out += [f"## {_md_cell(owner)}", "", "| " + " | ".join(HEAD) + " |", "|" + "---|" * 2 + "---:|" * 5]
        for r in rows:
            bold = r[0] in ("Direct spend", "Total")
            cells = [_md_cell(c) for c in r]
            if bold:
                cells = [f"**{c}**" if c else c for c in cells]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out += ["## Summary", "", "| Owner | Direct | Shared | Total |", "|---|---:|---:|---:|"]
    for o in s.owners:
        out.append(f"| {_md_cell(o.owner)} | {format_money(o.usage.cost)} | {format_money(o.shared_total)} | {format_money(o.total)} |")
    out += [f"| **Grand total** | {format_money(s.direct_total)} | | **{format_money(s.grand_total)}** |", ""]
    out += [f"- {_md_cell(line)}" for line in _summary(s)]
    return "\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.3em .6em}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.total td{font-weight:bold;background:#f4f4f4}"""


def render_html(s: Statement) -> str:
    e = html.escape
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(_title(s))}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{e(_title(s))}</h1>", f"<p>Period: {e(_period(s))}</p>"]  # fmt: skip
    for owner, rows in _rows(s):
        out.append(f"<h2>{e(owner)}</h2><table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in HEAD) + "</tr></thead><tbody>")
        for r in rows:
            cls = ' class="total"' if r[0] in ("Direct spend", "Total") else ""
            cells = "".join(f'<td{" class=n" if i >= 2 else ""}>{e(c)}</td>' for i, c in enumerate(r))
            out.append(f"<tr{cls}>{cells}</tr>")
        out.append("</tbody></table>")
    out.append("<h2>Summary</h2><table><thead><tr><th>Owner</th><th>Direct</th><th>Shared</th><th>Total</th></tr></thead><tbody>")
    for o in s.owners:
        out.append(f"<tr><td>{e(o.owner)}</td><td class=n>{e(format_money(o.usage.cost))}</td>"
                   f"<td class=n>{e(format_money(o.shared_total))}</td><td class=n>{e(format_money(o.total))}</td></tr>")  # fmt: skip
    out.append(f'<tr class="total"><td>Grand total</td><td class=n>{e(format_money(s.direct_total))}</td><td></td>'
               f'<td class=n id="grand-total">{e(format_money(s.grand_total))}</td></tr></tbody></table>')  # fmt: skip
    out.append("<ul>" + "".join(f"<li>{e(line)}</li>" for line in _summary(s)) + "</ul></body></html>")
    return "\n".join(out) + "\n"


def render_csv(s: Statement) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER)
    base = [s.month, s.by]
    for o in s.owners:
        for d in o.direct:
            u = d.usage
            w.writerow([*base, _cell(o.owner), "direct", _cell(d.model or ""), _cell(d.feature or ""), "", "", u.requests, u.input_tokens,
                        u.output_tokens, _plain(u.saved), _plain(u.cost)])  # fmt: skip
        for line in o.shared:
            w.writerow([*base, _cell(o.owner), "shared", "", "", _cell(line.name), line.rule, "", "", "", "", _plain(line.amount)])
        u = o.usage
        w.writerow([*base, _cell(o.owner), "total", "", "", "", "", u.requests, u.input_tokens, u.output_tokens, _plain(u.saved), _plain(o.total)])
    if s.unallocated:
        w.writerow([*base, "", "unallocated", "", "", "", "", "", "", "", "", _plain(s.unallocated)])
    L = s.ledger
    w.writerow([*base, "", "grand_total", "", "", "", "", L.requests, L.input_tokens, L.output_tokens, _plain(L.saved), _plain(s.grand_total)])
    return buf.getvalue()


RENDERERS = {"md": render_markdown, "html": render_html, "csv": render_csv}
