"""The Faust worker: consume `agent.events`, judge them in batches, and act on verdicts.

Per batch the worker (1) judges the records with `Pipeline`, (2) writes kills to the Redis fence, (3) sends
the signed kills, alerts, dead letters and keyed-stage records and waits for the broker to have them, (4)
checkpoints every session state the batch changed to the table's changelog, once per session, and only then
(5) lets Faust commit the offsets. A second agent runs the keyed stages (`_stages.py`) over their
own topic and table the same way; timers run the timed detectors, escalate unacknowledged kills and pick up
changes to the detector config. A crash anywhere before (5) replays the batch; the replay filter in the
session state and the stable command ids make that harmless. State is a Faust table whose values are live
`SessionState` objects while the worker runs and changelog bytes after recovery; `_LiveStore` hides the
difference.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import faust
import orjson
from prometheus_client import Counter, Gauge, Histogram

from agents_contract import CommandSigner, Fence, FenceError, encode_command, publish_limits
from detectors import SessionState, pack_stage_records, wall_clock
from streams._config import ConfigError, Settings, load_settings
from streams.worker import _seam as seam
from streams.worker._dlq import BoundedLog, dead_letter, raw_copy
from streams.worker._fencing import FenceKeeper
from streams.worker._limits import gate_layers
from streams.worker._pipeline import DEAD_LETTER_CODES, BatchResult, Pipeline, RawRecord, Retention
from streams.worker._readiness import Readiness
from streams.worker._stages import StageJudge, StageResult
from streams.worker._watch import KillWatch, escalation_alert

log = logging.getLogger("tripwire.worker")

EVENTS = Counter("tripwire_events_total", "Agent events judged by this worker", ["kind"])
DUPLICATES = Counter("tripwire_events_duplicate_total", "Replayed events dropped by the replay filter")
DEAD_LETTERS = Counter(
    "tripwire_dead_letters_total", "Records sent to the dead-letter topic, by the kind of fault", ["reason"]
)
CLAMPED = Counter(
    "tripwire_event_times_clamped_total", "Events whose time was not believed and was clamped", ["why"]
)
ACT_RETRIES = Counter(
    "tripwire_act_retries_total", "Failed writes of a batch's output to the broker (retried)"
)
TIMER_ERRORS = Counter("tripwire_timer_errors_total", "Timer runs that failed (the timer goes on)", ["timer"])
VERDICTS = Counter("tripwire_verdicts_total", "Detector verdicts", ["detector", "failure_class", "mode"])
STAGE_RECORDS = Counter("tripwire_stage_records_total", "Records judged by the keyed stages")
CIRCUITS = Counter("tripwire_tool_circuit_commands_total", "Tool circuit commands sent", ["circuit"])
RELOADS = Counter("tripwire_config_reloads_total", "Detector config reloads", ["result"])
KILLS = Counter("tripwire_kills_total", "Kill commands issued", ["detector"])
ACKS = Counter("tripwire_kill_acks_total", "Kills of this worker acknowledged by their agent")
ESCALATIONS = Counter("tripwire_kill_escalations_total", "Kills escalated because no agent acknowledged them")
UNACKED = Gauge("tripwire_kills_unacknowledged", "Kills issued and not yet acknowledged or escalated")
SESSIONS = Gauge("tripwire_sessions", "Session states this worker holds")
EVICTED = Counter("tripwire_sessions_evicted_total", "Session states evicted (ended, killed or idle)")
STAGE_KEYS = Gauge("tripwire_stage_keys", "Keyed-stage states this worker holds")
STAGE_KEYS_EXPIRED = Counter("tripwire_stage_keys_expired_total", "Keyed-stage states expired with windows")
_LATENCY_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
KILL_LATENCY = Histogram(
    "tripwire_kill_latency_seconds",
    "Breaching event sent -> kill received, as measured and reported by the agent SDK",
    buckets=_LATENCY_BUCKETS,
)
ACK_LATENCY = Histogram(
    "tripwire_kill_ack_latency_seconds",
    "Kill issued by the worker -> acknowledgement sent by the agent (wall clocks of both)",
    buckets=_LATENCY_BUCKETS,
)
LAG = Gauge("tripwire_consumer_lag", "Events on agent.events not yet judged, per partition", ["partition"])


_EXPIRE_PER_TICK = 5_000

for _code in DEAD_LETTER_CODES:
    DEAD_LETTERS.labels(_code)
for _why in ("future", "before_start", "too_old"):
    CLAMPED.labels(_why)


def _broker_urls(bootstrap: str) -> list[str]:
    return [f"{seam.SCHEME}://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


S = TypeVar("S")


class _LiveStore(Generic[S]):
    """State over a Faust table's store: decoded once into a live object that the worker mutates, written
    back as bytes to the changelog at checkpoints. After recovery the table holds bytes; this hides that."""

    def __init__(
        self, table: Any, live: type[S], decode: Callable[[bytes], S], encode: Callable[[S], bytes]
    ) -> None:
        self._table = table
        self._live = live
        self._decode = decode
        self._encode = encode

    def lookup(self, key: str) -> S | None:
        data = self._table.data
        raw = key.encode()
        value = data.get(raw)
        if value is None or isinstance(value, self._live):
            return value
        state = self._decode(value)
        data[raw] = state
        return state

    def states(self) -> Iterator[S]:
        for _, state in self.items():
            yield state

    def items(self) -> Iterator[tuple[str, S]]:
        for raw in list(self._table.data.keys()):
            key = raw.decode()
            state = self.lookup(key)
            if state is not None:
                yield key, state

    def evict(self, gone: dict[str, int]) -> list[Any]:
        """Drop these keys (key -> partition) from the table, with a tombstone on the changelog each, so a
        recovering worker does not bring them back; returns the send futures."""
        data = self._table.data
        sent = []
        for key, partition in gone.items():
            raw = key.encode()
            data.pop(raw, None)
            sent.append(self._table.send_changelog(partition, raw, None, value_serializer="raw"))
        return sent

    def __len__(self) -> int:
        return len(self._table.data)

    def checkpoint(self, dirty: dict[str, tuple[S, int]]) -> list[Any]:
        """Write the states to the table and queue their changelog records; returns the send futures."""
        data = self._table.data
        sent = []
        for key, (state, partition) in dirty.items():
            raw = key.encode()
            data[raw] = state
            sent.append(self._table.send_changelog(partition, raw, self._encode(state)))
        return sent


Send = tuple[Any, bytes | None, bytes, dict[str, bytes] | None]
"""(topic, key, value, headers): one record of a batch's output."""


