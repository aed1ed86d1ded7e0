"""State stays bounded on the real broker: an ended session's state leaves the table with a tombstone on
its changelog, so neither the running worker nor one recovering from the changelog keeps it."""

from __future__ import annotations

import pytest

from streams import TopicReader
from streams.lab._stack import LocalStack, budget_only
from tests.conftest import Broker
from tests.integration.test_kill_path import quick, read_topic

pytestmark = pytest.mark.integration


async def test_an_ended_session_is_evicted_with_a_tombstone(broker: Broker, redis_url: str) -> None:
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=budget_only(max_steps=50),
        worker={"evict_ended_after_s": 0},
        private_topics=True,
    ) as stack:
        changelog = f"{stack.app_id}-sessions-changelog"
        async with (
            stack.guard() as guard,
            guard.session("s-done", agent_id="a1", tenant_id="t", user_id="u") as s,
        ):
            await s.call_tool("search", {"q": 1}, quick, 1)
        # Detached: the session ended. Its state was checkpointed, then evicted.
        records = await read_topic(
            stack, changelog, lambda key, value, headers: key == b"s-done" and value is None
        )
        assert records


async def test_a_stage_key_expires_with_its_window(broker: Broker, redis_url: str) -> None:
    detectors = budget_only(max_steps=50)
    detectors["agent_budget"] = {"enabled": True, "max_cost_usd": 1000, "window_s": 1}
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=detectors,
        private_topics=True,
    ) as stack:
        async with (
            stack.guard() as guard,
            guard.session("s-spend", agent_id="a1", tenant_id="t", user_id="u") as s,
            s.turn("m") as turn,
        ):
            turn.record(input_tokens=10, output_tokens=5, cost_usd=0.5)
        changelog = f"{stack.app_id}-stages-changelog"
        written = await read_topic(
            stack, changelog, lambda key, value, headers: key == b"agent_budget:t/a1" and value is not None
        )
        assert written
        # Twice the window later the key is gone, with a tombstone for recovery.
        gone = await read_topic(
            stack, changelog, lambda key, value, headers: key == b"agent_budget:t/a1" and value is None
        )
        assert gone


async def test_a_burst_of_one_session_is_checkpointed_once_per_interval_not_per_event(
    broker: Broker, redis_url: str
) -> None:
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=budget_only(max_steps=10_000),
        worker={"checkpoint_interval_s": 2.0},
        private_topics=True,
    ) as stack:
        async with (
            stack.guard() as guard,
            guard.session("s-burst", agent_id="a1", tenant_id="t", user_id="u") as s,
        ):
            for i in range(300):
                s.record_tool("search", {"q": i}, result=i)
            await guard.flush()
        # The state after the session ended reaches the changelog, and the offsets are committed after it.
        await stack.drain(timeout_s=60)
        await read_topic(
            stack, f"{stack.app_id}-sessions-changelog", lambda key, value, headers: key == b"s-burst"
        )
        written = []
        async with TopicReader(
            stack.bootstrap, f"{stack.app_id}-sessions-changelog", security=stack.security
        ) as reader:
            while records := await reader.read(timeout_ms=1000):
                written.extend(r for r in records if r[0] == b"s-burst")
        # 601 events (300 tool calls of two events, and the end), judged in a few checkpoint intervals.
        assert 1 <= len(written) <= 6, len(written)
