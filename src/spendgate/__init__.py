"""spendgate: meter, attribute and control what LLM calls cost."""

from typing import Any

__version__ = "0.1.0"
__all__ = ["instrument", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import spendgate` stays cheap for the gateway process.
    if name == "instrument":
        from spendgate.sdk.instrument import instrument

        return instrument
    raise AttributeError(name)
