"""The worker side's Kafka seam outside Faust: topic administration and plain producers for tools.

Topics are always created explicitly with the configured partition counts: brokers that auto-create (Tansu
does, with 4 partitions) would otherwise pick a count that the session-keyed state cannot follow later.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    TopicAlreadyExistsError,
)
from aiokafka.partitioner import DefaultPartitioner

from agents_contract._security import PLAINTEXT, KafkaSecurity
from streams._config import Settings

log = logging.getLogger("tripwire.topics")

_TOPIC_EXISTS = TopicAlreadyExistsError.errno


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int
    retention_ms: int
    # Compacted topics (the tables' changelogs) keep the newest record per key instead of a time window.
    compact: bool = False

    def configs(self) -> dict[str, str]:
        if self.compact:
            return {"cleanup.policy": "compact"}
        return {"retention.ms": str(self.retention_ms)}


# The worker's Faust tables; their changelogs are `<app_id>-<table>-changelog`.
TABLES = ("sessions", "stages")


def changelog_topic(app_id: str, table: str) -> str:
    return f"{app_id}-{table}-changelog"


@dataclass(frozen=True, slots=True)
class TopicOutcome:
    spec: TopicSpec
    created: bool
    # For a topic that existed: its partition count, which may differ from the spec.
    partitions: int


def topic_specs(settings: Settings) -> list[TopicSpec]:
    t = settings.topics
    return [
        TopicSpec(t.events, t.partitions, t.replication, t.events_retention_ms),
        TopicSpec(t.dlq, t.partitions, t.replication, t.dlq_retention_ms),
        TopicSpec(t.control, t.partitions, t.replication, t.control_retention_ms),
        TopicSpec(t.alerts, t.partitions, t.replication, t.alerts_retention_ms),
        TopicSpec(t.alerts_dlq, t.partitions, t.replication, t.alerts_dlq_retention_ms),
        TopicSpec(t.stages, t.partitions, t.replication, t.stages_retention_ms),
        TopicSpec(t.verdicts, t.partitions, t.replication, t.events_retention_ms),
        # Created here, before the worker joins its group: a changelog that does not exist yet when the
        # group assigns partitions is left out of the assignment ("Ignoring missing topic"), and recovery
        # then waits for it forever.
        *(
            TopicSpec(changelog_topic(settings.worker.app_id, table), t.partitions, t.replication, 0, True)
            for table in TABLES
        ),
        # `tripwire stages` runs the stages as app `<app_id>-stages`, with a changelog of its own.
        TopicSpec(
            changelog_topic(f"{settings.worker.app_id}-stages", "stages"),
            t.partitions,
            t.replication,
            0,
            True,
        ),
        *(
            [TopicSpec(t.dlq_raw, t.partitions, t.replication, t.dlq_raw_retention_ms)]
            if settings.worker.dlq_raw
            else []
        ),
    ]


class _QuietLogger:
    """Raise one logger's level to CRITICAL for the duration of a `with` block."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)
        self._level = self._logger.level

    def __enter__(self) -> None:
        self._level = self._logger.level
        self._logger.setLevel(logging.CRITICAL)

    def __exit__(self, *exc: object) -> None:
        self._logger.setLevel(self._level)


