"""Detectors whose key is not the session: a tenant's day, an agent's spend, a tool across the fleet, the
owner of a piece of content or of a memory key.

The session worker turns each event such a detector needs into `StageRecord`s (`stage_records`), keyed by
`<stage>:<key>` so that one key's records meet in one place, in order: a single writer per tenant budget,
per tool circuit and per content owner, whichever sessions and partitions the events came from. A keyed
detector is a plain object over a plain JSON-able dict (the key's state) and a record; it returns verdicts
about the record's session, which travel back to that session's worker and kill through its one path. The
tool circuit's verdicts are about a tool instead (`evidence.scope == "tool"`): they open and close the
circuit in every agent process. Time comes from the records' event times only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Final, NamedTuple, Protocol

import orjson

from agents_contract import AgentEvent, MemoryRead, MemoryWritten, ToolReturned, TurnCompleted
from detectors._state import SessionState
from detectors._suite import Armed
from detectors._verdict import FailureClass, Verdict
from detectors._window import tally

_DAY_MS: Final = 86_400_000
# The rolling agent budget is kept as this many spend buckets, and the tool circuit's window likewise.
_BUCKETS: Final = 16

TENANT_DAILY_BUDGET: Final = "tenant_daily_budget"
AGENT_BUDGET: Final = "agent_budget"
TOOL_CIRCUIT: Final = "tool_circuit"
MEMORY_LEAK: Final = "memory_leak"
MEMORY_NAMESPACE_LEAK: Final = "memory_namespace_leak"
CORRELATED_QUIET: Final = "correlated_quiet"
STAGES: Final = frozenset(
    {TENANT_DAILY_BUDGET, AGENT_BUDGET, TOOL_CIRCUIT, MEMORY_LEAK, MEMORY_NAMESPACE_LEAK, CORRELATED_QUIET}
)


class StageRecord(NamedTuple):
    """What a keyed stage needs of one event: who (session, tenant, user, agent), when, and `values`.

    A named tuple: the worker makes several per event under load, and a tuple costs a fraction of a frozen
    dataclass to build. Its fields in order are its wire form."""

    stage: str
    key: str
    event_id: str
    session_id: str
    tenant_id: str
    user_id: str
    agent_id: str
    seq: int
    event_time_ms: int
    kind: str
    values: dict[str, Any]

    @property
    def routing_key(self) -> bytes:
        return f"{self.stage}:{self.key}".encode()

    def fields(self) -> list[Any]:
        """The record as a JSON-able list, in field order (its wire form, and how stage state keeps it)."""
        return list(self)

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.fields())

    @classmethod
    def from_bytes(cls, raw: bytes) -> StageRecord:
        return cls.from_fields(_json(raw))

    @classmethod
    def from_fields(cls, fields: Any) -> StageRecord:
        """The record `to_bytes` wrote, as parsed JSON; ValueError says what is wrong with it."""
        if not isinstance(fields, list) or len(fields) != 11:
            raise ValueError("a stage record is a JSON array of 11 fields")
        stage, key, event_id, session_id, tenant_id, user_id, agent_id, seq, event_time_ms, kind, values = (
            fields
        )
        # Exact types: JSON gives nothing else, and a subclass (bool is an int) is not what was written.
        if not (
            type(key) is str
            and type(event_id) is str
            and type(session_id) is str
            and type(tenant_id) is str
            and type(user_id) is str
            and type(agent_id) is str
            and type(kind) is str
            and type(stage) is str
        ):
            raise ValueError("stage, key, kind and the ids must be strings")
        if type(seq) is not int or type(event_time_ms) is not int:
            raise ValueError("seq and event_time_ms must be integers")
        if type(values) is not dict:
            raise ValueError("values must be an object")
        if stage not in STAGES:
            raise ValueError(f"stage {stage!r} is not one of {sorted(STAGES)}")
        return cls(
            stage, key, event_id, session_id, tenant_id, user_id, agent_id, seq, event_time_ms, kind, values
        )


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None


def pack_stage_records(records: Iterable[StageRecord]) -> list[tuple[bytes, bytes]]:
    """One message per routing key for a batch's records, in order: (key, JSON array of records). Under
    load a batch has thousands of records for a handful of keys (one tenant, a few tools), and a message
    each would cost the stage more than the judging."""
    grouped: dict[bytes, list[list[Any]]] = {}
    for record in records:
        grouped.setdefault(record.routing_key, []).append(record.fields())
    return [(key, orjson.dumps(items)) for key, items in grouped.items()]


def unpack_stage_records(raw: bytes) -> list[StageRecord]:
    """The records of one stages message (`pack_stage_records`; a single `to_bytes` record too)."""
    data = _json(raw)
    if isinstance(data, list) and data and all(isinstance(item, list) for item in data):
        return [StageRecord.from_fields(item) for item in data]
    return [StageRecord.from_fields(data)]


def _record(stage: str, key: str, event: AgentEvent, **values: Any) -> StageRecord:
    return StageRecord(
        stage,
        key,
        event.event_id,
        event.session_id,
        event.tenant_id,
        event.user_id,
        event.agent_id,
        event.seq,
        event.event_time_ms,
        event.kind,
        values,
    )


def stage_records(
    event: AgentEvent, stages: frozenset[str], *, fleet_tools: bool = False
) -> list[StageRecord]:
    """The records the switched-on `stages` need of one session event (none for most events). Tool
    circuits are keyed by tenant and tool, or by tool alone when `fleet_tools` (one circuit for all)."""
    out: list[StageRecord] = []
    if isinstance(event, TurnCompleted):
        if event.cost_usd > 0:
            if TENANT_DAILY_BUDGET in stages:
                out.append(_record(TENANT_DAILY_BUDGET, event.tenant_id, event, usd=event.cost_usd))
            if AGENT_BUDGET in stages:
                key = f"{event.tenant_id}/{event.agent_id}"
                out.append(_record(AGENT_BUDGET, key, event, usd=event.cost_usd))
    elif isinstance(event, ToolReturned):
        if TOOL_CIRCUIT in stages:
            key = event.tool_name if fleet_tools else f"{event.tenant_id}/{event.tool_name}"
            out.append(
                _record(
                    TOOL_CIRCUIT,
                    key,
                    event,
                    ok=event.status == "ok",
                    error=event.error_type,
                    tool=event.tool_name,
                    fleet=fleet_tools,
                )
            )
        if MEMORY_LEAK in stages and event.fingerprints:
            out.extend(
                _record(MEMORY_LEAK, f"{fp:016x}", event, read=True, tool=event.tool_name)
                for fp in dict.fromkeys(event.fingerprints)
            )
    elif isinstance(event, MemoryWritten | MemoryRead):
        read = isinstance(event, MemoryRead)
        if MEMORY_LEAK in stages:
            out.extend(
                _record(MEMORY_LEAK, f"{fp:016x}", event, read=read, store=event.store)
                for fp in dict.fromkeys(event.fingerprints)
            )
        if MEMORY_NAMESPACE_LEAK in stages:
            key = f"{event.store}/{event.key}"
            out.append(_record(MEMORY_NAMESPACE_LEAK, key, event, read=read, store=event.store))
    return out


def quiet_record(state: SessionState, since_ms: int, model: str, outcome: str | None = None) -> StageRecord:
    """The correlated-quiet stage's record of a session that went quiet at `since_ms` (its newest event's
    time, which is also the record's event time), keyed by its tenant and the model it last called; with
    `outcome` ("resumed" or "killed"), how that silence ended for a session counted in an incident."""
    event_id = f"quiet:{state.session_id}:{since_ms}" + (f":{outcome}" if outcome else "")
    return StageRecord(
        CORRELATED_QUIET,
        f"{state.tenant_id}/{model}",
        event_id,
        state.session_id,
        state.tenant_id,
        state.user_id,
        "",
        -1,
        since_ms,
        "timer",
        {"model": model, "outcome": outcome} if outcome else {"model": model},
    )


class KeyedDetector(Protocol):
    name: str
    stage: str

    def observe(self, state: dict[str, Any], record: StageRecord) -> list[Verdict]: ...

    def expired(self, state: dict[str, Any], now_ms: int) -> bool:
        """True once the key's state can go: its window has passed and nothing it holds still matters."""
        ...


