"""Alerts for the sink tests."""

from __future__ import annotations

from typing import Any

from sinks import Alert


def make_alert(**overrides: Any) -> Alert:
    base: dict[str, Any] = {
        "alert_id": "kill-0123456789abcdef",
        "severity": "critical",
        "failure_class": "runaway_execution",
        "detector": "max_steps",
        "action": "killed",
        "session_id": "s-42",
        "tenant_id": "acme",
        "user_id": "u-7",
        "agent_id": "researcher",
        "reason": "session used 51 steps; the ceiling is 50",
        "observed": 51,
        "threshold": 50,
        "event_id": "e-51",
        "event_time_ms": 1_795_000_000_000,
        "detected_at_ms": 1_795_000_000_020,
        "command_id": "kill-0123456789abcdef",
        "evidence": {"steps": 51},
    }
    return Alert(**{**base, **overrides})
