"""The alert record on `guardrail.alerts`: what sinks deliver, self-contained and free of raw content."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

Severity = Literal["info", "warning", "critical"]


class Alert(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    alert_id: Annotated[str, Field(min_length=1, max_length=128)]
    severity: Severity
    failure_class: str
    detector: str
    # What Tripwire did: `killed` (enforce), `warned`, `observed` (shadow), `escalated` (a kill that no
    # agent acknowledged in time), `tripped` (a fleet-wide tool circuit opened, or closed again), or `held`
    # (many sessions of a tenant went quiet together: one incident, their stall kills held).
    action: Literal["killed", "warned", "observed", "escalated", "tripped", "held"]
    session_id: str
    tenant_id: str
    user_id: str
    agent_id: str
    reason: str
    observed: float
    threshold: float
    event_id: str
    event_time_ms: int
    detected_at_ms: int
    command_id: str | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)
    # `resolved` closes what an earlier alert with the same alert_id opened (paging services resolve it).
    status: Literal["firing", "resolved"] = "firing"

    @property
    def summary(self) -> str:
        """One line for a pager: what happened to which session."""
        if self.action == "tripped":
            tool = self.evidence.get("tool", "?")
            head = f"[tripwire] tool {tool} circuit {self.evidence.get('circuit', 'open')}: {self.detector}"
            return f"{head} (resolved)" if self.status == "resolved" else head
        if self.action == "held":
            sessions = self.evidence.get("sessions", "?")
            head = f"[tripwire] {sessions} sessions of tenant {self.tenant_id} went quiet together"
            return f"{head}: {self.detector}"
        verb = {"killed": "killed", "warned": "warning on", "observed": "observed", "escalated": "ESCALATED"}
        head = f"[tripwire] {verb[self.action]} session {self.session_id}: {self.detector}"
        return f"{head} (resolved)" if self.status == "resolved" else head

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump())

    @classmethod
    def from_bytes(cls, raw: bytes) -> Alert:
        return cls.model_validate(orjson.loads(raw))
