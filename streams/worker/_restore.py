"""Table recovery in bulk: the worker's tables are Faust's memory store, restored from their changelogs by
one plain consumer instead of Faust's per-record recovery.

Faust restores a memory table record by record (a Faust event, a queue get under a timeout and a check of
every partition's remaining count per record): about 10,000 records/s here, so a worker holding 100,000
sessions spent 10.8 s of its 14 s restart reading its changelog. A plain aiokafka loop reads the same
partitions at the speed of a fetch. The store does that when the group assigns it its active changelog
partitions (Faust awaits the store's `on_rebalance` before its own recovery starts) and reports each
partition as persisted up to its end, so Faust's recovery finds nothing left to read and only reads what
was written after (a previous owner's last checkpoint, if any). Standby partitions, when configured, are
left to Faust.

The store also keeps which partition each key belongs to for the keys the worker writes itself, so the
keys of a partition that moved to another worker leave this one (Faust's memory store knows that only of
the keys it restored).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, MutableMapping
from typing import Any

import faust.stores
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.stores import memory

log = logging.getLogger("tripwire.worker")

SCHEME = "tripwire"

# A fetch brings up to this much of each partition: the changelog is read start to end, as fast as it comes.
_PARTITION_FETCH_BYTES = 16 * 1024 * 1024
_FETCH_BYTES = 64 * 1024 * 1024


def register() -> None:
    """Make `tripwire://` a Faust store URL (the worker's tables are created with it)."""
    faust.stores.STORES.aliases[SCHEME] = f"{__name__}:RestoringStore"


class RestoringStore(memory.Store[bytes, Any]):
    def __post_init__(self) -> None:
        super().__post_init__()
        # Changelog partition -> the last offset restored in bulk, for the current assignment only.
        self._restored: dict[Any, int] = {}

    def persisted_offset(self, tp: Any) -> int | None:
        return self._restored.get(tp)

    def note_partition(self, key: bytes, partition: int) -> None:
        self._key_partition[key] = partition

    def discard(self, key: bytes) -> None:
        self.data.pop(key, None)
        self._key_partition.pop(key, None)

    async def on_rebalance(
        self,
        assigned: set[Any],
        revoked: set[Any],
        newly_assigned: set[Any],
        generation_id: int = 0,
    ) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        self._restored = {}
        topic = self.table.changelog_topic.get_topic_name()
        actives = {tp for tp in self.app.assignor.assigned_actives() if tp.topic == topic}
        if not actives:
            return
        started = time.monotonic()
        ends = await restore(
            self.app.conf.tripwire_bootstrap,
            self.app.conf.tripwire_kafka_options,
            actives,
            self.data,
            self._key_partition,
        )
        # Faust counts a partition done when its offset reaches the highwater less one.
        self._restored = {tp: end - 1 for tp, end in ends.items()}
        log.info(
            "restored %d keys of %s from %d changelog partitions in %.2f s",
            len(self.data),
            topic,
            len(actives),
            time.monotonic() - started,
        )


async def restore(
    bootstrap: str,
    options: dict[str, Any],
    tps: Iterable[Any],
    data: MutableMapping[Any, Any],
    key_partition: MutableMapping[Any, int],
) -> dict[Any, int]:
    """Apply these changelog partitions to `data`, start to end (a tombstone deletes its key); returns each
    partition's end offset as it was when reading began."""
    wanted = {TopicPartition(tp.topic, tp.partition): tp for tp in tps}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=_FETCH_BYTES,
        max_partition_fetch_bytes=_PARTITION_FETCH_BYTES,
        **options,
    )
    await consumer.start()
    try:
        consumer.assign(list(wanted))
        ends: dict[TopicPartition, int] = await consumer.end_offsets(list(wanted))
        starts: dict[TopicPartition, int] = await consumer.beginning_offsets(list(wanted))
        todo = {tp for tp in wanted if ends[tp] > starts[tp]}
        for tp in wanted:
            if tp in todo:
                consumer.seek(tp, starts[tp])
            else:
                consumer.pause(tp)
        while todo:
            batches = await consumer.getmany(timeout_ms=1_000)
            for tp, records in batches.items():
                partition = tp.partition
                for record in records:
                    key = record.key
                    if record.value is None:
                        data.pop(key, None)
                        key_partition.pop(key, None)
                    else:
                        data[key] = record.value
                        key_partition[key] = partition
            for tp in list(todo):
                # The position, not the last record's offset: compaction and transaction markers leave gaps.
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
                    consumer.pause(tp)
        return {wanted[tp]: end for tp, end in ends.items()}
    finally:
        await consumer.stop()
