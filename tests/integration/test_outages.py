"""Tripwire's outages do not take agents down: a broker outage under running agents, and a guard started
while Tripwire cannot be reached at all."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from agents_contract import SessionKilled, TripwireUnavailable
from streams.lab._stack import LocalStack, budget_only
from tests.conftest import Broker, redis_binary

pytestmark = pytest.mark.integration

AGENTS = 12
MAX_STEPS = 25
TOOL_S = 0.2
OUTAGE_S = 20.0


async def until(what: str, condition: Any, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(0.05)


async def _tool(n: int) -> int:
    await asyncio.sleep(TOOL_S)
    return n


async def _runaway(guard: Any, sid: str, calls: list[float]) -> BaseException | None:
    """A loop of guarded tool calls that never ends by itself; what ended it (None: nothing did)."""
    session = guard.session(sid, agent_id="a", tenant_id="t", user_id="u")
    try:
        async with session:
            for n in range(10_000):
                await session.call_tool("search", {"n": n}, _tool, n)
                calls.append(time.monotonic())
    except BaseException as exc:
        return exc
    return None


async def test_agents_keep_working_through_a_broker_outage_and_are_killed_once_it_is_back(
    broker: Broker, redis_url: str
) -> None:
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=budget_only(max_steps=MAX_STEPS),
        private_topics=True,
    ) as stack:
        async with stack.guard() as guard:
            calls: dict[str, list[float]] = {f"outage-{n}": [] for n in range(AGENTS)}
            runs = {sid: asyncio.create_task(_runaway(guard, sid, got)) for sid, got in calls.items()}
            # Under way, none near its step limit yet.
            await until("every agent stepping", lambda: all(len(c) >= 2 for c in calls.values()))
            outage = asyncio.create_task(broker.outage(OUTAGE_S))
            await until("the guard to notice", lambda: not guard.health.broker_reachable)
            down_at = time.monotonic()
            await outage
            up_at = time.monotonic()
            ended = await asyncio.wait_for(asyncio.gather(*runs.values()), timeout=180)
        outcomes = dict(zip(runs, ended, strict=True))
    # Nothing but the kill ended any agent: no Kafka error reached the agent's own work.
    assert {sid: type(e).__name__ for sid, e in outcomes.items() if not isinstance(e, SessionKilled)} == {}
    # The guarded calls kept their pace while the broker was away: not blocked for seconds each.
    expected = (up_at - down_at) / TOOL_S
    during = {sid: sum(1 for t in c if down_at <= t <= up_at) for sid, c in calls.items()}
    # (Each crossed its step limit during the outage; its kill came once the broker was back.)
    assert all(n >= 0.5 * expected for n in during.values()), (expected, during)
    assert guard.health.dropped == 0
    assert guard.health.outages >= 1


async def test_a_guard_starts_with_tripwire_unreachable_unless_it_fails_closed(broker: Broker) -> None:
    nowhere = {
        "bootstrap": "127.0.0.1:9",
        "redis_url": "redis://127.0.0.1:9/0",
        "signing_key": "k" * 32,
        "events_topic": "outage.events",
        "control_topic": "outage.control",
        "connect_timeout_s": 2.0,
    }
    from agents_contract import AgentGuard

    guard = AgentGuard(**nowhere)
    await guard.start()
    try:
        assert not guard.health.broker_reachable
        assert not guard.health.redis_reachable
        session = guard.session("s-nowhere", agent_id="a", tenant_id="t", user_id="u")
        async with session:
            for n in range(5):
                assert await session.call_tool("search", {"n": n}, _tool, n) == n
        assert guard.health.buffered > 0
        assert await guard.flush(timeout_s=0.5) is False  # not on any broker, and says so
    finally:
        started = time.monotonic()
        await guard.close()
        assert time.monotonic() - started < 15  # bounded, and it did not raise

    closed = AgentGuard(**nowhere, on_outage="fail_closed")
    with pytest.raises(TripwireUnavailable):
        await closed.start()


async def _killed(guard: Any, sid: str) -> tuple[SessionKilled | None, int]:
    """Attach `sid` and step until stopped; the kill (None if none came) and how many tool runs it got."""
    ran = 0

    async def tool() -> None:
        nonlocal ran
        ran += 1
        await asyncio.sleep(0.01)

    session = guard.session(sid, agent_id="a", tenant_id="t", user_id="u")
    try:
        async with session:
            for n in range(500):
                await session.call_tool("search", {"n": n}, tool)
    except SessionKilled as exc:
        return exc, ran
    return None, ran


async def test_a_fence_lost_with_redis_is_rebuilt_from_the_control_topic(broker: Broker) -> None:
    from agents_contract import Fence
    from streams import load_settings
    from streams.lab._embedded import EmbeddedRedis
    from streams.operator._operator import release

    redis = EmbeddedRedis(binary=redis_binary()).start()
    try:
        async with LocalStack(
            **{**broker.stack_options(redis.url), "agent_redis_url": None},
            detectors=budget_only(max_steps=3),
            private_topics=True,
        ) as stack:
            async with stack.guard() as guard:
                for sid in ("lost-1", "lost-2", "released"):
                    kill, _ = await _killed(guard, sid)
                    assert kill is not None
            await release(load_settings(stack.workdir / "tripwire.yaml"), "released")
            # kill -9: Redis (no persistence, as the default config runs it) comes back empty.
            os.kill(redis.pid, signal.SIGKILL)
            redis.stop()  # reaps it; the same port again
            redis.start()
            fence = Fence(redis.url)
            try:

                async def rebuilt() -> bool:
                    return (
                        await fence.lookup("lost-1") is not None and await fence.lookup("lost-2") is not None
                    )

                deadline = time.monotonic() + 60
                while not await rebuilt():
                    assert time.monotonic() < deadline, "the fence was not rebuilt within 60 s"
                    await asyncio.sleep(0.1)
                assert await fence.lookup("released") is None  # its release is on the topic too
                # and so is the epoch it started: a kill captured before it stays refused.
                assert await fence.epochs(["released", "lost-1"]) == [1, 0]
            finally:
                await fence.close()
            # A late-attaching agent of a killed session is stopped before its first tool run.
            async with stack.guard() as late:
                kill, ran = await _killed(late, "lost-1")
            assert kill is not None
            assert ran == 0
    finally:
        redis.stop()
