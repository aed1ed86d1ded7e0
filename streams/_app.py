"""The Faust worker: consume `agent.events`, judge them in batches, and act on verdicts.

Per batch the worker (1) judges the records with `Pipeline`, (2) writes kills to the Redis fence, (3) sends
the signed kills, alerts and dead letters and waits for the broker to have them, (4) checkpoints every session
state the batch changed to the table's changelog, once per session, and only then (5) lets Faust commit the
offsets. A crash anywhere before (5) replays the batch; the replay filter in the session state and the stable
command ids make that harmless. State is a Faust table whose values are live `SessionState` objects while the
worker runs and changelog bytes after recovery; `_SessionStore` hides the difference.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import faust
from prometheus_client import Counter

from agents_contract import CommandSigner, Fence, encode_command
from detectors import DetectorSuite, SessionState, ceilings, wall_clock
from streams import _transport as transport
from streams._config import Settings
from streams._pipeline import BatchResult, Pipeline, RawRecord

log = logging.getLogger("tripwire.worker")

EVENTS = Counter("tripwire_events_total", "Agent events judged by this worker")
DUPLICATES = Counter("tripwire_events_duplicate_total", "Replayed events dropped by the replay filter")
DEAD_LETTERS = Counter("tripwire_dead_letters_total", "Records sent to the dead-letter topic")
KILLS = Counter("tripwire_kills_total", "Kill commands issued", ["detector"])
ACKS = Counter("tripwire_kill_acks_total", "Kill acknowledgements received from agents")


def _broker_urls(bootstrap: str) -> list[str]:
    return [f"{transport.SCHEME}://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


class _SessionStore:
    """Session state over the Faust table's store: decode once, keep the live object, checkpoint bytes."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def lookup(self, session_id: str) -> SessionState | None:
        data = self._table.data
        key = session_id.encode()
        value = data.get(key)
        if value is None or isinstance(value, SessionState):
            return value
        state = SessionState.from_bytes(value)
        data[key] = state
        return state

    def checkpoint(self, dirty: dict[str, tuple[SessionState, int]]) -> None:
        data = self._table.data
        for session_id, (state, partition) in dirty.items():
            key = session_id.encode()
            data[key] = state
            self._table.send_changelog(partition, key, state.to_bytes())


def build_app(settings: Settings) -> faust.App:
    conf = settings.worker
    topics = settings.topics
    transport.register()
    app = faust.App(
        conf.app_id,
        broker=_broker_urls(settings.kafka.bootstrap),
        broker_client_id=settings.kafka.client_id,
        store="memory://",
        web_enabled=False,
        topic_partitions=topics.partitions,
        topic_replication_factor=topics.replication,
        topic_disable_leader=True,
        producer_linger_ms=0,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=conf.rebalance_timeout_s,
        broker_session_timeout=conf.session_timeout_s,
        broker_heartbeat_interval=min(3.0, conf.session_timeout_s / 3),
        broker_request_timeout=max(90.0, conf.session_timeout_s * 2),
    )
    app.conf.tripwire_fetch_max_wait_ms = conf.fetch_max_wait_ms
    raw: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    events_topic = app.topic(topics.events, partitions=topics.partitions, **raw)
    control_topic = app.topic(topics.control, partitions=topics.partitions, **raw)
    alerts_topic = app.topic(topics.alerts, partitions=topics.partitions, **raw)
    dlq_topic = app.topic(topics.dlq, partitions=topics.partitions, **raw)
    table: Any = app.Table("sessions", partitions=topics.partitions, key_type=bytes, value_type=bytes)
    table.key_serializer = table.value_serializer = "raw"

    signer = CommandSigner(settings.signing_key)
    pipeline = Pipeline(DetectorSuite(ceilings(settings.detectors.limits()), wall_clock), signer, wall_clock)
    store = _SessionStore(table)
    fence = Fence(settings.redis.url, ttl_s=settings.redis.fence_ttl_s)

    async def act(result: BatchResult) -> None:
        # The fence goes first: an agent that attaches between the fence write and the control record
        # finds the kill either way.
        await fence.kill(result.kills)
        sent: list[Any] = []
        for command in result.kills:
            sent.append(await control_topic.send(key=command.target.encode(), value=encode_command(command)))
            KILLS.labels(command.detector).inc()
        for alert in result.alerts:
            sent.append(await alerts_topic.send(key=alert.session_id.encode(), value=alert.to_bytes()))
        for letter in result.dead_letters:
            record = letter.record
            headers = {
                "tripwire.reason": letter.reason.encode()[:1024],
                "tripwire.source": f"{topics.events}/{record.partition}/{record.offset}".encode(),
            }
            sent.append(await dlq_topic.send(key=record.key, value=record.value or b"", headers=headers))
            log.warning(
                "dead-lettered %s/%d@%d: %s", topics.events, record.partition, record.offset, letter.reason
            )
        if sent:
            await asyncio.gather(*sent)
        for command in result.kills:
            log.warning("killed session %s (%s): %s", command.target, command.detector, command.reason)

    @app.agent(events_topic, name="judge")
    async def judge(stream: Any) -> None:
        async for batch in stream.take_events(conf.batch_max, within=conf.batch_within_ms / 1000):
            result = pipeline.judge(_records(batch), store.lookup)
            await act(result)
            store.checkpoint(result.dirty)
            EVENTS.inc(result.events)
            DUPLICATES.inc(result.duplicates)
            DEAD_LETTERS.inc(len(result.dead_letters))
            ACKS.inc(len(result.acks))

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def announce_ready(sender: Any, **kwargs: Any) -> None:
        await fence.mark_worker_ready(conf.app_id, wall_clock())
        log.info("tripwire worker %s is judging events (rebalance complete)", conf.app_id)

    return app


def _records(batch: Iterable[Any]) -> list[RawRecord]:
    return [RawRecord(e.message.key, e.message.value, e.message.partition, e.message.offset) for e in batch]
