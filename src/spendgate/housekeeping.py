"""Periodic background work (expiring reservations, rate-limit slots, cached
answers): one loop shape for every component that needs it, which keeps
going when a round fails and stops cleanly at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


def every(interval_s: float, work: Callable[[], Awaitable[None]], what: str, log: logging.Logger) -> asyncio.Task[None]:
    """Run `work` every `interval_s` seconds on the running loop until `stop`."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await work()
            except Exception:  # noqa: BLE001 - housekeeping must go on
                log.exception("%s housekeeping failed", what)

    return asyncio.get_running_loop().create_task(loop())


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a loop started by `every` and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
