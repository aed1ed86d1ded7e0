"""`make bench`, SDK section: what the agent-side SDK adds to each call, on the bench's real broker and Redis.

Per-call figures are medians of individually timed calls, with a peer in the same run: the same no-op awaited
bare. "Added" is the guarded call's median minus the peer's. The gate's figure is a guard with
`budget_gate=True` against the limits the bench worker published (one Redis round trip per call). Loop hold
while fingerprinting: a ticker on the agent's loop sleeps 1 ms at a time while results of several sizes are
reported; its longest gap, minus the 1 ms, is how long the loop (and so a kill) waited.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from agents_contract import AgentGuard, GuardedSession, SessionKilled, fingerprints
from streams.lab._stack import LocalStack

_CALLS = 4_000
_PER_SESSION = 200  # fresh sessions keep the bench's no-op traffic far from any loop detector


async def _noop(i: int) -> int:
    return i


async def _timed(
    session_calls: Callable[[GuardedSession, int], Awaitable[Any]], guard: AgentGuard
) -> tuple[list[float], float]:
    """Per-call microseconds of `session_calls` over fresh sessions of `_PER_SESSION` calls each, and the
    whole work per call: the same calls until their events are on the broker, divided by their number."""
    times: list[float] = []
    started = time.perf_counter_ns()
    while len(times) < _CALLS:
        sid = f"bench-sdk-{uuid.uuid4().hex[:12]}"
        async with guard.session(sid, agent_id="bench", tenant_id="bench", user_id="u") as session:
            try:
                for i in range(_PER_SESSION):
                    t0 = time.perf_counter_ns()
                    await session_calls(session, i)
                    times.append((time.perf_counter_ns() - t0) / 1000)
            except SessionKilled:
                continue
        await guard.flush()
    return times, (time.perf_counter_ns() - started) / 1000 / len(times)


async def _bare(n: int) -> list[float]:
    times = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        await _noop(i)
        times.append((time.perf_counter_ns() - t0) / 1000)
    return times


async def _tool(session: GuardedSession, i: int) -> None:
    await session.call_tool("noop", {"i": i}, _noop, i)


async def _turn(session: GuardedSession, i: int) -> None:
    async with session.turn("bench-model") as turn:
        turn.record(input_tokens=10 + i, output_tokens=5)


async def _record(session: GuardedSession, i: int) -> None:
    session.record_tool("noop", {"i": i}, result=i, latency_ms=0.1)


async def _loop_hold(guard: AgentGuard, size: int) -> tuple[float, float]:
    """(longest loop gap in ms while reporting a `size`-character result, inline fingerprinting ms)."""
    words = " ".join(f"word{i % 997} page{i}" for i in range(size // 12 + 1))[:size]
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append((now - last) * 1000 - 1.0)
            last = now

    sid = f"bench-fp-{uuid.uuid4().hex[:12]}"
    async with guard.session(sid, agent_id="bench", tenant_id="bench", user_id="u") as session:
        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        gaps.clear()
        call = await session.tool_started("fetch", {"url": sid})
        call.returned(words)
        await guard.flush()
        stop.set()
        await tick
    t0 = time.perf_counter()
    fingerprints(words[:262_144])
    return max(gaps, default=0.0), (time.perf_counter() - t0) * 1000


def _p50(values: list[float]) -> float:
    return round(statistics.median(values), 1)


async def sdk_costs(stack: LocalStack) -> dict[str, Any]:
    guard = stack.guard()
    async with guard:
        bare = _p50(await _bare(_CALLS))
        tool_times, tool_work = await _timed(_tool, guard)
        turn_times, _ = await _timed(_turn, guard)
        record_times, _ = await _timed(_record, guard)
        tool, turn, record = _p50(tool_times), _p50(turn_times), _p50(record_times)
        holds = {str(size): await _loop_hold(guard, size) for size in (2_800, 330_000, 2_000_000)}
    gated = stack.guard(budget_gate=True)
    async with gated:
        gate_times, _ = await _timed(_tool, gated)
        gate_tool = _p50(gate_times)
    return {
        "calls_per_figure": _CALLS,
        "bare_noop_await_us_p50": bare,
        "guarded_noop_tool_us_p50": tool,
        "guarded_noop_tool_added_us_p50": round(tool - bare, 1),
        "guarded_turn_added_us_p50": round(turn - bare, 1),
        "guarded_noop_tool_work_us_per_call": round(tool_work, 1),
        "record_tool_after_the_fact_us_p50": record,
        "gate_on_noop_tool_us_p50": gate_tool,
        "gate_added_us_p50": round(gate_tool - tool, 1),
        "loop_hold_ms_while_fingerprinting": {
            size: {"max_loop_gap_ms": round(gap, 2), "fingerprinting_inline_ms": round(inline, 2)}
            for size, (gap, inline) in holds.items()
        },
    }


def describe(report: dict[str, Any]) -> list[str]:
    r = report
    lines = [
        f"SDK cost per call (median of {r['calls_per_figure']:,}; peer: a bare no-op await, "
        f"{r['bare_noop_await_us_p50']} us): guarded no-op tool +{r['guarded_noop_tool_added_us_p50']} us, "
        f"guarded turn +{r['guarded_turn_added_us_p50']} us, "
        f"all the SDK's work per guarded no-op (until its 2 events are on the broker) "
        f"{r['guarded_noop_tool_work_us_per_call']} us, "
        f"record_tool {r['record_tool_after_the_fact_us_p50']} us; pre-call budget gate "
        f"+{r['gate_added_us_p50']} us (a no-op tool call with the gate: {r['gate_on_noop_tool_us_p50']} us)"
    ]
    holds = report["loop_hold_ms_while_fingerprinting"]
    lines.append(
        "longest event-loop hold while a result is fingerprinted (vs fingerprinting it inline): "
        + ", ".join(
            f"{int(size):,} chars {h['max_loop_gap_ms']} ms (inline {h['fingerprinting_inline_ms']} ms)"
            for size, h in holds.items()
        )
    )
    return lines
