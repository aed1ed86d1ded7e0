"""The worker's timers: escalate unacknowledged kills, run the timed detectors, evict what is done, follow
the config file and republish the gate's limits.

Each runs on a Faust timer and does a bounded amount per tick, so a tick's work stays small however many
sessions the worker holds: the event loop is the kill path's too. Settled sessions (ended, or killed with the
kill acknowledged or escalated) leave in the order their grace runs out; the idle sweep looks at 5,000 states
per tick (sessions / 5,000 ticks for a full pass).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from agents_contract import Fence, publish_limits
from detectors import SessionState, wall_clock
from streams._config import ConfigError, Settings, load_settings
from streams.worker import _metrics as m
from streams.worker._dlq import BoundedLog
from streams.worker._judge import SessionJudge
from streams.worker._limits import gate_layers
from streams.worker._pipeline import settled
from streams.worker._seam import Output, Send
from streams.worker._stages import StageJudge
from streams.worker._watch import escalation_alert

log = logging.getLogger("tripwire.worker")

# States the idle sweep looks at per tick, and settled sessions evicted per tick at most (their tombstones
# go out in one bulk send).
SWEEP_PER_TICK = 5_000
FENCE_CHECK_S = 5.0
DEPART_PER_TICK = 50_000

_timer_log = BoundedLog(interval_s=30.0)


def guarded(name: str, body: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A timer body that never ends the app: Faust stops the whole worker when a timer raises, and a
    timer's work (stalls, deadlines, escalations) is worth retrying on the next tick, not worth the kill
    path."""

    async def run() -> None:
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except Exception:
            m.TIMER_ERRORS.labels(name).inc()
            if _timer_log.admit(name) is not None:
                log.exception("timer %s failed; it runs again on its next tick", name)

    run.__name__ = name
    return run


