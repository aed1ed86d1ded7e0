"""The budget gate's round trip on its own, beside a Redis PING from the same client (the peer).

    .venv/bin/python scripts/gate_latency.py [--redis URL] [--calls 3000]

Without --redis it starts an embedded Valkey. Prints one JSON line: medians in microseconds of PING and of
one `BudgetGate.reserve` (the Lua reservation), alternated call by call so both see the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from agents_contract import BudgetGate
from streams.lab._embedded import EmbeddedRedis


async def measure(url: str, calls: int) -> dict[str, float]:
    client = aioredis.Redis.from_url(url)
    gate = BudgetGate(client)
    ping: list[float] = []
    reserve: list[float] = []
    try:
        for i in range(calls):
            t0 = time.perf_counter_ns()
            await client.ping()
            ping.append((time.perf_counter_ns() - t0) / 1000)
            t0 = time.perf_counter_ns()
            await gate.reserve(session_id=f"s{i % 50}", agent_id="a", tenant_id="t", usd=0.01, step=True)
            reserve.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        await client.aclose()
    return {
        "calls": calls,
        "ping_us_p50": round(statistics.median(ping), 1),
        "reserve_us_p50": round(statistics.median(reserve), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", help="a Redis URL (default: an embedded Valkey)")
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    embedded = None if args.redis else EmbeddedRedis(workdir=Path(tempfile.mkdtemp()) / "redis").start()
    try:
        url = args.redis or embedded.url  # type: ignore[union-attr]
        print(orjson.dumps(asyncio.run(measure(url, args.calls))).decode())
    finally:
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