def touched_ms(state: dict[str, Any]) -> int:
    """The newest event time the key's stage has judged (set by the stage judge on every record)."""
    value = state.get("_at", 0)
    return value if isinstance(value, int) else 0


KeyedSet = tuple[Armed[KeyedDetector], ...]
KeyedPolicy = Callable[[str, str], KeyedSet]
"""(tenant_id, agent_id) -> the keyed detectors that judge that agent's records."""


def _verdict(
    detector: str,
    failure_class: FailureClass,
    record: StageRecord,
    *,
    reason: str,
    observed: float,
    threshold: float,
    window: tuple[int, int],
    event_ids: Iterable[str] = (),
    advisory: bool = False,
    **evidence: Any,
) -> Verdict:
    ids = [*event_ids]
    if not ids or ids[-1] != record.event_id:
        ids.append(record.event_id)
    return Verdict(
        detector=detector,
        failure_class=failure_class,
        session_id=record.session_id,
        reason=reason,
        observed=observed,
        threshold=threshold,
        event_id=record.event_id,
        seq=record.seq,
        event_time_ms=record.event_time_ms,
        evidence={"agent_id": record.agent_id, "kind": record.kind, "stage_key": record.key, **evidence},
        event_ids=tuple(ids),
        window_start_ms=window[0],
        window_end_ms=window[1],
        advisory=advisory,
    )


