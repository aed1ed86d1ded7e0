"""The detector suite: the one code path that judges events, for the worker and for offline replay alike.

`DetectorSuite.observe(state, event)` drops replays, accounts the event into the session's state and asks
every detector that applies to the session's tenant and agent for a verdict; `expire(state)` asks the
timed detectors (deadlines, stalls) about a session that may have gone quiet. The suite stamps each verdict
with its detector's mode and gives a detector's verdict once per session. It does no I/O and reads time only
from the injected clock, so the same calls run inside the Faust worker, in unit tests and over recorded
events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from agents_contract import AgentEvent
from detectors._state import SessionState
from detectors._verdict import FailureClass, Mode, Verdict

Clock = Callable[[], int]
"""Milliseconds since the Unix epoch."""


def wall_clock() -> int:
    return time.time_ns() // 1_000_000


class Detector(Protocol):
    """A session detector. It may say which event kinds it observes in a `kinds` attribute (a frozenset of
    `kind` values); the suite then calls it for those kinds only. Without one it sees every event."""

    name: str

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None: ...


@runtime_checkable
class TimedDetector(Protocol):
    """A detector that can fire without a new event: a deadline passing, a session going quiet."""

    name: str

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None: ...

    def expire(self, state: SessionState, now_ms: int) -> Verdict | None: ...


D = TypeVar("D")


@dataclass(frozen=True, slots=True)
class Armed(Generic[D]):
    """A detector as configured for some sessions, with the mode its verdicts take."""

    detector: D
    mode: Mode = "enforce"


DetectorSet = tuple[Armed[Detector], ...]
Policy = Callable[[str, str], DetectorSet]
"""(tenant_id, agent_id) -> the detectors that judge that agent's events."""


@dataclass(frozen=True, slots=True)
class Observation:
    duplicate: bool
    verdicts: list[Verdict]


# The pseudo event kind under which the suite keeps the timed detectors of a detector set.
_TIMER = "<timer>"

_MEMO_MAX = 65_536

_DUPLICATE = Observation(duplicate=True, verdicts=[])
_QUIET = Observation(duplicate=False, verdicts=[])


def _fixed(detectors: DetectorSet) -> Policy:
    return lambda tenant_id, agent_id: detectors


class DetectorSuite:
    def __init__(
        self,
        detectors: Sequence[Detector | Armed[Detector]] | Policy,
        clock: Clock = wall_clock,
        *,
        allowed_lateness_ms: int = 5_000,
        max_agents: int = 64,
        max_seq_jump: int = 2**40,
    ) -> None:
        if callable(detectors):
            self._policy = detectors
        else:
            armed = tuple(d if isinstance(d, Armed) else Armed(d) for d in detectors)
            self._policy = _fixed(armed)
        self._clock = clock
        self.allowed_lateness_ms = allowed_lateness_ms
        self.max_agents = max_agents
        self.max_seq_jump = max_seq_jump
        # Per detector set (by identity; the policy hands out the same few tuples) and event kind, the
        # detectors that observe that kind: most observe one or two of the twelve kinds.
        self._by_kind: dict[int, tuple[DetectorSet, dict[str, DetectorSet]]] = {}
        # The same by (tenant, agent, kind), the question every event asks: one dict lookup instead of the
        # policy's layers and the lookup above. The policy is fixed for the suite's life (a config reload
        # builds a new suite); the memo is bounded, and starts over when full.
        self._chosen: dict[tuple[str, str, str], DetectorSet] = {}

    def _for_kind(self, detectors: DetectorSet, kind: str) -> DetectorSet:
        entry = self._by_kind.get(id(detectors))
        if entry is None or entry[0] is not detectors:
            entry = self._by_kind[id(detectors)] = (detectors, {})
        chosen = entry[1].get(kind)
        if chosen is None:
            if kind == _TIMER:
                chosen = tuple(armed for armed in detectors if isinstance(armed.detector, TimedDetector))
            else:
                chosen = tuple(
                    armed
                    for armed in detectors
                    if (kinds := getattr(armed.detector, "kinds", None)) is None or kind in kinds
                )
            entry[1][kind] = chosen
        return chosen

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int | None = None) -> Observation:
        """Judge one event of `state`'s session at `now_ms` (the clock by default)."""
        if not state.accept(
            event.agent_id, event.seq, event.event_id, max_agents=self.max_agents, max_jump=self.max_seq_jump
        ):
            return _DUPLICATE
        # Event time drives every window: an event from further back than the allowed lateness still counts
        # towards totals (spend is spend) but not towards windows that have already moved past it.
        state.late = bool(state.last_event_ms) and (
            event.event_time_ms < state.last_event_ms - self.allowed_lateness_ms
        )
        state.apply(event)
        if now_ms is None:
            now_ms = self._clock()
        state.heard_ms = max(state.heard_ms, now_ms)
        if state.killed_by is not None:
            return _QUIET
        verdicts: list[Verdict] = []
        memo = (state.tenant_id, event.agent_id, event.kind)
        chosen = self._chosen.get(memo)
        if chosen is None:
            if len(self._chosen) >= _MEMO_MAX:
                self._chosen.clear()
            chosen = self._chosen[memo] = self._for_kind(self._policy(memo[0], memo[1]), memo[2])
        for armed in chosen:
            verdict = armed.detector.observe(state, event, now_ms)
            if verdict is not None and (given := self._give(state, verdict, armed.mode)) is not None:
                verdicts.append(given)
        return Observation(duplicate=False, verdicts=verdicts) if verdicts else _QUIET

    def expire(self, state: SessionState, now_ms: int | None = None) -> list[Verdict]:
        """Verdicts of the timed detectors for a session, judged at `now_ms` (the clock by default)."""
        if state.killed_by is not None or state.ended:
            return []
        now = self._clock() if now_ms is None else now_ms
        verdicts: list[Verdict] = []
        # A quiet session has no event to name its agent: the tenant's settings apply.
        for armed in self._for_kind(self._policy(state.tenant_id, ""), _TIMER):
            detector: Any = armed.detector
            verdict = detector.expire(state, now)
            if verdict is not None and (given := self._give(state, verdict, armed.mode)) is not None:
                verdicts.append(given)
        return verdicts

    @staticmethod
    def _give(state: SessionState, verdict: Verdict, mode: Mode) -> Verdict | None:
        return replace(verdict, mode=mode) if state.first_verdict(verdict.detector) else None


def verdict(
    detector: str,
    failure_class: FailureClass,
    state: SessionState,
    event: AgentEvent | None,
    *,
    reason: str,
    observed: float,
    threshold: float,
    event_ids: Sequence[str] = (),
    window: tuple[int, int] | None = None,
    advisory: bool = False,
    **evidence: object,
) -> Verdict:
    """A verdict on `state`, breached by `event` (None for a timer), with the usual evidence filled in."""
    ids = tuple(event_ids)
    if event is not None and (not ids or ids[-1] != event.event_id):
        ids = (*ids, event.event_id)
    start, end = window if window is not None else (state.first_event_ms, state.last_event_ms)
    return Verdict(
        detector=detector,
        failure_class=failure_class,
        session_id=state.session_id,
        reason=reason,
        observed=observed,
        threshold=threshold,
        event_id=event.event_id if event is not None else "",
        seq=event.seq if event is not None else -1,
        event_time_ms=event.event_time_ms if event is not None else end,
        evidence={
            "agent_id": event.agent_id if event is not None else "",
            "kind": event.kind if event is not None else "timer",
            **evidence,
        },
        event_ids=ids,
        window_start_ms=start,
        window_end_ms=end,
        advisory=advisory,
    )
