"""OTLP export from a real gateway (examples/telemetry.yaml) into a local OTLP/HTTP receiver."""

from __future__ import annotations

import gzip
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Process, free_port
from spendgate.telemetry.otel import MISSING_PACKAGES, parse_headers
from spendgate.telemetry.schema import OtlpConfig

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "telemetry.yaml"
SECRET = "PROMPT-TEXT-7f3a9c never exported"


class Receiver:
    """A minimal OTLP/HTTP collector: keeps every request body it is sent."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[bytes]] = {"/v1/traces": [], "/v1/metrics": []}
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.bodies.setdefault(self.path, []).append(body)
                receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[Any]:
        out = []
        for body in self.bodies["/v1/traces"]:
            req = ExportTraceServiceRequest.FromString(body)
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    out.extend((rs.resource, s) for s in ss.spans)
        return out

    def metrics(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for body in self.bodies["/v1/metrics"]:
            req = ExportMetricsServiceRequest.FromString(body)
            for rm in req.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        out.setdefault(m.name, []).append(m)
        return out


def attrs(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        v = kv.value
        kind = v.WhichOneof("value")
        out[kv.key] = [x.string_value for x in v.array_value.values] if kind == "array_value" else getattr(v, kind)
    return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def test_example_exports_genai_spans_and_metrics(receiver: Receiver, tmp_path: Path) -> None:
    port = free_port()
    env = {"SPENDGATE_OTLP": "true", "OTLP_ENDPOINT": receiver.url, "SPENDGATE_METRICS_TOKEN": "scrape-secret"}
    p = Process(["serve", "--config", str(EXAMPLE), "--port", str(port)], f"http://127.0.0.1:{port}/healthz", env=env, cwd=str(tmp_path))
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-team-search", max_retries=0)
        answers = []
        for model in ("gpt-4o-mini", "gpt-4o"):
            r = client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": SECRET}], extra_headers={"x-spendgate-tags": "feature=faq"}
            )
            answers.append((r.headers["x-spendgate-request-id"], r.parse()))
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x [[sim:fault=500]]"}])
        time.sleep(0.5)  # the writer's flush; the listener runs after it
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 401  # the example has virtual keys
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer scrape-secret"}).text
        # the example adds `team` to the default labels
        teams = {s.labels.get("team") for f in text_string_to_metric_families(scraped) for s in f.samples if s.name == "spendgate_spend_usd_total"}
        assert teams == {"search"}
    finally:
        out = p.terminate()  # shutdown flushes the span batch and the last metric export
    assert p.proc.returncode == 0, out

    spans = receiver.spans()
    assert [s.name for _, s in spans] == ["chat gpt-4o-mini", "chat gpt-4o", "chat gpt-4o"]
    resource, first = spans[0]
    assert attrs(resource.attributes)["service.name"] == "spendgate"
    assert attrs(resource.attributes)["deployment.environment.name"] == "prod"
    a = attrs(first.attributes)
    rid, completion = answers[0]
    assert first.kind == 3  # SPAN_KIND_CLIENT
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == a["gen_ai.system"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-4o-mini" and a["gen_ai.response.model"] == "gpt-4o-mini"
    assert a["gen_ai.usage.input_tokens"] == completion.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens
    assert a["gen_ai.response.finish_reasons"] == [completion.choices[0].finish_reason]
    assert a["spendgate.request_id"] == rid
    assert a["spendgate.team"] == "search" and a["spendgate.feature"] == "faq" and a["spendgate.environment"] == "prod"
    assert a["spendgate.cache_status"] == "bypass"
    assert Decimal(a["spendgate.cost_usd"]) > 0 and float(a["spendgate.cost_usd"]) == a["spendgate.cost_usd_double"]
    assert first.end_time_unix_nano > first.start_time_unix_nano  # the call's own times, not the export's
    # the ledger's exact cost is the span's
    con = sqlite3.connect(tmp_path / "spendgate.db")
    [(cost,)] = con.execute("SELECT cost FROM usage_events WHERE request_id = ?", (rid,)).fetchall()
    assert Decimal(a["spendgate.cost_usd"]) == Decimal(cost)
    failed = attrs(spans[2][1].attributes)
    assert failed["error.type"] and spans[2][1].status.code == 2  # STATUS_CODE_ERROR
    assert "error.type" not in a

    metrics = receiver.metrics()
    [usage] = metrics["gen_ai.client.token.usage"][-1:]
    assert usage.unit == "{token}"
    points = {(attrs(dp.attributes)["gen_ai.token.type"], attrs(dp.attributes)["gen_ai.request.model"]): dp
              for dp in usage.histogram.data_points if "error.type" not in attrs(dp.attributes)}
    assert points[("input", "gpt-4o-mini")].sum == completion.usage.prompt_tokens
    assert points[("output", "gpt-4o")].sum == answers[1][1].usage.completion_tokens
    assert points[("input", "gpt-4o")].count == 1
    assert list(points[("input", "gpt-4o")].explicit_bounds)[:3] == [1, 4, 16]
    assert attrs(points[("input", "gpt-4o")].attributes)["spendgate.team"] == "search"
    [duration] = metrics["gen_ai.client.operation.duration"][-1:]
    assert duration.unit == "s" and sum(dp.count for dp in duration.histogram.data_points) == 3
    [cost_metric] = metrics["spendgate.cost"][-1:]
    total = sum(dp.as_double for dp in cost_metric.sum.data_points)
    ledger_total = sum(Decimal(c) for (c,) in con.execute("SELECT cost FROM usage_events"))
    assert cost_metric.unit == "USD" and total == pytest.approx(float(ledger_total), rel=1e-9)

    # no prompt or answer text anywhere in what was exported
    everything = b"".join(b for bodies in receiver.bodies.values() for b in bodies)
    assert SECRET.encode() not in everything
    for _, c in answers:
        assert c.choices[0].message.content.encode() not in everything


def test_headers_from_the_environment_reach_the_collector(receiver: Receiver) -> None:
    from spendgate.ledger.events import UsageEvent
    from spendgate.telemetry.otel import OtlpExporter

    cfg = OtlpConfig(enabled=True, endpoint=receiver.url, headers={"x-static": "1"}, headers_env="OTLP_HDRS", metrics=False)
    exporter = OtlpExporter(cfg, environ={"OTLP_HDRS": "authorization=Bearer abc, x-tenant=acme"})
    exporter.observe([UsageEvent(endpoint="embeddings", model_requested="text-embedding-3-small", provider="azure_openai", ts_start=1.0, ts_end=2.0)])
    exporter.close()
    [(_, span)] = receiver.spans()
    assert span.name == "embeddings text-embedding-3-small"
    assert attrs(span.attributes)["gen_ai.provider.name"] == "azure.ai.openai"
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (1_000_000_000, 2_000_000_000)
    h = receiver.headers[0]
    assert (h["authorization"], h["x-tenant"], h["x-static"]) == ("Bearer abc", "acme", "1")
    with pytest.raises(ValueError, match="OTLP_HDRS is not set"):
        OtlpExporter(cfg, environ={})
    with pytest.raises(ValueError, match="not name=value"):
        parse_headers("authorization")


def test_a_clear_error_when_the_otel_packages_are_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from spendgate.telemetry.otel import OtlpExporter

    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # what an absent package looks like
    with pytest.raises(RuntimeError) as info:
        OtlpExporter(OtlpConfig(enabled=True))
    assert str(info.value) == MISSING_PACKAGES and "spendgate[otel]" in str(info.value)


def test_endpoint_must_be_otlp_http() -> None:
    with pytest.raises(ValueError, match="OTLP/HTTP"):
        OtlpConfig(endpoint="127.0.0.1:4317")
