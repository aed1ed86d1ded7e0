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
import heapq
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, NamedTuple, Protocol

import orjson

from agents_contract import (
    MAX_REASON,
    AgentEvent,
    CommandSigner,
    ContractError,
    ControlAck,
    EventAuth,
    Headers,
    KillCommand,
    RecordSigner,
    TurnCompleted,
    bounded_evidence,
    clip,
    clip_id,
    kill_command_id,
    parse_event,
)
from detectors import (
    CORRELATED_QUIET,
    QUIET_SLOT,
    STAGES,
    Clock,
    DetectorSettings,
    DetectorSuite,
    IntakeSettings,
    SessionState,
    StageRecord,
    Verdict,
    build_suite,
    hold_quiet,
    keyed_detectors,
    quiet_outcome,
    quiet_record,
    quiet_signal,
    stage_records,
)
from sinks import Alert
from streams.worker._watch import escalation_resolved


class Record(Protocol):
    """What the pipeline reads of a record: a `RawRecord`, or aiokafka's `ConsumerRecord` as fetched (the
    worker's hot path judges those as they are, without a copy per record)."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def topic(self) -> str: ...
    @property
    def headers(self) -> Headers: ...


class RawRecord(NamedTuple):
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    topic: str = ""
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: Record
    reason: str
    # A short, fixed word for the kind of fault (metrics label it; the reason says the details).
    code: str = "invalid"
    # The exception, when the worker itself failed on the record (logged with its traceback).
    error: BaseException | None = None


# Dead-letter codes, fixed so that a metric labelled by them stays small whatever producers send.
DEAD_LETTER_CODES: Final = (
    "tombstone",
    "too_large",
    "not_json",
    "not_object",
    "schema_version",
    "invalid",
    "wrong_key",
    "owner_mismatch",
    "implausible_value",
    "bad_stage_verdict",
    "unsigned",
    "bad_signature",
    "internal_error",
)


def _code_of(error: ContractError) -> str:
    reason = error.reason
    if reason.startswith("event is ") and "the limit is" in reason:
        return "too_large"
    if reason.startswith("not JSON"):
        return "not_json"
    if reason.startswith("an event is a JSON object"):
        return "not_object"
    if reason.startswith("schema_version"):
        return "schema_version"
    return "invalid"


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
    # Events whose time was not believed and was clamped, by why ("future", "before_start", "too_old").
    clamped: Counter[str] = field(default_factory=Counter)
    # Acknowledgements of this worker's kills, with the session state they settled.
    acks: list[tuple[ControlAck, SessionState]] = field(default_factory=list)


StateLookup = Callable[[str], SessionState | None]


@dataclass(frozen=True, slots=True)
class Retention:
    """How long a session's state stays once nothing more can happen to it (milliseconds)."""

    ended_ms: int = 600_000
    killed_ms: int = 3_600_000
    idle_ms: int = 86_400_000

    def leaves_at(self, state: SessionState) -> int | None:
        """When the session can leave the table: its grace (ended, killed and settled, or idle) after the
        last thing heard of it. None while a kill waits for its acknowledgement: the watch needs the state."""
        if state.awaiting_ack:
            return None
        heard = state.heard_ms or state.last_event_ms
        last = max(heard, state.kill_issued_ms, state.acked_ms, state.escalated_ms)
        if state.killed_by is not None:
            return last + self.killed_ms
        if state.ended:
            return last + self.ended_ms
        return last + self.idle_ms

    def evictable(self, state: SessionState, now_ms: int) -> bool:
        at = self.leaves_at(state)
        return at is not None and now_ms >= at


def settled(state: SessionState) -> bool:
    """Nothing more can happen to the session: it ended, or its kill was acknowledged or escalated."""
    return (state.ended or state.killed_by is not None) and not state.awaiting_ack