async def wait_for_broker(
    bootstrap: str, *, timeout_s: float = 60.0, security: KafkaSecurity = PLAINTEXT
) -> None:
    """Return once the broker answers a metadata request, or raise TimeoutError naming it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: Exception | None = None
    # aiokafka logs every refused connection at ERROR; while a broker boots those are expected, and the
    # TimeoutError below names the last one if it never comes up.
    with _QuietLogger("aiokafka"):
        while loop.time() < deadline:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=bootstrap, **security.client_options(), request_timeout_ms=5000
            )
            try:
                await admin.start()
                await admin.list_topics()
                return
            except (KafkaError, OSError) as exc:
                last = exc
                await asyncio.sleep(0.2)
            finally:
                await admin.close()
    raise TimeoutError(f"Kafka at {bootstrap} did not answer within {timeout_s:g}s: {last!r}")


async def ensure_topics(
    bootstrap: str, specs: list[TopicSpec], *, security: KafkaSecurity = PLAINTEXT
) -> list[TopicOutcome]:
    """Create the topics that do not exist; report those that do (never alters an existing topic)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, **security.client_options(), request_timeout_ms=15_000
    )
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        wanted = [s for s in specs if s.name not in existing]
        created: set[str] = set()
        if wanted:
            response = await admin.create_topics(
                [
                    NewTopic(
                        s.name,
                        s.partitions,
                        s.replication,
                        topic_configs=s.configs(),
                    )
                    for s in wanted
                ]
            )
            for topic, code, message in _topic_errors(response):
                if code == 0:
                    created.add(topic)
                elif code != _TOPIC_EXISTS:
                    raise RuntimeError(f"could not create topic {topic}: error {code}: {message}")
        counts = await _partition_counts(admin, [s.name for s in specs])
    finally:
        await admin.close()
    outcomes = [TopicOutcome(s, s.name in created, counts.get(s.name, 0)) for s in specs]
    for o in outcomes:
        if not o.created and o.partitions != o.spec.partitions:
            log.warning(
                "topic %s exists with %d partitions, the configuration says %d; it is left as it is",
                o.spec.name,
                o.partitions,
                o.spec.partitions,
            )
    return outcomes


def _topic_errors(response: object) -> list[tuple[str, int, str | None]]:
    rows = getattr(response, "topic_errors", [])
    return [(row[0], row[1], row[2] if len(row) > 2 else None) for row in rows]


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    described = await admin.describe_topics(names)
    return {d["topic"]: len(d["partitions"]) for d in described if d.get("error_code", 0) == 0}


async def consumer_lag(bootstrap: str, group: str, topic: str, *, security: KafkaSecurity = PLAINTEXT) -> int:
    """Records of `topic` that consumer group `group` has not committed yet (a partition it never
    committed counts whole). Zero means the group has judged everything produced so far."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, **security.client_options(), request_timeout_ms=15_000
    )
    # A consumer that names the group but never subscribes reads its commits without joining it (and so
    # without triggering a rebalance of the worker).
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, **security.client_options(), group_id=group, enable_auto_commit=False
    )
    try:
        await admin.start()
        await reader.start()
        partitions = await _partition_counts(admin, [topic])
        tps = [TopicPartition(topic, p) for p in range(partitions.get(topic, 0))]
        ends = await reader.end_offsets(tps) if tps else {}
        lag = 0
        for tp in tps:
            lag += max(0, ends[tp] - (await reader.committed(tp) or 0))
        return lag
    finally:
        await reader.stop()
        await admin.close()


class RecordProducer:
    """A plain producer for tools (demo load, benchmarks, operator commands), not for agents."""

    def __init__(
        self,
        bootstrap: str,
        *,
        idempotent: bool,
        linger_ms: int = 0,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            **security.client_options(),
            enable_idempotence=idempotent,
            acks="all",
            linger_ms=linger_ms,
            max_batch_size=256 * 1024,
        )

    async def __aenter__(self) -> RecordProducer:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: dict[str, bytes] | None = None,
    ) -> asyncio.Future[object]:
        future: asyncio.Future[object] = await self._producer.send(
            topic, value, key=key, partition=partition, headers=list(headers.items()) if headers else None
        )
        return future

    async def flush(self) -> None:
        await self._producer.flush()


class GroupReader:
    """A consumer-group member that commits only what the caller says is done, record by record (the sink
    runners: an alert's offset is committed once it is delivered or dead-lettered)."""

    def __init__(
        self, bootstrap: str, topic: str, group: str, *, security: KafkaSecurity = PLAINTEXT
    ) -> None:
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            **security.client_options(),
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
        )

    async def __aenter__(self) -> GroupReader:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def read(self, timeout_ms: int = 500) -> list[tuple[int, int, bytes | None, bytes | None]]:
        """(partition, offset, key, value) in offset order per partition."""
        batches = await self._consumer.getmany(timeout_ms=timeout_ms)
        return [(m.partition, m.offset, m.key, m.value) for messages in batches.values() for m in messages]

    async def commit(self, topic: str, partition: int, offset: int) -> bool:
        """Commit `offset` as the next to read; False when the partition moved to another member meanwhile
        (its new owner re-reads from the last commit, and the delivery ledger drops what was done)."""
        try:
            await self._consumer.commit({TopicPartition(topic, partition): offset + 1})
        except (CommitFailedError, IllegalStateError) as exc:
            log.info("commit of %s/%d@%d skipped: %r", topic, partition, offset, exc)
            return False
        return True


