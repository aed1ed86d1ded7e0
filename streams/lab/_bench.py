"""`make bench`: throughput through one worker and kill latency under background load.

Throughput: a worker process with every detector on (budgets set high enough that healthy load trips
none) judges a burst of pre-encoded events spread over many sessions, the keyed stages included; the
clock stops when a sentinel session at the end of every partition is killed, which proves everything
before it on that partition was judged. Three rounds, median reported with the spread, because a 2-core
machine is noisy.

Detectors alone: the scenario library (20 copies) through `tripwire replay`'s code, no broker, timed.

Kill latency: while a background producer sends healthy events at a fixed rate, probe agents (real SDK
sessions) publish one breaching turn each; the SDK times the breaching event's send to the kill's arrival.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import time
import uuid
from typing import Any

import orjson

from agents_contract import (
    AgentEvent,
    SessionEnded,
    ToolCalled,
    ToolReturned,
    TurnCompleted,
    TurnStarted,
    encode_event,
    parse_command,
    parse_event,
)
from detectors import DetectorSettings, DetectorSuite, SessionState, build_policy, wall_clock
from streams._kafka import RecordProducer, TopicReader
from streams.lab._scenarios import in_time_order, overrides, scenario_library
from streams.lab._sdkbench import describe as describe_sdk
from streams.lab._sdkbench import sdk_costs
from streams.lab._stack import LocalStack
from streams.operator._replay import replay_lines

_KILL_USD = 50.0
# Every detector on with its defaults, except budgets no healthy bench session may reach: the sentinels and
# probes each spend _KILL_USD at once, which only the session cost ceiling acts on.
BENCH_DETECTORS: dict[str, Any] = {
    "session_budget": {"max_steps": 1_000_000, "max_tokens": 10**12, "max_cost_usd": _KILL_USD / 2},
    "tenant_daily_budget": {"max_cost_usd": 10**9},
    "agent_budget": {"max_cost_usd": 10**9},
}
_ROUNDS = 3
# Events are stamped around the bench's start: agents' clocks are the wall clock, and a session stamped
# hours ago would be past its deadline.
_T0 = wall_clock()


def _session_events(session_id: str, seq0: int, count: int) -> list[bytes]:
    """A realistic mix for one session: turns and tool calls with their completions, cheap and small."""
    env = {"session_id": session_id, "agent_id": "worker-agent", "tenant_id": "bench", "user_id": "u"}
    out: list[bytes] = []
    for i in range(count):
        seq = seq0 + i
        common: dict[str, Any] = {
            **env,
            "event_id": f"{session_id}-{seq}",
            "seq": seq,
            "event_time_ms": _T0 + seq,
        }
        event: AgentEvent
        match i % 4:
            case 0:
                event = TurnStarted(**common, model="gpt-4.1-mini")
            case 1:
                event = TurnCompleted(
                    **common,
                    model="gpt-4.1-mini",
                    input_tokens=900,
                    output_tokens=120,
                    cost_usd=0.001,
                    context_tokens=900,
                    output_digest=f"out-{seq}",
                )
            case 2:
                event = ToolCalled(**common, tool_name="search", call_id=f"c{seq}", args_digest=f"args-{seq}")
            case _:
                event = ToolReturned(
                    **common,
                    tool_name="search",
                    call_id=f"c{seq}",
                    status="ok",
                    result_digest=f"result-{seq}",
                    latency_ms=12.5,
                )
        out.append(encode_event(event))
    # A session that ends, as agents' sessions do: one left open would be killed by the stall detector
    # once the bench has run for its quiet time (5 min), which is not what a throughput figure measures.
    ended: dict[str, Any] = {**env, "event_id": f"{session_id}-{seq0 + count}", "seq": seq0 + count}
    out.append(encode_event(SessionEnded(**ended, event_time_ms=_T0 + seq0 + count)))
    return out


def _sentinel(session_id: str) -> bytes:
    return encode_event(
        TurnCompleted(
            session_id=session_id,
            agent_id="sentinel",
            tenant_id="bench",
            user_id="u",
            event_id=uuid.uuid4().hex,
            seq=1,
            event_time_ms=wall_clock(),
            model="m",
            input_tokens=1,
            output_tokens=1,
            cost_usd=_KILL_USD,
        )
    )


async def _throughput_round(stack: LocalStack, events: int, sessions: int, partitions: int) -> float:
    per_session = max(1, events // sessions)
    batch_id = uuid.uuid4().hex[:6]
    records = [
        (f"load-{batch_id}-{s}".encode(), value)
        for s in range(sessions)
        for value in _session_events(f"load-{batch_id}-{s}", 1, per_session)
    ]
    sentinels = {f"sentinel-{batch_id}-{p}": p for p in range(partitions)}
    async with (
        TopicReader(stack.bootstrap, stack.topics["control"]) as control,
        RecordProducer(stack.bootstrap, idempotent=stack.idempotent, linger_ms=5) as producer,
    ):
        started = time.perf_counter()
        for key, value in records:
            await producer.send(stack.topics["events"], key, value)
        for sid, p in sentinels.items():
            await producer.send(stack.topics["events"], sid.encode(), _sentinel(sid), partition=p)
        await producer.flush()
        pending = set(sentinels)
        while pending:
            for _, command, _ in await control.read(timeout_ms=100):
                if command is not None:
                    pending.discard(parse_command(command).target)
            if time.perf_counter() - started > 600:
                raise TimeoutError(f"sentinels not killed within 600 s: {sorted(pending)}")
        elapsed = time.perf_counter() - started
    return len(records) / elapsed


async def _background(stack: LocalStack, rate: int, stop: asyncio.Event) -> int:
    sent = 0
    batch_id = uuid.uuid4().hex[:6]
    templates = [(f"bg-{batch_id}-{s}", _session_events(f"bg-{batch_id}-{s}", 1, 400)) for s in range(500)]
    async with RecordProducer(stack.bootstrap, idempotent=stack.idempotent, linger_ms=2) as producer:
        started = time.perf_counter()
        while not stop.is_set():
            sid, values = templates[sent % len(templates)]
            index = (sent // len(templates)) % len(values)
            await producer.send(stack.topics["events"], sid.encode(), values[index])
            sent += 1
            ahead = sent / rate - (time.perf_counter() - started)
            if ahead > 0.005:
                await asyncio.sleep(ahead)
    return sent


async def _kill_latencies(stack: LocalStack, kills: int) -> tuple[list[float], int]:
    """SDK-timed kill latencies, and how many probes were not killed within 30 s (a saturated worker)."""
    latencies: list[float] = []
    missed = 0
    async with stack.guard() as guard:
        for i in range(kills):
            session = guard.session(
                f"probe-{uuid.uuid4().hex[:8]}-{i}", agent_id="probe", tenant_id="bench", user_id="u"
            )
            async with session:
                async with session.turn("m") as turn:
                    turn.record(input_tokens=1, output_tokens=1, cost_usd=_KILL_USD)
                try:
                    await asyncio.wait_for(session.wait_killed(), 30)
                except TimeoutError:
                    missed += 1
                    continue
                if session.kill_latency_ms is not None:
                    latencies.append(session.kill_latency_ms)
    return latencies, missed


def _state_bytes(events: int) -> int:
    """The changelog record of one bench session after `events` events through every detector: what the
    worker keeps per active session (in memory as objects, a small multiple of this)."""
    settings = DetectorSettings.model_validate(BENCH_DETECTORS)
    suite = DetectorSuite(build_policy(settings), clock=lambda: _T0)
    state = SessionState("load-000000-0")
    for raw in _session_events(state.session_id, 1, events):
        suite.observe(state, parse_event(raw))
    return len(state.to_bytes())


def _library_rate(copies: int = 20) -> tuple[float, int]:
    """Events/s of the detectors alone (`tripwire replay`'s code, no broker) over the scenario library, and
    how many verdicts it gave: the cost of judging realistic traffic, every detector and stage on."""
    library = [s for n in range(copies) for s in scenario_library(f"bench{n}")]
    settings = DetectorSettings.model_validate(overrides(library))
    lines = [encode_event(e) for e in in_time_order(library)]
    started = time.perf_counter()
    report = replay_lines(lines, settings)
    return len(lines) / (time.perf_counter() - started), len(report.verdicts)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _bench(
    bootstrap: str | None, redis_url: str | None, events: int, kills: int, rate: int
) -> dict[str, Any]:
    partitions = 4
    async with LocalStack(
        bootstrap=bootstrap,
        redis_url=redis_url,
        detectors=BENCH_DETECTORS,
        partitions=partitions,
        private_topics=True,
    ) as stack:
        broker = "embedded Tansu" if stack.embedded else f"Kafka at {stack.bootstrap}"
        print(f"bench: broker {broker}, worker ready; {events} events x {_ROUNDS} rounds", file=sys.stderr)
        rates = []
        for r in range(_ROUNDS):
            rates.append(
                await _throughput_round(stack, events, sessions=max(1, events // 10), partitions=partitions)
            )
            print(f"bench: round {r + 1}: {rates[-1]:,.0f} events/s", file=sys.stderr)
        print("bench: SDK cost per call", file=sys.stderr)
        sdk = await sdk_costs(stack)
        stop = asyncio.Event()
        background = asyncio.create_task(_background(stack, rate, stop))
        try:
            latencies, missed = await _kill_latencies(stack, kills)
        finally:
            stop.set()
            sent = await background
    return {
        "broker": broker,
        "cpus": os.cpu_count(),
        "state_bytes_per_session": {str(n): _state_bytes(n) for n in (10, 100, 1_000)},
        "scenario_library_replay": dict(zip(("events_per_s", "verdicts"), _library_rate(), strict=True)),
        "throughput": {
            "events_per_round": events,
            "rounds_events_per_s": [round(x) for x in rates],
            "median_events_per_s": round(statistics.median(rates)),
            "spread_max_over_min": round(max(rates) / min(rates), 2),
        },
        "sdk": sdk,
        "kill_latency_ms": {
            "background_events_per_s": rate,
            "background_events_sent": sent,
            "kills": len(latencies),
            "not_killed_within_30s": missed,
            "p50": round(_pct(latencies, 0.5), 2) if latencies else None,
            "p90": round(_pct(latencies, 0.9), 2) if latencies else None,
            "p99": round(_pct(latencies, 0.99), 2) if latencies else None,
            "max": round(max(latencies), 2) if latencies else None,
        },
    }


def run_bench(
    *,
    bootstrap: str | None,
    redis_url: str | None,
    events: int,
    kills: int,
    background_rate: int,
    json_output: bool,
) -> int:
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    report = asyncio.run(_bench(bootstrap, redis_url, events, kills, background_rate))
    if json_output:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
        return 0
    t, k = report["throughput"], report["kill_latency_ms"]
    print(f"broker: {report['broker']}, {report['cpus']} CPUs")
    print(
        f"throughput (one worker, every detector on): median {t['median_events_per_s']:,} events/s over "
        f"{len(t['rounds_events_per_s'])} rounds of {t['events_per_round']:,} {t['rounds_events_per_s']}, "
        f"max/min {t['spread_max_over_min']}"
    )
    print(
        f"kill latency (breaching event sent -> kill at the SDK), {k['kills']} kills under "
        f"{k['background_events_per_s']:,} ev/s background: "
        f"p50 {k['p50']} ms, p90 {k['p90']} ms, p99 {k['p99']} ms, max {k['max']} ms"
        + (
            f"; {k['not_killed_within_30s']} probes not killed within 30 s"
            if k["not_killed_within_30s"]
            else ""
        )
    )
    sizes = ", ".join(f"{b:,} B after {n} events" for n, b in report["state_bytes_per_session"].items())
    print(f"session state (changelog record): {sizes}")
    for line in describe_sdk(report["sdk"]):
        print(line)
    lib = report["scenario_library_replay"]
    print(
        f"detectors alone over the scenario library (replay, no broker): "
        f"{lib['events_per_s']:,.0f} events/s, {lib['verdicts']} verdicts"
    )
    return 0
