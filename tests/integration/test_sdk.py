"""The SDK's promises on a real broker, Redis and worker: the honest acknowledgement, the sync SDK, the
reporting API and the pre-call budget gate."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from agents_contract import (
    BudgetExhausted,
    SessionKilled,
    SyncAgentGuard,
    parse_event,
    similarity,
)
from agents_contract._gate import LIMITS_PREFIX
from streams import TopicReader
from streams.lab._stack import LocalStack, budget_only
from tests.conftest import Broker
from tests.waiting import DEADLINE_S, wait_for

pytestmark = pytest.mark.integration


async def _stack(broker: Broker, redis_url: str, detectors: dict[str, Any]) -> LocalStack:
    return LocalStack(
        **broker.stack_options(redis_url),
        detectors=detectors,
        private_topics=True,
    )


@pytest.fixture
async def stack(broker: Broker, redis_url: str) -> AsyncIterator[LocalStack]:
    async with await _stack(broker, redis_url, budget_only(max_steps=5)) as s:
        yield s


async def events_of(stack: LocalStack, until: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """Events on the stack's events topic (each parsed by the contract) until `until` holds."""
    seen: list[dict[str, Any]] = []
    async with TopicReader(stack.bootstrap, stack.topics["events"], security=stack.security) as reader:

        async def check() -> bool:
            for _key, value, _headers in await reader.read():
                parse_event(value or b"")  # the SDK's fast encoding is the contract's
                seen.append(orjson.loads(value or b""))
            return until(seen)

        await wait_for("events", check)
    return seen


def acks(events: list[dict[str, Any]], session_id: str) -> list[str]:
    return [e["outcome"] for e in events if e["kind"] == "control.ack" and e["session_id"] == session_id]


def search_sync(i: int) -> int:
    time.sleep(0.002)
    return i


async def test_sync_guard_needs_no_loop_and_a_kill_interrupts_a_sync_run(stack: LocalStack) -> None:
    spins = 0

    def agent() -> None:
        nonlocal spins
        # No event loop in this thread: the guard brings its own.
        with (
            SyncAgentGuard(**stack.guard_settings()) as guard,
            guard.session("s-sync", agent_id="a", tenant_id="t", user_id="u") as session,
        ):

            def work() -> None:
                nonlocal spins
                for i in range(6):  # the sixth step breaches max_steps=5
                    session.call_tool("search", {"q": i}, search_sync, i)
                # Pure Python that never calls the SDK again: only the injected interrupt can stop it.
                deadline = time.monotonic() + DEADLINE_S
                while time.monotonic() < deadline:
                    spins += 1

            with pytest.raises(SessionKilled) as killed:
                session.run(work)
            assert killed.value.command.detector == "max_steps"
            with pytest.raises(SessionKilled):
                session.call_tool("search", {"q": 9}, search_sync, 9)

    started = time.monotonic()
    await asyncio.to_thread(agent)
    assert time.monotonic() - started < DEADLINE_S  # the spin was interrupted, not run out
    events = await events_of(stack, lambda seen: "stopped" in acks(seen, "s-sync"))
    # The interrupt may end the run before the SDK has acknowledged at all; then `stopped` is the only ack.
    assert acks(events, "s-sync") in (["stopping", "stopped"], ["stopped"])


async def test_a_sync_tool_running_at_the_kill_holds_the_ack_at_stopping(stack: LocalStack) -> None:
    release = threading.Event()
    in_slow_tool = threading.Event()

    def slow() -> str:
        in_slow_tool.set()
        release.wait(DEADLINE_S)
        return "done"

    def agent(guard: SyncAgentGuard) -> None:
        with guard.session("s-slow", agent_id="a", tenant_id="t", user_id="u") as session:
            for i in range(5):
                session.call_tool("search", {"q": i}, search_sync, i)
            with pytest.raises(SessionKilled):
                session.call_tool("slow", {}, slow)  # breaches; the kill arrives while it blocks

    with SyncAgentGuard(**stack.guard_settings()) as guard:
        running = asyncio.create_task(asyncio.to_thread(agent, guard))
        events = await events_of(stack, lambda seen: "stopping" in acks(seen, "s-slow"))
        assert "stopped" not in acks(events, "s-slow")
        assert in_slow_tool.is_set()
        assert not running.done()
        release.set()
        await running
        # Read from the start again: the whole story of the session's acknowledgements.
        events = await events_of(stack, lambda seen: "stopped" in acks(seen, "s-slow"))
    assert acks(events, "s-slow") == ["stopping", "stopped"]