async def session_records(
    bootstrap: str,
    topic: str,
    session_id: str,
    *,
    since_ms: int,
    limit: int = 10_000,
    security: KafkaSecurity = PLAINTEXT,
) -> list[bytes]:
    """The values of `topic` keyed by `session_id`, from `since_ms` (record time) to the topic's end now.

    Only the partition the key hashes to is read (Kafka's default partitioner, which the SDK's producer and
    Java clients use), starting at the first record at or after `since_ms`; at most `limit` records are
    returned, the latest ones.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, **security.client_options(), group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = sorted(await _partitions_of(consumer, topic))
        if not partitions:
            return []
        key = session_id.encode()
        tp = TopicPartition(topic, DefaultPartitioner()(key, partitions, partitions))
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        start = (await consumer.offsets_for_times({tp: since_ms}))[tp]
        if start is None:
            return []
        consumer.seek(tp, start.offset)
        found: deque[bytes] = deque(maxlen=limit)
        # Read to the end offset and then until a fetch comes back empty: the embedded Tansu reports end
        # offsets behind records it already holds, and a session's last records are the ones that matter.
        while True:
            messages = (await consumer.getmany(tp, timeout_ms=200)).get(tp, [])
            for message in messages:
                if message.key == key and message.value is not None:
                    found.append(message.value)
            if not messages and await consumer.position(tp) >= end:
                return list(found)
    finally:
        await consumer.stop()


async def _partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(20):
        if partitions := consumer.partitions_for_topic(topic):
            return set(partitions)
        # No public refresh for a group-less consumer (see agents_contract/_kafka.py).
        await consumer._client.force_metadata_update()
    return set()


class TopicReader:
    """Reads a whole topic from the beginning without a consumer group (tests, `tail`-like tools)."""

    def __init__(self, bootstrap: str, topic: str, *, security: KafkaSecurity = PLAINTEXT) -> None:
        self.topic = topic
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            **security.client_options(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
        )
        self._end: dict[TopicPartition, int] = {}
        self._last_read_empty = False

    async def __aenter__(self) -> TopicReader:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def mark_end(self) -> None:
        """Remember where the topic ends now, for `caught_up()`."""
        partitions = self._consumer.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._end = await self._consumer.end_offsets(tps) if tps else {}

    async def caught_up(self) -> bool:
        """True once every record that existed at `mark_end()` has been read and a read came back empty
        (the embedded Tansu reports end offsets behind records it already holds)."""
        if not self._last_read_empty:
            return False
        for tp, end in self._end.items():
            if end > 0 and await self._consumer.position(tp) < end:
                return False
        return True

    async def read(self, timeout_ms: int = 200) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms)
        self._last_read_empty = not any(batches.values())
        return [(m.key, m.value, dict(m.headers or ())) for messages in batches.values() for m in messages]


__all__ = [
    "GroupReader",
    "KafkaConnectionError",
    "RecordProducer",
    "TopicOutcome",
    "TopicReader",
    "TopicSpec",
    "consumer_lag",
    "ensure_topics",
    "topic_specs",
    "wait_for_broker",
]
