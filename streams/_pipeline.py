"""The worker's judging step for one batch of raw records, apart from Faust and every broker.

`Pipeline.judge` turns raw `agent.events` records into what the worker must write: dead letters for records
that break the contract, signed kill commands and alert records for verdicts, the records that feed the
stages keyed by tenant, agent, tool and content, and the session states that changed (to checkpoint once
per batch, not once per event). Verdicts of those keyed stages come back on the verdicts topic, keyed by
session, and are applied here like any other, so every kill of a session goes through one path and one
acknowledgement watch. Detection itself is `detectors.DetectorSuite`; this module only parses, looks up
state and turns verdicts into commands and alerts according to each verdict's mode.
`tripwire replay` runs this same class over a file.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import orjson

from agents_contract import (
    CommandSigner,
    ContractError,
    ControlAck,
    KillCommand,
    kill_command_id,
    parse_event,
)
from detectors import Clock, DetectorSuite, SessionState, StageRecord, Verdict, stage_records
from sinks import Alert
from streams._watch import escalation_resolved


class RawRecord(NamedTuple):
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    topic: str = ""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: RawRecord
    reason: str


@dataclass(slots=True)
class BatchResult:
    kills: list[KillCommand] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # session_id -> (state, the partition its changelog record goes to)
    dirty: dict[str, tuple[SessionState, int]] = field(default_factory=dict)
    # Every verdict given, whatever its mode (for metrics and logs).
    verdicts: list[Verdict] = field(default_factory=list)
    # What the keyed stages get from this batch.
    stage_records: list[StageRecord] = field(default_factory=list)
    events: int = 0
    duplicates: int = 0
    # Events judged, by kind (for metrics).
    kinds: Counter[str] = field(default_factory=Counter)
    # Acknowledgements of this worker's kills, with the session state they settled.
    acks: list[tuple[ControlAck, SessionState]] = field(default_factory=list)


StateLookup = Callable[[str], SessionState | None]


def warning_alert_id(session_id: str, detector: str) -> str:
    digest = hashlib.sha256(f"{session_id}\x00{detector}\x00warn".encode()).hexdigest()
    return f"warn-{digest[:32]}"


def encode_verdict(verdict: Verdict, *, tenant_id: str, user_id: str, agent_id: str) -> bytes:
    return orjson.dumps(
        {**verdict.describe(), "tenant_id": tenant_id, "user_id": user_id, "agent_id": agent_id}
    )


class Pipeline:
    def __init__(
        self,
        suite: DetectorSuite,
        signer: CommandSigner,
        clock: Clock,
        *,
        stages: frozenset[str] = frozenset(),
        verdicts_topic: str = "",
    ) -> None:
        # Replaced whole when the detector config is reloaded; a batch uses the suite it started with.
        self.suite = suite
        self._signer = signer
        self._clock = clock
        self.stages = stages
        self._verdicts_topic = verdicts_topic

    def judge(self, records: Iterable[RawRecord], lookup: StateLookup) -> BatchResult:
        result = BatchResult()
        dirty = result.dirty
        suite = self.suite
        for record in records:
            if record.value is None:
                result.dead_letters.append(DeadLetter(record, "record has no value (tombstone)"))
                continue
            if record.topic and record.topic == self._verdicts_topic:
                self._stage_verdict(record, lookup, result)
                continue
            try:
                event = parse_event(record.value)
            except ContractError as exc:
                result.dead_letters.append(DeadLetter(record, exc.reason))
                continue
            if record.key is not None and record.key != event.session_id.encode():
                # A wrongly keyed event lands on another session's partition: judging it there would split
                # the session's state across workers, so it is refused rather than half-counted.
                result.dead_letters.append(
                    DeadLetter(record, f"record key {record.key[:128]!r} is not the event's session_id")
                )
                continue
            result.events += 1
            result.kinds[event.kind] += 1
            sid = event.session_id
            entry = dirty.get(sid)
            state = entry[0] if entry is not None else (lookup(sid) or SessionState(sid))
            observation = suite.observe(state, event)
            if observation.duplicate:
                result.duplicates += 1
                continue
            state.partition = record.partition
            dirty[sid] = (state, record.partition)
            if self.stages:
                result.stage_records.extend(stage_records(event, self.stages))
            if isinstance(event, ControlAck):
                self._settle(state, event, result)
            for verdict in observation.verdicts:
                self._act(verdict, state, event.agent_id, result)
        return result

    def expire(self, states: Iterable[SessionState], now_ms: int) -> BatchResult:
        """Verdicts of the timed detectors (deadlines, stalls) for sessions that may have gone quiet."""
        result = BatchResult()
        for state in states:
            verdicts = self.suite.expire(state, now_ms)
            if verdicts:
                result.dirty[state.session_id] = (state, state.partition)
                for verdict in verdicts:
                    self._act(verdict, state, "", result)
        return result

    def _stage_verdict(self, record: RawRecord, lookup: StateLookup, result: BatchResult) -> None:
        try:
            data = orjson.loads(record.value or b"")
            verdict = Verdict.from_description(data)
            agent_id = str(data.get("agent_id", ""))
            tenant_id, user_id = str(data.get("tenant_id", "")), str(data.get("user_id", ""))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            result.dead_letters.append(DeadLetter(record, f"not a stage verdict: {exc}"))
            return
        sid = verdict.session_id
        entry = result.dirty.get(sid)
        state = entry[0] if entry is not None else lookup(sid)
        if state is None:
            # The stage saw the session's event, so its state exists unless it expired since: judge anyway.
            state = SessionState(sid, tenant_id=tenant_id, user_id=user_id, partition=record.partition)
        if state.killed_by is not None or not state.first_verdict(verdict.detector):
            return
        result.dirty[sid] = (state, record.partition)
        self._act(verdict, state, agent_id, result)

    def _act(self, verdict: Verdict, state: SessionState, agent_id: str, result: BatchResult) -> None:
        """Do what the verdict's mode says: kill and alert, alert, or only count it."""
        if state.killed_by is not None:
            return
        result.verdicts.append(verdict)
        if verdict.kills:
            state.killed_by = verdict.detector
            command = self._kill(verdict)
            state.kill_issued_ms = command.issued_at_ms
            result.kills.append(command)
            result.alerts.append(self._alert(verdict, state, agent_id, command.issued_at_ms, command))
        elif verdict.mode != "shadow":
            result.alerts.append(self._alert(verdict, state, agent_id, self._clock(), None))

    def _settle(self, state: SessionState, ack: ControlAck, result: BatchResult) -> None:
        """Note the first acknowledgement of this worker's kill; acks of other commands (a manual kill,
        a repeat from a second agent of the session) change nothing."""
        if state.killed_by is None or state.acked_ms:
            return
        if ack.command_id != kill_command_id(state.session_id, state.killed_by):
            return
        state.acked_ms = max(ack.event_time_ms, 1)
        result.acks.append((ack, state))
        if state.escalated_ms:
            result.alerts.append(escalation_resolved(state, state.acked_ms))

    def _kill(self, verdict: Verdict) -> KillCommand:
        command = KillCommand(
            command_id=kill_command_id(verdict.session_id, verdict.detector),
            scope="session",
            target=verdict.session_id,
            reason=verdict.reason,
            detector=verdict.detector,
            evidence={
                "failure_class": verdict.failure_class.value,
                "observed": verdict.observed,
                "threshold": verdict.threshold,
                **verdict.evidence,
            },
            issued_at_ms=self._clock(),
            breach_event_id=verdict.event_id or None,
            breach_seq=verdict.seq if verdict.seq >= 0 else None,
        )
        return self._signer.sign(command)

    def _alert(
        self,
        verdict: Verdict,
        state: SessionState,
        agent_id: str,
        detected_at_ms: int,
        command: KillCommand | None,
    ) -> Alert:
        return Alert(
            alert_id=command.command_id
            if command is not None
            else warning_alert_id(verdict.session_id, verdict.detector),
            severity="critical" if command is not None else "warning",
            failure_class=verdict.failure_class.value,
            detector=verdict.detector,
            action="killed" if command is not None else "warned",
            session_id=verdict.session_id,
            tenant_id=state.tenant_id,
            user_id=state.user_id,
            agent_id=agent_id,
            reason=verdict.reason,
            observed=verdict.observed,
            threshold=verdict.threshold,
            event_id=verdict.event_id,
            event_time_ms=verdict.event_time_ms,
            detected_at_ms=detected_at_ms,
            command_id=command.command_id if command is not None else None,
            evidence={
                **verdict.evidence,
                "mode": verdict.mode,
                "event_ids": list(verdict.event_ids),
                "window_start_ms": verdict.window_start_ms,
                "window_end_ms": verdict.window_end_ms,
            },
        )