async def test_reported_calls_carry_the_guarded_calls_digests_and_a_team_agent_id(stack: LocalStack) -> None:
    page = "the quarterly numbers for the northern region were revised after the audit " * 400
    async with (
        stack.guard() as guard,
        guard.session("s-report", agent_id="team", tenant_id="t", user_id="u") as session,
    ):
        guarded = await session.tool_started("fetch", {"url": "x"}, agent_id="researcher")
        guarded.returned(page)  # a large result: fingerprinted in a thread
        session.record_tool("fetch", {"url": "x"}, result=page, latency_ms=12.5, agent_id="writer")
        session.record_turn("gpt-x", input_tokens=100, output_tokens=20, cost_usd=0.01, agent_id="writer")
        session.record_tool("fetch", {"url": "y"}, error=TimeoutError("slow"), agent_id="writer")
    events = await events_of(stack, lambda seen: any(e["kind"] == "session.ended" for e in seen))
    returned = [e for e in events if e["kind"] == "tool.returned"]
    assert [e["agent_id"] for e in returned] == ["researcher", "writer", "writer"]
    assert returned[0]["result_digest"] == returned[1]["result_digest"]
    assert returned[0]["fingerprints"]
    assert returned[0]["fingerprints"] == returned[1]["fingerprints"]
    assert returned[1]["latency_ms"] >= 12.5
    assert (returned[2]["status"], returned[2]["error.type"]) == ("error", "TimeoutError")
    called = [e for e in events if e["kind"] == "tool.called"]
    assert called[0]["args_digest"] == called[1]["args_digest"] != called[2]["args_digest"]
    turn = next(e for e in events if e["kind"] == "turn.completed")
    assert (turn["agent_id"], turn["gen_ai.usage.input_tokens"], turn["cost_usd"]) == ("writer", 100, 0.01)


async def test_calls_and_messages_carry_sketches_not_text_and_a_long_call_beats_from_inside(
    stack: LocalStack,
) -> None:
    first, reworded = "cheapest flights lisbon to porto in may", "lisbon porto flight cheap may dates"
    async with TopicReader(stack.bootstrap, stack.topics["events"], security=stack.security) as reader:
        seen: list[dict[str, Any]] = []

        async def beats_from_inside() -> bool:
            seen.extend(orjson.loads(v or b"") for _, v, _ in await reader.read())
            return sum(e["kind"] == "heartbeat" and "in_call_since_ms" in e for e in seen) >= 2

        async def slow_export() -> str:
            # The call lasts until its heartbeats are on the topic: a long call is not silence.
            await wait_for("heartbeats from inside the call", beats_from_inside)
            return "done"

        async with (
            stack.guard(call_heartbeat_s=0.2) as guard,
            guard.session("s-sketch", agent_id="a1", tenant_id="t", user_id="u") as session,
        ):
            await session.message_received("find me a cheap flight to porto")
            await session.call_tool("search", {"q": first}, _echo, 1)
            await session.call_tool("search", {"q": reworded}, _echo, 2)
            started = int(time.time() * 1000)
            assert await session.call_tool("export", {"range": "2025"}, slow_export) == "done"
            await session.send_message("writer", "draft the answer")
    events = await events_of(stack, lambda got: any(e["kind"] == "session.ended" for e in got))
    raw = orjson.dumps(events)
    assert b"lisbon" not in raw
    assert b"porto" not in raw  # raw text never leaves the process: digests and sketches only
    searches = [e for e in events if e["kind"] == "tool.called" and e["gen_ai.tool.name"] == "search"]
    assert similarity(searches[0]["args_sketch"], searches[1]["args_sketch"]) >= 0.3
    assert searches[0]["args_digest"] != searches[1]["args_digest"]
    heard, told = (e for e in events if e["kind"] == "message.sent")
    assert (heard["agent_id"], heard["to_agent_id"]) == ("user", "a1")
    assert (told["agent_id"], told["to_agent_id"]) == ("a1", "writer")
    assert heard["content_sketch"]
    assert told["content_sketch"]
    beats = [e for e in events if e["kind"] == "heartbeat" and "in_call_since_ms" in e]
    assert len({e["in_call_since_ms"] for e in beats}) == 1
    assert beats[0]["in_call_since_ms"] >= started - 1_000
    # Once the call is over, no heartbeat claims to be inside one.
    returned = max(i for i, e in enumerate(events) if e["kind"] == "tool.returned")
    assert all(
        i < returned for i, e in enumerate(events) if e["kind"] == "heartbeat" and "in_call_since_ms" in e
    )