class Departures:
    """Settled sessions in the order their grace runs out, so that eviction keeps pace with the sessions
    that end, however many the table holds: a sweep of the whole table at a bounded slice per tick falls
    behind once sessions end faster than the slice (a 1M-session soak held 840,000 ended states).

    A session is offered whenever a batch changes it; one that changed again after it was offered is
    offered anew with its later time, and the earlier entry is skipped when it comes up."""

    def __init__(self, retention: Retention) -> None:
        self.retention = retention
        self._heap: list[tuple[int, str]] = []
        self._at: dict[str, int] = {}

    def offer(self, state: SessionState) -> None:
        if not settled(state):
            return
        at = self.retention.leaves_at(state)
        if at is None or self._at.get(state.session_id) == at:
            return
        self._at[state.session_id] = at
        heapq.heappush(self._heap, (at, state.session_id))

    def due(self, now_ms: int, limit: int) -> list[str]:
        """Up to `limit` sessions whose grace has run out by now (each once)."""
        heap, at = self._heap, self._at
        out: list[str] = []
        while heap and heap[0][0] <= now_ms and len(out) < limit:
            when, session_id = heapq.heappop(heap)
            if at.get(session_id) == when:
                del at[session_id]
                out.append(session_id)
        return out

    def discard(self, session_id: str) -> None:
        self._at.pop(session_id, None)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._at

    def __len__(self) -> int:
        return len(self._at)


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
        intake: IntakeSettings | None = None,
        fleet_tools: bool = False,
        event_auth: EventAuth | None = None,
        internal: RecordSigner | None = None,
    ) -> None:
        # Tenants whose events must be signed; what signs the verdicts the keyed stages send back (None:
        # no check, as `tripwire replay` judges a file it trusts).
        self._event_auth = event_auth or None
        self._internal = internal
        # Replaced whole when the detector config is reloaded; a batch uses the suite it started with.
        self.suite = suite
        self._signer = self.signer = signer
        self._clock = clock
        self.stages = stages
        self._verdicts_topic = verdicts_topic
        self.intake = intake or IntakeSettings()
        self.fleet_tools = fleet_tools

    @classmethod
    def from_settings(
        cls,
        settings: DetectorSettings,
        signer: CommandSigner,
        clock: Clock,
        *,
        verdicts_topic: str,
        event_auth: EventAuth | None = None,
        internal: RecordSigner | None = None,
    ) -> Pipeline:
        pipeline = cls(
            build_suite(settings, clock),
            signer,
            clock,
            verdicts_topic=verdicts_topic,
            event_auth=event_auth,
            internal=internal,
        )
        pipeline.reconfigure(settings)
        return pipeline

    def reconfigure(self, settings: DetectorSettings) -> None:
        """Judge the next batch with these settings (a config reload)."""
        self.settings = settings
        self.suite = build_suite(settings, self._clock)
        self.stages = frozenset(str(armed.detector.stage) for armed in keyed_detectors(settings))
        self.intake = settings.intake
        self.fleet_tools = settings.tool_circuit.scope == "fleet"

    def judge(self, records: Iterable[Record], lookup: StateLookup) -> BatchResult:
        result = BatchResult()
        for record in records:
            try:
                self._judge_record(record, lookup, result)
            except Exception as exc:
                # A fault of the worker's own on one record (a bug a crafted record found) sets that record
                # aside with its reason; it never stops the batch, whose other records are judged and
                # acted on.
                result.dead_letters.append(
                    DeadLetter(
                        record,
                        clip(f"the worker failed judging this record: {type(exc).__name__}: {exc}", 512),
                        "internal_error",
                        exc,
                    )
                )
        return result

    def _judge_record(self, record: Record, lookup: StateLookup, result: BatchResult) -> None:
        dirty = result.dirty
        if record.value is None:
            result.dead_letters.append(DeadLetter(record, "record has no value (tombstone)", "tombstone"))
            return
        if record.topic and record.topic == self._verdicts_topic:
            self._stage_verdict(record, lookup, result)
            return
        try:
            event = parse_event(record.value)
        except ContractError as exc:
            result.dead_letters.append(DeadLetter(record, exc.reason, _code_of(exc)))
            return
        if record.key is not None and record.key != event.session_id.encode():
            # A wrongly keyed event lands on another session's partition: judging it there would split
            # the session's state across workers, so it is refused rather than half-counted.
            result.dead_letters.append(
                DeadLetter(
                    record,
                    f"record key {clip(repr(record.key[:160]), 160)} is not the event's session_id",
                    "wrong_key",
                )
            )
            return
        if self._event_auth is not None:
            unproven = self._event_auth.problem(event.tenant_id, record.value, record.headers)
            if unproven is not None:
                result.dead_letters.append(DeadLetter(record, unproven[1], unproven[0]))
                return
        implausible = self._implausible(event)
        if implausible:
            result.dead_letters.append(DeadLetter(record, implausible, "implausible_value"))
            return
        sid = event.session_id
        entry = dirty.get(sid)
        state = entry[0] if entry is not None else (lookup(sid) or SessionState(sid))
        if state.tenant_id and (state.tenant_id, state.user_id) != (event.tenant_id, event.user_id):
            # A session's owner is fixed by its first event: an event claiming another one would judge it
            # under that tenant's settings, or let one tenant's producer steer another's session.
            result.dead_letters.append(
                DeadLetter(
                    record,
                    f"session {sid} belongs to {state.tenant_id}/{state.user_id}; this event claims "
                    f"{event.tenant_id}/{event.user_id}",
                    "owner_mismatch",
                )
            )
            return
        now = self._clock()
        event = self._believable_time(event, state, result, now)
        result.events += 1
        result.kinds[event.kind] += 1
        observation = self.suite.observe(state, event, now)
        if observation.duplicate:
            result.duplicates += 1
            return
        state.partition = record.partition
        dirty[sid] = (state, record.partition)
        if self.stages:
            result.stage_records.extend(stage_records(event, self.stages, fleet_tools=self.fleet_tools))
        if QUIET_SLOT in state.slots:
            self._quiet_over(state, result)
        if isinstance(event, ControlAck):
            self._settle(state, event, result)
        for verdict in observation.verdicts:
            self._act(verdict, state, event.agent_id, result)

    def _implausible(self, event: AgentEvent) -> str | None:
        """Why an event's values cannot be believed (per-turn cost or tokens past the sanity ceilings)."""
        if not isinstance(event, TurnCompleted):
            return None
        intake = self.intake
        if event.cost_usd > intake.max_turn_cost_usd:
            return (
                f"cost_usd {event.cost_usd:g} for one turn is above detectors.intake.max_turn_cost_usd "
                f"({intake.max_turn_cost_usd:g})"
            )
        tokens = event.input_tokens + event.output_tokens
        if tokens > intake.max_turn_tokens or event.context_tokens > intake.max_turn_tokens:
            return (
                f"{max(tokens, event.context_tokens)} tokens for one turn is above "
                f"detectors.intake.max_turn_tokens ({intake.max_turn_tokens})"
            )
        return None

    def _believable_time(
        self, event: AgentEvent, state: SessionState, result: BatchResult, now: int
    ) -> AgentEvent:
        """The event with a time the windows can use: one from the far future is judged as now, one from
        before its session started (past the lateness) as the session's start, and the first event of a
        session from implausibly long ago as now."""
        t = event.event_time_ms
        intake = self.intake
        if t > now + intake.max_future_skew_s * 1000:
            why, fixed = "future", now
        elif state.first_event_ms and t < state.first_event_ms - self.suite.allowed_lateness_ms:
            why, fixed = "before_start", state.first_event_ms
        elif not state.first_event_ms and t < now - intake.max_event_age_s * 1000:
            why, fixed = "too_old", now
        else:
            return event
        result.clamped[why] += 1
        return event.model_copy(update={"event_time_ms": fixed})

    def expire(self, states: Iterable[SessionState], now_ms: int) -> BatchResult:
        """Verdicts of the timed detectors (deadlines, stalls) for sessions that may have gone quiet."""
        result = BatchResult()
        for state in states:
            verdicts = self.suite.expire(state, now_ms)
            if verdicts:
                result.dirty[state.session_id] = (state, state.partition)
                for verdict in verdicts:
                    self._act(verdict, state, "", result)
                self._quiet_over(state, result)
            elif (quiet := quiet_signal(state)) is not None:
                # A silence the stall detector noticed goes to the correlated-quiet stage, which tells
                # whether it is one of many (its kill then held) before the stall kill is due.
                result.dirty[state.session_id] = (state, state.partition)
                result.stage_records.append(quiet_record(state, *quiet))
        return result

    def _stage_verdict(self, record: Record, lookup: StateLookup, result: BatchResult) -> None:
        if self._internal is not None and record.value is not None:
            # Only a worker's keyed stage can kill through this topic: a record anyone else wrote is refused.
            why = self._internal.problem(record.value, record.headers)
            if why is not None:
                result.dead_letters.append(
                    DeadLetter(
                        record,
                        "stage verdict is not signed by a worker"
                        if why == "unsigned"
                        else "stage verdict's signature is not a worker's",
                        "bad_stage_verdict",
                    )
                )
                return
        try:
            data = orjson.loads(record.value or b"")
            if not isinstance(data, dict):
                raise TypeError(f"a stage verdict is a JSON object, got {type(data).__name__}")
            verdict = Verdict.from_description(data)
            agent_id = str(data.get("agent_id", ""))
            tenant_id, user_id = str(data.get("tenant_id", "")), str(data.get("user_id", ""))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            result.dead_letters.append(
                DeadLetter(record, clip(f"not a stage verdict: {exc}", 512), "bad_stage_verdict")
            )
            return
        problem = _stage_verdict_problem(verdict, record)
        if problem:
            result.dead_letters.append(DeadLetter(record, problem, "bad_stage_verdict"))
            return
        sid = verdict.session_id
        entry = result.dirty.get(sid)
        state = entry[0] if entry is not None else lookup(sid)
        if verdict.detector == CORRELATED_QUIET:
            self._hold(verdict, state, record, result)
            return
        if state is None:
            # The stage saw the session's event, so its state exists unless it expired since: judge anyway.
            state = SessionState(sid, tenant_id=tenant_id, user_id=user_id, partition=record.partition)
        if state.killed_by is not None or not state.first_verdict(verdict.detector):
            return
        result.dirty[sid] = (state, record.partition)
        self._act(verdict, state, agent_id, result)

    def _hold(
        self, verdict: Verdict, state: SessionState | None, record: Record, result: BatchResult
    ) -> None:
        """A correlated-quiet incident counts this session and, enforced, holds its stall kill (the incident
        was paged once, by the stage); a session that spoke again since, or is gone, has nothing to hold."""
        if verdict.mode == "shadow" or state is None:
            return
        evidence = verdict.evidence
        since, until = evidence.get("quiet_since_ms"), evidence.get("hold_until_ms")
        if type(since) is not int or type(until) is not int:
            result.dead_letters.append(
                DeadLetter(
                    record, "correlated_quiet verdict without its silence's times", "bad_stage_verdict"
                )
            )
            return
        result.dirty[state.session_id] = (state, record.partition)
        if hold_quiet(state, since, until, hold=verdict.mode == "enforce"):
            result.verdicts.append(verdict)
        else:
            self._quiet_over(state, result)

    @staticmethod
    def _quiet_over(state: SessionState, result: BatchResult) -> None:
        """A session counted in a correlated-quiet incident spoke again or was killed: the stage hears of
        it, to close the incident once all of its sessions have."""
        over = quiet_outcome(state)
        if over is not None:
            since, model, killed = over
            result.stage_records.append(quiet_record(state, since, model, "killed" if killed else "resumed"))

    def _act(self, verdict: Verdict, state: SessionState, agent_id: str, result: BatchResult) -> None:
        """Do what the verdict's mode says: kill and alert, alert, or only count it."""
        if state.killed_by is not None:
            return
        if verdict.kills:
            # Built in full before the state says killed: a kill the state records is a kill that is sent.
            command = self._kill(verdict)
            alert = self._alert(verdict, state, agent_id, command.issued_at_ms, command)
            state.killed_by = verdict.detector
            state.kill_issued_ms = command.issued_at_ms
            result.kills.append(command)
            result.alerts.append(alert)
        elif verdict.mode != "shadow":
            result.alerts.append(self._alert(verdict, state, agent_id, self._clock(), None))
        result.verdicts.append(verdict)

    def _settle(self, state: SessionState, ack: ControlAck, result: BatchResult) -> None:
        """Note the first acknowledgement that the session's agent stopped; repeats change nothing.

        Any kill of the session counts, not only the command this state records: an agent that stopped is
        stopped whichever command it obeyed. After a restart the worker judges its backlog again and may
        decide the kill by another detector than the first time (a keyed-stage verdict read before the
        session's own events), while the agent acknowledged the command it was sent; a manual kill stops
        it as well."""
        # `stopping`: the agent refuses further steps but its run has not ended; the ack timeout still runs.
        if state.killed_by is None or state.acked_ms or ack.outcome == "stopping":
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
            reason=clip(verdict.reason, MAX_REASON),
            detector=clip_id(verdict.detector),
            evidence=bounded_evidence(
                {
                    "failure_class": verdict.failure_class.value,
                    "observed": verdict.observed,
                    "threshold": verdict.threshold,
                    **verdict.evidence,
                }
            ),
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
            reason=clip(verdict.reason, MAX_REASON),
            observed=verdict.observed,
            threshold=verdict.threshold,
            event_id=verdict.event_id,
            event_time_ms=verdict.event_time_ms,
            detected_at_ms=detected_at_ms,
            command_id=command.command_id if command is not None else None,
            evidence=bounded_evidence(
                {
                    **verdict.evidence,
                    "mode": verdict.mode,
                    "event_ids": list(verdict.event_ids),
                    "window_start_ms": verdict.window_start_ms,
                    "window_end_ms": verdict.window_end_ms,
                }
            ),
        )


_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def _stage_verdict_problem(verdict: Verdict, record: Record) -> str | None:
    """Why a record on the verdicts topic is not one a keyed stage wrote (None when it could be)."""
    if verdict.detector not in STAGES:
        return f"stage verdict names detector {clip(verdict.detector, 64)!r}, which is not a keyed stage"
    if not _ID.match(verdict.session_id):
        return f"stage verdict names session {clip(verdict.session_id, 64)!r}, which is not a session id"
    if record.key is not None and record.key != verdict.session_id.encode():
        return "stage verdict's record key is not its session_id"
    return None
