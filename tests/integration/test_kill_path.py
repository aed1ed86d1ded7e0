"""The kill path end to end on a real broker and Redis: events in, verdict, kill out, the agent stops.

Each test starts its own worker process with private topics on the session's broker. Nothing waits on a
sleep: every wait is for a condition, with a deadline that only a broken pipeline reaches.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from agents_contract import (
    CommandSigner,
    GuardedSession,
    KillCommand,
    SessionKilled,
    encode_command,
    kill_command_id,
)
from detectors import SessionState
from streams import RecordProducer, TopicReader
from streams.lab._stack import LocalStack, budget_only
from tests.conftest import Broker
from tests.waiting import DEADLINE_S, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def stack(broker: Broker, redis_url: str, request: pytest.FixtureRequest) -> AsyncIterator[LocalStack]:
    marker = request.node.get_closest_marker("limits")
    limits = marker.kwargs if marker else {"max_steps": 5}
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=budget_only(**limits),
        private_topics=True,
    ) as s:
        yield s


async def quick(n: int) -> int:
    return n


async def read_topic(
    stack: LocalStack, topic: str, match: Callable[[bytes | None, bytes | None, dict[str, bytes]], bool]
) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
    found: list[tuple[bytes | None, bytes | None, dict[str, bytes]]] = []
    async with TopicReader(stack.bootstrap, topic, security=stack.security) as reader:

        async def check() -> bool:
            found.extend(r for r in await reader.read() if match(*r))
            return bool(found)

        await wait_for(f"a matching record on {topic}", check)
    return found


async def search(n: int) -> int:
    await asyncio.sleep(0.002)  # a tool takes time; an instant one could outrun any kill on a busy machine
    return n


async def runaway(session: GuardedSession, bound: int = 30_000) -> None:
    """Loops until killed; the bound (a minute of steps) only turns a broken kill path into a failure."""
    for i in range(bound):
        await session.call_tool("search", {"q": "same"}, search, i)


async def test_kill_stops_the_agent_mid_call_and_is_acknowledged(stack: LocalStack) -> None:
    finished_slow_call = False

    async def slow_tool() -> None:
        nonlocal finished_slow_call
        await asyncio.sleep(DEADLINE_S * 2)
        finished_slow_call = True

    async def work(session: GuardedSession) -> None:
        for i in range(5):
            await session.call_tool("search", {"q": i}, quick, i)
        # The sixth step breaches max_steps=5; the kill must arrive while this call hangs, and cancel it.
        await session.call_tool("slow", {}, slow_tool)

    async with (
        stack.guard() as guard,
        guard.session("s-kill", agent_id="a1", tenant_id="t", user_id="u") as session,
    ):
        with pytest.raises(SessionKilled) as killed:
            await session.run(work(session))
        assert not finished_slow_call
        assert killed.value.command.detector == "max_steps"
        assert killed.value.command.evidence["steps"] == 6
        assert session.steps_after_breach == 0
        # Once killed, every further guarded call is refused without running.
        with pytest.raises(SessionKilled):
            await session.call_tool("search", {}, quick, 1)
        command_id = killed.value.command.command_id

    def is_ack(key: bytes | None, value: bytes | None, headers: dict[str, bytes]) -> bool:
        body = orjson.loads(value or b"{}")
        return body.get("kind") == "control.ack" and body.get("command_id") == command_id

    # The kill arrived while the run was still in its slow call: `stopping` at once, `stopped` once the run
    # had ended; only the second settles the kill.
    outcomes: list[str] = []
    async with TopicReader(stack.bootstrap, stack.topics["events"], security=stack.security) as reader:

        async def stopped() -> bool:
            outcomes.extend(orjson.loads(r[1] or b"")["outcome"] for r in await reader.read() if is_ack(*r))
            return "stopped" in outcomes

        await wait_for("the stopped acknowledgement", stopped)
    assert outcomes == ["stopping", "stopped"]

    def is_alert(key: bytes | None, value: bytes | None, headers: dict[str, bytes]) -> bool:
        return key == b"s-kill"

    (alert,) = await read_topic(stack, stack.topics["alerts"], is_alert)
    body = orjson.loads(alert[1] or b"")
    assert (body["detector"], body["action"], body["command_id"]) == ("max_steps", "killed", command_id)


async def test_an_agent_attaching_after_the_kill_is_stopped_by_the_fence(stack: LocalStack) -> None:
    async with (
        stack.guard() as guard,
        guard.session("s-late", agent_id="a1", tenant_id="t", user_id="u") as first,
    ):
        with pytest.raises(SessionKilled):
            await first.run(runaway(first))

    ran = False

    async def must_not_run() -> None:
        nonlocal ran
        ran = True

    # A new process (a restarted agent) attaches to the killed session: it subscribed after the kill was
    # published, so only the fence can tell it.
    async with (
        stack.guard() as late,
        late.session("s-late", agent_id="a2", tenant_id="t", user_id="u") as second,
    ):
        assert second.killed
        with pytest.raises(SessionKilled):
            await second.call_tool("search", {}, must_not_run)
    assert not ran


async def test_forged_and_unsigned_kills_are_ignored(stack: LocalStack) -> None:
    honest = CommandSigner(stack.signing_key)
    forger = CommandSigner("f" * 32)

    def command(target: str) -> KillCommand:
        return KillCommand(
            command_id=kill_command_id(target, "manual"),
            target=target,
            reason="test",
            detector="manual",
            issued_at_ms=1,
        )

    async with stack.guard() as guard:
        victim = guard.session("s-victim", agent_id="a1", tenant_id="t", user_id="u")
        witness = guard.session("s-witness", agent_id="a1", tenant_id="t", user_id="u")
        async with (
            victim,
            witness,
            RecordProducer(stack.bootstrap, idempotent=stack.idempotent, security=stack.security) as producer,
        ):
            # All on one partition, in order: once the witness's valid kill is read, the forged ones were too.
            topic = stack.topics["control"]
            for raw in (
                encode_command(forger.sign(command("s-victim"))),
                encode_command(command("s-victim")),
                b"\x00not a command",
                encode_command(honest.sign(command("s-witness"))),
            ):
                await (await producer.send(topic, b"s-victim", raw, partition=0))
            await asyncio.wait_for(witness.wait_killed(), DEADLINE_S)
            assert not victim.killed
            assert guard.forged_commands == 3
            assert await victim.call_tool("search", {}, quick, 7) == 7


async def test_malformed_events_go_to_the_dead_letter_topic_and_the_worker_keeps_going(
    stack: LocalStack,
) -> None:
    garbage = [b"\xff\xfe not json", orjson.dumps({"schema_version": 1, "kind": "tool.called"})]
    async with RecordProducer(
        stack.bootstrap, idempotent=stack.idempotent, security=stack.security
    ) as producer:
        for raw in garbage:
            await (await producer.send(stack.topics["events"], b"s-bad", raw))

    async with (
        stack.guard() as guard,
        guard.session("s-after", agent_id="a1", tenant_id="t", user_id="u") as s,
    ):
        with pytest.raises(SessionKilled):
            await s.run(runaway(s))

    letters: list[tuple[bytes | None, bytes | None, dict[str, bytes]]] = []
    async with TopicReader(stack.bootstrap, stack.topics["dlq"], security=stack.security) as reader:

        async def both_dead_lettered() -> bool:
            letters.extend(await reader.read())
            return len(letters) >= len(garbage)

        await wait_for("both malformed records on the DLQ", both_dead_lettered)
    # Metadata only: size, digest and shape of each record, never its bytes.
    documents = [orjson.loads(value or b"") for _, value, _ in letters]
    assert [(d["size"], d["sha256"]) for d in documents] == [
        (len(raw), hashlib.sha256(raw).hexdigest()) for raw in garbage
    ]
    assert all(raw not in (value or b"") for raw, (_, value, _) in zip(garbage, letters, strict=True))
    fields = {"schema_version": "number", "kind": "string"}
    assert documents[1]["shape"] == {"kind": "object", "fields": fields}
    reasons = [headers["tripwire.reason"].decode() for _, _, headers in letters]
    assert reasons[0].startswith("not JSON")
    assert "session_id" in reasons[1]
    assert [d["code"] for d in documents] == ["not_json", "invalid"]
    assert all(
        headers["tripwire.source"].startswith(stack.topics["events"].encode()) for *_, headers in letters
    )


@pytest.mark.limits(max_steps=10)
async def test_session_state_survives_a_worker_crash(stack: LocalStack) -> None:
    changelog = f"{stack.app_id}-sessions-changelog"
    async with (
        stack.guard() as guard,
        guard.session("s-durable", agent_id="a1", tenant_id="t", user_id="u") as s,
    ):
        for i in range(8):
            await s.call_tool("search", {"q": i}, quick, i)

        def checkpointed(key: bytes | None, value: bytes | None, headers: dict[str, bytes]) -> bool:
            return key == b"s-durable" and value is not None and SessionState.from_bytes(value).steps == 8

        await read_topic(stack, changelog, checkpointed)
        assert stack.worker is not None
        stack.worker.kill()
        await stack.start_worker()

        # 3 more steps make 11: only a worker that recovered the first 8 sees the ceiling of 10 crossed.
        for i in range(3):
            await s.call_tool("search", {"q": i}, quick, i)
        command = await asyncio.wait_for(s.wait_killed(), DEADLINE_S)
        assert command.evidence["steps"] == 11
