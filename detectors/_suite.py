"""The detector suite: the one code path that judges events, for the worker and for offline replay alike.

`DetectorSuite.observe(state, event)` drops replays, accounts the event into the session's state and asks
every detector for a verdict. It does no I/O and reads time only from the injected clock, so the same call
runs inside the Faust worker, in unit tests and over recorded events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from agents_contract import AgentEvent
from detectors._state import SessionState
from detectors._verdict import Verdict

Clock = Callable[[], int]
"""Milliseconds since the Unix epoch."""


def wall_clock() -> int:
    return time.time_ns() // 1_000_000


class Detector(Protocol):
    name: str

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None: ...


@dataclass(frozen=True, slots=True)
class Observation:
    duplicate: bool
    verdicts: list[Verdict]


_DUPLICATE = Observation(duplicate=True, verdicts=[])
_QUIET = Observation(duplicate=False, verdicts=[])


class DetectorSuite:
    def __init__(self, detectors: Sequence[Detector], clock: Clock = wall_clock) -> None:
        self.detectors = tuple(detectors)
        self._clock = clock

    def observe(self, state: SessionState, event: AgentEvent) -> Observation:
        if not state.accept(event.agent_id, event.seq):
            return _DUPLICATE
        state.apply(event)
        if state.killed_by is not None:
            return _QUIET
        now_ms = self._clock()
        verdicts = [v for d in self.detectors if (v := d.observe(state, event, now_ms)) is not None]
        return Observation(duplicate=False, verdicts=verdicts) if verdicts else _QUIET