async def _send_all(records: list[Send], *, retry_max_s: float, what: str) -> None:
    """Produce the records and wait for the broker to have every one; on failure, produce them all again
    with backoff until it succeeds (duplicates are harmless: commands, alerts and stage records carry
    stable ids). Holding here holds the batch, so its offsets are never committed past unsent output."""
    attempt = 0
    while True:
        try:
            sent = [
                await topic.send(key=key, value=value, headers=headers)
                for topic, key, value, headers in records
            ]
            if sent:
                await asyncio.gather(*sent)
            if attempt:
                log.warning("%s: written after %d failed attempts", what, attempt)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            attempt += 1
            ACT_RETRIES.inc()
            delay = min(retry_max_s, 0.05 * 2 ** min(attempt, 10)) * (0.5 + random.random() / 2)
            log.error(
                "%s: writing %d records failed (%r); retry %d in %.2f s",
                what,
                len(records),
                exc,
                attempt,
                delay,
            )
            await asyncio.sleep(delay)


def _guarded(name: str, body: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A timer body that never ends the app: Faust stops the whole worker when a timer raises, and a
    timer's work (stalls, deadlines, escalations) is worth retrying on the next tick, not worth the kill
    path."""

    async def run() -> None:
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except Exception:
            TIMER_ERRORS.labels(name).inc()
            if _timer_log.admit(name) is not None:
                log.exception("timer %s failed; it runs again on its next tick", name)

    run.__name__ = name
    return run


_timer_log = BoundedLog(interval_s=30.0)


def _datadir(app_id: str) -> Path:
    # Faust makes the app's own directory but not its parents.
    parent = Path(tempfile.gettempdir()) / "tripwire-faust"
    parent.mkdir(parents=True, exist_ok=True)
    return parent / app_id


def build_app(settings: Settings, *, config_path: Path | None = None) -> faust.App:
    conf = settings.worker
    topics = settings.topics
    seam.register()
    app = faust.App(
        conf.app_id,
        broker=_broker_urls(settings.kafka.bootstrap),
        broker_client_id=settings.kafka.client_id,
        store="memory://",
        # Tables live in memory and their changelogs; Faust still makes a data directory, which defaults to
        # the working directory (one per app id): keep it out of there.
        datadir=str(_datadir(conf.app_id)),
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
    # The judge reads the sessions' events and the keyed stages' verdicts about those sessions: both keyed
    # by session_id with the same partition count, so Faust assigns partition p of both to one worker.
    events_topic = app.topic(topics.events, topics.verdicts, partitions=topics.partitions, **raw)
    stages_topic = app.topic(topics.stages, partitions=topics.partitions, **raw)
    verdicts_topic = app.topic(topics.verdicts, partitions=topics.partitions, **raw)
    control_topic = app.topic(topics.control, partitions=topics.partitions, **raw)
    alerts_topic = app.topic(topics.alerts, partitions=topics.partitions, **raw)
    dlq_topic = app.topic(topics.dlq, partitions=topics.partitions, **raw)
    table: Any = app.Table("sessions", partitions=topics.partitions, key_type=bytes, value_type=bytes)
    table.key_serializer = table.value_serializer = "raw"
    stage_table: Any = app.Table("stages", partitions=topics.partitions, key_type=bytes, value_type=bytes)
    stage_table.key_serializer = stage_table.value_serializer = "raw"

    signer = CommandSigner(settings.signing_key)
    pipeline = Pipeline.from_settings(settings.detectors, signer, wall_clock, verdicts_topic=topics.verdicts)
    stage_judge = StageJudge(settings.detectors, signer, wall_clock)
    store = _LiveStore(table, SessionState, SessionState.from_bytes, SessionState.to_bytes)
    retention = Retention(
        ended_ms=int(conf.evict_ended_after_s * 1000),
        killed_ms=int(conf.evict_killed_after_s * 1000),
        idle_ms=int(conf.evict_idle_after_s * 1000),
    )
    stage_store: _LiveStore[dict[str, Any]] = _LiveStore(stage_table, dict, orjson.loads, orjson.dumps)
    fence = Fence(settings.redis.url, ttl_s=settings.redis.fence_ttl_s)
    dlq_raw_topic = app.topic(topics.dlq_raw, partitions=topics.partitions, **raw) if conf.dlq_raw else None
    dead_letter_log = BoundedLog()

    async def page(alert: Any) -> None:
        await _send_all(
            [(alerts_topic, alert.session_id.encode(), alert.to_bytes(), None)],
            retry_max_s=conf.act_retry_max_s,
            what="alert",
        )

    fencing = FenceKeeper(
        fence, app_id=conf.app_id, redis_url=settings.redis.url, page=page, clock=wall_clock
    )

    async def act(result: BatchResult) -> None:
        # The fence goes first while Redis answers: an agent that attaches between the fence write and the
        # control record finds the kill either way. When it does not, the kills go out regardless.
        await fencing.write(result.kills)
        out: list[Send] = [
            (control_topic, command.target.encode(), encode_command(command), None)
            for command in result.kills
        ]
        out.extend((alerts_topic, a.session_id.encode(), a.to_bytes(), None) for a in result.alerts)
        for letter in result.dead_letters:
            letter_record = dead_letter(letter, source_topic=topics.events)
            out.append((dlq_topic, letter_record.key, letter_record.value, letter_record.headers))
            if dlq_raw_topic is not None:
                copy = raw_copy(letter, source_topic=topics.events, max_bytes=conf.dlq_raw_max_bytes)
                out.append((dlq_raw_topic, copy.key, copy.value, copy.headers))
        out.extend(
            (stages_topic, key, value, None) for key, value in pack_stage_records(result.stage_records)
        )
        await _send_all(out, retry_max_s=conf.act_retry_max_s, what="batch output")
        for command in result.kills:
            KILLS.labels(command.detector).inc()
            log.warning("killed session %s (%s): %s", command.target, command.detector, command.reason)
        for letter in result.dead_letters:
            DEAD_LETTERS.labels(letter.code).inc()
            held = dead_letter_log.admit(letter.code)
            if held is None:
                continue
            record = letter.record
            log.log(
                logging.ERROR if letter.error is not None else logging.WARNING,
                "dead-lettered %s/%d@%d: %s%s",
                record.topic or topics.events,
                record.partition,
                record.offset,
                letter.reason,
                f" (and {held} more {letter.code} records since the last line)" if held else "",
                exc_info=letter.error,
            )

    watch = KillWatch(int(conf.kill_ack_timeout_s * 1000))
    # Next offset to judge per events partition, for the lag gauge.
    judged: dict[int, int] = {}

    @app.agent(events_topic, name="judge")
    async def judge(stream: Any) -> None:
        async for batch in stream.take_events(conf.batch_max, within=conf.batch_within_ms / 1000):
            records = _records(batch)
            try:
                result = pipeline.judge(records, store.lookup)
                await act(result)
                store.checkpoint(result.dirty)
            except asyncio.CancelledError:
                # Stopping with the batch's output unsent: Faust acks the batch on the way out, so its
                # offsets could be committed. Exit at once instead, committing nothing: the next worker
                # judges the batch again (the replay filter and stable command ids make that harmless).
                log.critical("stopped while a batch's output was unsent; exiting so that it is judged again")
                os._exit(75)
            except Exception:
                # Records are judged one by one and output is retried until sent, so this is a fault of the
                # worker itself. Faust would restart the agent with the batch acked, skipping its kills;
                # exiting uncommitted has the batch judged again instead.
                log.critical("a batch could not be completed; exiting so it is judged again", exc_info=True)
                os._exit(70)
            for record in records:
                judged[record.partition] = record.offset + 1
            observe(result)

    def observe(result: BatchResult) -> None:
        for kind, count in result.kinds.items():
            EVENTS.labels(kind).inc(count)
        for why, count in result.clamped.items():
            CLAMPED.labels(why).inc(count)
        DUPLICATES.inc(result.duplicates)
        for verdict in result.verdicts:
            VERDICTS.labels(verdict.detector, verdict.failure_class.value, verdict.mode).inc()
            if verdict.mode == "shadow":
                log.info(
                    "shadow verdict on session %s (%s): %s",
                    verdict.session_id,
                    verdict.detector,
                    verdict.reason,
                )
        for state, _ in result.dirty.values():
            watch.track(state)
        for ack, state in result.acks:
            watch.settle(state.session_id)
            ACKS.inc()
            ACK_LATENCY.observe(max(0, ack.event_time_ms - state.kill_issued_ms) / 1000)
            if ack.kill_latency_ms is not None:
                KILL_LATENCY.observe(ack.kill_latency_ms / 1000)
        UNACKED.set(len(watch))

    async def escalate_unacknowledged_kills() -> None:
        now = wall_clock()
        escalated: dict[str, tuple[SessionState, int]] = {}
        pages: list[Send] = []
        for session_id in watch.due(now):
            state = store.lookup(session_id)
            if state is None or not state.awaiting_ack:
                continue
            alert = escalation_alert(state, now, watch.timeout_ms)
            # Sent together, not one broker round trip each: after a mass kill (a fleet gone quiet at once)
            # thousands fall due in the same second, and the event loop is the kill path's too.
            pages.append((alerts_topic, session_id.encode(), alert.to_bytes(), None))
            escalated[session_id] = (state, state.partition)
            ESCALATIONS.inc()
            log.error("%s", alert.reason)
        # Recorded so that a restarted worker does not page again. The pages go out first: a crash between
        # the two pages twice (sinks dedupe on the alert id) rather than never.
        if escalated:
            await _send_all(pages, retry_max_s=conf.act_retry_max_s, what="escalations")
            for state, _ in escalated.values():
                state.escalated_ms = now
            await asyncio.gather(*store.checkpoint(escalated))
        UNACKED.set(len(watch))
        for tp in app.consumer.assignment():
            if tp.topic == topics.events:
                LAG.labels(str(tp.partition)).set(lag(tp))

    app.timer(interval=1.0)(_guarded("escalate_unacknowledged_kills", escalate_unacknowledged_kills))
    app.timer(interval=1.0)(_guarded("retry_fence_writes", fencing.retry))

    def lag(tp: Any) -> int:
        highwater = app.consumer.highwater(tp) or 0
        return max(0, highwater - judged.get(tp.partition, highwater))

    @app.agent(stages_topic, name="stages")
    async def judge_stages(stream: Any) -> None:
        async for batch in stream.take_events(conf.batch_max, within=conf.batch_within_ms / 1000):
            # A message holds a whole batch's records for one key: judge one message at a time and let the
            # event loop run in between, so the session judge (the kill path) never waits behind a backlog
            # of stage work, and its partitions' records never sit uncollected (aiokafka then holds back
            # every fetch from the broker for 100 ms).
            for record in _records(batch):
                try:
                    result = stage_judge.judge([record], stage_store.lookup)
                    await act_on_stages(result)
                    stage_store.checkpoint(result.dirty)
                except asyncio.CancelledError:
                    log.critical(
                        "stopped while a stage's output was unsent; exiting so that it is judged again"
                    )
                    os._exit(75)
                except Exception:
                    # Judging is guarded per record inside the judge; this is the worker's own bug. The
                    # record is set aside (logged) rather than stopping every stage behind it.
                    log.exception("a stages record could not be judged (%s)", topics.stages)
                    continue
                STAGE_RECORDS.inc(result.records)
                await asyncio.sleep(0)

    async def act_on_stages(result: StageResult) -> None:
        out: list[Send] = [(verdicts_topic, key, value, None) for key, value in result.verdicts]
        out.extend(
            (control_topic, command.target.encode(), encode_command(command), None)
            for command in result.commands
        )
        out.extend((alerts_topic, a.session_id.encode(), a.to_bytes(), None) for a in result.alerts)
        await _send_all(out, retry_max_s=conf.act_retry_max_s, what="stage output")
        for command in result.commands:
            CIRCUITS.labels(str(command.evidence.get("circuit", "open"))).inc()
            log.warning(
                "tool circuit %s for %s: %s", command.evidence.get("circuit"), command.target, command.reason
            )
        for letter in result.dead_letters:
            if dead_letter_log.admit("stage:" + letter.code) is not None:
                log.error("dropped a stage record that does not parse (%s): %s", topics.stages, letter.reason)
        for verdict in result.given:
            if verdict.evidence.get("scope") == "tool":
                VERDICTS.labels(verdict.detector, verdict.failure_class.value, verdict.mode).inc()

    # The timed detectors look at every session, a slice per tick, so a tick's work stays bounded however
    # many sessions the worker holds (a full pass takes sessions / _EXPIRE_PER_TICK ticks).
    sweep: Iterator[SessionState] | None = None

    async def expire_quiet_sessions() -> None:
        nonlocal sweep
        # Only partitions the worker has caught up on: behind a backlog (a restart, a burst) a session's
        # newer events, its end included, may be waiting to be read, and it is neither quiet nor overdue.
        assigned = [tp for tp in app.consumer.assignment() if tp.topic == topics.events]
        owned = {
            tp.partition
            for tp in assigned
            if judged.get(tp.partition) is not None and lag(tp) <= conf.batch_max
        }
        mine = {tp.partition for tp in assigned}
        if sweep is None:
            sweep = store.states()
        states = []
        gone: dict[str, int] = {}
        now = wall_clock()
        for looked, state in enumerate(sweep, 1):
            # The sweep also keeps the kill watch whole: a pending kill that the rebuild after a rebalance
            # missed (its partition still recovering, or held by a member that had died) is watched now.
            if state.awaiting_ack and state.partition in mine:
                watch.track(state)
            if state.partition in owned:
                if retention.evictable(state, now):
                    gone[state.session_id] = state.partition
                elif state.killed_by is None and not state.ended:
                    states.append(state)
            if looked == _EXPIRE_PER_TICK:
                break
        else:
            sweep = None
        result = pipeline.expire(states, now)
        if result.verdicts:
            await act(result)
            await asyncio.gather(*store.checkpoint(result.dirty))
            observe(result)
        if gone:
            await asyncio.gather(*store.evict(gone))
            EVICTED.inc(len(gone))
        SESSIONS.set(len(store))

    app.timer(interval=conf.timer_interval_s)(_guarded("expire_quiet_sessions", expire_quiet_sessions))

    # Stage keys expire with their windows (tenant days, agent hours, fingerprint owners after their TTL),
    # swept a slice per tick like the sessions.
    stage_sweep: Iterator[tuple[str, dict[str, Any]]] | None = None

    async def expire_stage_keys() -> None:
        nonlocal stage_sweep
        mine = {tp.partition for tp in app.consumer.assignment() if tp.topic == topics.stages}
        if stage_sweep is None:
            stage_sweep = stage_store.items()
        now = wall_clock()
        gone: dict[str, int] = {}
        for looked, (key, state) in enumerate(stage_sweep, 1):
            partition = state.get("_p")
            if isinstance(partition, int) and partition in mine and stage_judge.expired(key, state, now):
                gone[key] = partition
            if looked == _EXPIRE_PER_TICK:
                break
        else:
            stage_sweep = None
        if gone:
            await asyncio.gather(*stage_store.evict(gone))
            STAGE_KEYS_EXPIRED.inc(len(gone))
        STAGE_KEYS.set(len(stage_store))

    app.timer(interval=conf.timer_interval_s)(_guarded("expire_stage_keys", expire_stage_keys))

    config_stamp = _stamp(config_path)

    async def reload_detector_config() -> None:
        nonlocal config_stamp
        if config_path is None or not conf.reload_config:
            return
        stamp = _stamp(config_path)
        if stamp == config_stamp:
            return
        config_stamp = stamp
        try:
            fresh = load_settings(config_path)
        except ConfigError as exc:
            RELOADS.labels("rejected").inc()
            log.error(
                "config change in %s not applied (the worker keeps the running config): %s", config_path, exc
            )
            return
        if fresh.model_dump(exclude={"detectors"}) != settings.model_dump(exclude={"detectors"}):
            log.warning(
                "config change in %s outside `detectors` needs a restart; applying detectors only",
                config_path,
            )
        pipeline.reconfigure(fresh.detectors)
        stage_judge.reconfigure(fresh.detectors)
        await publish_gate_limits()
        RELOADS.labels("applied").inc()
        log.warning("detector config reloaded from %s", config_path)

    app.timer(interval=conf.timer_interval_s)(_guarded("reload_detector_config", reload_detector_config))

    async def publish_gate_limits() -> None:
        # Every 30 s, not once: a Redis that restarted without its data gets the limits back.
        await publish_limits(fence.redis, gate_layers(pipeline.settings))

    app.timer(interval=30.0)(_guarded("publish_gate_limits", publish_gate_limits))
    app.task(_guarded("publish_gate_limits", publish_gate_limits))

    if settings.sinks.in_worker:

        @app.task  # type: ignore[untyped-decorator]
        async def deliver_alerts() -> None:
            from streams.operator._sinks import run_sinks

            await run_sinks(settings)

    readiness = Readiness(conf.recovery_timeout_s)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def rebalance_started(sender: Any, revoked: Any, **kwargs: Any) -> None:
        readiness.rebalancing()

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def announce_ready(sender: Any, **kwargs: Any) -> None:
        # Recovery is over: rebuild the kill watch from the states of the partitions this worker now owns.
        owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == topics.events}
        watch.clear()
        for state in store.states():
            if state.partition in owned:
                watch.track(state)
        UNACKED.set(len(watch))
        # Ready once the streams are seeked and resumed (Faust does that right after this signal), not
        # before: a ready mark is a promise that this worker is judging.
        app.add_future(mark_ready())

    async def mark_ready() -> None:
        # Faust sets `completed` after the recovery ended and the streams were seeked.
        await app.tables.recovery.completed.wait()  # type: ignore[attr-defined]
        readiness.ready()
        try:
            await asyncio.wait_for(fence.mark_worker_ready(conf.app_id, wall_clock()), timeout=5.0)
        except (FenceError, OSError, TimeoutError) as exc:
            log.error("could not record readiness in Redis (%r); judging all the same", exc)
        log.info(
            "tripwire worker %s is judging events (rebalance complete, %d kills awaiting acknowledgement)",
            conf.app_id,
            len(watch),
        )

    readiness.start()
    return app


def _records(batch: Iterable[Any]) -> list[RawRecord]:
    return [
        RawRecord(e.message.key, e.message.value, e.message.partition, e.message.offset, e.message.topic)
        for e in batch
    ]


def _stamp(path: Path | None) -> tuple[int, int] | None:
    """What tells a changed config file: its modification time and size (None when unreadable)."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
