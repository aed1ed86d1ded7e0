"""The worker's one Kafka seam: how records come in beneath Faust's per-event machinery and go out in bulk.

Faust stays the worker's framework (the app, its consumer group and rebalancing, tables and their recovery,
timers, the stages agent), but the events the judge reads do not go through Faust's streams: one Faust
event per record (a Message, an Event, a queue put and get, acks for the commit) costs more than judging the
record. The worker's consumer hands the records of the judge's topics, as aiokafka fetched them, to an
`Intake`; the judge takes them in bulk and commits their offsets itself (`commit`) once their state is
checkpointed. Faust never sees those records, so it neither acks nor commits them. Output goes through
`Output`: records are appended to the producer's batches without a broker round trip each, and are
confirmed (and re-sent until the broker has them) before the offsets they came from are committed.

Two older changes to the consumer keep kills fast. Faust hard-codes `fetch_max_wait_ms=1500`; brokers that
hold every fetch for the full wait (the embedded Tansu broker does) would add up to 1.5 s to every kill, so
the wait comes from `worker.fetch_max_wait_ms`. And the consumer pauses, at the aiokafka level, the state
changelog partitions that Faust stopped reading after recovery: aiokafka holds back every fetch to a broker
for 100 ms while any partition on it has uncollected records, which stalled intake after each checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka

SCHEME = "tripwire"

log = logging.getLogger("tripwire.worker")

Send = tuple[str, int | None, bytes | None, bytes | None, dict[str, bytes] | None]
"""(topic, partition or None for the key's, key, value, headers): one record of the worker's output."""


class Intake:
    """Fetched records of the judge's topics, waiting to be judged, bounded so a slow judge slows the fetch.

    Chunks are (topic-partition, records) as aiokafka returned them, in fetch order."""

    def __init__(self, topics: Collection[str], *, max_records: int = 100_000) -> None:
        self.topics = frozenset(topics)
        self._max = max_records
        self._chunks: deque[tuple[Any, list[Any]]] = deque()
        self._queued = 0
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()

    def __len__(self) -> int:
        return self._queued

    async def put(self, chunks: Iterable[tuple[Any, list[Any]]]) -> None:
        while self._queued >= self._max:
            self._space.clear()
            await self._space.wait()
        for tp, records in chunks:
            self._chunks.append((tp, records))
            self._queued += len(records)
        self._ready.set()

    async def take(self, max_records: int) -> list[Any]:
        """At least one record (waiting for it), at most `max_records`, in fetch order per partition."""
        while not self._chunks:
            self._ready.clear()
            await self._ready.wait()
        out: list[Any] = []
        chunks = self._chunks
        while chunks and len(out) < max_records:
            tp, records = chunks[0]
            room = max_records - len(out)
            if len(records) <= room:
                chunks.popleft()
                out.extend(records)
            else:
                out.extend(records[:room])
                chunks[0] = (tp, records[room:])
        self._queued -= len(out)
        if self._queued < self._max:
            self._space.set()
        return out

    def drop(self, partitions: Collection[int] | None = None) -> int:
        """Forget queued records of these partitions (all when None): they were revoked, and their next
        owner reads them again from the committed offset. Returns how many were dropped."""
        kept: deque[tuple[Any, list[Any]]] = deque()
        dropped = 0
        for tp, records in self._chunks:
            if partitions is None or tp.partition in partitions:
                dropped += len(records)
            else:
                kept.append((tp, records))
        self._chunks = kept
        self._queued -= dropped
        self._space.set()
        return dropped


@dataclass(slots=True)
class Sent:
    """Records handed to the producer, with the futures that say the broker has them."""

    records: list[Send]
    futures: list[Any] = field(default_factory=list)


class Output:
    """The worker's writes to Kafka, through the Faust app's producer (one connection pool, one client)."""

    def __init__(self, app: Any, *, retry_max_s: float) -> None:
        self._app = app
        self._retry_max_s = retry_max_s
        self.retries = 0

    def _producer(self) -> Any:
        return self._app.producer._ensure_producer()

    async def send(self, records: list[Send]) -> Sent:
        """Append the records to the producer's batches; no broker round trip is awaited here."""
        sent = Sent(records)
        if records:
            sent.futures = await self._append(records)
        return sent

    async def _append(self, records: list[Send]) -> list[Any]:
        producer = self._producer()
        send = producer.send
        futures = []
        for topic, partition, key, value, headers in records:
            futures.append(
                await send(
                    topic,
                    value,
                    key=key,
                    partition=partition,
                    headers=list(headers.items()) if headers else None,
                )
            )
        return futures

    async def confirm(self, batches: Iterable[Sent], *, what: str) -> None:
        """Wait until the broker has every record; whatever failed is sent again, with backoff, until it
        is written (duplicates are harmless: commands, alerts and stage records carry stable ids, and a
        changelog keeps the newest record per key). Holding here holds the offsets behind these records."""
        failed: list[Send] = []
        for sent in batches:
            if not sent.futures:
                continue
            outcomes = await asyncio.gather(*sent.futures, return_exceptions=True)
            failed.extend(
                record
                for record, outcome in zip(sent.records, outcomes, strict=True)
                if isinstance(outcome, BaseException)
            )
        attempt = 0
        while failed:
            attempt += 1
            self.retries += 1
            delay = min(self._retry_max_s, 0.05 * 2 ** min(attempt, 10)) * (0.5 + random.random() / 2)
            log.error("%s: %d records not written; retry %d in %.2f s", what, len(failed), attempt, delay)
            await asyncio.sleep(delay)
            try:
                futures = await self._append(failed)
                outcomes = await asyncio.gather(*futures, return_exceptions=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("%s: the producer refused the records (%r)", what, exc)
                continue
            failed = [
                record
                for record, outcome in zip(failed, outcomes, strict=True)
                if isinstance(outcome, BaseException)
            ]
        if attempt:
            log.warning("%s: written after %d failed attempts", what, attempt)

    async def deliver(self, records: list[Send], *, what: str) -> None:
        """Send now and wait for the broker to have them (kills, the fence's followers)."""
        if records:
            await self.confirm([await self.send(records)], what=what)


async def commit(app: Any, offsets: dict[tuple[str, int], int]) -> bool:
    """Commit the judge's offsets ((topic, partition) -> next offset) through Faust's consumer; False
    when the group would not take them (a rebalance took the partitions: their next owner judges again)."""
    if not offsets:
        return True
    consumer = app.consumer
    assigned = consumer.assignment()
    mine = {}
    for (topic, partition), offset in offsets.items():
        tp = TopicPartition(topic, partition)
        if tp in assigned:
            mine[tp] = offset
    if not mine:
        return False
    try:
        return bool(await consumer._commit(mine))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("offsets not committed (%r); the records after the last commit are judged again", exc)
        return False


def read_offsets(app: Any, topic: str) -> dict[int, int]:
    """Where the consumer starts reading each assigned partition of `topic` (Faust seeks to the committed
    offsets after an assignment): the judge's position before it has judged anything there."""
    out: dict[int, int] = {}
    for tp, offset in app.consumer._read_offset.items():
        if tp.topic == topic and offset is not None and offset >= 0:
            out[tp.partition] = offset
    return out


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads these when the consumer starts, which comes after creation.
        consumer._fetch_max_wait_ms = int(self.app.conf.tripwire_fetch_max_wait_ms)
        instance = getattr(self.app.conf, "tripwire_group_instance_id", None)
        if instance:
            # Static membership: a worker restarted under the same instance id takes its partitions back
            # at once, instead of the group waiting out the dead member's session timeout first.
            consumer._group_instance_id = instance
        return consumer

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: set[Any],
        timeout: float | None = None,  # noqa: ASYNC109 (Faust's signature)
        max_records: int | None = None,
    ) -> Any:
        # Runs in the consumer's thread, where touching the aiokafka consumer is safe.
        if not self.app.in_recovery:
            paused = consumer.paused()
            done = [
                TopicPartition(tp.topic, tp.partition)
                for tp in consumer.assignment()
                if tp not in active_partitions and tp not in paused and self.consumer._is_changelog_tp(tp)
            ]
            if done:
                consumer.pause(*done)
        return await super()._fetch_records(
            consumer, active_partitions, timeout=timeout, max_records=max_records
        )


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:  # noqa: ASYNC109
        records = await super()._getmany(active_partitions, timeout)
        intake: Intake | None = getattr(self.app, "tripwire_intake", None)
        if intake is None or not records:
            return records
        topics = intake.topics
        taken = [(tp, batch) for tp, batch in records.items() if tp.topic in topics]
        if not taken:
            return records
        now = time.monotonic()
        inbound = self.app.monitor.stream_inbound_time
        for tp, _ in taken:
            # Faust's stream-stuck check reads this; the judge, not a Faust stream, reads these partitions.
            inbound[tp] = now
        await intake.put(taken)
        return {tp: batch for tp, batch in records.items() if tp.topic not in topics}


class Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


def register() -> None:
    drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
