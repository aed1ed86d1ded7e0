"""The kill watch: a kill nobody acknowledges is escalated once, after its deadline, and never before."""

from __future__ import annotations

import orjson

from detectors import SessionState
from streams.worker._watch import KillWatch, escalation_alert


def killed(session_id: str, at_ms: int, **extra: int) -> SessionState:
    state = SessionState(session_id, tenant_id="acme", user_id="u-1", killed_by="max_steps")
    state.kill_issued_ms = at_ms
    for name, value in extra.items():
        setattr(state, name, value)
    return state


def test_unacknowledged_kills_come_due_in_deadline_order_once() -> None:
    watch = KillWatch(timeout_ms=1_000)
    for state in (killed("s-late", 5_000), killed("s-early", 1_000), killed("s-mid", 3_000)):
        watch.track(state)
        watch.track(state)  # tracking twice (every batch that touches it) changes nothing
    assert len(watch) == 3
    assert watch.due(1_999) == []
    assert watch.due(4_000) == ["s-early", "s-mid"]
    assert watch.due(10_000) == ["s-late"]
    assert watch.due(20_000) == []
    assert len(watch) == 0


def test_acknowledged_escalated_and_unkilled_sessions_are_not_watched() -> None:
    watch = KillWatch(timeout_ms=1_000)
    watch.track(SessionState("s-alive"))
    watch.track(killed("s-acked", 1_000, acked_ms=1_200))
    watch.track(killed("s-escalated", 1_000, escalated_ms=2_000))
    pending = killed("s-settled-later", 1_000)
    watch.track(pending)
    watch.settle("s-settled-later")
    assert watch.due(99_000) == []


def test_the_escalation_alert_names_the_kill_and_the_wait() -> None:
    alert = escalation_alert(killed("s-1", 10_000), now_ms=25_500, timeout_ms=15_000)
    assert (alert.severity, alert.action, alert.detector) == ("critical", "escalated", "kill_unacknowledged")
    assert alert.alert_id.endswith("-unacknowledged")
    assert alert.command_id is not None
    assert alert.alert_id.startswith(alert.command_id)
    assert alert.observed == 15.5
    assert "may still be running" in alert.reason
    assert orjson.loads(alert.to_bytes())["evidence"] == {"killed_by": "max_steps", "kill_issued_ms": 10_000}


def test_state_from_before_ack_tracking_still_loads() -> None:
    old = orjson.dumps([1, "s-1", "t", "u", 3, 10, 0.5, 4, 1, 2, "max_steps", {"a": [7, 1]}])
    state = SessionState.from_bytes(old)
    assert (state.steps, state.killed_by, state.kill_issued_ms, state.partition) == (3, "max_steps", 0, -1)
    assert SessionState.from_bytes(state.to_bytes()) == state
