"""The Redis fence: the synchronous record of killed sessions, shared by workers and agents.

Kafka carries kills to agents that are listening; the fence stops the ones that were not. The worker writes
the signed command here before it publishes it, and an agent reads it when it attaches, so a session killed
while its agent was down, restarting or not yet started stays killed. Redis is reached only through this
module.
"""

from __future__ import annotations

from typing import Final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agents_contract._commands import ED25519, KillCommand, encode_command, parse_command
from agents_contract._redis import redis_client

_PREFIX: Final = "tripwire:fence:session:"
# Ed25519-signed kills, beside the HMAC-signed ones while agents move over (agents need read on both).
_ED_PREFIX: Final = "tripwire:fence:ed25519:"
# The session's epoch: 0 (absent) until `tripwire release` first clears its kill, one more at each release.
# Commands carry the epoch they were issued in and agents refuse those of another (a replayed kill).
_EPOCH_PREFIX: Final = "tripwire:fence:epoch:"
_READY: Final = "tripwire:worker:ready:"
# Set by a worker once the fence holds every kill of the control topic; gone when Redis lost its data.
_INTACT: Final = "tripwire:fence:intact"


FenceError = RedisError
"""What the fence raises when Redis cannot be reached (after its own retries)."""


class Fence:
    """Killed sessions in Redis, keyed by session_id; the value is the signed kill command."""

    def __init__(self, url: str, *, ttl_s: int = 7 * 24 * 3600, ed25519: bool = False) -> None:
        # An agent that verifies Ed25519 reads that kill first, and the HMAC one where there is none (a
        # worker not yet given the private key).
        self._ed25519 = ed25519
        # A dropped connection (a Redis restart, a failover) is re-made and the command retried a few times
        # with backoff before an error reaches the caller, so a blip is not an outage.
        self._handle = redis_client(
            url,
            socket_timeout=5,
            socket_connect_timeout=5,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError],
            health_check_interval=30,
        )
        self._redis = self._handle.client
        self._ttl_s = ttl_s

    @property
    def redis(self) -> aioredis.Redis:
        """The client, shared with the budget gate."""
        return self._redis

    async def close(self) -> None:
        await self._handle.aclose()

    async def ping(self) -> None:
        await self._redis.ping()

    async def kill(self, commands: list[KillCommand]) -> set[str]:
        """Record session kills; the first command for a session wins, later ones keep it. Returns the
        sessions this call fenced (those that were not fenced already)."""
        if not commands:
            return set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.set(_key(command), encode_command(command), nx=True, ex=self._ttl_s)
            written = await pipe.execute()
        return {command.target for command, ok in zip(commands, written, strict=True) if ok}

    async def lookup(self, session_id: str) -> KillCommand | None:
        (found,) = await self.lookup_many([session_id])
        return found

    async def lookup_many(self, session_ids: list[str]) -> list[KillCommand | None]:
        """The kills of these sessions, in their order (None where there is none), in one round trip."""
        if not session_ids:
            return []
        if not self._ed25519:
            raws: list[bytes | str | None] = await self._redis.mget([_PREFIX + sid for sid in session_ids])
        else:
            both = await self._redis.mget([p + sid for sid in session_ids for p in (_ED_PREFIX, _PREFIX)])
            raws = [ed if ed is not None else mac for ed, mac in zip(both[::2], both[1::2], strict=True)]
        return [
            None if raw is None else parse_command(raw if isinstance(raw, bytes) else raw.encode())
            for raw in raws
        ]

    async def view_many(self, session_ids: list[str]) -> list[tuple[KillCommand | None, int]]:
        """Each session's kill (None where there is none) and its epoch, in one round trip: what an agent
        reads when it attaches."""
        if not session_ids:
            return []
        prefixes = (_ED_PREFIX, _PREFIX, _EPOCH_PREFIX) if self._ed25519 else (_PREFIX, _EPOCH_PREFIX)
        raws = await self._redis.mget([p + sid for sid in session_ids for p in prefixes])
        width = len(prefixes)
        views: list[tuple[KillCommand | None, int]] = []
        for at in range(0, len(raws), width):
            kill = next((raw for raw in raws[at : at + width - 1] if raw is not None), None)
            command = None if kill is None else parse_command(_bytes(kill))
            views.append((command, _epoch(raws[at + width - 1])))
        return views

    async def epochs(self, session_ids: list[str]) -> list[int]:
        """The sessions' current epochs, in their order."""
        if not session_ids:
            return []
        return [_epoch(raw) for raw in await self._redis.mget([_EPOCH_PREFIX + sid for sid in session_ids])]

    async def new_epoch(self, session_id: str) -> int:
        """Start the session's next epoch (a release), kept as long as a kill; returns it."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(_EPOCH_PREFIX + session_id)
            pipe.expire(_EPOCH_PREFIX + session_id, self._ttl_s)
            epoch, _ = await pipe.execute()
        return int(epoch)

    async def restore_epochs(self, epochs: dict[str, int]) -> int:
        """Put back epochs read from the control topic where Redis lost them; returns how many."""
        if not epochs:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for session_id, epoch in epochs.items():
                pipe.set(_EPOCH_PREFIX + session_id, str(epoch), nx=True, ex=self._ttl_s)
            written = await pipe.execute()
        return sum(1 for ok in written if ok)

    async def intact(self) -> bool:
        """False when Redis has lost the fence (a restart without persistence, a failover to an empty
        replica) or it was never rebuilt: the mark a worker sets after `restore` is gone with the rest."""
        return bool(await self._redis.exists(_INTACT))

    async def mark_intact(self) -> None:
        await self._redis.set(_INTACT, "1")

    async def restore(self, commands: list[tuple[KillCommand, int]]) -> int:
        """Put back kills read from the control topic, each with the seconds it has left (a kill already in
        the fence is kept). Returns how many were missing."""
        if not commands:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for command, ttl_s in commands:
                pipe.set(_key(command), encode_command(command), nx=True, ex=max(1, ttl_s))
            written = await pipe.execute()
        return sum(1 for ok in written if ok)

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    async def release(self, session_id: str) -> bool:
        """Clear a session's kill; True when there was one."""
        return bool(await self._redis.delete(_PREFIX + session_id, _ED_PREFIX + session_id))

    async def mark_worker_ready(self, app_id: str, at_ms: int) -> None:
        """Record that a worker of `app_id` finished a rebalance and is judging events (a health signal)."""
        await self._redis.set(_READY + app_id, str(at_ms), ex=self._ttl_s)

    async def worker_ready_at(self, app_id: str) -> int | None:
        raw = await self._redis.get(_READY + app_id)
        return None if raw is None else int(raw)


def _bytes(raw: bytes | str) -> bytes:
    return raw if isinstance(raw, bytes) else raw.encode()


def _epoch(raw: bytes | str | None) -> int:
    if raw is None:
        return 0
    try:
        return max(0, int(raw))
    except ValueError:
        return 0


def _key(command: KillCommand) -> str:
    return (_ED_PREFIX if command.signature.startswith(ED25519) else _PREFIX) + command.target
