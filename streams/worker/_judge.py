"""The kill path's loop: take fetched records in bulk, judge them, act at once on kills, checkpoint later.

Per batch the judge (1) judges the records with `Pipeline`, (2) writes kills to the Redis fence and (3)
sends the signed kill commands, waiting until the broker has them. Alerts, dead letters and keyed-stage
records go into the producer's batches without waiting. The sessions the batch changed join the pending
checkpoint. Every `worker.checkpoint_interval_s` (or sooner when many sessions are pending) a checkpoint
writes each pending session's state to the changelog once, confirms every output record since the last
checkpoint, and only then commits the offsets judged: the commit-interval model of Kafka Streams and Quix
Streams. Kills never wait for a checkpoint. A crash before the commit has the records judged again; the
replay filter in the session state and the stable command ids make that harmless.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from agents_contract import RecordSigner, encode_command
from detectors import SessionState, pack_stage_records
from streams._config import TopicSettings, WorkerSettings
from streams.worker import _metrics as m
from streams.worker._dlq import BoundedLog, dead_letter, raw_copy
from streams.worker._fencing import FenceKeeper
from streams.worker._pipeline import BatchResult, Departures, Pipeline, Record, settled
from streams.worker._seam import Intake, Output, Send, Sent, commit
from streams.worker._store import LiveStore
from streams.worker._watch import KillWatch

log = logging.getLogger("tripwire.worker")

# States encoded per slice of a checkpoint, with the event loop let run between slices: a checkpoint of
# many sessions must not hold a kill waiting in the intake.
_SLICE = 500


class SessionJudge:
    def __init__(
        self,
        *,
        app: Any,
        intake: Intake,
        pipeline: Pipeline,
        store: LiveStore[SessionState],
        output: Output,
        fencing: FenceKeeper,
        watch: KillWatch,
        departures: Departures,
        conf: WorkerSettings,
        topics: TopicSettings,
        internal: RecordSigner,
    ) -> None:
        self._app = app
        self._internal = internal
        self._intake = intake
        self.pipeline = pipeline
        self.store = store
        self._output = output
        self.fencing = fencing
        self.watch = watch
        self.departures = departures
        self._conf = conf
        self._topics = topics
        self._dead_letter_log = BoundedLog()
        # Changed since the last checkpoint: session_id -> (state, partition).
        self._pending: dict[str, tuple[SessionState, int]] = {}
        self._writing: dict[str, tuple[SessionState, int]] = {}
        # Next offset per (topic, partition) judged since the last checkpoint.
        self._offsets: dict[tuple[str, int], int] = {}
        self._unconfirmed: list[Sent] = []
        self._last_checkpoint = time.monotonic()
        self._checkpoint_lock = asyncio.Lock()
        self._busy = asyncio.Lock()
        # Events partitions this worker judges (set when a rebalance completes, shrunk on revocation).
        self.owned: set[int] = set()
        # Next offset to judge per events partition, for the lag gauge and the timers' catch-up test.
        self.judged: dict[int, int] = {}

    async def run(self) -> None:
        conf = self._conf
        interval = conf.checkpoint_interval_s
        while True:
            try:
                fetched = await self._intake.take(conf.batch_max)
            except asyncio.CancelledError:
                await self._last_words()
                raise
            async with self._busy:
                owned = self.owned
                records = [r for r in fetched if r.partition in owned]
                if records:
                    await self._judge(records)
            m.INTAKE.set(len(self._intake))
            if (
                time.monotonic() - self._last_checkpoint >= interval
                or len(self._pending) >= conf.checkpoint_max_sessions
            ) and not self._checkpoint_lock.locked():
                self._app.add_future(self.checkpoint())

    async def _judge(self, records: list[Record]) -> None:
        try:
            result = self.pipeline.judge(records, self.store.lookup)
            await self.act(result)
        except asyncio.CancelledError:
            # Stopping with the batch's kills perhaps unsent: exit at once, committing nothing, so the next
            # worker judges the batch again.
            log.critical("stopped while a batch's output was unsent; exiting so that it is judged again")
            os._exit(75)
        except Exception:
            # Records are judged one by one and output is retried until sent, so this is a fault of the
            # worker itself; exiting uncommitted has the batch judged again.
            log.critical("a batch could not be completed; exiting so it is judged again", exc_info=True)
            os._exit(70)
        offsets = self._offsets
        judged = self.judged
        events = self._topics.events
        for record in records:
            offsets[(record.topic, record.partition)] = record.offset + 1
            if record.topic == events:
                judged[record.partition] = record.offset + 1
        self.adopt(result)

    def adopt(self, result: BatchResult) -> None:
        """Take a result's changed states into the pending checkpoint and count what it did."""
        pending = self._pending
        offer = self.departures.offer
        for session_id, entry in result.dirty.items():
            if session_id not in pending:
                self.store.keep(session_id, entry[0])
            pending[session_id] = entry
            offer(entry[0])
        self._observe(result)

    async def act(self, result: BatchResult) -> None:
        """Kills now (fence first, then the commands, confirmed); the rest joins the producer's batches."""
        topics = self._topics
        if result.kills:
            # The fence goes first while Redis answers: an agent that attaches between the fence write and
            # the control record finds the kill either way. When it does not, the kills go out regardless.
            result.kills = await self.fencing.write(result.kills)
            await self._output.deliver(
                [
                    (topics.control, None, c.target.encode(), encode_command(form), None)
                    for c in result.kills
                    for form in self.pipeline.signer.variants(c)
                ],
                what="kills",
            )
            for command in result.kills:
                m.KILLS.labels(command.detector).inc()
                log.warning("killed session %s (%s): %s", command.target, command.detector, command.reason)
        out: list[Send] = [
            (topics.alerts, None, a.session_id.encode(), a.to_bytes(), None) for a in result.alerts
        ]
        if result.dead_letters:
            out.extend(self._dead_letters(result))
        if result.stage_records:
            # Signed: the keyed stages refuse a stages record that a worker did not write.
            sign = self._internal.headers
            out.extend(
                (topics.stages, None, key, value, sign(value))
                for key, value in pack_stage_records(result.stage_records)
            )
        if out:
            self._unconfirmed.append(await self._output.send(out))

    def _dead_letters(self, result: BatchResult) -> list[Send]:
        topics, conf = self._topics, self._conf
        out: list[Send] = []
        for letter in result.dead_letters:
            record = dead_letter(letter, source_topic=topics.events)
            out.append((topics.dlq, None, record.key, record.value, record.headers))
            if conf.dlq_raw:
                copy = raw_copy(letter, source_topic=topics.events, max_bytes=conf.dlq_raw_max_bytes)
                out.append((topics.dlq_raw, None, copy.key, copy.value, copy.headers))
            m.DEAD_LETTERS.labels(letter.code).inc()
            held = self._dead_letter_log.admit(letter.code)
            if held is None:
                continue
            raw = letter.record
            log.log(
                logging.ERROR if letter.error is not None else logging.WARNING,
                "dead-lettered %s/%d@%d: %s%s",
                raw.topic or topics.events,
                raw.partition,
                raw.offset,
                letter.reason,
                f" (and {held} more {letter.code} records since the last line)" if held else "",
                exc_info=letter.error,
            )
        return out

    async def checkpoint(self) -> None:
        """Write the pending states, confirm the output since the last checkpoint, then commit."""
        async with self._checkpoint_lock:
            started = time.monotonic()
            self._last_checkpoint = started
            dirty, self._pending = self._pending, {}
            offsets, self._offsets = self._offsets, {}
            unconfirmed, self._unconfirmed = self._unconfirmed, []
            # A session evicted while the slices go out leaves `dirty` too (see `forget`): its state written
            # after its tombstone would bring it back on recovery.
            self._writing = dirty
            keys = list(dirty)
            try:
                for i in range(0, len(keys), _SLICE):
                    part = {key: dirty[key] for key in keys[i : i + _SLICE] if key in dirty}
                    records = self.store.checkpoint(part, cold=self._cold)
                    unconfirmed.append(await self._output.send(records))
                    await asyncio.sleep(0)
            finally:
                self._writing = {}
            await self._output.confirm(unconfirmed, what="checkpoint")
            await commit(self._app, offsets)
            m.CHECKPOINT_STATES.inc(len(keys))
            m.CHECKPOINT_SECONDS.observe(time.monotonic() - started)

    def _cold(self, session_id: str, state: SessionState) -> bool:
        """Whether a checkpointed state can wait out its grace as bytes: the session is settled, and no
        batch since the checkpoint began holds it to change."""
        return session_id not in self._pending and settled(state)

    async def checkpoint_if_due(self) -> None:
        if time.monotonic() - self._last_checkpoint >= self._conf.checkpoint_interval_s:
            await self.checkpoint()

    def forget(self, gone: dict[str, int]) -> None:
        """Evicted sessions leave the pending checkpoint and the one being written (their tombstone is the
        last word)."""
        for session_id in gone:
            self._pending.pop(session_id, None)
            self._writing.pop(session_id, None)

    async def revoke(self, partitions: set[int]) -> None:
        """Partitions leave this worker: judge nothing more of theirs and checkpoint what was judged, so
        their next owner starts from it."""
        self.owned -= partitions
        self._intake.drop(partitions)
        async with self._busy:
            pass
        try:
            await asyncio.wait_for(self.checkpoint(), timeout=max(1.0, self._conf.session_timeout_s / 2))
        except TimeoutError:
            log.error("checkpoint on revocation timed out; the next owner judges the records since the last")
        for partition in partitions:
            self.judged.pop(partition, None)

    async def _last_words(self) -> None:
        # Stopping between batches: checkpoint what was judged, if the producer and group still answer.
        if not self._pending and not self._offsets:
            return
        try:
            await asyncio.wait_for(self.checkpoint(), timeout=5.0)
        except (TimeoutError, asyncio.CancelledError):
            pass
        except Exception as exc:
            log.warning("no checkpoint on the way out (%r); the next worker judges again since the last", exc)

    def _observe(self, result: BatchResult) -> None:
        for kind, count in result.kinds.items():
            m.EVENTS.labels(kind).inc(count)
        for why, count in result.clamped.items():
            m.CLAMPED.labels(why).inc(count)
        if result.duplicates:
            m.DUPLICATES.inc(result.duplicates)
        watch = self.watch
        for verdict in result.verdicts:
            m.VERDICTS.labels(verdict.detector, verdict.failure_class.value, verdict.mode).inc()
            if verdict.mode == "shadow":
                log.info(
                    "shadow verdict on session %s (%s): %s",
                    verdict.session_id,
                    verdict.detector,
                    verdict.reason,
                )
        for command in result.kills:
            entry = result.dirty.get(command.target)
            if entry is not None:
                watch.track(entry[0])
        for ack, state in result.acks:
            watch.settle(state.session_id)
            m.ACKS.inc()
            m.ACK_LATENCY.observe(max(0, ack.event_time_ms - state.kill_issued_ms) / 1000)
            if ack.kill_latency_ms is not None:
                m.KILL_LATENCY.observe(ack.kill_latency_ms / 1000)
        m.UNACKED.set(len(watch))
