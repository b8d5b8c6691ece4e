"""Per-server state handed to every handler: settings, caches, faults. No globals."""

from __future__ import annotations

import asyncio

from spendgate.simulator.faults import Faults
from spendgate.simulator.prompt_cache import PrefixCache
from spendgate.simulator.settings import SimulatorSettings


class SimulatorState:
    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.closing = asyncio.Event()  # set on close: releases `timeout` hangs at once
        self.faults = Faults(settings, self.closing)
        self.openai_cache = PrefixCache()
        self.anthropic_cache = PrefixCache()

    def tokens_per_second(self, override: float | None) -> float:
        return override if override is not None else self.settings.tokens_per_second