def _positive(**values: float) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ValueError(f"{key} must be positive, got {value!r}")


def _number(values: dict[str, Any], key: str) -> float:
    value = values.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"stage record value {key}={value!r} is not a non-negative number")
    return float(value)


class TenantDailyBudget:
    """A tenant's spend over all its sessions in one UTC day (a tumbling window by event time) above
    `max_cost_usd`: every session of the tenant that spends more that day is stopped."""

    stage = TENANT_DAILY_BUDGET

    def __init__(self, *, name: str = TENANT_DAILY_BUDGET, max_cost_usd: float = 500.0) -> None:
        _positive(max_cost_usd=max_cost_usd)
        self.name = name
        self.max_cost_usd = max_cost_usd

    def expired(self, state: dict[str, Any], now_ms: int) -> bool:
        # Yesterday is kept for its late events; the day before has closed for good.
        return touched_ms(state) // _DAY_MS < now_ms // _DAY_MS - 1

    def observe(self, state: dict[str, Any], record: StageRecord) -> list[Verdict]:
        usd = _number(record.values, "usd")
        day = record.event_time_ms // _DAY_MS
        current = state.get("day", day)
        if day < current:
            return []  # spend from a day already closed: that window has moved on
        if day > current or "usd" not in state:
            state.update(day=day, usd=0.0)
        state["usd"] = round(state["usd"] + usd, 6)
        spent = state["usd"]
        if spent <= self.max_cost_usd:
            return []
        start = day * _DAY_MS
        return [
            _verdict(
                self.name,
                FailureClass.RUNAWAY_EXECUTION,
                record,
                reason=(
                    f"tenant {record.tenant_id} has spent ${spent:.2f} today (UTC) across its sessions; "
                    f"the daily budget is ${self.max_cost_usd:g}"
                ),
                observed=spent,
                threshold=self.max_cost_usd,
                window=(start, record.event_time_ms),
                tenant_spend_usd=spent,
                max_cost_usd=self.max_cost_usd,
                day_start_ms=start,
            )
        ]


def _slide(buckets: list[list[Any]], end_ms: int, span_ms: int) -> None:
    while buckets and buckets[0][0] <= end_ms - span_ms:
        del buckets[0]


