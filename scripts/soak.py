"""Memory soak: many short sessions through one worker, its resident memory sampled as they pass.

    .venv/bin/python scripts/soak.py [--bootstrap HOST:PORT --redis URL] [--sessions 1000000] [--every 50000]

Each session is three events (a tool call, its result, the end). Ended sessions are evicted after
`--evict-ended-s` (default 0: at the next timer tick). Prints one JSON line per sample: sessions sent, the
worker's RSS in MiB and the number of session states it holds (from its metrics), and a last line with the
growth from the first sample after warm-up to the last. Without --bootstrap it uses the embedded broker.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from agents_contract import SessionEnded, ToolCalled, ToolReturned, encode_event
from detectors import wall_clock
from streams import RecordProducer
from streams.lab._stack import LocalStack


def session(n: int, t0: int) -> list[tuple[bytes, bytes]]:
    sid = f"soak-{n}"
    env: dict[str, Any] = {"session_id": sid, "agent_id": "a1", "tenant_id": "soak", "user_id": f"u{n % 97}"}
    t = t0 + n
    events = [
        ToolCalled(**env, event_id=f"{sid}-1", seq=1, event_time_ms=t, tool_name="search", call_id="c",
                   args_digest=f"a{n}"),
        ToolReturned(**env, event_id=f"{sid}-2", seq=2, event_time_ms=t + 1, tool_name="search", call_id="c",
                     status="ok", latency_ms=3.0, result_digest=f"r{n}"),
        SessionEnded(**env, event_id=f"{sid}-3", seq=3, event_time_ms=t + 2),
    ]  # fmt: skip
    return [(sid.encode(), encode_event(e)) for e in events]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def metric(url: str, name: str) -> float:
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def main(args: argparse.Namespace) -> None:
    async with LocalStack(
        bootstrap=args.bootstrap,
        redis_url=args.redis,
        worker={"evict_ended_after_s": args.evict_ended_s, "log_level": "error"},
        private_topics=True,
    ) as stack:
        assert stack.worker is not None
        pid = stack.worker.pid
        t0 = wall_clock()
        samples: list[dict[str, Any]] = []
        started = time.monotonic()
        async with RecordProducer(
            stack.bootstrap, security=stack.security, idempotent=stack.idempotent, linger_ms=5
        ) as producer:
            for n in range(args.sessions):
                for key, value in session(n, t0):
                    await producer.send(stack.topics["events"], key, value)
                if (n + 1) % args.every == 0:
                    await producer.flush()
                    await stack.drain(timeout_s=600)
                    await asyncio.sleep(args.settle_s)  # let a timer tick evict what just ended
                    sample = {
                        "sessions": n + 1,
                        "rss_mib": round(rss_mib(pid), 1),
                        "states": metric(stack.metrics_url, "tripwire_sessions"),
                        "evicted": metric(stack.metrics_url, "tripwire_sessions_evicted_total"),
                        "elapsed_s": round(time.monotonic() - started, 1),
                    }
                    samples.append(sample)
                    print(orjson.dumps(sample).decode(), flush=True)
        warm = samples[min(1, len(samples) - 1)]
        last = samples[-1]
        print(
            orjson.dumps(
                {
                    "summary": True,
                    "sessions": last["sessions"],
                    "rss_after_warmup_mib": warm["rss_mib"],
                    "rss_last_mib": last["rss_mib"],
                    "growth_mib": round(last["rss_mib"] - warm["rss_mib"], 1),
                    "states_held_last": last["states"],
                }
            ).decode()
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap")
    parser.add_argument("--redis")
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=50_000)
    parser.add_argument("--evict-ended-s", type=float, default=0.0)
    parser.add_argument("--settle-s", type=float, default=2.0)
    asyncio.run(main(parser.parse_args()))
