"""`tripwire demo`: simulated agents, some runaway and some healthy, against a real worker.

Every scenario is an agent written against the SDK as a user would write it. The runaway ones loop until a
kill stops them (with a bound, so a broken pipeline shows as "not killed" instead of hanging); the healthy
ones finish their task and must not be killed. The summary says, per scenario, what was expected, what
happened, which detector fired, how many steps the agent took after the breaching event, and the kill
latency from the breaching event's send to the SDK receiving the kill.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from agents_contract import AgentGuard, Fence, GuardedSession, SessionKilled
from streams._stack import LocalStack

DEMO_LIMITS = {"max_steps": 40, "max_cost_usd": 2.0, "max_tokens": 120_000}
_RUNAWAY_BOUND = 400


async def _search(query: str) -> dict[str, Any]:
    await asyncio.sleep(0.005)
    return {"hits": [f"result for {query}"]}


async def _llm(prompt: str) -> str:
    await asyncio.sleep(0.01)
    return f"answer to {prompt}"


async def runaway_tool_loop(session: GuardedSession) -> None:
    """An agent that retries the same search forever: the step ceiling must stop it."""
    for _ in range(_RUNAWAY_BOUND):
        await session.call_tool(
            "web_search", {"q": "latest quarterly numbers"}, _search, "latest quarterly numbers"
        )


async def over_budget(session: GuardedSession) -> None:
    """An agent on an expensive model that keeps refining its answer: the cost ceiling must stop it."""
    for i in range(_RUNAWAY_BOUND):
        async with session.turn("gpt-4.1") as turn:
            answer = await turn.call(_llm(f"refine draft {i}"))
            turn.record(
                input_tokens=3_000, output_tokens=800, cost_usd=0.35, context_tokens=3_000, output=answer
            )


async def context_flood(session: GuardedSession) -> None:
    """An agent that feeds whole documents into cheap turns: the token ceiling must stop it."""
    for i in range(_RUNAWAY_BOUND):
        async with session.turn("small-model") as turn:
            answer = await turn.call(_llm(f"summarise chapter {i}"))
            turn.record(
                input_tokens=25_000, output_tokens=500, cost_usd=0.01, context_tokens=25_000, output=answer
            )


async def healthy(session: GuardedSession) -> None:
    """A well-behaved agent: a few turns and tool calls, then done."""
    for i in range(6):
        async with session.turn("gpt-4.1-mini") as turn:
            answer = await turn.call(_llm(f"step {i}"))
            turn.record(
                input_tokens=1_200, output_tokens=200, cost_usd=0.02, context_tokens=1_200, output=answer
            )
        await session.call_tool("lookup", {"id": i}, _search, f"record {i}")


@dataclass(frozen=True)
class Scenario:
    name: str
    expected: Literal["kill", "none"]
    detector: str | None
    work: Callable[[GuardedSession], Coroutine[Any, Any, None]]


SCENARIOS = [
    Scenario("runaway-tool-loop", "kill", "max_steps", runaway_tool_loop),
    Scenario("over-budget", "kill", "max_cost_usd", over_budget),
    Scenario("context-flood", "kill", "max_tokens", context_flood),
    *(Scenario(f"healthy-{i}", "none", None, healthy) for i in range(1, 5)),
]


@dataclass
class Outcome:
    name: str
    session_id: str
    expected: str
    killed: bool
    detector: str | None
    steps_after_breach: int | None
    kill_latency_ms: float | None
    steps: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "expected": self.expected,
            "killed": self.killed,
            "detector": self.detector,
            "steps_after_breach": self.steps_after_breach,
            "kill_latency_ms": None if self.kill_latency_ms is None else round(self.kill_latency_ms, 2),
        }


async def run_scenario(guard: AgentGuard, scenario: Scenario, say: Callable[[str], None]) -> Outcome:
    session_id = f"demo-{scenario.name}-{uuid.uuid4().hex[:8]}"
    async with guard.session(session_id, agent_id="agent-1", tenant_id="demo", user_id="user-1") as session:
        say(f"{scenario.name}: started as {session_id}")
        try:
            await session.run(scenario.work(session))
            say(f"{scenario.name}: finished after {session.steps} steps")
        except SessionKilled as exc:
            say(
                f"{scenario.name}: KILLED by {exc.command.detector} after {session.steps} steps "
                f"({session.kill_latency_ms or 0:.1f} ms after the breaching event; {exc.command.reason})"
            )
        kill = session.kill
        return Outcome(
            scenario.name,
            session_id,
            scenario.expected,
            kill is not None,
            None if kill is None else kill.detector,
            session.steps_after_breach,
            session.kill_latency_ms,
            session.steps,
        )


async def _demo(json_output: bool, bootstrap: str | None, redis_url: str | None) -> dict[str, Any]:
    started = time.monotonic()

    def say(line: str) -> None:
        print(
            f"[{time.monotonic() - started:6.2f}s] {line}",
            file=sys.stderr if json_output else sys.stdout,
            flush=True,
        )

    say("starting " + ("the embedded broker and Valkey" if bootstrap is None else f"against {bootstrap}"))
    async with LocalStack(bootstrap=bootstrap, redis_url=redis_url, detectors=DEMO_LIMITS) as stack:
        say(f"worker ready (broker {stack.bootstrap}, redis {stack.redis_url}); limits {DEMO_LIMITS}")
        async with stack.guard() as guard:
            outcomes = await asyncio.gather(*(run_scenario(guard, s, say) for s in SCENARIOS))
        # A healthy session that finished before a (wrong) kill reached it would hide a false kill: wait
        # until the worker has judged every event, then ask the fence, which records every kill issued.
        say("waiting for the worker to judge every event, then checking the fence for late kills")
        await stack.drain()
        fence = Fence(stack.redis_url)
        try:
            for outcome in outcomes:
                if not outcome.killed and (late := await fence.lookup(outcome.session_id)) is not None:
                    say(f"{outcome.name}: killed by {late.detector} after it finished ({late.reason})")
                    outcome.killed, outcome.detector = True, late.detector
        finally:
            await fence.close()
    false_kills = sum(1 for o in outcomes if o.expected == "none" and o.killed)
    return {"scenarios": [o.as_dict() for o in outcomes], "false_kills": false_kills}


def run_demo(*, json_output: bool, bootstrap: str | None, redis_url: str | None) -> int:
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    report = asyncio.run(_demo(json_output, bootstrap, redis_url))
    missed = [s for s in report["scenarios"] if s["expected"] == "kill" and not s["killed"]]
    if json_output:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    else:
        print()
        print(
            f"{'scenario':<20} {'expected':<9} {'killed':<7} {'detector':<14} "
            f"{'steps after':>11} {'latency ms':>11}"
        )
        for s in report["scenarios"]:
            latency = "-" if s["kill_latency_ms"] is None else f"{s['kill_latency_ms']:.1f}"
            after = "-" if s["steps_after_breach"] is None else str(s["steps_after_breach"])
            print(
                f"{s['name']:<20} {s['expected']:<9} {s['killed']!s:<7} {s['detector'] or '-':<14} "
                f"{after:>11} {latency:>11}"
            )
        print(f"\nfalse kills: {report['false_kills']}, missed kills: {len(missed)}")
    return 0 if not missed and report["false_kills"] == 0 else 1