async def _echo(n: int) -> int:
    return n


async def _limits_published(redis_url: str, field: str, value: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:

        async def check() -> bool:
            return bool(await client.hget(LIMITS_PREFIX + "default", field) == value.encode())

        await wait_for(f"the worker to publish {field}={value}", check)
    finally:
        await client.aclose()


async def test_the_gate_runs_no_step_past_a_hard_budget(stack: LocalStack) -> None:
    await _limits_published(stack.redis_url, "session_budget.max_steps", "5")
    ran = 0

    async def tool(i: int) -> int:
        nonlocal ran
        ran += 1
        return i

    async with (
        stack.guard(budget_gate=True) as guard,
        guard.session(
            "s-gate-steps", agent_id="a", tenant_id=f"t-gate-{secrets.token_hex(4)}", user_id="u"
        ) as session,
    ):
        for i in range(5):
            await session.call_tool("search", {"q": i}, tool, i)
        with pytest.raises(BudgetExhausted) as refused:
            await session.call_tool("search", {"q": 5}, tool, 5)
        assert refused.value.limit == "session_budget.max_steps"
        with pytest.raises(BudgetExhausted):
            async with session.turn("gpt-x"):
                pass
    assert ran == 5


async def test_fifty_concurrent_agents_never_spend_past_the_tenant_budget(
    broker: Broker, redis_url: str
) -> None:
    detectors = budget_only()
    detectors["tenant_daily_budget"] = {"enabled": True, "max_cost_usd": 1.0}
    spent = 0.0
    calls = 0
    price = 0.03
    tenant = f"t-50-{secrets.token_hex(4)}"  # the tenant-day counters live in the shared Redis
    refusals: list[str] = []

    async with await _stack(broker, redis_url, detectors) as stack:
        await _limits_published(stack.redis_url, "tenant_daily_budget.max_cost_usd", "1.0")

        async def agent(n: int, guard: Any) -> None:
            nonlocal spent, calls
            async with guard.session(f"s-50-{n}", agent_id=f"a{n}", tenant_id=tenant, user_id="u") as session:
                try:
                    for _ in range(1000):
                        async with session.turn("gpt-x", estimate_usd=price) as turn:
                            await asyncio.sleep(0)  # the model call: let the other agents interleave
                            spent += price
                            calls += 1
                            turn.record(input_tokens=10, output_tokens=5, cost_usd=price)
                except BudgetExhausted as refused:
                    refusals.append(refused.limit)

        async with stack.guard(budget_gate=True) as guard:
            await asyncio.gather(*(agent(n, guard) for n in range(50)))
    assert refusals == ["tenant_daily_budget.max_cost_usd"] * 50  # every agent was stopped by the gate
    assert spent <= 1.0 + 1e-9
    assert calls == int(1.0 / price)  # every reservation that fit was granted, none past the budget
