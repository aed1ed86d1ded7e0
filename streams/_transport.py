"""Faust's aiokafka transport with one change: a short fetch wait for the worker's consumer.

Faust hard-codes `fetch_max_wait_ms=1500` for its group consumer. Apache Kafka answers a fetch as soon as a
byte is there, so the setting only bounds idle polls; brokers that hold every fetch for the full wait (the
embedded Tansu broker does) would add up to 1.5 s to every kill. The worker registers this transport as the
`tripwire://` broker scheme and sets the wait from `worker.fetch_max_wait_ms`.
"""

from __future__ import annotations

from typing import Any

from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka

SCHEME = "tripwire"


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when its fetcher starts (consumer.start()), which comes after creation.
        consumer._fetch_max_wait_ms = int(self.app.conf.tripwire_fetch_max_wait_ms)
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


def register() -> None:
    drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
