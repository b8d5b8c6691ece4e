"""What the telemetry listeners cost the ledger writer thread, in µs per event.

    python -m spendgate.telemetry.bench [events]

Feeds synthetic events through `PrometheusMetrics.observe` (default labels,
and with team/feature added) and `OtlpExporter.observe` (spans + metrics,
exporting to a local sink that answers 200), in batches like the writer's.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from spendgate.ledger.events import UsageEvent
from spendgate.telemetry.prometheus import PrometheusMetrics
from spendgate.telemetry.schema import OtlpConfig, PrometheusConfig


def events(n: int) -> list[UsageEvent]:
    rnd = random.Random(7)
    models = ["gpt-4o", "gpt-4o-mini", "claude-haiku-4-5", "claude-sonnet-4-5"]
    now = time.time()
    return [
        UsageEvent(
            request_id=f"r{i}", endpoint="chat.completions", provider="openai", model_requested=(m := rnd.choice(models)),
            model_used=m, team=rnd.choice(["search", "support", "growth"]), feature=rnd.choice(["faq", "chat", "summarize"]),
            input_tokens=rnd.randint(10, 4000), output_tokens=rnd.randint(1, 800), cache_read_tokens=rnd.choice([0, 0, 512]),
            cost=Decimal(rnd.randint(1, 10**6)) / 10**9, list_cost=Decimal("0.001"), latency_ms=rnd.uniform(50, 3000),
            ts_start=now - 1, ts_end=now, finish_reason="stop", status="ok" if rnd.random() > 0.02 else "error",
        )
        for i in range(n)
    ]


def timed(observe, evs: list[UsageEvent], batch: int = 50) -> float:
    observe(evs[:batch])  # warm the label caches
    t0 = time.perf_counter()
    for i in range(0, len(evs), batch):
        observe(evs[i : i + batch])
    return (time.perf_counter() - t0) / len(evs) * 1e6


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    evs = events(n)
    print(f"{n} events, batches of 50")
    print(f"prometheus, default labels:        {timed(PrometheusMetrics(PrometheusConfig()).observe, evs):6.1f} µs/event")
    extra = PrometheusConfig(labels=["model", "provider", "status", "team", "feature"])
    print(f"prometheus, + team, feature:       {timed(PrometheusMetrics(extra).observe, evs):6.1f} µs/event")
    from spendgate.telemetry.otel import OtlpExporter

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    for label, cfg in (
        ("otlp spans only", OtlpConfig(enabled=True, endpoint=url, metrics=False)),
        ("otlp metrics only", OtlpConfig(enabled=True, endpoint=url, spans=False)),
        ("otlp spans + metrics", OtlpConfig(enabled=True, endpoint=url)),
    ):
        exporter = OtlpExporter(cfg)
        print(f"{label + ':':34} {timed(exporter.observe, evs):6.1f} µs/event")
        exporter.close()
    server.shutdown()


if __name__ == "__main__":
    main()
