"""Operator commands on a real broker, Redis and worker: a manual kill stops an agent; tail shows topics."""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from agents_contract import SessionKilled
from streams import RecordProducer, Settings, load_settings
from streams.lab._stack import LocalStack, budget_only
from streams.operator._operator import manual_kill, release, tail
from tests.conftest import Broker

pytestmark = pytest.mark.integration


@pytest.fixture
async def stack(broker: Broker, redis_url: str) -> AsyncIterator[LocalStack]:
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=budget_only(max_steps=1000),
        private_topics=True,
    ) as s:
        yield s


async def quick() -> str:
    return "done"


def settings_of(stack: LocalStack) -> Settings:
    return load_settings(stack.workdir / "tripwire.yaml")


async def rows(settings: Settings, topic: Any) -> list[dict[str, Any]]:
    return [row async for row in tail(settings, topic, follow=False)]


async def test_a_manual_kill_stops_the_agent_once_and_tail_shows_it_signed(stack: LocalStack) -> None:
    settings = settings_of(stack)
    started = asyncio.Event()

    async def long_task() -> None:
        started.set()
        await asyncio.sleep(120)

    async with (
        stack.guard() as guard,
        guard.session("s-manual", agent_id="a1", tenant_id="t", user_id="u") as session,
    ):
        work = asyncio.ensure_future(session.run(long_task()))
        await started.wait()
        command, issued = await manual_kill(settings, "s-manual", "runaway spotted on the dashboard")
        assert issued
        with pytest.raises(SessionKilled) as killed:
            await asyncio.wait_for(work, 60)
        assert killed.value.command.detector == "manual"
        assert killed.value.command.reason == "runaway spotted on the dashboard"

    # Released, the session can be attached again; the release reports the kill it cleared.
    held = await release(settings, "s-manual")
    assert held is not None
    assert held.command_id == command.command_id
    assert await release(settings, "s-manual") is None
    async with (
        stack.guard() as guard,
        guard.session("s-manual", agent_id="a2", tenant_id="t", user_id="u") as again_session,
    ):
        assert not again_session.killed
        assert await again_session.call_tool("search", {}, quick) == "done"

    # Killed again: a new incident. A kill of a session that is fenced already re-sends the kill in force
    # and raises no second alert.
    second, issued_second = await manual_kill(settings, "s-manual", "again, by hand")
    assert issued_second
    assert second.command_id != command.command_id
    again, issued_again = await manual_kill(settings, "s-manual", "and again")
    assert (again.command_id, issued_again) == (second.command_id, False)

    control = [r for r in await rows(settings, "control") if r["key"] == "s-manual"]
    # Each release left a tombstone, so a fence rebuilt from the topic does not bring the kill back.
    assert [r.get("released", False) for r in control] == [False, True, True, False, False]
    commands = [r for r in control if not r.get("released")]
    assert [r["verified"] for r in commands] == [True, True, True]
    assert [r["command_id"] for r in commands] == [command.command_id, second.command_id, second.command_id]
    alerts = [r for r in await rows(settings, "alerts") if r["session_id"] == "s-manual"]
    assert {a["failure_class"] for a in alerts} == {"runaway_execution"}
    assert [(a["detector"], a["action"], a["command_id"]) for a in alerts] == [
        ("manual", "killed", command.command_id),
        ("manual", "killed", second.command_id),
    ]

    # The command line prints the same, one JSON object per line, and ends at the end of the topic.
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streams",
        "tail",
        "control",
        "--config",
        str(stack.workdir / "tripwire.yaml"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(cli.communicate(), 120)
    assert cli.returncode == 0, err.decode()
    printed = [orjson.loads(line) for line in out.splitlines()]
    assert [(r.get("verified"), r.get("released")) for r in printed if r["key"] == "s-manual"] == [
        (True, None),
        (None, True),
        (None, True),
        (True, None),
        (True, None),
    ]


async def test_tail_dlq_shows_the_reason_and_the_shape_but_not_the_content(stack: LocalStack) -> None:
    settings = settings_of(stack)
    secret = b'{"schema_version": 1, "kind": "heartbeat", "prompt": "my card number is 4111"}'
    async with RecordProducer(
        stack.bootstrap, idempotent=stack.idempotent, security=stack.security
    ) as producer:
        await (await producer.send(stack.topics["events"], b"s-bad", b"{not json"))
        await (await producer.send(stack.topics["events"], b"s-bad", secret))
    deadline = time.monotonic() + 60
    found: list[dict[str, Any]] = []
    while not found:
        assert time.monotonic() < deadline, "the malformed event never reached the DLQ"
        found = [r for r in await rows(settings, "dlq") if r["key"] == "s-bad"]
        found = found if len(found) == 2 else []
    row, leaky = found
    assert "JSON" in row["reason"]
    assert row["size"] == len(b"{not json")
    assert row["sha256"] == hashlib.sha256(b"{not json").hexdigest()
    assert row["source"].startswith(stack.topics["events"] + "/")
    assert leaky["shape"]["fields"]["prompt"] == "string"
    assert "4111" not in orjson.dumps(leaky).decode()
