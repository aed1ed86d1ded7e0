"""One session's events through a detector suite, for the detector tests: a sequence per agent, event
times in milliseconds after `T0`, and the verdicts each event draws."""

from __future__ import annotations

import zlib
from typing import Any

from agents_contract import AgentEvent
from detectors import Armed, Detector, DetectorSuite, SessionState, Verdict

T0 = 1_700_000_000_000


class SessionUnderTest:
    def __init__(self, *detectors: Detector | Armed[Detector], lateness_ms: int = 5_000) -> None:
        self.suite = DetectorSuite(list(detectors), clock=lambda: 0, allowed_lateness_ms=lateness_ms)
        self.state = SessionState("s-1")
        self.seqs: dict[str, int] = {}
        self.last: AgentEvent | None = None

    def envelope(self, t: int, agent: str, seq: int | None = None) -> dict[str, Any]:
        """The envelope of `agent`'s next event (or of `seq`, to replay or reorder one) at T0 + t."""
        if seq is None:
            seq = self.seqs[agent] = self.seqs.get(agent, 0) + 1
        # Unique per agent, and short whatever the agent id (slots keep event ids as evidence).
        tag = agent if len(agent) <= 8 else f"{agent[:8]}{zlib.crc32(agent.encode()):x}"
        return {
            "event_id": f"e-{tag}-{seq}",
            "session_id": "s-1",
            "agent_id": agent,
            "tenant_id": "acme",
            "user_id": "u-1",
            "seq": seq,
            "event_time_ms": T0 + t,
        }

    def send(self, event: AgentEvent) -> list[Verdict]:
        self.last = event
        return self.suite.observe(self.state, event).verdicts
