"""The kill loop's confirmation: every kill this worker issued is watched until its agent acknowledges it.

A kill that nobody acknowledges within `worker.kill_ack_timeout_s` means the agent may still be running (it
crashed before the kill arrived, runs an SDK that ignores the control topic, or cannot reach the broker), so
the worker raises its own critical alert, once per kill. The watch is an in-memory index over the session
states; the states themselves (issued, acknowledged, escalated) live in the changelog, so a restarted worker
rebuilds the index from its table and neither forgets a pending kill nor escalates one twice.
"""

from __future__ import annotations

import heapq

from agents_contract import kill_command_id
from detectors import SessionState
from sinks import Alert

ESCALATION = "kill_unacknowledged"


class KillWatch:
    def __init__(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        self._deadline: dict[str, int] = {}
        self._queue: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._deadline)

    def track(self, state: SessionState) -> None:
        if state.awaiting_ack and state.session_id not in self._deadline:
            deadline = state.kill_issued_ms + self.timeout_ms
            self._deadline[state.session_id] = deadline
            heapq.heappush(self._queue, (deadline, state.session_id))

    def defer(self, session_id: str, until_ms: int) -> None:
        """Look at this kill again at `until_ms` (its acknowledgement may be in a backlog not yet judged)."""
        self._deadline[session_id] = until_ms
        heapq.heappush(self._queue, (until_ms, session_id))

    def settle(self, session_id: str) -> None:
        self._deadline.pop(session_id, None)

    def clear(self) -> None:
        self._deadline.clear()
        self._queue.clear()

    def due(self, now_ms: int) -> list[str]:
        """Sessions whose kill is past its deadline and unsettled; each is returned once."""
        out: list[str] = []
        while self._queue and self._queue[0][0] <= now_ms:
            deadline, session_id = heapq.heappop(self._queue)
            if self._deadline.get(session_id) == deadline:
                del self._deadline[session_id]
                out.append(session_id)
        return out


def escalation_alert(state: SessionState, now_ms: int, timeout_ms: int) -> Alert:
    assert state.killed_by is not None
    command_id = kill_command_id(state.session_id, state.killed_by)
    waited_s = (now_ms - state.kill_issued_ms) / 1000
    return Alert(
        alert_id=f"{command_id}-unacknowledged",
        severity="critical",
        failure_class=ESCALATION,
        detector=ESCALATION,
        action="escalated",
        session_id=state.session_id,
        tenant_id=state.tenant_id,
        user_id=state.user_id,
        agent_id="",
        reason=(
            f"session {state.session_id} was killed by {state.killed_by} {waited_s:.1f} s ago and no agent "
            f"has acknowledged it (deadline {timeout_ms / 1000:g} s): the agent may still be running"
        ),
        observed=waited_s,
        threshold=timeout_ms / 1000,
        event_id="",
        event_time_ms=state.kill_issued_ms,
        detected_at_ms=now_ms,
        command_id=command_id,
        evidence={"killed_by": state.killed_by, "kill_issued_ms": state.kill_issued_ms},
    )


def escalation_resolved(state: SessionState, acked_ms: int) -> Alert:
    """Closes the escalation page of a kill that was acknowledged after all."""
    assert state.killed_by is not None
    command_id = kill_command_id(state.session_id, state.killed_by)
    late_s = (acked_ms - state.kill_issued_ms) / 1000
    return Alert(
        alert_id=f"{command_id}-unacknowledged",
        severity="critical",
        failure_class=ESCALATION,
        detector=ESCALATION,
        action="escalated",
        status="resolved",
        session_id=state.session_id,
        tenant_id=state.tenant_id,
        user_id=state.user_id,
        agent_id="",
        reason=f"session {state.session_id}: the kill was acknowledged {late_s:.1f} s after it was issued",
        observed=late_s,
        threshold=0,
        event_id="",
        event_time_ms=state.kill_issued_ms,
        detected_at_ms=acked_ms,
        command_id=command_id,
        evidence={"killed_by": state.killed_by, "acked_ms": acked_ms},
    )
