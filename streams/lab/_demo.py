"""`tripwire demo`: simulated agents, some runaway and some healthy, against a real worker.

Two kinds of scenario run side by side. Live agents are written against the SDK as a user would write them:
the runaway ones loop until a kill stops them (with a bound, so a broken pipeline shows as "not killed"
instead of hanging), the healthy ones finish their task and must not be killed; for them the summary gives
the steps taken after the breaching event and the kill latency from the breaching event's send to the SDK
receiving the kill. Recorded sessions from the scenario library (`streams/lab/_scenarios.py`) cover every
detector, healthy sessions included; they are published as agents would publish them, with their times
moved to now, and the summary says which detector's alert came back for them.
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

from agents_contract import (
    AgentEvent,
    AgentGuard,
    ContextAssembled,
    Fence,
    GuardedSession,
    Heartbeat,
    SessionKilled,
    encode_event,
)
from detectors import wall_clock
from sinks import Alert
from streams._kafka import RecordProducer, TopicReader
from streams.lab._scenarios import Scenario as Recorded
from streams.lab._scenarios import overrides, scenario_library
from streams.lab._stack import LocalStack

# Every detector on with its defaults; only the timers are shortened so the demo does not wait minutes.
DEMO_DETECTORS: dict[str, Any] = {"stall": {"quiet_s": 4.0}, "tool_circuit": {"open_s": 5.0}}
# Detectors whose default mode warns rather than kills.
_WARNS = {"burn_rate", "memory_write_amplification", "context_freshness"}
_RUNAWAY_BOUND = 400
_VERDICT_DEADLINE_S = 90.0


async def _search(query: str) -> dict[str, Any]:
    await asyncio.sleep(0.005)
    return {"hits": [f"result for {query}"]}


async def _llm(prompt: str) -> str:
    await asyncio.sleep(0.01)
    return f"answer to {prompt}"


async def runaway_tool_loop(session: GuardedSession) -> None:
    """An agent that retries the same search forever: the repeated-call detector must stop it."""
    for _ in range(_RUNAWAY_BOUND):
        await session.call_tool(
            "web_search", {"q": "latest quarterly numbers"}, _search, "latest quarterly numbers"
        )


async def paging_forever(session: GuardedSession) -> None:
    """An agent that pages through results without end, each call new: the step ceiling must stop it."""
    for i in range(_RUNAWAY_BOUND):
        await session.call_tool("web_search", {"q": "quarterly numbers", "page": i}, _search, f"page {i}")


async def over_budget(session: GuardedSession) -> None:
    """An agent on an expensive model that keeps refining its answer and calling a checker: the cost
    ceiling must stop it (the burn rate warns first)."""
    for i in range(_RUNAWAY_BOUND):
        async with session.turn("gpt-4.1") as turn:
            answer = await turn.call(_llm(f"refine draft {i}"))
            turn.record(
                input_tokens=30_000, output_tokens=8_000, cost_usd=1.5, context_tokens=30_000, output=answer
            )
        await session.call_tool("style_check", {"draft": i}, _search, f"draft {i}")


async def context_flood(session: GuardedSession) -> None:
    """An agent that feeds whole documents into cheap turns: the token ceiling must stop it."""
    for i in range(_RUNAWAY_BOUND):
        async with session.turn("small-model") as turn:
            answer = await turn.call(_llm(f"summarise chapter {i}"))
            turn.record(
                input_tokens=120_000, output_tokens=500, cost_usd=0.01, context_tokens=120_000, output=answer
            )
        await session.call_tool("store_summary", {"chapter": i}, _search, f"chapter {i}")


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
    Scenario("runaway-tool-loop", "kill", "repeated_tool_call", runaway_tool_loop),
    Scenario("paging-forever", "kill", "max_steps", paging_forever),
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
            "kind": "live",
        }


@dataclass
class RecordedOutcome:
    scenario: Recorded
    alerts: list[Alert]

    @property
    def expected(self) -> str:
        # A healthy run whose detector pages without killing (many sessions quiet together) is spared.
        if self.scenario.detector is None or self.scenario.killed == ():
            return "none"
        if self.scenario.detector == "tool_circuit":
            return "trip"
        return "warn" if self.scenario.detector in _WARNS else "kill"

    @property
    def detectors(self) -> list[str]:
        return sorted({a.detector for a in self.alerts})

    @property
    def killed(self) -> bool:
        return any(a.action == "killed" for a in self.alerts)

    @property
    def met(self) -> bool:
        wanted = self.scenario.detector
        return wanted is None or any(a.detector == wanted for a in self.alerts if a.status == "firing")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.scenario.name,
            "expected": self.expected,
            "killed": self.killed,
            "detector": self.scenario.detector if self.met and self.scenario.detector else None,
            "detectors": self.detectors,
            "steps_after_breach": None,
            "kill_latency_ms": None,
            "kind": "recorded",
            "sessions": len(self.scenario.sessions),
        }


def _moved_to_now(events: list[AgentEvent], now_ms: int) -> list[AgentEvent]:
    """The recorded events with their times shifted so the last one happens now."""
    if not events:
        return events
    delta = now_ms - max(e.event_time_ms for e in events)
    return [_shifted(e, delta) for e in events]


def _shifted(event: AgentEvent, delta: int) -> AgentEvent:
    """The event `delta` ms later, with the times it carries besides its own (a heartbeat's call start,
    a context source's fetch and validity) moved alike."""
    update: dict[str, Any] = {"event_time_ms": event.event_time_ms + delta}
    if isinstance(event, Heartbeat) and event.in_call_since_ms is not None:
        update["in_call_since_ms"] = event.in_call_since_ms + delta
    elif isinstance(event, ContextAssembled):
        update["sources"] = [
            source.model_copy(
                update={
                    key: getattr(source, key) + delta
                    for key in ("fetched_at_ms", "valid_until_ms")
                    if getattr(source, key) is not None
                }
            )
            for source in event.sources
        ]
    return event.model_copy(update=update)


async def publish_recorded(stack: LocalStack, recorded: list[Recorded]) -> None:
    now = wall_clock()
    async with RecordProducer(
        stack.bootstrap, security=stack.security, idempotent=stack.idempotent
    ) as producer:
        sent = []
        for scenario in recorded:
            for event in _moved_to_now(scenario.events, now):
                value = encode_event(event)
                sent.append(await producer.send(stack.topics["events"], event.session_id.encode(), value))
        await asyncio.gather(*sent)


async def collect_verdicts(
    stack: LocalStack, recorded: list[Recorded], say: Callable[[str], None]
) -> list[RecordedOutcome]:
    """Read the alerts topic until every runaway scenario has its detector's alert (or the deadline)."""
    by_session: dict[str, RecordedOutcome] = {}
    outcomes = [RecordedOutcome(s, []) for s in recorded]
    for outcome in outcomes:
        for sid in outcome.scenario.sessions:
            by_session[sid] = outcome

    def take(records: list[tuple[bytes | None, bytes | None, dict[str, bytes]]], *, tell: bool) -> None:
        for _, value, _ in records:
            alert = Alert.from_bytes(value or b"")
            found = by_session.get(alert.session_id)
            if found is None or any(a.alert_id == alert.alert_id for a in found.alerts):
                continue
            found.alerts.append(alert)
            if tell and alert.status == "firing":
                say(f"{found.scenario.name}: {alert.action} by {alert.detector}: {alert.reason}")

    deadline = time.monotonic() + _VERDICT_DEADLINE_S
    async with TopicReader(stack.bootstrap, stack.topics["alerts"], security=stack.security) as reader:
        while time.monotonic() < deadline:
            take(await reader.read(), tell=True)
            if all(o.met for o in outcomes):
                # Drain once more, so a wrong verdict on a healthy session arriving late is still seen.
                await stack.drain()
                take(await reader.read(timeout_ms=500), tell=False)
                break
    return outcomes


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
    recorded = scenario_library(prefix=f"demo-{uuid.uuid4().hex[:6]}")
    detectors = {**DEMO_DETECTORS, **overrides(recorded)}
    async with LocalStack(bootstrap=bootstrap, redis_url=redis_url, detectors=detectors) as stack:
        say(f"worker ready (broker {stack.bootstrap}, redis {stack.redis_url}); every detector on")
        # Live agents first, alone, so their kill latency is the worker's and not a burst's queueing.
        async with stack.guard() as guard:
            outcomes = await asyncio.gather(*(run_scenario(guard, s, say) for s in SCENARIOS))
        say(f"publishing {len(recorded)} recorded scenarios from the scenario library")
        await publish_recorded(stack, recorded)
        replayed = await collect_verdicts(stack, recorded, say)
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
    false_kills += sum(1 for o in replayed if o.expected == "none" and o.killed)
    false_alerts = sum(
        1
        for o in replayed
        if o.expected == "none" and any(a.detector != o.scenario.detector for a in o.alerts)
    )
    scenarios = [o.as_dict() for o in outcomes] + [o.as_dict() for o in replayed]
    covered = sorted({d for s in scenarios if s["detector"] for d in [s["detector"]]})
    return {
        "scenarios": scenarios,
        "false_kills": false_kills,
        "false_alerts": false_alerts,
        "detectors_covered": covered,
    }


def run_demo(*, json_output: bool, bootstrap: str | None, redis_url: str | None) -> int:
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    report = asyncio.run(_demo(json_output, bootstrap, redis_url))
    missed = [
        s
        for s in report["scenarios"]
        if (s["expected"] == "kill" and not s["killed"]) or (s["expected"] != "none" and not s["detector"])
    ]
    if json_output:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    else:
        print()
        print(
            f"{'scenario':<28} {'expected':<9} {'killed':<7} {'detector':<28} "
            f"{'steps after':>11} {'latency ms':>11}"
        )
        for s in report["scenarios"]:
            latency = "-" if s["kill_latency_ms"] is None else f"{s['kill_latency_ms']:.1f}"
            after = "-" if s["steps_after_breach"] is None else str(s["steps_after_breach"])
            print(
                f"{s['name']:<28} {s['expected']:<9} {s['killed']!s:<7} {s['detector'] or '-':<28} "
                f"{after:>11} {latency:>11}"
            )
        print(
            f"\n{len(report['detectors_covered'])} detectors fired as expected; "
            f"false kills: {report['false_kills']}, false alerts: {report['false_alerts']}, "
            f"missed: {len(missed)}"
        )
    return 0 if not missed and report["false_kills"] == 0 and report["false_alerts"] == 0 else 1
