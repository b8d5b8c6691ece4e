"""docs/grafana/spendgate-dashboard.json imports cleanly and asks only for series spendgate exposes."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from spendgate.ledger.events import UsageEvent
from spendgate.telemetry.prometheus import PrometheusMetrics
from spendgate.telemetry.schema import PrometheusConfig

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "spendgate-dashboard.json"
METRIC = re.compile(r"\bspendgate_[a-z0-9_]+")
BY = re.compile(r"\bby \(([^)]*)\)")
SELECTOR = re.compile(r"\{([^}]*)\}")


class _Writer:
    queue_depth, written, rejected, failed_batches = 0, 1, 0, 0


def exposed() -> dict[str, set[str]]:
    """Every sample name a default-config gateway exposes, with its label names."""
    m = PrometheusMetrics(PrometheusConfig(), _Writer())
    m.budgets.rows = [{"name": "b", "instance": "global", "limit": Decimal(5), "effective_limit": Decimal(5),
                       "spent": Decimal(1), "remaining": Decimal(4), "utilization": "0.2000"}]
    m.observe([
        UsageEvent(model_used="gpt-4o", provider="openai", cost=Decimal("0.01"), list_cost=Decimal("0.02"), input_tokens=10,
                   output_tokens=5, cache_read_tokens=2, latency_ms=100.0, ttft_ms=20.0, streamed=True),
        UsageEvent(model_used="gpt-4o", provider="openai", cache_status="exact", saved=Decimal("0.01"), saved_by="cache", latency_ms=1.0),
        UsageEvent(model_used="x-unpriced", provider="openai_compatible", price_status="missing", status="error"),
    ])
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(m.render()[0].decode()):
        for s in family.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def queries(dash: dict) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dash["templating"]["list"]]
    return exprs


def test_dashboard_is_an_importable_grafana_export() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"] and dash["__inputs"][0]["pluginId"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"] and all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in p["targets"]), p["title"]
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("spend rate by model", "tokens by type", "requests", "error rate", "cache hit ratio", "savings", "budget utilization", "p50 / p95"):
        assert topic in titles, topic


def test_every_query_names_only_exposed_metrics_and_labels() -> None:
    dash = json.loads(DASHBOARD.read_text())
    have = exposed()
    for expr in queries(dash):
        names = METRIC.findall(expr)
        assert names, expr
        for name in names:
            assert name in have, f"{name} (in {expr!r}) is not exposed by the gateway"
        labels = set().union(*(have[n] for n in names)) | {"le"}
        for group in BY.findall(expr):
            for label in filter(None, (x.strip() for x in group.split(","))):
                assert label in labels, f"'by ({label})' in {expr!r}: {names} have no such label"
        for selector in SELECTOR.findall(expr):
            for label in re.findall(r"([a-z_]+)\s*=~?", selector):
                assert label in labels, f"{label} in {expr!r}"
