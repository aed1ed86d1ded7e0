"""Detectors in a running worker: config changes without a restart, and the fleet-wide tool circuit.

Both run a real worker on the session's broker and Redis; every wait is for a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import orjson
import pytest
import yaml

from agents_contract import AgentGuard, Fence, SessionKilled, ToolCircuitOpen
from streams import TopicReader
from streams.lab._stack import LocalStack, budget_only
from tests.conftest import Broker
from tests.streams.test_metrics import scrape, value, wait_for

pytestmark = pytest.mark.integration


async def steps(stack: LocalStack, guard: AgentGuard, count: int) -> str:
    """An agent making `count` distinct tool calls, judged to the end: which detector killed it, if any."""

    async def lookup(n: int) -> int:
        return n

    session_id = f"s-{uuid.uuid4().hex[:8]}"
    async with guard.session(session_id, agent_id="a1", tenant_id="acme", user_id="u1") as session:
        with contextlib.suppress(SessionKilled):  # the kill may land before the agent is done
            for n in range(count):
                await session.call_tool("lookup", {"n": n}, lookup, n)
    # Every event judged and committed; the fence holds every kill the worker issued.
    await stack.drain()
    fence = Fence(stack.redis_url)
    try:
        kill = await fence.lookup(session_id)
    finally:
        await fence.close()
    return "finished" if kill is None else f"killed by {kill.detector}"


async def test_a_changed_detector_config_applies_to_the_running_worker(
    broker: Broker, redis_url: str
) -> None:
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=budget_only(max_steps=1000),
        worker={"timer_interval_s": 0.2},
        private_topics=True,
    ) as stack:
        config = stack.workdir / "tripwire.yaml"

        def rewrite(detectors: dict[str, Any]) -> None:
            data = yaml.safe_load(config.read_text())
            data["detectors"] = detectors
            config.write_text(yaml.safe_dump(data))

        async def reloads(result: str) -> float:
            return value(await scrape(stack), "tripwire_config_reloads_total", result=result)

        async with stack.guard() as guard:
            assert await steps(stack, guard, 8) == "finished"
            # A bad change is refused; the worker keeps the config it runs.
            rewrite({"session_budget": {"max_steps": 0}})
            await wait_for("the bad change refused", lambda: _at_least(reloads("rejected"), 1))
            assert await steps(stack, guard, 8) == "finished"
            rewrite(budget_only(max_steps=3))
            await wait_for("the new limit applied", lambda: _at_least(reloads("applied"), 1))
            assert await steps(stack, guard, 8) == "killed by max_steps"
        assert stack.worker is not None
        assert stack.worker.running


async def _at_least(figure: Any, minimum: float) -> bool:
    return bool(await figure >= minimum)


async def test_a_tool_failing_across_sessions_is_switched_off_in_every_agent(
    broker: Broker, redis_url: str
) -> None:
    detectors = budget_only(max_steps=1000)
    detectors["tool_circuit"] = {"min_calls": 6, "error_ratio": 0.5, "window_s": 60, "open_s": 300}
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=detectors,
        private_topics=True,
    ) as stack:
        tool = f"payments-{uuid.uuid4().hex[:6]}"

        async def payments(n: int) -> int:
            raise ConnectionError(f"payments is down ({n})")

        async with stack.guard() as guard:
            # Six sessions, one failed call each: no session alone has a reason to stop.
            for n in range(6):
                sid = f"pay-{n}-{uuid.uuid4().hex[:6]}"
                async with guard.session(sid, agent_id="a1", tenant_id="acme", user_id=f"u{n}") as session:
                    with pytest.raises(ConnectionError):
                        await session.call_tool(tool, {"n": n}, payments, n)

            async def opened() -> bool:
                return guard.tool_circuits.state(tool, "acme") == "open"

            await wait_for("the tool's circuit to open in the agent process", opened)
            async with guard.session(f"pay-late-{uuid.uuid4().hex[:6]}", agent_id="a1", tenant_id="acme",
                                     user_id="u9") as session:  # fmt: skip
                with pytest.raises(ToolCircuitOpen):
                    await session.call_tool(tool, {"n": 99}, payments, 99)
            # The circuit is acme's: another tenant's agents still reach the tool.
            async with guard.session(f"other-{uuid.uuid4().hex[:6]}", agent_id="a1", tenant_id="globex",
                                     user_id="u1") as session:  # fmt: skip
                with pytest.raises(ConnectionError):
                    await session.call_tool(tool, {"n": 100}, payments, 100)
        samples = await scrape(stack)
        assert value(samples, "tripwire_tool_circuit_commands_total", circuit="open") == 1


async def test_sessions_hung_on_one_model_are_paged_once_and_none_is_killed(
    broker: Broker, redis_url: str
) -> None:
    # Agents that send nothing while a model call hangs (no in-call heartbeats): three of one tenant on one
    # model go quiet together; one of another tenant goes quiet on its own at the same time.
    detectors = budget_only(max_steps=1000)
    detectors["stall"] = {"quiet_s": 2}
    detectors["correlated_quiet"] = {"min_sessions": 3, "window_s": 3, "hold_s": 600}
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=detectors,
        worker={"timer_interval_s": 0.2},
        private_topics=True,
    ) as stack:
        tag = uuid.uuid4().hex[:6]
        hung = [f"hung-{n}-{tag}" for n in range(3)]
        alone = f"alone-{tag}"
        async with stack.guard(call_heartbeat_s=0) as guard, contextlib.AsyncExitStack() as sessions:
            calls = []
            for sid, tenant in [*((sid, "acme") for sid in hung), (alone, "globex")]:
                session = await sessions.enter_async_context(
                    guard.session(sid, agent_id="a1", tenant_id=tenant, user_id=f"u-{sid}")
                )
                calls.append(await session.model_started("provider-x-large"))
            async with TopicReader(
                stack.bootstrap, stack.topics["alerts"], security=stack.security
            ) as alerts:
                seen: list[dict[str, Any]] = []

                async def paged(action: str, count: int) -> bool:
                    seen.extend(orjson.loads(v or b"") for _, v, _ in await alerts.read())
                    return sum(a["action"] == action for a in seen) >= count

                await wait_for("the lone session's stall kill", lambda: paged("killed", 1))
                await wait_for("the incident's one page", lambda: paged("held", 1))

                async def all_held() -> bool:
                    samples = await scrape(stack)
                    held = {"detector": "correlated_quiet", "failure_class": "multi_agent_deadlock"}
                    return value(samples, "tripwire_verdicts_total", **held, mode="enforce") == 3

                # Every hung session held: none of them can be killed before hold_s (600 s) has passed.
                await wait_for("every hung session held", all_held)
                await paged("held", 1)
                # The provider answers: every session speaks again and the incident's page is resolved.
                for call in calls[:3]:
                    call.completed(input_tokens=10, output_tokens=5)
                await wait_for("the incident's page resolved", lambda: paged("held", 2))
        await stack.drain()
        assert sorted((a["action"], a["detector"], a["status"]) for a in seen) == [
            ("held", "correlated_quiet", "firing"),
            ("held", "correlated_quiet", "resolved"),
            ("killed", "stall", "firing"),
        ]
        page, closed = (a for a in seen if a["action"] == "held")
        assert page["alert_id"] == closed["alert_id"]
        (kill,) = (a for a in seen if a["action"] == "killed")
        assert kill["session_id"] == alone
        assert (page["tenant_id"], page["evidence"]["model"]) == ("acme", "provider-x-large")
        fence = Fence(stack.redis_url)
        try:
            for sid in hung:
                assert await fence.lookup(sid) is None
        finally:
            await fence.close()


async def test_another_users_record_in_a_turns_context_kills_and_a_stale_source_pages(
    broker: Broker, redis_url: str
) -> None:
    detectors = budget_only(max_steps=1000)
    detectors["context_scope"] = {"shared_sources": ["kb/public/*"]}
    detectors["context_freshness"] = {"ttl_s": {"crm.*": 60}}
    async with LocalStack(
        **broker.stack_options(redis_url), detectors=detectors, private_topics=True
    ) as stack:
        tag = uuid.uuid4().hex[:6]
        stale, breach = f"stale-{tag}", f"breach-{tag}"
        async with stack.guard() as guard:
            now = guard.now_ms()
            async with guard.session(stale, agent_id="a1", tenant_id="acme", user_id="eve") as session:
                await session.context_used(
                    [
                        {"name": "crm.accounts", "id": "acct-1", "fetched_at_ms": now - 3_600_000},
                        {"name": "kb/public/faq", "owner_tenant_id": "vendor"},
                    ]
                )
                await session.call_tool("answer", {"q": 1}, _answer, 1)
            async with guard.session(breach, agent_id="a1", tenant_id="acme", user_id="eve") as session:
                await session.context_used(
                    [
                        {
                            "name": "crm.accounts",
                            "id": "acct-2",
                            "owner_tenant_id": "acme",
                            "owner_user_id": "dana",
                        }
                    ]
                )
                await session.wait_killed()
                with pytest.raises(SessionKilled):
                    await session.call_tool("answer", {"q": 2}, _answer, 2)
        async with TopicReader(stack.bootstrap, stack.topics["alerts"], security=stack.security) as alerts:
            seen: list[dict[str, Any]] = []

            async def both_paged() -> bool:
                seen.extend(orjson.loads(v or b"") for _, v, _ in await alerts.read())
                return len(seen) >= 2

            await wait_for("the warning and the kill", both_paged)
        by_session = {a["session_id"]: a for a in seen}
        assert (by_session[stale]["action"], by_session[stale]["detector"]) == ("warned", "context_freshness")
        assert by_session[stale]["failure_class"] == "context_blindness"
        assert "crm.accounts/acct-1, fetched 60 min before the turn" in by_session[stale]["reason"]
        kill = by_session[breach]
        assert (kill["action"], kill["detector"], kill["failure_class"]) == (
            "killed",
            "context_scope",
            "memory_corruption",
        )
        assert "which belongs to user dana of tenant acme" in kill["reason"]


async def _answer(q: int) -> int:
    return q