class Upkeep:
    def __init__(
        self,
        *,
        app: Any,
        settings: Settings,
        judge: SessionJudge,
        stage_judge: StageJudge | None,
        output: Output,
        fence: Fence,
        config_path: Path | None,
    ) -> None:
        self._app = app
        self.settings = settings
        self._judge = judge
        self._stage_judge = stage_judge
        self._output = output
        self._fence = fence
        self._config_path = config_path
        self._config_stamp = _stamp(config_path)
        self._sweep: Iterator[tuple[str, SessionState | bytes]] | None = None

    def install(self) -> None:
        app, conf = self._app, self.settings.worker
        app.timer(interval=1.0)(guarded("escalate_unacknowledged_kills", self.escalate_unacknowledged_kills))
        app.timer(interval=1.0)(guarded("retry_fence_writes", self._judge_fencing_retry))
        # A Redis that lost its data (restarted without persistence, failed over) gets its kills back.
        app.timer(interval=FENCE_CHECK_S)(guarded("rebuild_lost_fence", self.rebuild_lost_fence))
        app.timer(interval=conf.timer_interval_s)(
            guarded("expire_quiet_sessions", self.expire_quiet_sessions)
        )
        app.timer(interval=conf.timer_interval_s)(guarded("checkpoint", self.checkpoint_when_due))
        app.timer(interval=conf.timer_interval_s)(
            guarded("reload_detector_config", self.reload_detector_config)
        )
        # Every 30 s, not once: a Redis that restarted without its data gets the limits back.
        app.timer(interval=30.0)(guarded("publish_gate_limits", self.publish_gate_limits))
        app.task(guarded("publish_gate_limits", self.publish_gate_limits))

    async def _judge_fencing_retry(self) -> None:
        await self._judge.fencing.retry()

    async def rebuild_lost_fence(self) -> None:
        kafka = self.settings.kafka
        await self._judge.fencing.rebuild_if_lost(
            kafka.bootstrap, self.settings.topics.control, security=kafka.security
        )

    async def checkpoint_when_due(self) -> None:
        # A quiet worker still checkpoints what its last batches changed, so their offsets get committed.
        await self._judge.checkpoint_if_due()

    def _lag(self, tp: Any) -> int:
        highwater = self._app.consumer.highwater(tp) or 0
        return max(0, highwater - self._judge.judged.get(tp.partition, highwater))

    async def escalate_unacknowledged_kills(self) -> None:
        judge, topics = self._judge, self.settings.topics
        watch = judge.watch
        now = wall_clock()
        escalated: dict[str, tuple[SessionState, int]] = {}
        pages: list[Send] = []
        caught_up = self._caught_up()
        for session_id in watch.due(now):
            state = judge.store.lookup(session_id)
            if state is None or not state.awaiting_ack:
                continue
            if state.partition not in caught_up:
                # Behind a backlog (a restart, a burst) the acknowledgement may be among the records not yet
                # judged: an agent that stopped while the worker was down must not be paged as running.
                watch.defer(session_id, now + 1_000)
                continue
            alert = escalation_alert(state, now, watch.timeout_ms)
            # Sent together, not one broker round trip each: after a mass kill (a fleet gone quiet at once)
            # thousands fall due in the same second.
            pages.append((topics.alerts, None, session_id.encode(), alert.to_bytes(), None))
            escalated[session_id] = (state, state.partition)
            m.ESCALATIONS.inc()
            log.error("%s", alert.reason)
        # Recorded so that a restarted worker does not page again. The pages go out first: a crash between
        # the two pages twice (sinks dedupe on the alert id) rather than never.
        if escalated:
            await self._output.deliver(pages, what="escalations")
            for state, _ in escalated.values():
                state.escalated_ms = now
                judge.departures.offer(state)
            await self._output.deliver(judge.store.checkpoint(escalated), what="escalations")
        m.UNACKED.set(len(watch))
        for tp in self._app.consumer.assignment():
            if tp.topic == topics.events:
                m.LAG.labels(str(tp.partition)).set(self._lag(tp))

    def _caught_up(self) -> set[int]:
        """Events partitions this worker judges and has caught up on (at most a batch behind)."""
        judged, batch_max = self._judge.judged, self.settings.worker.batch_max
        return {
            tp.partition
            for tp in self._app.consumer.assignment()
            if tp.topic == self.settings.topics.events
            and judged.get(tp.partition) is not None
            and self._lag(tp) <= batch_max
        }

    async def expire_quiet_sessions(self) -> None:
        """Evict the settled sessions whose grace ran out, then sweep a slice of the table for idle ones and
        for the timed detectors (stalls, deadlines)."""
        judge, topics = self._judge, self.settings.topics
        departures = judge.departures
        retention = departures.retention
        mine = {tp.partition for tp in self._app.consumer.assignment() if tp.topic == topics.events}
        now = wall_clock()
        gone: dict[str, int] = {}
        lookup = judge.store.lookup
        for session_id in departures.due(now, DEPART_PER_TICK):
            state = lookup(session_id)
            if state is None or state.partition not in mine:
                continue
            if retention.evictable(state, now):
                gone[session_id] = state.partition
            else:
                departures.offer(state)
        # Idle eviction and the timed detectors only on partitions the worker has caught up on: behind a
        # backlog (a restart, a burst) a session's newer events, its end included, may be waiting to be read,
        # and it is neither quiet nor overdue. A settled session has nothing more to wait for.
        owned = self._caught_up()
        store = judge.store
        if self._sweep is None:
            self._sweep = store.entries()
        states = []
        looked = 0
        for key, value in islice(self._sweep, SWEEP_PER_TICK):
            looked += 1
            if isinstance(value, bytes):
                # Cold (settled, kept as bytes) or not yet decoded since recovery. A session already
                # scheduled to leave has nothing more to do here; one that is not settled is kept decoded,
                # as the timers may act on it.
                if key in departures:
                    continue
                state = store.peek(value)
                if not settled(state):
                    store.keep(key, state)
            else:
                state = value
            # The sweep also keeps the kill watch whole: a pending kill that the rebuild after a rebalance
            # missed (its partition still recovering, or held by a member that had died) is watched now.
            # And it schedules the departure of settled sessions restored from the changelog.
            partition, session_id = state.partition, state.session_id
            if partition in mine and session_id not in gone:
                if state.awaiting_ack:
                    judge.watch.track(state)
                if partition in owned and retention.evictable(state, now):
                    gone[session_id] = partition
                    departures.discard(session_id)
                elif settled(state):
                    departures.offer(state)
                elif partition in owned and state.killed_by is None and not state.ended:
                    states.append(state)
        if looked < SWEEP_PER_TICK:
            self._sweep = None
        result = judge.pipeline.expire(states, now)
        if result.verdicts or result.stage_records:
            await judge.act(result)
            judge.adopt(result)
        if gone:
            judge.forget(gone)
            await self._output.deliver(judge.store.evict(gone), what="evictions")
            m.EVICTED.inc(len(gone))
        m.SESSIONS.set(len(judge.store))

    async def reload_detector_config(self) -> None:
        path = self._config_path
        if path is None or not self.settings.worker.reload_config:
            return
        stamp = _stamp(path)
        if stamp == self._config_stamp:
            return
        self._config_stamp = stamp
        try:
            fresh = load_settings(path)
        except ConfigError as exc:
            m.RELOADS.labels("rejected").inc()
            log.error("config change in %s not applied (the worker keeps the running config): %s", path, exc)
            return
        if fresh.model_dump(exclude={"detectors"}) != self.settings.model_dump(exclude={"detectors"}):
            log.warning(
                "config change in %s outside `detectors` needs a restart; applying detectors only", path
            )
        self._judge.pipeline.reconfigure(fresh.detectors)
        if self._stage_judge is not None:
            self._stage_judge.reconfigure(fresh.detectors)
        await self.publish_gate_limits()
        m.RELOADS.labels("applied").inc()
        log.warning("detector config reloaded from %s", path)

    async def publish_gate_limits(self) -> None:
        await publish_limits(self._fence.redis, gate_layers(self._judge.pipeline.settings))


def _stamp(path: Path | None) -> tuple[int, int] | None:
    """What tells a changed config file: its modification time and size (None when unreadable)."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
