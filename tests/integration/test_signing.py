"""Commands signed with the workers' Ed25519 key: agents holding only the public key obey them (over the
control topic and through the fence), agents still on the shared HMAC key obey the HMAC copy while
compatibility is on, and with it off nothing HMAC-signed goes out. A kill captured and published again after
`tripwire release` is refused by the re-attached agent, while kills issued after the release stop it."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from agents_contract import (
    CommandSigner,
    Fence,
    GuardedSession,
    SessionKilled,
    generate_keypair,
    parse_command,
)
from streams import RecordProducer, TopicReader, load_settings
from streams.lab._stack import LocalStack, budget_only
from streams.operator._operator import manual_kill, release
from tests.conftest import Broker
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

PRIVATE, PUBLIC = generate_keypair()


async def search() -> None:
    await asyncio.sleep(0.002)


async def runaway(session: GuardedSession) -> None:
    for i in range(30_000):  # until killed; the bound only turns a broken kill path into a failure
        await session.call_tool("search", {"q": i % 2}, search)


async def killed_by(stack: LocalStack, session_id: str, **guard: object) -> str:
    """Run a runaway under a guard with these options until it is killed; the signature it obeyed."""
    async with (
        stack.guard(**guard) as g,
        g.session(session_id, agent_id="a1", tenant_id="t", user_id="u") as session,
    ):
        with pytest.raises(SessionKilled) as killed:
            await session.run(runaway(session))
    return killed.value.command.signature


async def control_records(stack: LocalStack, session_id: str, count: int) -> list[bytes]:
    found: list[bytes] = []
    async with TopicReader(stack.bootstrap, stack.topics["control"], security=stack.security) as reader:
        for _ in range(200):
            found += [value for key, value, _ in await reader.read() if key == session_id.encode() and value]
            if len(found) >= count:
                break
    return found


async def control_signatures(stack: LocalStack, session_id: str, count: int) -> list[str]:
    return [orjson.loads(value)["signature"] for value in await control_records(stack, session_id, count)]


async def test_public_key_agents_and_shared_key_agents_are_both_killed_while_compatible(
    broker: Broker, redis_url: str
) -> None:
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=budget_only(max_steps=5),
        commands={"private_key": PRIVATE},
        private_topics=True,
    ) as stack:
        public_only = {"signing_key": None, "verify_key": PUBLIC}
        assert (await killed_by(stack, "s-ed", **public_only)).startswith("ed25519:")
        assert not (await killed_by(stack, "s-hmac")).startswith("ed25519:")
        # Both forms are on the control topic and in the fence; a late agent of either kind is fenced.
        assert sorted(s[:8] for s in await control_signatures(stack, "s-ed", 2))[-1] == "ed25519:"
        for session_id in ("s-ed", "s-hmac"):
            for options in (public_only, {}):
                async with stack.guard(**options) as late:
                    attached = late.session(session_id, agent_id="a2", tenant_id="t", user_id="u")
                    async with attached:
                        assert attached.killed, (session_id, options)


async def test_with_compatibility_off_only_ed25519_goes_out(broker: Broker, redis_url: str) -> None:
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=budget_only(max_steps=5),
        commands={"private_key": PRIVATE, "hmac_compat": False},
        private_topics=True,
    ) as stack:
        await killed_by(stack, "s-strict", signing_key=None, verify_key=PUBLIC)
        (signature,) = await control_signatures(stack, "s-strict", 1)
        assert signature.startswith("ed25519:")
        legacy = CommandSigner(stack.signing_key)
        fence = Fence(stack.redis_url)  # reads the HMAC form only, as agents of the first release do
        try:
            assert await fence.lookup("s-strict") is None
        finally:
            await fence.close()
        ed_fence = Fence(stack.redis_url, ed25519=True)
        try:
            in_fence = await ed_fence.lookup("s-strict")
        finally:
            await ed_fence.close()
        assert in_fence is not None
        assert not legacy.verify(in_fence)
        assert CommandSigner(public_key=PUBLIC).verify(parse_command(orjson.dumps(in_fence.model_dump())))


async def test_a_kill_replayed_after_release_is_refused_and_later_kills_still_stop_the_agent(
    broker: Broker, redis_url: str
) -> None:
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=budget_only(max_steps=5),
        commands={"private_key": PRIVATE},
        private_topics=True,
    ) as stack:
        settings = load_settings(stack.workdir / "tripwire.yaml")
        public_only = {"signing_key": None, "verify_key": PUBLIC}
        await killed_by(stack, "s-replay", **public_only)
        captured = [
            raw
            for raw in await control_records(stack, "s-replay", 2)
            if parse_command(raw).signature.startswith("ed25519:")
        ]
        assert captured
        assert parse_command(captured[0]).epoch == 0
        await release(settings, "s-replay")
        async with stack.guard(**public_only) as guard:
            session = guard.session("s-replay", agent_id="a1", tenant_id="t", user_id="u")
            async with session:
                assert not session.killed
                # The attacker publishes the captured kill again: it verifies, and it is refused.
                async with RecordProducer(
                    stack.bootstrap, idempotent=broker.idempotent, security=stack.security
                ) as out:
                    await (await out.send(stack.topics["control"], b"s-replay", captured[0]))

                async def refused() -> bool:
                    return guard.stale_commands >= 1

                await wait_for("the replayed kill to be refused", refused)
                assert not session.killed
                assert guard.forged_commands == 0
                await session.call_tool("search", {"q": "still running"}, search)
                # A kill issued after the release is bound to the new epoch and obeyed.
                command, issued = await manual_kill(settings, "s-replay", "stopped again, by hand")
                assert issued
                assert command.epoch == 1
                await asyncio.wait_for(session.wait_killed(), 60)


async def test_a_detector_kill_after_a_release_is_bound_to_the_new_epoch(
    broker: Broker, redis_url: str
) -> None:
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=budget_only(max_steps=5),
        commands={"private_key": PRIVATE, "hmac_compat": False},
        private_topics=True,
    ) as stack:
        settings = load_settings(stack.workdir / "tripwire.yaml")
        # Killed by hand before the worker judged it, and released: the session is in its epoch 1.
        await manual_kill(settings, "s-epoch", "paused by hand")
        await release(settings, "s-epoch")
        async with (
            stack.guard(signing_key=None, verify_key=PUBLIC) as guard,
            guard.session("s-epoch", agent_id="a1", tenant_id="t", user_id="u") as session,
        ):
            with pytest.raises(SessionKilled) as killed:
                await session.run(runaway(session))
        assert (killed.value.command.detector, killed.value.command.epoch) == ("max_steps", 1)
        assert guard.stale_commands == 0
