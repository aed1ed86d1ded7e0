"""The worker's judging step for one batch of raw records, apart from Faust and every broker.

`Pipeline.judge` turns raw `agent.events` records into what the worker must write: dead letters for records
that break the contract, signed kill commands and alert records for verdicts, and the session states that
changed (to checkpoint once per batch, not once per event). Detection itself is `detectors.DetectorSuite`;
this module only parses, looks up state and turns verdicts into commands.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from agents_contract import (
    CommandSigner,
    ContractError,
    ControlAck,
    KillCommand,
    kill_command_id,
    parse_event,
)
from detectors import Clock, DetectorSuite, SessionState, Verdict
from sinks import Alert
from streams._watch import escalation_resolved


class RawRecord(NamedTuple):
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int


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
    events: int = 0
    duplicates: int = 0
    # Events judged, by kind (for metrics).
    kinds: Counter[str] = field(default_factory=Counter)
    # Acknowledgements of this worker's kills, with the session state they settled.
    acks: list[tuple[ControlAck, SessionState]] = field(default_factory=list)


StateLookup = Callable[[str], SessionState | None]


class Pipeline:
    def __init__(self, suite: DetectorSuite, signer: CommandSigner, clock: Clock) -> None:
        self._suite = suite
        self._signer = signer
        self._clock = clock

    def judge(self, records: Iterable[RawRecord], lookup: StateLookup) -> BatchResult:
        result = BatchResult()
        dirty = result.dirty
        for record in records:
            if record.value is None:
                result.dead_letters.append(DeadLetter(record, "record has no value (tombstone)"))
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
            observation = self._suite.observe(state, event)
            if observation.duplicate:
                result.duplicates += 1
                continue
            state.partition = record.partition
            dirty[sid] = (state, record.partition)
            if isinstance(event, ControlAck):
                self._settle(state, event, result)
            for verdict in observation.verdicts:
                if state.killed_by is not None:
                    break
                state.killed_by = verdict.detector
                command = self._kill(verdict)
                state.kill_issued_ms = command.issued_at_ms
                result.kills.append(command)
                result.alerts.append(self._alert(verdict, state, event.agent_id, command))
        return result

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
            breach_event_id=verdict.event_id,
            breach_seq=verdict.seq,
        )
        return self._signer.sign(command)

    def _alert(self, verdict: Verdict, state: SessionState, agent_id: str, command: KillCommand) -> Alert:
        return Alert(
            alert_id=command.command_id,
            severity="critical",
            failure_class=verdict.failure_class.value,
            detector=verdict.detector,
            action="killed",
            session_id=verdict.session_id,
            tenant_id=state.tenant_id,
            user_id=state.user_id,
            agent_id=agent_id,
            reason=verdict.reason,
            observed=verdict.observed,
            threshold=verdict.threshold,
            event_id=verdict.event_id,
            event_time_ms=verdict.event_time_ms,
            detected_at_ms=command.issued_at_ms,
            command_id=command.command_id,
            evidence=verdict.evidence,
        )
