"""Worker processes: `tripwire worker --processes N` runs N members of one group on this host, and
`tripwire stages` runs the keyed stages apart from the session judge; both still kill what they must."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agents_contract import SessionKilled
from streams.lab._process import WorkerProcess
from streams.lab._stack import LocalStack, budget_only
from tests.conftest import Broker
from tests.integration.test_kill_path import DEADLINE_S, runaway

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


async def test_two_worker_processes_share_the_partitions_and_kill_runaways_on_all(
    broker: Broker, redis_url: str
) -> None:
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=budget_only(max_steps=5),
        private_topics=True,
        partitions=4,
        worker_args=("--processes", "2"),
    ) as stack:
        assert stack.worker is not None
        supervisor = stack.worker.pid
        assert len(_children(supervisor)) == 2
        async with stack.guard() as guard:
            sessions = [
                guard.session(f"s-proc-{n}", agent_id="a1", tenant_id="t", user_id="u") for n in range(8)
            ]
            for s in sessions:
                await s.attach()
            outcomes = await asyncio.gather(
                *(asyncio.wait_for(s.run(runaway(s)), DEADLINE_S) for s in sessions), return_exceptions=True
            )
            assert all(isinstance(o, SessionKilled) for o in outcomes), outcomes
        children = _children(supervisor)
        stack.worker.stop()
        # The supervisor stopped its processes with it.
        assert not [child for child in children if _alive(child)]


async def test_the_keyed_stages_in_their_own_process_still_kill(broker: Broker, redis_url: str) -> None:
    detectors = budget_only(max_steps=50)
    detectors["agent_budget"] = {"enabled": True, "max_cost_usd": 1.0, "window_s": 3600}
    async with LocalStack(
        **broker.stack_options(redis_url),
        detectors=detectors,
        worker={"stages": "own_process"},
        private_topics=True,
    ) as stack:
        stages = WorkerProcess(
            stack.workdir / "tripwire.yaml",
            app_id=stack.app_id,
            redis_url=stack.redis_url,
            log_path=stack.workdir / "stages.log",
            command=("stages",),
        )
        stages.start()
        try:
            async with stack.guard() as guard:
                first = guard.session("s-spend-1", agent_id="a1", tenant_id="t", user_id="u")
                second = guard.session("s-spend-2", agent_id="a1", tenant_id="t", user_id="u")
                for s in (first, second):
                    await s.attach()
                async with first.turn("m") as turn:
                    turn.record(input_tokens=10, output_tokens=5, cost_usd=0.6)
                async with second.turn("m") as turn:
                    turn.record(input_tokens=10, output_tokens=5, cost_usd=0.6)
                # The agent's hour now holds $1.20 against $1.00: the stage process says so, the judge kills
                # a session of the agent (the one whose step the stage judged last).
                waits = [asyncio.create_task(s.wait_killed()) for s in (first, second)]
                done, pending = await asyncio.wait(
                    waits, timeout=DEADLINE_S, return_when=asyncio.FIRST_COMPLETED
                )
                for task in pending:
                    task.cancel()
                assert done
                killed = [s.kill for s in (first, second) if s.kill is not None]
                assert killed
                assert {k.detector for k in killed} == {"agent_budget"}
            assert "Traceback" not in stages.log_tail(200)
        finally:
            stages.stop()
