"""Fault trials on a real broker and Redis (issue 10): poison flowing beside runaways, Redis restarting and
going away under the kill path, and a worker starting on a broker that has none of its topics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from agents_contract import Fence, SessionKilled
from streams import EmbeddedRedis, RecordProducer, TopicReader
from streams._kafka import TopicSpec, changelog_topic, ensure_topics
from streams.lab._stack import LocalStack, budget_only
from tests.conftest import Broker, redis_binary
from tests.integration.test_kill_path import runaway
from tests.waiting import DEADLINE_S, wait_for

pytestmark = pytest.mark.integration


def poison(stack: LocalStack, i: int) -> list[tuple[str, bytes | None, bytes]]:
    """One round of the records the fault trials crafted: (topic, key, value)."""
    events, verdicts = stack.topics["events"], stack.topics["verdicts"]
    long = "x" * 120
    leak_base = {
        "schema_version": 1,
        "seq": i,
        "event_time_ms": 0,
        "store": "s" * 256,
        "key": "k" * 256,
        "fingerprints": [i],
    }
    write = {
        **leak_base,
        "kind": "memory.written",
        "event_id": f"pw-{i}",
        "session_id": f"{long}w{i}",
        "agent_id": long,
        "tenant_id": long + "a",
        "user_id": long,
    }
    read = {**write, "kind": "memory.read", "event_id": f"pr-{i}", "session_id": f"{long}r{i}"}
    read["tenant_id"] = long + "b"
    absurd = {
        "schema_version": 1,
        "kind": "turn.completed",
        "event_id": f"pc-{i}",
        "session_id": f"poison-{i}",
        "agent_id": "a",
        "tenant_id": "t",
        "user_id": "u",
        "seq": 2**63 - 1,
        "event_time_ms": 253_402_300_799_000,
        "gen_ai.request.model": "m",
        "gen_ai.usage.input_tokens": 1,
        "gen_ai.usage.output_tokens": 1,
        "cost_usd": 1e9,
    }
    return [
        (events, write["session_id"].encode(), orjson.dumps(write)),
        (events, read["session_id"].encode(), orjson.dumps(read)),
        (events, absurd["session_id"].encode(), orjson.dumps(absurd)),
        (events, b"poison", b"\xff not json"),
        (verdicts, b"poison", b"[]"),
        (verdicts, b"poison", b"null"),
        (verdicts, b"poison", orjson.dumps({"detector": "d" * 200, "session_id": "poison"})),
    ]


@pytest.fixture
async def stack(broker: Broker, redis_url: str) -> AsyncIterator[LocalStack]:
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=budget_only(max_steps=5),
        private_topics=True,
    ) as s:
        yield s


async def test_poison_at_a_steady_rate_beside_runaways_every_runaway_killed(stack: LocalStack) -> None:
    stop = asyncio.Event()
    sent = 0

    async def flow() -> None:
        nonlocal sent
        async with RecordProducer(
            stack.bootstrap, idempotent=stack.idempotent, security=stack.security
        ) as producer:
            # A record just under a megabyte: over what the worker's producer could copy to the DLQ whole.
            huge = b'{"prompt": "' + b"A" * 1_000_100 + b'"}'
            await (await producer.send(stack.topics["events"], b"poison", huge))
            i = 0
            while not stop.is_set():
                i += 1
                for topic, key, value in poison(stack, i):
                    await producer.send(topic, key, value)
                    sent += 1
                await asyncio.sleep(0.1)  # ~80 records/s: a steady flow, not a flood

    flowing = asyncio.create_task(flow())
    try:
        await wait_for("poison flowing", lambda: asyncio.sleep(0, result=sent > 40))
        async with stack.guard() as guard:
            sessions = [
                guard.session(f"s-run-{n}", agent_id="a1", tenant_id="t", user_id="u") for n in range(5)
            ]
            for s in sessions:
                await s.attach()
            outcomes = await asyncio.gather(
                *(asyncio.wait_for(s.run(runaway(s)), DEADLINE_S) for s in sessions), return_exceptions=True
            )
            assert all(isinstance(o, SessionKilled) for o in outcomes), outcomes
            for s in sessions:
                await s.detach()
    finally:
        stop.set()
        await flowing
    assert stack.worker is not None
    assert stack.worker.running
    assert "Traceback" not in stack.worker.log_tail(400)


async def test_the_kill_path_survives_redis_restarting_and_going_away(broker: Broker) -> None:
    redis = EmbeddedRedis(binary=redis_binary()).start()
    try:
        async with LocalStack(
            **{**broker.stack_options(redis.url), "agent_redis_url": None},
            detectors=budget_only(max_steps=5),
            private_topics=True,
        ) as stack:
            async with stack.guard() as guard:
                first = guard.session("s-before", agent_id="a1", tenant_id="t", user_id="u")
                await first.attach()
                with pytest.raises(SessionKilled):
                    await asyncio.wait_for(first.run(runaway(first)), DEADLINE_S)

                # A restart: the worker's next fence write must reconnect, not crash the judge.
                redis.stop()
                redis.start()
                after = guard.session("s-after-restart", agent_id="a1", tenant_id="t", user_id="u")
                await after.attach()
                with pytest.raises(SessionKilled):
                    await asyncio.wait_for(after.run(runaway(after)), DEADLINE_S)

                # An outage: kills still go out on the control topic while Redis is gone.
                during = guard.session("s-during-outage", agent_id="a1", tenant_id="t", user_id="u")
                await during.attach()
                redis.stop()
                with pytest.raises(SessionKilled):
                    await asyncio.wait_for(during.run(runaway(during)), DEADLINE_S)
                redis.start()

            # Once Redis is back, the kill that waited is fenced: a late agent finds it at attach.
            fence = Fence(redis.url)
            try:

                async def fenced() -> bool:
                    try:
                        return await fence.lookup("s-during-outage") is not None
                    except Exception:
                        return False

                await wait_for("the outage's kill in the fence", fenced)
            finally:
                await fence.close()
            async with TopicReader(
                stack.bootstrap, stack.topics["alerts"], security=stack.security
            ) as reader:
                statuses: list[str] = []

                async def paged() -> bool:
                    for _, value, _ in await reader.read():
                        alert = orjson.loads(value or b"{}")
                        if alert.get("detector") == "fence_unreachable":
                            statuses.append(alert["status"])
                    return "resolved" in statuses

                await wait_for("the fence outage paged and resolved", paged)
            assert statuses[0] == "firing"
            assert stack.worker is not None
            assert stack.worker.running
    finally:
        redis.stop()


async def test_a_worker_on_a_broker_without_its_topics_creates_them_and_judges(
    broker: Broker, redis_url: str
) -> None:
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=budget_only(max_steps=5),
        private_topics=True,
        create_topics=False,
    ) as stack:
        async with stack.guard() as guard:
            s = guard.session("s-fresh", agent_id="a1", tenant_id="t", user_id="u")
            await s.attach()
            with pytest.raises(SessionKilled):
                await asyncio.wait_for(s.run(runaway(s)), DEADLINE_S)
        # The worker made its changelogs before joining the group (creating them again finds them there).
        names = [changelog_topic(stack.app_id, table) for table in ("sessions", "stages")]
        specs = [TopicSpec(name, 4, 1, 0, compact=True) for name in names]
        outcomes = await ensure_topics(stack.bootstrap, specs, security=stack.security)
        assert [(o.created, o.partitions) for o in outcomes] == [(False, 4), (False, 4)]


async def test_a_flood_of_malformed_records_is_drained_while_runaways_beside_it_are_killed(
    stack: LocalStack,
) -> None:
    flood = 20_000
    async with RecordProducer(
        stack.bootstrap, idempotent=stack.idempotent, linger_ms=5, security=stack.security
    ) as producer:
        for i in range(flood):
            key = f"flood-{i % 101}".encode()
            value = b"\xff not json" if i % 2 else orjson.dumps({"kind": "turn.completed", "session_id": "x"})
            await producer.send(stack.topics["events"], key, value)
        await producer.flush()
    async with stack.guard() as guard:
        sessions = [
            guard.session(f"s-flood-{n}", agent_id="a1", tenant_id="t", user_id="u") for n in range(5)
        ]
        for s in sessions:
            await s.attach()
        outcomes = await asyncio.gather(
            *(asyncio.wait_for(s.run(runaway(s)), DEADLINE_S) for s in sessions), return_exceptions=True
        )
        assert all(isinstance(o, SessionKilled) for o in outcomes), outcomes
        for s in sessions:
            await s.detach()
    # Every malformed record has its dead letter, and the worker committed past all of them.
    await stack.drain(timeout_s=DEADLINE_S)
    letters = 0
    async with TopicReader(stack.bootstrap, stack.topics["dlq"], security=stack.security) as reader:

        async def counted() -> bool:
            nonlocal letters
            letters += len(await reader.read())
            return letters >= flood

        await wait_for(f"{flood} dead letters", counted)
    assert letters == flood
    assert stack.worker is not None
    assert "Traceback" not in stack.worker.log_tail(400)
