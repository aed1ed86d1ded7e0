"""`make bench`: throughput through one worker and kill latency under background load.

Throughput: a worker process with every detector on (budgets set high enough that healthy load trips
none) judges a burst of pre-encoded events spread over many sessions, the keyed stages included; the
clock stops when a sentinel session at the end of every partition is killed, which proves everything
before it on that partition was judged. Three rounds, median reported with the spread, because a 2-core
machine is noisy.

Detectors alone: the scenario library (20 copies) through `tripwire replay`'s code, no broker, timed; and
the cost of the detectors that recognise loops that never repeat exactly (similar_calls, no_new_information,
correlated_quiet), off and on in alternating rounds of one run, per event, over the library and over the
throughput traffic.

Kill latency: while a background producer sends healthy events at a fixed rate, probe agents (real SDK
sessions) publish one breaching turn each; the SDK times the breaching event's send to the kill's arrival.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
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
    sketch,
)
from detectors import DetectorSettings, DetectorSuite, SessionState, build_policy, wall_clock
from streams._kafka import RecordProducer, TopicReader, TopicSpec, ensure_topics
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
# The detectors issue 14 added, switched off for the "before" side of their cost.
NEW_DETECTORS_OFF: dict[str, Any] = {
    name: {"enabled": False} for name in ("similar_calls", "no_new_information", "correlated_quiet")
}
# Search queries as the SDK sketches them: the bench's tool calls carry one each, as real calls do.
_QUERY_WORDS = [f"w{n}" for n in range(400)]
_SKETCHES = [
    sketch(" ".join(random.Random(n).choices(_QUERY_WORDS, k=random.Random(n).randint(3, 9))))
    for n in range(256)
]
# Events are stamped around the bench's start: agents' clocks are the wall clock, and a session stamped
# hours ago would be past its deadline.
_T0 = wall_clock()


def _event_id(session_id: str, seq: int) -> str:
    """An event id shaped like the SDK's (32 hex digits), the same in every run."""
    return hashlib.blake2b(f"{session_id}-{seq}".encode(), digest_size=16).hexdigest()


