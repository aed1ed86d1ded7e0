"""Who wrote a record, on a real broker: a tenant that requires signed events has only its agents' events
judged (anyone else's under its sessions are dead-lettered with the reason), and a kill verdict written to
the internal verdicts topic by anyone but a worker kills nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from agents_contract import SIGNATURE_HEADER, Fence, GuardedSession, RecordSigner, SessionKilled
from detectors import FailureClass, Verdict
from streams import RecordProducer, TopicReader, load_settings
from streams._config import internal_signer
from streams.lab._stack import LocalStack, budget_only
from streams.worker._pipeline import encode_verdict
from tests.conftest import Broker
from tests.integration.test_kill_path import runaway, search
from tests.waiting import DEADLINE_S, wait_for

pytestmark = pytest.mark.integration

ACME_KEY = "acme-event-key-" + "a" * 24


async def dead_letters(stack: LocalStack, session_id: str, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    async with TopicReader(stack.bootstrap, stack.topics["dlq"], security=stack.security) as reader:

        async def enough() -> bool:
            for key, value, headers in await reader.read():
                if key == session_id.encode():
                    found.append(
                        {**orjson.loads(value or b"{}"), "reason": headers["tripwire.reason"].decode()}
                    )
            return len(found) >= count

        await wait_for(f"{count} dead letters of {session_id}", enough)
    return found


async def steps(session: GuardedSession, count: int) -> None:
    for i in range(count):
        await session.call_tool("search", {"q": "same"}, search, i)


async def test_only_signed_events_of_a_signing_tenant_are_judged(broker: Broker, redis_url: str) -> None:
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=budget_only(max_steps=5),
        event_signing={"tenant_keys": {"acme": ACME_KEY}},
        private_topics=True,
    ) as stack:
        # The tenant's own agent signs, and is killed at its ceiling as always.
        async with (
            stack.guard(event_key=ACME_KEY) as guard,
            guard.session("s-signed", agent_id="a1", tenant_id="acme", user_id="u") as session,
        ):
            with pytest.raises(SessionKilled):
                await session.run(runaway(session))
        # A producer without the key (or with another) publishes events under an acme session: past the
        # ceiling, yet none is judged and the session is not killed.
        for session_id, options in (("s-unsigned", {}), ("s-wrong", {"event_key": "not-acme-" + "x" * 24})):
            async with (
                stack.guard(**options) as forger,
                forger.session(session_id, agent_id="a1", tenant_id="acme", user_id="u") as session,
            ):
                await steps(session, 8)
                assert await forger.flush()
            # session.started, 8 tool calls and returns, session.ended: every one dead-lettered.
            letters = await dead_letters(stack, session_id, 18)
            code = "unsigned" if session_id == "s-unsigned" else "bad_signature"
            assert {letter["code"] for letter in letters} == {code}
            assert all("acme" in letter["reason"] for letter in letters)
            assert all(ACME_KEY not in letter["reason"] for letter in letters)
        fence = Fence(stack.redis_url)
        try:
            assert await fence.lookup("s-signed") is not None
            assert await fence.lookup_many(["s-unsigned", "s-wrong"]) == [None, None]
        finally:
            await fence.close()
        # Another tenant does not require signatures: its unsigned runaway is killed.
        async with (
            stack.guard() as guard,
            guard.session("s-globex", agent_id="a1", tenant_id="globex", user_id="u") as session,
        ):
            with pytest.raises(SessionKilled):
                await session.run(runaway(session))


async def test_a_kill_verdict_only_a_worker_signed_kills(broker: Broker, redis_url: str) -> None:
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=budget_only(max_steps=1000),
        private_topics=True,
    ) as stack:
        settings = load_settings(stack.workdir / "tripwire.yaml")
        verdict = Verdict(
            "memory_leak", FailureClass.MEMORY_CORRUPTION, "s-target", "leak", 1, 0, "e-1", 1, 1
        )
        value = encode_verdict(verdict, tenant_id="acme", user_id="u", agent_id="a1")
        async with (
            stack.guard() as guard,
            guard.session("s-target", agent_id="a1", tenant_id="acme", user_id="u") as session,
        ):
            await steps(session, 2)
            async with RecordProducer(
                stack.bootstrap, idempotent=broker.idempotent, security=stack.security
            ) as out:
                agents_key = RecordSigner([stack.signing_key])  # what an HMAC-era agent holds
                for headers in (None, {SIGNATURE_HEADER: agents_key.sign(value)}):
                    await (await out.send(stack.topics["verdicts"], b"s-target", value, headers=headers))
                letters = await dead_letters(stack, "s-target", 2)
                assert [letter["code"] for letter in letters] == ["bad_stage_verdict"] * 2
                assert [letter["reason"] for letter in letters] == [
                    "stage verdict is not signed by a worker",
                    "stage verdict's signature is not a worker's",
                ]
                assert not session.killed
                await steps(session, 1)
                # The same verdict as a worker's keyed stage signs it: the session is killed.
                genuine = internal_signer(settings).headers(value)
                await (await out.send(stack.topics["verdicts"], b"s-target", value, headers=genuine))
                command = await asyncio.wait_for(session.wait_killed(), DEADLINE_S)
        assert command.detector == "memory_leak"
