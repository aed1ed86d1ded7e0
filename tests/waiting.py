"""Waiting on a condition, never on a sleep: what every test that watches a running stack polls with."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

DEADLINE_S = 60.0


async def wait_for(what: str, check: Callable[[], Awaitable[Any]], deadline_s: float = DEADLINE_S) -> Any:
    """Poll `check` until it returns something true, and return that; fail naming `what` at the deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if value := await check():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {deadline_s:g}s waiting for {what}")
