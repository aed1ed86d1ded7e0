"""What a detector says when a session crosses a line, with the evidence an operator needs to trust it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

Mode = Literal["shadow", "warn", "enforce"]
"""What a verdict does: `shadow` counts and logs it, `warn` alerts, `enforce` kills and alerts."""

MODES: tuple[Mode, ...] = ("shadow", "warn", "enforce")


class FailureClass(StrEnum):
    RUNAWAY_EXECUTION = "runaway_execution"
    CASCADING_FAILURE = "cascading_failure"
    MEMORY_CORRUPTION = "memory_corruption"
    MULTI_AGENT_DEADLOCK = "multi_agent_deadlock"
    CONTEXT_BLOWUP = "context_blowup"
    CONTRACT_VIOLATION = "contract_violation"
    CONTEXT_BLINDNESS = "context_blindness"


@dataclass(frozen=True, slots=True)
class Verdict:
    detector: str
    failure_class: FailureClass
    session_id: str
    reason: str
    observed: float
    threshold: float
    # The event that crossed the line.
    event_id: str
    seq: int
    event_time_ms: int
    evidence: dict[str, Any] = field(default_factory=dict)
    # The ids of the events that make the case (the breaching one last), and the event-time window they
    # were counted in.
    event_ids: tuple[str, ...] = ()
    window_start_ms: int = 0
    window_end_ms: int = 0
    # Set by the suite from config; a detector never decides what its verdict does.
    mode: Mode = "enforce"
    # A verdict that only warns of what is coming (a burn rate) is never a kill, whatever the mode.
    advisory: bool = False

    @property
    def kills(self) -> bool:
        return self.mode == "enforce" and not self.advisory

    @classmethod
    def from_description(cls, data: dict[str, Any]) -> Verdict:
        """The verdict `describe()` gave (how keyed stages hand verdicts to the session's worker)."""
        mode = data.get("mode", "enforce")
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        return cls(
            detector=str(data["detector"]),
            failure_class=FailureClass(data["failure_class"]),
            session_id=str(data["session_id"]),
            reason=str(data["reason"]),
            observed=float(data["observed"]),
            threshold=float(data["threshold"]),
            event_id=str(data["event_id"]),
            seq=int(data["seq"]),
            event_time_ms=int(data["event_time_ms"]),
            evidence=dict(data.get("evidence") or {}),
            event_ids=tuple(str(i) for i in data.get("event_ids") or ()),
            window_start_ms=int(data.get("window_start_ms", 0)),
            window_end_ms=int(data.get("window_end_ms", 0)),
            mode=mode,
            advisory=bool(data.get("advisory", False)),
        )

    def describe(self) -> dict[str, Any]:
        """The verdict as plain data: what `tripwire replay` prints and alerts carry."""
        return {
            "detector": self.detector,
            "failure_class": self.failure_class.value,
            "mode": self.mode,
            "advisory": self.advisory,
            "session_id": self.session_id,
            "reason": self.reason,
            "observed": self.observed,
            "threshold": self.threshold,
            "event_id": self.event_id,
            "seq": self.seq,
            "event_time_ms": self.event_time_ms,
            "window_start_ms": self.window_start_ms,
            "window_end_ms": self.window_end_ms,
            "event_ids": list(self.event_ids),
            "evidence": self.evidence,
        }
