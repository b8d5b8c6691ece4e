"""Monitoring exports of the ledger's events: Prometheus `/metrics` and OTLP.

Both are fed by the ledger writer's listener (on the writer thread, after a
batch is durably written), never on the request path. The ledger stays the
exact source of money; these exports are floats for dashboards and alerts.
"""

from spendgate.telemetry.schema import OtlpConfig, PrometheusConfig, TelemetryConfig

__all__ = ["OtlpConfig", "PrometheusConfig", "TelemetryConfig"]
