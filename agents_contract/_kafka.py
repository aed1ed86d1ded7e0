"""The agent SDK's Kafka seam: publish events keyed by session, read the control topic without a group.

The control reader assigns every partition of the control topic to itself and starts at the end: an agent
process wants only the commands issued from now on (the fence covers the ones before), and a consumer group
would add a rebalance on every agent start and make agents steal each other's partitions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition


class EventPublisher:
    """An idempotent, low-latency producer for agent events (`idempotent=False` for brokers without it)."""

    def __init__(
        self, bootstrap: str, topic: str, *, idempotent: bool = True, client_id: str = "tripwire-agent"
    ):
        self.topic = topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            enable_idempotence=idempotent,
            acks="all",
            linger_ms=0,
            request_timeout_ms=15_000,
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def publish(self, key: bytes, value: bytes) -> asyncio.Future[object]:
        """Queue one record; the returned future resolves when the broker has it."""
        future: asyncio.Future[object] = await self._producer.send(self.topic, value, key=key)
        return future

    async def flush(self) -> None:
        await self._producer.flush()


class ControlSubscription:
    """Reads every partition of the control topic from the position it had at `start()`."""

    def __init__(self, bootstrap: str, topic: str, *, client_id: str = "tripwire-agent-control") -> None:
        self.topic = topic
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            # A kill must not sit in a broker's fetch purgatory: ask for whatever is there, often.
            fetch_max_wait_ms=20,
        )

    async def start(self, *, timeout_s: float = 30.0) -> None:
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
        await self._consumer.stop()

    async def records(self) -> AsyncIterator[bytes]:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for messages in batches.values():
                for message in messages:
                    if message.value is not None:
                        yield message.value
