"""The agent SDK's Kafka seam: publish events keyed by session, read the control topic without a group.

The control reader assigns every partition of the control topic to itself and starts at the end: an agent
process wants only the commands issued from now on (the fence covers the ones before), and a consumer group
would add a rebalance on every agent start and make agents steal each other's partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from agents_contract._provenance import SIGNATURE_HEADER, RecordSigner
from agents_contract._security import PLAINTEXT, KafkaSecurity

REQUEST_TIMEOUT_MS: Final = 10_000


class EventPublisher:
    """An idempotent, low-latency producer for agent events (`idempotent=False` for brokers without it).

    `start()` may be called again after it failed (the broker was unreachable): each attempt builds a fresh
    client, since aiokafka's cannot be started twice."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        idempotent: bool = True,
        client_id: str = "tripwire-agent",
        security: KafkaSecurity = PLAINTEXT,
        signer: RecordSigner | None = None,
    ):
        self.topic = topic
        self._signer = signer
        self._security = security
        self._bootstrap, self._idempotent, self._client_id = bootstrap, idempotent, client_id
        self._producer: AIOKafkaProducer | None = None

    @property
    def started(self) -> bool:
        return self._producer is not None

    async def start(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            **self._security.client_options(),
            client_id=self._client_id,
            enable_idempotence=self._idempotent,
            acks="all",
            linger_ms=0,
            # A record not on the broker by then fails and the SDK queues it again: short enough that an
            # outage is noticed, long enough for a broker's leader election.
            request_timeout_ms=REQUEST_TIMEOUT_MS,
        )
        try:
            await producer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def publish(self, key: bytes, value: bytes) -> asyncio.Future[object]:
        """Queue one record; the returned future resolves when the broker has it."""
        assert self._producer is not None, "EventPublisher.start() first"
        headers = None if self._signer is None else [(SIGNATURE_HEADER, self._signer.sign(value))]
        future: asyncio.Future[object] = await self._producer.send(
            self.topic, value, key=key, headers=headers
        )
        return future

    async def probe(self) -> None:
        """Ask the broker for metadata: returns when it answers, raises when it does not."""
        assert self._producer is not None, "EventPublisher.start() first"
        await self._producer.client.fetch_all_metadata()

    async def flush(self) -> None:
        if self._producer is not None:
            await self._producer.flush()


class ControlSubscription:
    """Reads every partition of the control topic from the position it had at `start()`."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        client_id: str = "tripwire-agent-control",
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        self.topic = topic
        self._security = security
        self._bootstrap, self._client_id = bootstrap, client_id
        self._consumer = self._new_consumer()
        self.started = False

    def _new_consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            **self._security.client_options(),
            client_id=self._client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            # A kill must not sit in a broker's fetch purgatory: ask for whatever is there, often.
            fetch_max_wait_ms=20,
        )

    async def start(self, *, timeout_s: float = 30.0) -> None:
        """Connect and take every partition's end as the position. May be called again after a failure."""
        try:
            await self._start(timeout_s)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = self._new_consumer()
            raise
        self.started = True

    async def _start(self, timeout_s: float) -> None:
        await self._consumer.start()
        partitions: set[int] | None = None
        async with asyncio.timeout(timeout_s):
            while not partitions:
                partitions = self._consumer.partitions_for_topic(self.topic)
                if not partitions:
                    # A topic created moments ago may not be in the metadata yet (Apache Kafka propagates
                    # it asynchronously). aiokafka has no public refresh for a group-less consumer, so ask
                    # its client directly; the call waits for the next metadata response.
                    await self._consumer._client.force_metadata_update()
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        # Resolve the positions now, so everything published after start() is read: the fence check that
        # follows covers everything published before.
        for tp in tps:
            await self._consumer.position(tp)

    async def stop(self) -> None:
        self.started = False
        await self._consumer.stop()

    async def records(self) -> AsyncIterator[bytes]:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                for message in messages:
                    if message.value is not None:
                        yield message.value
