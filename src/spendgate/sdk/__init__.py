"""Metering for apps that call OpenAI/Anthropic directly: `spendgate.instrument(client)`."""

from typing import Any

__all__ = ["instrument", "MemorySink", "LedgerSink", "GatewaySink"]


def __getattr__(name: str) -> Any:
    # Lazy, like `spendgate.instrument`: importing the package costs nothing until used.
    if name == "instrument":
        from spendgate.sdk.instrument import instrument

        return instrument
    if name in ("MemorySink", "LedgerSink", "GatewaySink"):
        from spendgate.sdk import sinks

        return getattr(sinks, name)
    raise AttributeError(name)
