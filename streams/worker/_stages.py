"""The keyed stages: detectors whose key is a tenant, an agent, a tool or a piece of content, not a session.

The session worker forwards a `StageRecord` for each event such a detector needs, keyed by
`<stage>:<key>` (one message per key per batch, `pack_stage_records`), so one key's records are judged by
one worker in order (a single writer per tenant budget, per tool circuit, per fingerprint owner).
`StageJudge.judge` runs the keyed detectors over a batch: session
verdicts go back on the verdicts topic keyed by session, where the session's own worker applies them like
its own (one kill path, one acknowledgement watch); a tool circuit opening or closing becomes a signed
tool-scope command to every agent and an alert. Like `Pipeline`, it does no I/O.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from agents_contract import (
    MAX_REASON,
    CommandSigner,
    KillCommand,
    RecordSigner,
    bounded_evidence,
    clip,
    clip_id,
)
from detectors import (
    CORRELATED_QUIET,
    Clock,
    DetectorSettings,
    KeyedPolicy,
    StageRecord,
    Verdict,
    build_keyed_policy,
    keyed_detectors,
    unpack_stage_records,
)
from sinks import Alert
from streams.worker._pipeline import DeadLetter, RawRecord, encode_verdict

# Recent record ids per key, so a batch replayed after a crash does not count twice.
_SEEN = 32

StageLookup = Callable[[str], dict[str, Any] | None]


@dataclass(slots=True)
class StageResult:
    # (session key, verdict record) for the verdicts topic.
    verdicts: list[tuple[bytes, bytes]] = field(default_factory=list)
    commands: list[KillCommand] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    given: list[Verdict] = field(default_factory=list)
    # stage key -> (state, partition)
    dirty: dict[str, tuple[dict[str, Any], int]] = field(default_factory=dict)
    records: int = 0


def _circuit_id(tool: str, generation: int) -> str:
    digest = hashlib.sha256(f"{tool}\x00{generation}".encode()).hexdigest()
    return f"circuit-{digest[:32]}"


class StageJudge:
    def __init__(
        self,
        settings: DetectorSettings,
        signer: CommandSigner,
        clock: Clock,
        *,
        internal: RecordSigner | None = None,
    ) -> None:
        self._signer = self.signer = signer
        # What signs stage records and verdicts between workers (None: no check, for `tripwire replay`).
        self.internal = internal
        self._clock = clock
        self.reconfigure(settings)

    def reconfigure(self, settings: DetectorSettings) -> None:
        self._policy: KeyedPolicy = build_keyed_policy(settings)
        self._by_stage = {str(a.detector.stage): a.detector for a in keyed_detectors(settings)}

    def expired(self, key: str, state: dict[str, Any], now_ms: int) -> bool:
        """True once a stage key's state can leave the table (its stage switched off, or its detector says
        its window has passed)."""
        detector = self._by_stage.get(key.partition(":")[0])
        return detector is None or detector.expired(state, now_ms)

    def judge(self, records: Iterable[RawRecord], lookup: StageLookup) -> StageResult:
        result = StageResult()
        policy = self._policy
        internal = self.internal
        for raw in records:
            if internal is not None:
                why = internal.problem(raw.value or b"", raw.headers)
                if why is not None:
                    # A stages record a worker did not write could trip a tenant's budget or a tool circuit.
                    result.dead_letters.append(
                        DeadLetter(
                            raw,
                            "stage record is not signed by a worker"
                            if why == "unsigned"
                            else "stage record's signature is not a worker's",
                            why,
                        )
                    )
                    continue
            try:
                unpacked = unpack_stage_records(raw.value or b"")
            except ValueError as exc:
                result.dead_letters.append(DeadLetter(raw, f"not a stage record: {exc}"))
                continue
            for record in unpacked:
                self._judge_one(raw, record, lookup, policy, result)
        return result

    def _judge_one(
        self,
        raw: RawRecord,
        record: StageRecord,
        lookup: StageLookup,
        policy: KeyedPolicy,
        result: StageResult,
    ) -> None:
        result.records += 1
        key = f"{record.stage}:{record.key}"
        entry = result.dirty.get(key)
        state = entry[0] if entry is not None else (lookup(key) or {})
        seen: list[int] = state.setdefault("_seen", [])
        mark = zlib.crc32(record.event_id.encode())
        if mark in seen:
            return
        seen.append(mark)
        del seen[:-_SEEN]
        # When the key was last judged (event time) and where its changelog record lives, for expiry.
        state["_at"] = max(int(state.get("_at", 0)), record.event_time_ms)
        state["_p"] = raw.partition
        result.dirty[key] = (state, raw.partition)
        # A tool circuit is one per tool (fleet) or per tenant and tool, whichever agent calls it: agent
        # overrides do not apply there, and tenant overrides only to a tenant's own circuit.
        if record.stage == "tool_circuit":
            fleet = record.values.get("fleet", True) is not False
            scoped = ("", "") if fleet else (record.tenant_id, "")
        else:
            scoped = (record.tenant_id, record.agent_id)
        for armed in policy(*scoped):
            if armed.detector.stage != record.stage:
                continue
            try:
                verdicts = armed.detector.observe(state, record)
            except (ArithmeticError, LookupError, TypeError, ValueError) as exc:
                # A record this worker wrote should never get here; if one does, it is set aside, not
                # allowed to stop every stage behind it.
                result.dead_letters.append(DeadLetter(raw, f"{record.stage} could not judge it: {exc!r}"))
                continue
            for verdict in verdicts:
                self._give(replace(verdict, mode=armed.mode), record, result)

    def _give(self, verdict: Verdict, record: StageRecord, result: StageResult) -> None:
        result.given.append(verdict)
        if verdict.evidence.get("scope") == "tool":
            self._circuit(verdict, record, result)
            return
        user_id = record.user_id
        if record.stage == CORRELATED_QUIET:
            evidence = verdict.evidence
            if (evidence.get("opened") or evidence.get("closed")) and verdict.mode != "shadow":
                result.alerts.append(self._quiet_incident(verdict, record))
            if verdict.mode == "shadow" or evidence.get("closed"):
                return
            # Back to the session: enforced, it holds the stall kill; warned, it only counts the session in
            # the incident, so the incident closes once its sessions are over.
            user_id = str(verdict.evidence.get("quiet_user_id", user_id))
        value = encode_verdict(verdict, tenant_id=record.tenant_id, user_id=user_id, agent_id=record.agent_id)
        result.verdicts.append((verdict.session_id.encode(), value))

    def _quiet_incident(self, verdict: Verdict, record: StageRecord) -> Alert:
        """The one page for many sessions gone quiet together (the sessions' own kills are held)."""
        digest = hashlib.sha256(
            f"{record.key}\x00{verdict.evidence.get('generation', 1)}".encode()
        ).hexdigest()
        evidence = verdict.evidence
        reason = verdict.reason
        if verdict.mode == "enforce" and not evidence.get("closed"):
            held_s = (int(evidence.get("hold_until_ms", 0)) - int(evidence.get("quiet_since_ms", 0))) / 1000
            reason += f"; their stall kills are held until {held_s:g} s after each went quiet"
        return Alert(
            alert_id=f"quiet-{digest[:32]}",
            severity="critical",
            failure_class=verdict.failure_class.value,
            detector=verdict.detector,
            action="held" if verdict.mode == "enforce" else "warned",
            session_id=verdict.session_id,
            tenant_id=record.tenant_id,
            user_id=str(verdict.evidence.get("quiet_user_id", record.user_id)),
            agent_id="",
            reason=clip(reason, MAX_REASON),
            observed=verdict.observed,
            threshold=verdict.threshold,
            event_id=verdict.event_id,
            event_time_ms=verdict.event_time_ms,
            detected_at_ms=self._clock(),
            evidence=bounded_evidence({**evidence, "mode": verdict.mode}),
            status="resolved" if evidence.get("closed") else "firing",
        )

    def _circuit(self, verdict: Verdict, record: StageRecord, result: StageResult) -> None:
        tool = str(verdict.evidence.get("tool", record.key))
        tenant = verdict.evidence.get("circuit_tenant_id")
        generation = int(verdict.evidence.get("generation", 1))
        closed = verdict.evidence.get("circuit") == "closed"
        now = self._clock()
        alert_id = _circuit_id(record.key, generation)
        if verdict.mode == "enforce":
            command = KillCommand(
                command_id=f"{alert_id}-{'closed' if closed else 'open'}",
                scope="tool",
                target=clip_id(tool),
                tenant_id=tenant if isinstance(tenant, str) and tenant else None,
                reason=clip(verdict.reason, MAX_REASON),
                detector=clip_id(verdict.detector),
                evidence=bounded_evidence({"failure_class": verdict.failure_class.value, **verdict.evidence}),
                issued_at_ms=now,
            )
            result.commands.append(self._signer.sign(command))
        if verdict.mode == "shadow":
            return
        result.alerts.append(
            Alert(
                alert_id=alert_id,
                severity="critical" if verdict.mode == "enforce" else "warning",
                failure_class=verdict.failure_class.value,
                detector=verdict.detector,
                action="tripped" if verdict.mode == "enforce" else "warned",
                session_id=verdict.session_id,
                tenant_id=record.tenant_id,
                user_id=record.user_id,
                agent_id=record.agent_id,
                reason=verdict.reason,
                observed=verdict.observed,
                threshold=verdict.threshold,
                event_id=verdict.event_id,
                event_time_ms=verdict.event_time_ms,
                detected_at_ms=now,
                evidence={**verdict.evidence, "mode": verdict.mode, "event_ids": list(verdict.event_ids)},
                status="resolved" if closed else "firing",
            )
        )
