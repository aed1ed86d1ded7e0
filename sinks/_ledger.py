"""The delivery ledger in Redis: which alerts each sink delivered, and how often each incident paged.

Delivered marks are written after the service took the alert, so a crash in between re-delivers (services
dedupe on the alert id) rather than loses it.
"""

from __future__ import annotations

from typing import Final

from agents_contract._redis import redis_client

_PREFIX: Final = "tripwire:sink:"


class RedisLedger:
    def __init__(self, url: str, *, ttl_s: int = 7 * 24 * 3600) -> None:
        self._handle = redis_client(url, socket_timeout=5, socket_connect_timeout=5)
        self._redis = self._handle.client
        self._ttl_s = ttl_s

    async def delivered(self, key: str) -> bool:
        return bool(await self._redis.exists(_PREFIX + "done:" + key))

    async def mark_delivered(self, key: str) -> None:
        await self._redis.set(_PREFIX + "done:" + key, b"1", ex=self._ttl_s)

    async def count(self, key: str, window_s: int) -> int:
        """Count one more page for `key`; the count restarts `window_s` after its first page."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(_PREFIX + "pages:" + key)
            pipe.expire(_PREFIX + "pages:" + key, window_s, nx=True)
            count, _ = await pipe.execute()
        return int(count)

    async def close(self) -> None:
        await self._handle.aclose()
