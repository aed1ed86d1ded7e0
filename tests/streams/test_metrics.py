"""The worker's Prometheus endpoint during a demo run, and kills that no agent acknowledges.

Both run a real worker on the session's broker and Redis. Every wait is for a condition: a scraped figure or
a record on a topic, with a deadline.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents_contract import ToolCalled, encode_event
from streams import RecordProducer, TopicReader
from streams.lab._demo import DEMO_DETECTORS, SCENARIOS, run_scenario
from streams.lab._stack import LocalStack, budget_only
from tests.conftest import Broker
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(stack: LocalStack) -> Samples:
    def get() -> str:
        with urllib.request.urlopen(stack.metrics_url, timeout=5) as response:
            body: bytes = response.read()
            return body.decode()

    text = await asyncio.to_thread(get)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_move_during_a_demo_run(broker: Broker, redis_url: str) -> None:
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=DEMO_DETECTORS,
        private_topics=True,
    ) as stack:
        before = await scrape(stack)
        assert value(before, "tripwire_kills_total", detector="max_steps") == 0
        async with stack.guard() as guard:
            await asyncio.gather(*(run_scenario(guard, s, lambda line: None) for s in SCENARIOS))

        async def all_acknowledged() -> Samples | None:
            samples = await scrape(stack)
            lag_reported = any(name == "tripwire_consumer_lag" for name, _ in samples)  # by a 1 s timer
            return samples if value(samples, "tripwire_kill_acks_total") >= 4 and lag_reported else None

        after = await wait_for("four acknowledged kills and the lag gauge", all_acknowledged)
    for detector in ("repeated_tool_call", "max_steps", "max_cost_usd", "max_tokens"):
        assert value(after, "tripwire_kills_total", detector=detector) == 1
        assert value(after, "tripwire_verdicts_total", detector=detector, failure_class="runaway_execution",
                     mode="enforce") == 1  # fmt: skip
    assert value(after, "tripwire_events_total", kind="tool.called") > 40
    assert value(after, "tripwire_events_total", kind="turn.completed") > 10
    # The burn rate warns before the cost ceiling kills: a verdict in warn mode, no kill.
    assert value(after, "tripwire_verdicts_total", detector="burn_rate", failure_class="runaway_execution",
                 mode="warn") == 1  # fmt: skip
    assert value(after, "tripwire_kills_total", detector="burn_rate") == 0
    # Per kill, `stopped`, after a `stopping` when the run was still ending as the kill arrived.
    assert 4 <= value(after, "tripwire_events_total", kind="control.ack") <= 8
    assert value(after, "tripwire_kill_latency_seconds_count") == 4
    assert value(after, "tripwire_kill_ack_latency_seconds_count") == 4
    assert value(after, "tripwire_kills_unacknowledged") == 0


async def test_a_kill_nobody_acknowledges_is_escalated_once_across_restarts(
    broker: Broker, redis_url: str
) -> None:
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=budget_only(max_steps=2),
        worker={"kill_ack_timeout_s": 4},
        private_topics=True,
    ) as stack:
        # An agent without the SDK (or one that died): its events breach, nothing ever acknowledges.
        async with RecordProducer(
            stack.bootstrap, idempotent=stack.idempotent, security=stack.security
        ) as producer:
            for seq in (1, 2, 3):
                event = ToolCalled(
                    event_id=f"silent-{seq}",
                    session_id="s-silent",
                    agent_id="a1",
                    tenant_id="t",
                    user_id="u",
                    seq=seq,
                    event_time_ms=int(time.time() * 1000),
                    tool_name="search",
                    call_id=f"c{seq}",
                    args_digest="d",
                )
                await (await producer.send(stack.topics["events"], b"s-silent", encode_event(event)))

        async with TopicReader(stack.bootstrap, stack.topics["alerts"], security=stack.security) as alerts:
            seen: list[dict[str, Any]] = []

            async def alert_with(action: str) -> dict[str, Any] | None:
                seen.extend(orjson.loads(v or b"") for _, v, _ in await alerts.read())
                return next((a for a in seen if a["action"] == action), None)

            kill = await wait_for("the kill alert", lambda: alert_with("killed"))

            # A worker that crashes before the deadline still knows the kill is pending: from its recovered
            # state, or (if the crash beat the state's checkpoint) by judging the replayed batch again.
            assert stack.worker is not None
            stack.worker.kill()
            await stack.start_worker()

            async def pending() -> bool:
                return value(await scrape(stack), "tripwire_kills_unacknowledged") == 1

            await wait_for("the restarted worker to watch the kill", pending)

            escalation = await wait_for("the escalation alert", lambda: alert_with("escalated"))
            assert (escalation["severity"], escalation["command_id"]) == ("critical", kill["command_id"])
            assert escalation["observed"] >= 4

            # Restarted after escalating, it neither watches the kill nor pages about it again. (A crash in
            # the milliseconds between the page and its checkpoint would page twice; sinks dedupe that.)
            stack.worker.stop()
            await stack.start_worker()
            assert value(await scrape(stack), "tripwire_kills_unacknowledged") == 0
        # At least once, with stable ids: a crash may repeat the kill alert (sinks dedupe on alert_id), but
        # there is one kill and one escalation.
        assert sorted({(a["action"], a["alert_id"]) for a in seen}) == [
            ("escalated", f"{kill['command_id']}-unacknowledged"),
            ("killed", kill["command_id"]),
        ]
