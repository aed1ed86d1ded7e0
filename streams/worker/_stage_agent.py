"""The keyed stages' Faust agent: records keyed by tenant, agent, tool and content fingerprint, judged by
`StageJudge`, their verdicts sent back keyed by session (the judge acts on them like any other verdict).

A message holds a whole batch's records for one key. Messages are judged one at a time with the event loop
let run in between, so the session judge (the kill path) never waits behind a backlog of stage work; their
output goes into the producer's batches and is confirmed, with the stage states, once per batch before
Faust may commit the batch's offsets.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from typing import Any

from agents_contract import encode_command
from streams._config import TopicSettings
from streams.worker import _metrics as m
from streams.worker._dlq import BoundedLog
from streams.worker._pipeline import RawRecord
from streams.worker._seam import Output, Send, Sent
from streams.worker._stages import StageJudge, StageResult
from streams.worker._store import LiveStore

log = logging.getLogger("tripwire.worker")


class StageAgent:
    def __init__(
        self, judge: StageJudge, store: LiveStore[dict[str, Any]], output: Output, topics: TopicSettings
    ) -> None:
        self.judge = judge
        self.store = store
        self._output = output
        self._topics = topics
        self._log = BoundedLog()
        self._sweep: Iterator[tuple[str, dict[str, Any]]] | None = None

    async def run(self, stream: Any, *, batch_max: int, within_s: float) -> None:
        async for batch in stream.take_events(batch_max, within=within_s):
            sent: list[Sent] = []
            dirty: dict[str, tuple[dict[str, Any], int]] = {}
            for event in batch:
                message = event.message
                record = RawRecord(
                    message.key,
                    message.value,
                    message.partition,
                    message.offset,
                    message.topic,
                    message.headers,
                )
                try:
                    result = self.judge.judge([record], self.store.lookup)
                    sent.append(await self._act(result))
                except asyncio.CancelledError:
                    log.critical(
                        "stopped while a stage's output was unsent; exiting so that it is judged again"
                    )
                    os._exit(75)
                except Exception:
                    # Judging is guarded per record inside the judge; this is the worker's own bug. The
                    # record is set aside (logged) rather than stopping every stage behind it.
                    log.exception("a stages record could not be judged (%s)", self._topics.stages)
                    continue
                for key, entry in result.dirty.items():
                    self.store.keep(key, entry[0])
                    dirty[key] = entry
                m.STAGE_RECORDS.inc(result.records)
                await asyncio.sleep(0)
            try:
                sent.append(await self._output.send(self.store.checkpoint(dirty)))
                await self._output.confirm(sent, what="stage output")
            except asyncio.CancelledError:
                log.critical("stopped while a stage's output was unsent; exiting so that it is judged again")
                os._exit(75)

    async def expire(self, partitions: set[int], now_ms: int, *, per_tick: int = 5_000) -> None:
        """Stage keys expire with their windows (tenant days, agent hours, fingerprint owners after their
        TTL), swept a slice per tick like the sessions."""
        if self._sweep is None:
            self._sweep = self.store.items()
        gone: dict[str, int] = {}
        for looked, (key, state) in enumerate(self._sweep, 1):
            partition = state.get("_p")
            if (
                isinstance(partition, int)
                and partition in partitions
                and self.judge.expired(key, state, now_ms)
            ):
                gone[key] = partition
            if looked == per_tick:
                break
        else:
            self._sweep = None
        if gone:
            await self._output.deliver(self.store.evict(gone), what="stage expiry")
            m.STAGE_KEYS_EXPIRED.inc(len(gone))
        m.STAGE_KEYS.set(len(self.store))

    async def _act(self, result: StageResult) -> Sent:
        topics = self._topics
        internal = self.judge.internal
        out: list[Send] = [
            (topics.verdicts, None, key, value, internal.headers(value) if internal else None)
            for key, value in result.verdicts
        ]
        out.extend(
            (topics.control, None, command.target.encode(), encode_command(form), None)
            for command in result.commands
            for form in self.judge.signer.variants(command)
        )
        out.extend((topics.alerts, None, a.session_id.encode(), a.to_bytes(), None) for a in result.alerts)
        for command in result.commands:
            m.CIRCUITS.labels(str(command.evidence.get("circuit", "open"))).inc()
            log.warning(
                "tool circuit %s for %s: %s", command.evidence.get("circuit"), command.target, command.reason
            )
        for letter in result.dead_letters:
            if self._log.admit("stage:" + letter.code) is not None:
                log.error("dropped a stage record (%s): %s", topics.stages, letter.reason)
        for verdict in result.given:
            if verdict.evidence.get("scope") == "tool":
                m.VERDICTS.labels(verdict.detector, verdict.failure_class.value, verdict.mode).inc()
        return await self._output.send(out)
