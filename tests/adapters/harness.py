"""What the adapter tests share: waiting on a condition with a deadline, reading a session's events and its
kill's acknowledgements off the stack's events topic, waiting for the worker's gate limits, a sync guard's
session for a sync program, and the command that switches the `search` tool off. Nothing here sleeps to
synchronise: every wait polls a condition and fails the test once `DEADLINE_S` passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from redis.asyncio import Redis

from agents_contract import KillCommand, SyncAgentGuard, SyncSession
from agents_contract._gate import LIMITS_PREFIX
from streams import TopicReader
from streams.lab._stack import LocalStack
from tests.waiting import DEADLINE_S, wait_for

__all__ = [
    "DEADLINE_S",
    "acks_of",
    "gate_limits_published",
    "kill_acks",
    "search_circuit_open",
    "session_events",
    "sync_session",
    "wait_for",
]

# Far longer than anything here takes on a busy machine: only a broken kill path reaches it.

Events = list[dict[str, Any]]


async def session_events(
    stack: LocalStack, session_id: str | None, until: Callable[[Events], bool]
) -> Events:
    """The events topic's records in topic order, read until `until(events)` holds: those of `session_id`
    (by record key: one key, one partition), or every session's when it is None."""
    key = None if session_id is None else session_id.encode()
    events: Events = []
    async with TopicReader(stack.bootstrap, stack.topics["events"], security=stack.security) as reader:

        async def check() -> bool:
            for record_key, value, _ in await reader.read():
                if key is None or record_key == key:
                    # The SDK writes no empty record: one on the events topic fails the test, unskipped.
                    assert value, f"an empty record on the events topic, key {record_key!r}"
                    events.append(orjson.loads(value))
            return until(events)

        await wait_for("the events topic's records" if key is None else f"the events of {session_id}", check)
    return events


def acks_of(events: Events, command_id: str) -> Events:
    """The acknowledgements of the kill `command_id` among `events`, in order."""
    return [e for e in events if e["kind"] == "control.ack" and e["command_id"] == command_id]


async def kill_acks(stack: LocalStack, session_id: str, command_id: str) -> Events:
    """The acknowledgements of the kill `command_id` in the session's events, once one says `stopped`."""
    events = await session_events(
        stack, session_id, lambda es: any(a["outcome"] == "stopped" for a in acks_of(es, command_id))
    )
    return acks_of(events, command_id)


async def gate_limits_published(stack: LocalStack) -> None:
    """Returns once the worker has published its gate limits to Redis: before that, the budget gate has no
    limit to refuse a step by."""
    redis = Redis.from_url(stack.redis_url)
    try:
        await wait_for("the worker's gate limits", lambda: redis.exists(LIMITS_PREFIX + "default"))
    finally:
        await redis.aclose()


@contextmanager
def sync_session(
    stack: LocalStack, session_id: str, *, agent_id: str, **options: Any
) -> Iterator[SyncSession]:
    """A session of a SyncAgentGuard on the stack (with `options`), for a sync program on a thread of its
    own; the guard's event loop runs on a thread of the guard's."""
    with (
        SyncAgentGuard(**stack.guard_settings(), **options) as guard,
        guard.session(session_id, agent_id=agent_id, tenant_id="t", user_id="u") as session,
    ):
        yield session


def search_circuit_open(issued_at_ms: int) -> KillCommand:
    """The command by which Tripwire's tool circuit switches the `search` tool off, across sessions."""
    return KillCommand(
        command_id="circuit-search-open-1",
        scope="tool",
        target="search",
        reason="error rate over 50% across sessions",
        detector="tool_circuit",
        evidence={"circuit": "open", "generation": 1, "open_ms": 600_000},
        issued_at_ms=issued_at_ms,
    )