class AgentRollingBudget:
    """One agent (an `agent_id` of a tenant, over all its sessions) spending more than `max_cost_usd`
    within a rolling `window_ms`."""

    stage = AGENT_BUDGET

    def __init__(
        self, *, name: str = AGENT_BUDGET, max_cost_usd: float = 50.0, window_ms: int = 3_600_000
    ) -> None:
        _positive(max_cost_usd=max_cost_usd, window_ms=window_ms)
        self.name = name
        self.max_cost_usd = max_cost_usd
        self.window_ms = window_ms
        self._bucket_ms = max(1, window_ms // _BUCKETS)

    def expired(self, state: dict[str, Any], now_ms: int) -> bool:
        return now_ms - touched_ms(state) > 2 * self.window_ms

    def observe(self, state: dict[str, Any], record: StageRecord) -> list[Verdict]:
        usd = _number(record.values, "usd")
        newest = max(int(state.get("newest", 0)), record.event_time_ms)
        if record.event_time_ms <= newest - self.window_ms:
            return []
        state["newest"] = newest
        buckets: list[list[Any]] = state.setdefault("buckets", [])
        tally(buckets, record.event_time_ms - record.event_time_ms % self._bucket_ms, usd)
        _slide(buckets, newest, self.window_ms)
        spent = round(sum(b[1] for b in buckets), 6)
        if spent <= self.max_cost_usd:
            return []
        return [
            _verdict(
                self.name,
                FailureClass.RUNAWAY_EXECUTION,
                record,
                reason=(
                    f"agent {record.agent_id} of tenant {record.tenant_id} spent ${spent:.2f} within "
                    f"{self.window_ms / 1000:g} s across its sessions; the limit is ${self.max_cost_usd:g}"
                ),
                observed=spent,
                threshold=self.max_cost_usd,
                window=(buckets[0][0], newest),
                agent_spend_usd=spent,
                max_cost_usd=self.max_cost_usd,
                window_ms=self.window_ms,
            )
        ]


class ToolCircuit:
    """A fleet-wide circuit breaker per tool. Closed, it counts the tool's results over `window_ms` across
    every session; once at least `min_calls` are in and the error share reaches `error_ratio`, it opens for
    `open_ms` (every SDK refuses the tool). After that it is half-open: the first result of a call made
    then decides, success closing it, failure opening it again for another `open_ms`."""

    stage = TOOL_CIRCUIT

    def __init__(
        self,
        *,
        name: str = TOOL_CIRCUIT,
        window_ms: int = 60_000,
        min_calls: int = 20,
        error_ratio: float = 0.5,
        open_ms: int = 30_000,
    ) -> None:
        _positive(window_ms=window_ms, min_calls=min_calls, open_ms=open_ms)
        if not 0 < error_ratio <= 1:
            raise ValueError(f"error_ratio must be in (0, 1], got {error_ratio!r}")
        self.name = name
        self.window_ms = window_ms
        self.min_calls = min_calls
        self.error_ratio = error_ratio
        self.open_ms = open_ms
        self._bucket_ms = max(1, window_ms // _BUCKETS)

    def expired(self, state: dict[str, Any], now_ms: int) -> bool:
        # A circuit that ever opened keeps its generation: agents order circuit commands by it, and a new
        # circuit starting again at 1 would be ignored by every agent that saw the old one.
        return not state.get("generation") and now_ms - touched_ms(state) > 2 * self.window_ms

    def observe(self, state: dict[str, Any], record: StageRecord) -> list[Verdict]:
        ok = record.values.get("ok") is True
        t = record.event_time_ms
        until = int(state.get("until", 0))
        if until:
            if t < until:
                return []  # calls that were in flight when it opened, or refused ones: no news
            if ok:
                state.update(until=0, buckets=[])
                return [self._change(state, record, "closed", "a call after the open period succeeded")]
            return [self._open(state, record, "a call after the open period failed again")]
        buckets: list[list[Any]] = state.setdefault("buckets", [])
        newest = max(int(state.get("newest", 0)), t)
        if t <= newest - self.window_ms:
            return []
        state["newest"] = newest
        tally(buckets, t - t % self._bucket_ms, 1, 0 if ok else 1)
        _slide(buckets, newest, self.window_ms)
        calls = sum(int(b[1]) for b in buckets)
        errors = sum(int(b[2]) for b in buckets)
        if calls < self.min_calls or errors / calls < self.error_ratio:
            return []
        state["tripped"] = [calls, errors, buckets[0][0]]
        return [
            self._open(
                state,
                record,
                f"{errors} of {calls} calls failed within {self.window_ms / 1000:g} s across all sessions "
                f"({errors / calls:.0%}); the limit is {self.error_ratio:.0%} over at least {self.min_calls}",
            )
        ]

    def _open(self, state: dict[str, Any], record: StageRecord, why: str) -> Verdict:
        state["generation"] = int(state.get("generation", 0)) + 1
        state["until"] = record.event_time_ms + self.open_ms
        state["buckets"] = []
        return self._change(state, record, "open", why)

    def _change(self, state: dict[str, Any], record: StageRecord, circuit: str, why: str) -> Verdict:
        tool = str(record.values.get("tool") or record.key)
        fleet = record.values.get("fleet", True) is not False
        calls, errors, since = state.get("tripped") or [0, 0, record.event_time_ms]
        action = f"opened for {self.open_ms / 1000:g} s" if circuit == "open" else "closed"
        return _verdict(
            self.name,
            FailureClass.CASCADING_FAILURE,
            record,
            reason=f"tool {tool} circuit {action}{'' if fleet else f' for tenant {record.tenant_id}'}: {why}",
            observed=round(errors / calls, 4) if calls else 0.0,
            threshold=self.error_ratio,
            window=(min(since, record.event_time_ms), record.event_time_ms),
            scope="tool",
            tool=tool,
            circuit_tenant_id=None if fleet else record.tenant_id,
            circuit=circuit,
            generation=int(state["generation"]),
            open_ms=self.open_ms,
            calls=calls,
            errors=errors,
            min_calls=self.min_calls,
            window_ms=self.window_ms,
            error_type=record.values.get("error"),
        )


# Reads of content (or of a memory key) nobody owns yet, kept in case its owner's write is judged late:
# the write and the read come from different sessions, so from different partitions, in no fixed order.
_EARLY_READERS: Final = 4


def _same_owner(a: StageRecord, b: StageRecord) -> bool:
    return a.tenant_id == b.tenant_id and a.user_id == b.user_id


class _Ownership:
    """The first writer by event time owns the key; a read by another user or tenant made after that write
    (by event time, whatever order the two are judged in) is judged by `_leak`. Ownership lapses after
    `ttl_ms` without any record for the key."""

    name = ""
    ttl_ms = 30 * _DAY_MS

    def expired(self, state: dict[str, Any], now_ms: int) -> bool:
        return now_ms - touched_ms(state) > self.ttl_ms

    def _leak(self, owner: StageRecord, reader: StageRecord) -> Verdict:
        raise NotImplementedError

    def _leak_verdict(self, owner: StageRecord, reader: StageRecord, reason: str, **evidence: Any) -> Verdict:
        """The verdict on `reader`'s session: both sessions named, the owner's write among the events."""
        return _verdict(
            self.name,
            FailureClass.MEMORY_CORRUPTION,
            reader,
            reason=reason,
            observed=1,
            threshold=0,
            window=(reader.event_time_ms, reader.event_time_ms),
            event_ids=[owner.event_id],
            owner_session_id=owner.session_id,
            owner_tenant_id=owner.tenant_id,
            owner_user_id=owner.user_id,
            owner_event_id=owner.event_id,
            reader_session_id=reader.session_id,
            **evidence,
        )

    @staticmethod
    def owner(state: dict[str, Any]) -> StageRecord | None:
        fields = state.get("owner")
        return StageRecord(*fields) if fields else None

    def _write(self, state: dict[str, Any], record: StageRecord) -> list[Verdict]:
        state["owner"] = record.fields()
        early: list[list[Any]] = state.pop("readers", [])
        found: list[Verdict] = []
        for entry in early:
            reader = StageRecord(*entry)
            if reader.event_time_ms >= record.event_time_ms and not _same_owner(record, reader):
                found.append(self._leak(record, reader))
        return found

    def _read(self, state: dict[str, Any], owner: StageRecord | None, record: StageRecord) -> list[Verdict]:
        if owner is None:
            readers: list[Any] = state.setdefault("readers", [])
            readers.append(record.fields())
            del readers[:-_EARLY_READERS]
            return []
        # A read from before the write (judged after it) cannot have seen what was written.
        if _same_owner(owner, record) or record.event_time_ms < owner.event_time_ms:
            return []
        return [self._leak(owner, record)]


class ContentOwnership(_Ownership):
    """Content written to memory by one user surfacing in a session of another user or tenant.

    The key is one content fingerprint. Its first writer owns it; the same content written by a second
    owner is common text (a template, a public page), not anyone's private data, and is never a leak. A
    read of owned content (from memory, or in a tool's result) by a session of another user or tenant is.
    """

    stage = MEMORY_LEAK

    def __init__(self, *, name: str = MEMORY_LEAK, ttl_ms: int = 30 * _DAY_MS) -> None:
        _positive(ttl_ms=ttl_ms)
        self.name = name
        self.ttl_ms = ttl_ms

    def observe(self, state: dict[str, Any], record: StageRecord) -> list[Verdict]:
        if state.get("common"):
            return []
        owner = self.owner(state)
        if record.values.get("read"):
            return self._read(state, owner, record)
        if owner is None:
            return self._write(state, record)
        if not _same_owner(owner, record):
            # Written by two owners: common text, nobody's private data.
            state.clear()
            state["common"] = True
        return []

    def _leak(self, owner: StageRecord, reader: StageRecord) -> Verdict:
        values = reader.values
        where = f"tool {values['tool']}'s result" if "tool" in values else "a memory read"
        scope = "tenant" if owner.tenant_id != reader.tenant_id else "user"
        reason = (
            f"content written in session {owner.session_id} (another {scope}: {owner.tenant_id}/"
            f"{owner.user_id}) surfaced in {where} of this session ({reader.tenant_id}/{reader.user_id})"
        )
        return self._leak_verdict(
            owner, reader, reason, fingerprint=reader.key, crosses=scope, store=values.get("store")
        )


class MemoryNamespace(_Ownership):
    """A memory key (store and key) read or overwritten by a user or tenant other than the one whose
    session first wrote it. Stores listed in `shared_stores` are meant to be shared and are left alone."""

    stage = MEMORY_NAMESPACE_LEAK

    def __init__(
        self,
        *,
        name: str = MEMORY_NAMESPACE_LEAK,
        shared_stores: Iterable[str] = (),
        ttl_ms: int = 30 * _DAY_MS,
    ) -> None:
        _positive(ttl_ms=ttl_ms)
        self.ttl_ms = ttl_ms
        self.name = name
        self.shared_stores = frozenset(shared_stores)

    def observe(self, state: dict[str, Any], record: StageRecord) -> list[Verdict]:
        if record.values.get("store") in self.shared_stores:
            return []
        owner = self.owner(state)
        if record.values.get("read"):
            return self._read(state, owner, record)
        if owner is None:
            return self._write(state, record)
        if _same_owner(owner, record):
            return []
        if record.event_time_ms < owner.event_time_ms:
            # This write came first (judged late): its writer owns the key, and the other one overwrote it.
            return [*self._write(state, record), self._leak(record, owner)]
        return [self._leak(owner, record)]

    def _leak(self, owner: StageRecord, reader: StageRecord) -> Verdict:
        access = "read" if reader.values.get("read") else "overwrote"
        reason = (
            f"this session ({reader.tenant_id}/{reader.user_id}) {access} memory key {reader.key}, which "
            f"belongs to {owner.tenant_id}/{owner.user_id} (first written in session {owner.session_id})"
        )
        return self._leak_verdict(owner, reader, reason, memory_key=reader.key, access=access)


# Sessions a correlated-quiet key keeps, at most: enough to find `min_sessions` among; an incident already
# open takes any number more, one record at a time.
_QUIET_KEPT: Final = 256


class CorrelatedQuiet:
    """Many sessions of one tenant (calling one model, where known) going quiet within `window_ms` of each
    other: a provider hang or an outage upstream, not as many stalls. From `min_sessions` of them on it is
    one incident, paged once (the verdict that opens it carries `opened`), and every session in it, those
    that join it later too, gets a hold verdict: its stall kill waits until `hold_ms` after its silence
    began. An incident takes sessions that go quiet within `window_ms` of the ones already in it."""

    stage = CORRELATED_QUIET

    def __init__(
        self,
        *,
        name: str = CORRELATED_QUIET,
        min_sessions: int = 5,
        window_ms: int = 120_000,
        hold_ms: int = 3_600_000,
    ) -> None:
        _positive(min_sessions=min_sessions, window_ms=window_ms, hold_ms=hold_ms)
        self.name = name
        self.min_sessions = min_sessions
        self.window_ms = window_ms
        self.hold_ms = hold_ms

    def expired(self, state: dict[str, Any], now_ms: int) -> bool:
        # An incident is kept while a hold it gave may still run and its sessions' outcomes come in (a session
        # killed when its hold runs out reports a timer tick or two later), so it closes and its alert id
        # stays unique.
        return now_ms - touched_ms(state) > self.hold_ms + 2 * self.window_ms

    def observe(self, state: dict[str, Any], record: StageRecord) -> list[Verdict]:
        since, window = record.event_time_ms, self.window_ms
        if record.values.get("outcome") is not None:
            return self._ended(state, record)
        newest = max(int(state.get("newest", since)), since)
        state["newest"] = newest
        # [session, silence began, user]: the quiet sessions of the last two windows.
        quiet: list[list[Any]] = [
            entry
            for entry in state.get("quiet", [])
            if entry[1] > newest - 2 * window and entry[0] != record.session_id
        ]
        quiet.append([record.session_id, since, record.user_id])
        del quiet[:-_QUIET_KEPT]
        state["quiet"] = quiet
        # [first silence, last silence, sessions, generation, sessions resumed, sessions killed, closed] of
        # the incident open or last opened.
        incident: list[int] | None = state.get("incident")
        if incident is not None and incident[0] - window <= since <= incident[1] + window:
            incident[0], incident[1] = min(incident[0], since), max(incident[1], since)
            incident[2] += 1
            return [self._hold(record, [record.session_id, since, record.user_id], incident, opened=False)]
        together = [entry for entry in quiet if abs(entry[1] - since) <= window]
        if len(together) < self.min_sessions:
            return []
        generation = incident[3] + 1 if incident is not None else 1
        first, last = min(e[1] for e in together), max(e[1] for e in together)
        incident = [first, last, len(together), generation, 0, 0, 0]
        state["incident"] = incident
        return [self._hold(record, entry, incident, opened=at == 0) for at, entry in enumerate(together)]

    def _ended(self, state: dict[str, Any], record: StageRecord) -> list[Verdict]:
        """A session of the incident spoke again (or was killed after its hold): once all of them have, the
        incident is over and its page is resolved."""
        incident: list[int] | None = state.get("incident")
        since = record.event_time_ms
        if (
            incident is None
            or incident[6]
            or not incident[0] - self.window_ms <= since <= incident[1] + self.window_ms
        ):
            return []
        incident[5 if record.values.get("outcome") == "killed" else 4] += 1
        if incident[4] + incident[5] < incident[2]:
            return []
        incident[6] = 1
        resumed, killed = incident[4], incident[5]
        verdict = self._hold(record, [record.session_id, since, record.user_id], incident, opened=False)
        reason = f"the {incident[2]} sessions of the incident are quiet no more: {resumed} spoke again" + (
            f", {killed} were killed once their hold ran out" if killed else ""
        )
        return [
            replace(
                verdict,
                reason=reason,
                evidence={**verdict.evidence, "closed": True, "resumed": resumed, "killed": killed},
            )
        ]

    def _hold(self, record: StageRecord, entry: list[Any], incident: list[int], *, opened: bool) -> Verdict:
        session_id, since, user_id = entry
        model = str(record.values.get("model", ""))
        scope = f"tenant {record.tenant_id}" + (f", model {model}," if model else "")
        sessions = incident[2]
        spread = (incident[1] - incident[0]) / 1000
        return Verdict(
            detector=self.name,
            failure_class=FailureClass.MULTI_AGENT_DEADLOCK,
            session_id=session_id,
            reason=(
                f"{sessions} sessions of {scope} went quiet within {spread:g} s of each other: one incident "
                f"upstream (a provider hang?), not {sessions} stalls"
            ),
            observed=sessions,
            threshold=self.min_sessions,
            event_id="",
            seq=-1,
            event_time_ms=since,
            evidence={
                "stage_key": record.key,
                "model": model,
                "opened": opened,
                "sessions": sessions,
                "generation": incident[3],
                "quiet_since_ms": since,
                "first_quiet_ms": incident[0],
                "hold_until_ms": since + self.hold_ms,
                "quiet_user_id": user_id,
                "window_ms": self.window_ms,
            },
            window_start_ms=incident[0],
            window_end_ms=incident[1],
            advisory=True,
        )
