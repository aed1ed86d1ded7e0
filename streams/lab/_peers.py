"""The benchmark's peers: what a Python process can do with the same events, for ratios beside the figure.

`aiokafka`: a plain consumer-group loop that parses every event and counts it per session, committing
every second; the ceiling for one Python process reading these records. `faust`: the pattern of Faust's
documentation, an agent that iterates its stream and writes one table entry per event (a changelog record
each). Each peer runs in a process of its own, as the worker does, reads a topic filled with the round's
events from the start, and reports the events/s from its first record to its last as one JSON line.

    python -m streams.lab._peers aiokafka|faust --bootstrap HOST:PORT --topic T --count N
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from typing import Any

import orjson


async def _aiokafka_peer(bootstrap: str, topic: str, count: int) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"peer-aiokafka-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    try:
        seen = 0
        started = 0.0
        per_session: dict[str, int] = {}
        last_commit = time.perf_counter()
        while seen < count:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                if not started:
                    started = time.perf_counter()
                for record in records:
                    event = orjson.loads(record.value)
                    sid = event["session_id"]
                    per_session[sid] = per_session.get(sid, 0) + 1
                seen += len(records)
            if time.perf_counter() - last_commit >= 1.0:
                await consumer.commit()
                last_commit = time.perf_counter()
        await consumer.commit()
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
    return {"peer": "aiokafka", "events": seen, "seconds": elapsed, "events_per_s": seen / elapsed}


def _faust_peer(bootstrap: str, topic: str, count: int, partitions: int) -> dict[str, Any]:
    import faust

    app = faust.App(
        f"peer-faust-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        web_enabled=False,
        datadir=tempfile.mkdtemp(prefix="tripwire-peer-"),
        topic_partitions=partitions,
        consumer_auto_offset_reset="earliest",
    )
    events = app.topic(topic, key_type=bytes, value_type=bytes, value_serializer="raw", partitions=partitions)
    counts = app.Table("counts", default=int, partitions=partitions)
    result: dict[str, Any] = {}
    seen = 0
    started = 0.0

    @app.agent(events)
    async def count_events(stream: Any) -> None:
        nonlocal seen, started
        async for value in stream:
            if not started:
                started = time.perf_counter()
            event = orjson.loads(value)
            counts[event["session_id"]] += 1
            seen += 1
            if seen == count:
                elapsed = time.perf_counter() - started
                result.update(peer="faust", events=seen, seconds=elapsed, events_per_s=seen / elapsed)
                # Faust's worker takes over sys.stdout; the figure goes to the process's own.
                os.write(1, orjson.dumps(result) + b"\n")
                # The figure is out; a peer has nothing to hand over, so no orderly shutdown is needed.
                os._exit(0)

    faust.Worker(app, loglevel="error", quiet=True, redirect_stdouts=False).execute_from_commandline()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.lab._peers")
    parser.add_argument("peer", choices=("aiokafka", "faust"))
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args(argv)
    if args.peer == "aiokafka":
        report = asyncio.run(_aiokafka_peer(args.bootstrap, args.topic, args.count))
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    else:
        _faust_peer(args.bootstrap, args.topic, args.count, args.partitions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
