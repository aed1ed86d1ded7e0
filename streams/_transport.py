"""Faust's aiokafka transport with two changes to the worker's consumer that keep kills fast.

Faust hard-codes `fetch_max_wait_ms=1500` for its group consumer. Apache Kafka answers a fetch as soon as a
byte is there, so the setting only bounds idle polls; brokers that hold every fetch for the full wait (the
embedded Tansu broker does) would add up to 1.5 s to every kill. The worker registers this transport as the
`tripwire://` broker scheme and sets the wait from `worker.fetch_max_wait_ms`.

Second, the worker's consumer stays assigned to its own state changelog partitions, and Faust never collects
the records fetched from them once recovery is over. aiokafka holds back every fetch to a broker for
`prefetch_backoff` (100 ms, not configurable) while any partition on it has uncollected records, so each new
changelog partition that receives a checkpoint stalled event intake by 100 ms: kills in a session's first
tenth of a second took 60-90 ms instead of 15-20. A 2 ms backoff keeps that stall below a fetch round trip;
a partition with uncollected records is still never fetched again until they are collected.
"""

from __future__ import annotations

from typing import Any

from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka

SCHEME = "tripwire"
_PREFETCH_BACKOFF_S = 0.002


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when its fetcher starts (consumer.start()), which comes after creation.
        consumer._fetch_max_wait_ms = int(self.app.conf.tripwire_fetch_max_wait_ms)
        start = consumer.start

        async def start_with_short_prefetch_backoff() -> None:
            await start()  # aiokafka builds its fetcher here, with the backoff hard-coded
            consumer._fetcher._prefetch_backoff = _PREFETCH_BACKOFF_S

        consumer.start = start_with_short_prefetch_backoff
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


def register() -> None:
    drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