def _session_events(session_id: str, seq0: int, count: int, *, step_ms: int = 1) -> list[bytes]:
    """A realistic mix for one session: turns and tool calls with their completions, cheap and small,
    `step_ms` apart."""
    env = {"session_id": session_id, "agent_id": "worker-agent", "tenant_id": "bench", "user_id": "u"}
    out: list[bytes] = []
    for i in range(count):
        seq = seq0 + i
        common: dict[str, Any] = {
            **env,
            "event_id": _event_id(session_id, seq),
            "seq": seq,
            "event_time_ms": _T0 + seq * step_ms,
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
                event = ToolCalled(
                    **common,
                    tool_name="search",
                    call_id=f"c{seq}",
                    args_digest=f"args-{seq}",
                    args_sketch=_SKETCHES[seq % len(_SKETCHES)],
                )
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
    seq = seq0 + count
    ended: dict[str, Any] = {**env, "event_id": _event_id(session_id, seq), "seq": seq}
    out.append(encode_event(SessionEnded(**ended, event_time_ms=_T0 + seq * step_ms)))
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


def _round_records(events: int, sessions: int) -> list[tuple[bytes, bytes]]:
    per_session = max(1, events // sessions)
    batch_id = uuid.uuid4().hex[:6]
    return [
        (f"load-{batch_id}-{s}".encode(), value)
        for s in range(sessions)
        for value in _session_events(f"load-{batch_id}-{s}", 1, per_session)
    ]


def _flood_records(
    valid: list[tuple[bytes, bytes]], bad: int, runaways: int
) -> tuple[list[tuple[bytes | None, bytes]], set[str]]:
    """The valid records with `bad` malformed ones spread through them (four kinds of fault, on every
    partition) and `runaways` sessions that breach their cost ceiling at random places in the flood."""
    rng = random.Random(7)
    faults: list[tuple[bytes | None, bytes]] = []
    for i in range(bad):
        key = f"flood-{i % 997}".encode()
        match i % 4:
            case 0:
                faults.append((key, b"\x00not json at all " + str(i).encode()))
            case 1:
                faults.append((key, b"[1, 2, 3]"))
            case 2:
                faults.append(
                    (key, orjson.dumps({"kind": "turn.completed", "session_id": f"flood-{i % 997}"}))
                )
            case _:
                # A valid event under another session's key: refused as wrongly keyed.
                faults.append((b"someone-else", valid[i % len(valid)][1]))
    mixed: list[tuple[bytes | None, bytes]] = list(valid)
    for fault in faults:
        mixed.insert(rng.randrange(len(mixed) + 1), fault)
    named = {f"runaway-{uuid.uuid4().hex[:8]}-{i}" for i in range(runaways)}
    for sid in named:
        mixed.insert(rng.randrange(len(mixed) + 1), (sid.encode(), _sentinel(sid)))
    return mixed, named


async def _drain_round(
    stack: LocalStack,
    records: Sequence[tuple[bytes | None, bytes]],
    partitions: int,
    *,
    also_killed: AbstractSet[str] = frozenset(),
) -> tuple[float, set[str]]:
    """Events/s of the worker draining a backlog: the worker is stopped (SIGSTOP) while the records and a
    sentinel at the end of every partition are produced, then let go; the clock runs from then until every
    sentinel is killed, which proves everything before it on its partition was judged. Returns the rate and
    which of `also_killed` were killed."""
    batch_id = uuid.uuid4().hex[:6]
    sentinels = {f"sentinel-{batch_id}-{p}": p for p in range(partitions)}
    assert stack.worker is not None
    pid = stack.worker.pid
    killed: set[str] = set()
    async with (
        TopicReader(stack.bootstrap, stack.topics["control"], security=stack.security) as control,
        RecordProducer(
            stack.bootstrap, security=stack.security, idempotent=stack.idempotent, linger_ms=5
        ) as producer,
    ):
        os.kill(pid, signal.SIGSTOP)
        try:
            for key, value in records:
                await producer.send(stack.topics["events"], key, value)
            for sid, p in sentinels.items():
                await producer.send(stack.topics["events"], sid.encode(), _sentinel(sid), partition=p)
            await producer.flush()
        finally:
            started = time.perf_counter()
            os.kill(pid, signal.SIGCONT)
        pending = set(sentinels)
        while pending:
            for _, command, _ in await control.read(timeout_ms=100):
                if command is not None:
                    target = parse_command(command).target
                    pending.discard(target)
                    killed.add(target)
            if time.perf_counter() - started > 600:
                raise TimeoutError(f"sentinels not killed within 600 s: {sorted(pending)}")
        elapsed = time.perf_counter() - started
        # Runaways ahead of the sentinels were judged; their kills may still be in the read.
        deadline = time.perf_counter() + 5
        while also_killed - killed and time.perf_counter() < deadline:
            for _, command, _ in await control.read(timeout_ms=100):
                if command is not None:
                    killed.add(parse_command(command).target)
    return len(records) / elapsed, killed & also_killed


async def _peer_rate(
    stack: LocalStack, peer: str, records: list[tuple[bytes, bytes]], partitions: int
) -> float:
    """The same records on a topic of their own, drained by a peer process (streams/lab/_peers.py)."""
    topic = f"{stack.topics['events']}.peer-{peer}-{uuid.uuid4().hex[:6]}"
    await ensure_topics(
        stack.bootstrap, [TopicSpec(topic, partitions, 1, 3_600_000)], security=stack.security
    )
    async with RecordProducer(
        stack.bootstrap, security=stack.security, idempotent=stack.idempotent, linger_ms=5
    ) as producer:
        for key, value in records:
            await producer.send(topic, key, value)
        await producer.flush()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streams.lab._peers",
        peer,
        "--bootstrap",
        stack.bootstrap,
        "--topic",
        topic,
        "--count",
        str(len(records)),
        "--partitions",
        str(partitions),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=900)
    except TimeoutError:
        proc.kill()
        raise
    for line in out.decode(errors="replace").splitlines():
        # Faust's worker writes terminal control codes (cursor on/off) before the figure.
        if "{" in line:
            return float(orjson.loads(line[line.index("{") :])["events_per_s"])
    raise RuntimeError(f"peer {peer} gave no figure (exit {proc.returncode}): {err.decode()[-2000:]}")


async def _background(stack: LocalStack, rate: int, stop: asyncio.Event) -> int:
    sent = 0
    batch_id = uuid.uuid4().hex[:6]
    templates = [(f"bg-{batch_id}-{s}", _session_events(f"bg-{batch_id}-{s}", 1, 400)) for s in range(500)]
    async with RecordProducer(
        stack.bootstrap, security=stack.security, idempotent=stack.idempotent, linger_ms=2
    ) as producer:
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
    """The changelog record of one active bench session after `events` events (SDK-shaped ids, one a second)
    through every detector: what the worker keeps per session (in memory as objects, a small multiple of
    this)."""
    settings = DetectorSettings.model_validate(BENCH_DETECTORS)
    suite = DetectorSuite(build_policy(settings), clock=lambda: _T0)
    state = SessionState("load-000000-0")
    for raw in _session_events(state.session_id, 1, events, step_ms=1_000)[:-1]:
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


def _new_detector_cost(rounds: int = 5, copies: int = 10) -> dict[str, Any]:
    """Microseconds per event with the new detectors off and on, in alternating rounds of one run (the
    machine's noise hits both sides alike): the scenario library through replay's whole path, and the
    throughput traffic through the detector suite alone."""
    library = [s for n in range(copies) for s in scenario_library(f"cost{n}")]
    lines = [encode_event(e) for e in in_time_order(library)]
    traffic = [
        parse_event(raw)
        for n in range(200)
        for raw in _session_events(f"cost-{n:04d}", 1, 100, step_ms=1_000)[:-1]
    ]
    sides = {
        "off": DetectorSettings.model_validate({**overrides(library), **NEW_DETECTORS_OFF}),
        "on": DetectorSettings.model_validate(overrides(library)),
    }
    timings: dict[str, dict[str, list[float]]] = {
        "library": {"off": [], "on": []},
        "traffic": {"off": [], "on": []},
    }
    for _ in range(rounds):
        for side, settings in sides.items():
            started = time.perf_counter()
            replay_lines(lines, settings)
            timings["library"][side].append((time.perf_counter() - started) / len(lines) * 1e6)
            suite = DetectorSuite(build_policy(settings), clock=lambda: _T0)
            states: dict[str, SessionState] = {}
            started = time.perf_counter()
            for event in traffic:
                state = states.get(event.session_id)
                if state is None:
                    state = states[event.session_id] = SessionState(event.session_id)
                suite.observe(state, event)
            timings["traffic"][side].append((time.perf_counter() - started) / len(traffic) * 1e6)
    out: dict[str, Any] = {"rounds": rounds}
    for what, sides_ in timings.items():
        off, on = statistics.median(sides_["off"]), statistics.median(sides_["on"])
        out[what] = {
            "us_per_event_off": round(off, 2),
            "us_per_event_on": round(on, 2),
            "ratio": round(on / off, 3),
        }
    out["library"]["events"], out["traffic"]["events"] = len(lines), len(traffic)
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _bench(
    bootstrap: str | None, redis_url: str | None, events: int, kills: int, rate: int, flood: int
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
        sessions = max(1, events // 10)
        rates: list[float] = []
        for r in range(_ROUNDS):
            drained, _ = await _drain_round(stack, list(_round_records(events, sessions)), partitions)
            rates.append(drained)
            print(f"bench: round {r + 1}: {rates[-1]:,.0f} events/s", file=sys.stderr)
        peers = {}
        for peer in ("aiokafka", "faust"):
            peers[peer] = await _peer_rate(stack, peer, _round_records(events, sessions), partitions)
            print(f"bench: peer {peer}: {peers[peer]:,.0f} events/s", file=sys.stderr)
        flood_records, runaways = _flood_records(_round_records(events, sessions), flood, 100)
        flood_rate, flood_killed = await _drain_round(stack, flood_records, partitions, also_killed=runaways)
        print(f"bench: flood of {flood:,} malformed records: {flood_rate:,.0f} records/s", file=sys.stderr)
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
        "new_detectors_cost": _new_detector_cost(),
        "throughput": {
            "events_per_round": events,
            "rounds_events_per_s": [round(x) for x in rates],
            "median_events_per_s": round(statistics.median(rates)),
            "spread_max_over_min": round(max(rates) / min(rates), 2),
            "peers_events_per_s": {k: round(v) for k, v in peers.items()},
            "ratio_to_peers": {k: round(statistics.median(rates) / v, 2) for k, v in peers.items()},
        },
        "flood": {
            "malformed": flood,
            "valid": events,
            "records_per_s": round(flood_rate),
            "ratio_to_valid_rate": round(flood_rate / statistics.median(rates), 2),
            "runaways": len(runaways),
            "runaways_killed": len(flood_killed),
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
    flood: int = 100_000,
) -> int:
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    report = asyncio.run(_bench(bootstrap, redis_url, events, kills, background_rate, flood))
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
    peers = ", ".join(
        f"{name} {rate:,} ({t['ratio_to_peers'][name]}x)" for name, rate in t["peers_events_per_s"].items()
    )
    print(f"peers in the same run (same events, own process, draining a backlog): {peers}")
    f = report["flood"]
    print(
        f"flood: {f['malformed']:,} malformed records among {f['valid']:,} valid events drained at "
        f"{f['records_per_s']:,} records/s ({f['ratio_to_valid_rate']}x the valid-event rate); "
        f"{f['runaways_killed']} of {f['runaways']} runaways in the flood killed"
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
    cost = report["new_detectors_cost"]
    for what, label in (
        ("library", "scenario library, replay's whole path"),
        ("traffic", "bench traffic, suite"),
    ):
        c = cost[what]
        print(
            f"similar_calls + no_new_information + correlated_quiet ({label}, {cost['rounds']} rounds): "
            f"{c['us_per_event_off']} us/event off, {c['us_per_event_on']} on ({c['ratio']}x)"
        )
    return 0
