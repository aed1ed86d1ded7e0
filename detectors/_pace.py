"""How fast a session goes: spend that will cross the ceiling soon, sessions past their deadline, and
memory written faster than any agent needs.

`BurnRate` projects the session's recent spend rate onto its cost ceiling and warns (an advisory verdict,
never a kill) while there is still time to act; the ceiling itself stays `CostCeiling`'s job.
`SessionDeadline` bounds a session's wall time: on its events and, through the worker's timer, after the
session went silent past the deadline. `MemoryWriteAmplification` warns when a session writes to memory
faster than a plausible agent would, the usual sign of a write loop filling a store.
"""

from __future__ import annotations

from typing import Final

from agents_contract import AgentEvent, MemoryWritten, TurnCompleted
from detectors._stalls import duration
from detectors._state import SessionState
from detectors._suite import Detector, verdict
from detectors._verdict import FailureClass, Verdict
from detectors._window import insert, slide, slot, tally

# The burn-rate window is kept as this many spend buckets, however many turns fall into it.
_BUCKETS: Final = 16


class BurnRate:
    """Warns when, at the spend rate of the last `window_ms`, the session crosses `ceiling_usd` within
    `horizon_ms`; the window must hold at least `min_spend_usd` first."""

    kinds = frozenset({"turn.completed"})

    def __init__(
        self,
        *,
        name: str = "burn_rate",
        ceiling_usd: float = 10.0,
        window_ms: int = 60_000,
        horizon_ms: int = 300_000,
        min_spend_usd: float = 0.01,
    ) -> None:
        for key, value in (
            ("ceiling_usd", ceiling_usd),
            ("window_ms", window_ms),
            ("horizon_ms", horizon_ms),
        ):
            if value <= 0:
                raise ValueError(f"{key} must be positive, got {value!r}")
        if min_spend_usd < 0:
            raise ValueError(f"min_spend_usd must not be negative, got {min_spend_usd!r}")
        self.name = name
        self.ceiling_usd = ceiling_usd
        self.window_ms = window_ms
        self.horizon_ms = horizon_ms
        self.min_spend_usd = min_spend_usd
        self._bucket_ms = max(1, window_ms // _BUCKETS)

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        if not isinstance(event, TurnCompleted) or event.cost_usd <= 0 or state.late:
            return None
        # Entries are [bucket start since the session's origin, spend in the bucket]: bounded by the window,
        # not by the turn rate.
        buckets: list[list[float]] = slot(state, self.name, [])
        origin = state.origin_ms
        start = event.event_time_ms - event.event_time_ms % self._bucket_ms - origin
        tally(buckets, start, event.cost_usd)
        slide(buckets, state.last_event_ms - origin, self.window_ms, limit=_BUCKETS + 1)
        spend = sum(bucket[1] for bucket in buckets)
        spent = state.cost_usd
        if spend < self.min_spend_usd or spend <= 0 or spent >= self.ceiling_usd:
            return None
        # A young session has not filled the window yet: its spend came over its lifetime so far.
        covered_ms = max(1_000, min(self.window_ms, state.last_event_ms - state.first_event_ms))
        rate = spend / covered_ms
        eta_ms = (self.ceiling_usd - spent) / rate
        if eta_ms > self.horizon_ms:
            return None
        crosses_at_ms = state.last_event_ms + int(eta_ms)
        per_min = rate * 60_000
        return verdict(
            self.name,
            FailureClass.RUNAWAY_EXECUTION,
            state,
            event,
            reason=(
                f"session is spending ${per_min:.2f}/min; at this rate it crosses its ${self.ceiling_usd:g} "
                f"ceiling in about {duration(eta_ms)} (spent ${spent:.2f} so far)"
            ),
            observed=round(spent + rate * self.horizon_ms, 6),
            threshold=self.ceiling_usd,
            window=(state.last_event_ms - covered_ms, state.last_event_ms),
            advisory=True,
            rate_usd_per_min=round(per_min, 6),
            window_spend_usd=round(spend, 6),
            covered_ms=covered_ms,
            cost_usd=round(spent, 6),
            ceiling_usd=self.ceiling_usd,
            eta_ms=int(eta_ms),
            crosses_at_ms=crosses_at_ms,
            horizon_ms=self.horizon_ms,
        )


class SessionDeadline:
    """A session still running more than `max_duration_ms` after its first event."""

    def __init__(self, *, name: str = "session_deadline", max_duration_ms: int = 3_600_000) -> None:
        if max_duration_ms <= 0:
            raise ValueError(f"max_duration_ms must be positive, got {max_duration_ms!r}")
        self.name = name
        self.max_duration_ms = max_duration_ms

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        # An ended session has nothing left to stop; its events still count for the totals.
        if state.ended:
            return None
        return self._judge(state, event, event.event_time_ms)

    def expire(self, state: SessionState, now_ms: int) -> Verdict | None:
        if state.ended or not state.events:
            return None
        return self._judge(state, None, now_ms)

    def _judge(self, state: SessionState, event: AgentEvent | None, at_ms: int) -> Verdict | None:
        running = at_ms - state.first_event_ms
        if running <= self.max_duration_ms:
            return None
        return verdict(
            self.name,
            FailureClass.RUNAWAY_EXECUTION,
            state,
            event,
            reason=(
                f"session has been running for {duration(running)}; "
                f"the limit is {duration(self.max_duration_ms)}"
            ),
            observed=running,
            threshold=self.max_duration_ms,
            window=(state.first_event_ms, at_ms),
            running_ms=running,
            max_duration_ms=self.max_duration_ms,
            started_ms=state.first_event_ms,
        )


class MemoryWriteAmplification:
    """Warns when a session makes more than `writes` memory writes within `window_ms`."""

    kinds = frozenset({"memory.written"})

    def __init__(
        self, *, name: str = "memory_write_amplification", writes: int = 50, window_ms: int = 60_000
    ) -> None:
        if writes < 1 or window_ms <= 0:
            raise ValueError(f"writes and window_ms must be positive, got {writes!r} and {window_ms!r}")
        self.name = name
        self.writes = writes
        self.window_ms = window_ms

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        if not isinstance(event, MemoryWritten) or state.late:
            return None
        # Entries are [event time since the session's origin].
        times: list[list[int]] = slot(state, self.name, [])
        origin = state.origin_ms
        insert(times, [event.event_time_ms - origin])
        # One past the limit is all the case needs.
        slide(times, state.last_event_ms - origin, self.window_ms, limit=self.writes + 1)
        if len(times) <= self.writes:
            return None
        return verdict(
            self.name,
            FailureClass.MEMORY_CORRUPTION,
            state,
            event,
            reason=(
                f"{len(times)} memory writes within {duration(self.window_ms)}; "
                f"more than {self.writes} is amplification"
            ),
            observed=len(times),
            threshold=self.writes,
            window=(times[0][0] + origin, state.last_event_ms),
            advisory=True,
            writes=len(times),
            limit=self.writes,
            window_ms=self.window_ms,
            store=event.store,
        )


PACE_DETECTORS: Final[tuple[type[Detector], ...]] = (BurnRate, SessionDeadline, MemoryWriteAmplification)
