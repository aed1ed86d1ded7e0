"""What a detector says when a session crosses a line, with the evidence an operator needs to trust it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class FailureClass(StrEnum):
    RUNAWAY_EXECUTION = "runaway_execution"
    CASCADING_FAILURE = "cascading_failure"
    MEMORY_CORRUPTION = "memory_corruption"
    MULTI_AGENT_DEADLOCK = "multi_agent_deadlock"
    CONTEXT_BLOWUP = "context_blowup"
    CONTRACT_VIOLATION = "contract_violation"


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
