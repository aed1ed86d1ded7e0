"""Recovery after `kill -9`, measured: one worker holding many active sessions is killed while runaways are
in flight, and started again under the same instance id (static membership, `worker.instance_id`).

    .venv/bin/python scripts/recovery.py [--bootstrap HOST:PORT --redis URL] [--sessions 100000]

Before the kill: `--sessions` active sessions (three events each, none ended) are judged and checkpointed,
and `--acked` runaways are killed and acknowledged by their agents (real SDK sessions). Then the worker is
killed with -9 right after `--inflight` more runaways sent their breaching step, and started again at once.
The figures: seconds from the restart to the worker's ready mark and to the first kill of a probe that
breached right after the restart (processing resumed), whether every in-flight runaway was stopped (no kill
lost), and how many kills were escalated as unacknowledged after the kill-ack timeout (must be none: every
agent acknowledged). Prints one JSON line. Without --bootstrap it uses the embedded broker and Valkey.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import orjson

from agents_contract import TurnCompleted, TurnStarted, encode_event
from detectors import wall_clock
from sinks import Alert
from streams import RecordProducer, TopicReader
from streams.lab._stack import LocalStack

_KILL_USD = 50.0
ACK_TIMEOUT_S = 8.0


def _active_session(sid: str, t0: int) -> list[bytes]:
    env = {"session_id": sid, "agent_id": "a", "tenant_id": "t", "user_id": "u"}
    return [
        encode_event(TurnStarted(**env, event_id=f"{sid}-1", seq=1, event_time_ms=t0, model="m")),
        encode_event(
            TurnCompleted(
                **env,
                event_id=f"{sid}-2",
                seq=2,
                event_time_ms=t0 + 1,
                model="m",
                input_tokens=100,
                output_tokens=10,
                cost_usd=0.0001,
            )
        ),
        encode_event(TurnStarted(**env, event_id=f"{sid}-3", seq=3, event_time_ms=t0 + 2, model="m")),
    ]


async def _stopped(session: Any, timeout_s: float) -> None:
    """The agent does what a real one does on a kill: its work ends, and with it the session's span, so the
    SDK acknowledges `stopped` (an attached session that never ends stays at `stopping`, and is escalated)."""
    await asyncio.wait_for(session.wait_killed(), timeout_s)
    await session.detach("killed")


async def _runaway(guard: Any, sid: str) -> Any:
    session = guard.session(sid, agent_id="runaway", tenant_id="t", user_id="u")
    await session.attach()
    async with session.turn("m") as turn:
        turn.record(input_tokens=1, output_tokens=1, cost_usd=_KILL_USD)
    return session


async def main(args: argparse.Namespace) -> dict[str, Any]:
    instance = f"recovery-{uuid.uuid4().hex[:6]}"
    async with LocalStack(
        bootstrap=args.bootstrap,
        redis_url=args.redis,
        detectors={"session_budget": {"max_cost_usd": _KILL_USD / 2}},
        private_topics=True,
        partitions=4,
        worker={"instance_id": instance, "kill_ack_timeout_s": ACK_TIMEOUT_S},
    ) as stack:
        t0 = wall_clock()
        async with RecordProducer(
            stack.bootstrap, security=stack.security, idempotent=stack.idempotent, linger_ms=5
        ) as producer:
            for n in range(args.sessions):
                sid = f"active-{n}"
                for value in _active_session(sid, t0):
                    await producer.send(stack.topics["events"], sid.encode(), value)
            await producer.flush()
        await stack.drain(timeout_s=600)
        async with (
            stack.guard() as guard,
            TopicReader(stack.bootstrap, stack.topics["alerts"], security=stack.security) as alerts,
        ):
            acked = [await _runaway(guard, f"acked-{n}") for n in range(args.acked)]
            await asyncio.gather(*(_stopped(s, 60) for s in acked))
            await stack.drain(timeout_s=120)
            # Let a checkpoint pass so the acknowledgements are in the changelog too; the in-flight ones
            # below are not, by design.
            await asyncio.sleep(1.5)
            inflight = [await _runaway(guard, f"inflight-{n}") for n in range(args.inflight)]
            # Each agent stops as soon as its kill reaches it, whichever worker sent it.
            stopping = [asyncio.create_task(_stopped(s, 90)) for s in inflight]
            assert stack.worker is not None
            stack.worker.kill()
            killed_at = time.monotonic()
            await stack.start_worker()
            ready_s = time.monotonic() - killed_at
            probe_sent = time.monotonic()
            probe = await _runaway(guard, f"probe-{uuid.uuid4().hex[:6]}")
            await _stopped(probe, 120)
            resumed_s = time.monotonic() - killed_at
            probe_s = time.monotonic() - probe_sent
            outcomes = await asyncio.gather(*stopping, return_exceptions=True)
            stopped = sum(1 for outcome in outcomes if outcome is None)
            # Long enough for any kill the restarted worker wrongly thinks unacknowledged to be escalated.
            await asyncio.sleep(ACK_TIMEOUT_S + 5)
            escalated: set[str] = set()
            while records := await alerts.read(timeout_ms=500):
                for _, value, _ in records:
                    if value is None:
                        continue
                    alert = Alert.model_validate_json(value)
                    if alert.action == "escalated" and alert.status != "resolved":
                        escalated.add(alert.session_id)
    return {
        "active_sessions": args.sessions,
        "acked_before_kill": args.acked,
        "runaways_in_flight": args.inflight,
        "in_flight_stopped": stopped,
        "restart_to_ready_s": round(ready_s, 2),
        "restart_to_probe_killed_s": round(resumed_s, 2),
        "probe_kill_after_send_s": round(probe_s, 2),
        "escalated_although_acknowledged": len(escalated),
        "escalated_by_kind": dict(Counter(sid.split("-")[0] for sid in escalated)),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap")
    parser.add_argument("--redis")
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--acked", type=int, default=200)
    parser.add_argument("--inflight", type=int, default=200)
    print(orjson.dumps(asyncio.run(main(parser.parse_args()))).decode())
