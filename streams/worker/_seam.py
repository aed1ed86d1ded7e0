"""Faust's aiokafka transport with two changes to the worker's consumer that keep kills fast.

Faust hard-codes `fetch_max_wait_ms=1500` for its group consumer. Apache Kafka answers a fetch as soon as a
byte is there, so the setting only bounds idle polls; brokers that hold every fetch for the full wait (the
embedded Tansu broker does) would add up to 1.5 s to every kill. The worker registers this transport as the
`tripwire://` broker scheme and sets the wait from `worker.fetch_max_wait_ms`.

Second, the worker's consumer stays assigned to its own state changelog partitions after recovery. Faust
stops collecting their records but keeps fetching them, and aiokafka holds back every fetch to a broker for
100 ms (its prefetch backoff) while any partition on it has uncollected records: each changelog partition's
first checkpoint stalled event intake by 100 ms, so kills early in a worker's life took 60-90 ms instead of
15-20. The consumer now pauses, at the aiokafka level, the changelog partitions that Faust has stopped
reading (recovery over, not a standby). A rebalance builds a new assignment, unpaused, so the next
recovery reads them as before.
"""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka

SCHEME = "tripwire"


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when its fetcher starts (consumer.start()), which comes after creation.
        consumer._fetch_max_wait_ms = int(self.app.conf.tripwire_fetch_max_wait_ms)
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


class Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


def register() -> None:
    drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
