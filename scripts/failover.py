"""Failover time, measured: two workers in one group, one killed with -9 while runaways run, and the time
from its death to each runaway's kill arriving at its agent.

    .venv/bin/python scripts/failover.py [--bootstrap HOST:PORT --redis URL] [--sessions 40]

Without --bootstrap it uses the embedded broker and Valkey. Prints one JSON line: the seconds from the
`kill -9` to the last runaway stopped, the median, and how many runaways were stopped (all must be).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import orjson
import yaml

from agents_contract import GuardedSession, SessionKilled
from detectors import wall_clock
from streams.lab._process import WorkerProcess, write_config
from streams.lab._stack import LocalStack, budget_only

STEPS_BEFORE = 20
MAX_STEPS = 25


async def tool(n: int) -> int:
    await asyncio.sleep(0.001)
    return n


async def run_session(session: GuardedSession, died: asyncio.Event, stopped: dict[str, float]) -> None:
    try:
        for i in range(STEPS_BEFORE):
            await session.call_tool("search", {"q": i}, tool, i)
        await died.wait()
        for i in range(10_000):
            await session.call_tool("search", {"q": i}, tool, i)
            await asyncio.sleep(0.01)
    except SessionKilled:
        stopped[session.session_id] = time.monotonic()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    async with LocalStack(
        bootstrap=args.bootstrap,
        redis_url=args.redis,
        detectors=budget_only(max_steps=MAX_STEPS),
        private_topics=True,
        partitions=8,
    ) as stack:
        second_config = stack.workdir / "second.yaml"
        settings = yaml.safe_load((stack.workdir / "tripwire.yaml").read_text())
        settings["worker"]["metrics_port"] = None
        write_config(second_config, settings)
        second = WorkerProcess(
            second_config, app_id=stack.app_id, redis_url=stack.redis_url, log_path=stack.workdir / "w2.log"
        )
        since = wall_clock()
        second.start()
        await second.wait_ready(since_ms=since)
        died = asyncio.Event()
        stopped: dict[str, float] = {}
        async with stack.guard() as guard:
            sessions = [
                guard.session(f"fo-{n}", agent_id="a1", tenant_id="t", user_id="u")
                for n in range(args.sessions)
            ]
            for s in sessions:
                await s.attach()
            runs = [asyncio.create_task(run_session(s, died, stopped)) for s in sessions]
            await asyncio.sleep(1.0)  # every session has taken its first steps on both workers
            assert stack.worker is not None
            stack.worker.kill()
            t0 = time.monotonic()
            died.set()
            await asyncio.wait_for(asyncio.gather(*runs), args.timeout)
        second.stop()
    after = sorted(t - t0 for t in stopped.values())
    return {
        "sessions": args.sessions,
        "stopped": len(stopped),
        "last_stopped_s": round(after[-1], 2),
        "median_s": round(statistics.median(after), 2),
        "session_timeout_s": 10,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap")
    parser.add_argument("--redis")
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--timeout", type=float, default=120.0)
    print(orjson.dumps(asyncio.run(main(parser.parse_args()))).decode())
