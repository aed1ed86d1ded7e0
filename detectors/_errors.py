"""Cascading failures: tool errors piling up inside a session, and errors spreading from agent to agent.

`ErrorBurst` watches the session's tool results in an event-time window and fires on too many errors, or on
too high a share of errors once enough results are in; `ErrorPropagation` fires when the errors are not one
agent's bad luck but reach several agents of the session within one window, the sign that a failure is
travelling through the agents' hand-offs. Both keep only compact entries, never the events themselves.
"""

from __future__ import annotations

import zlib
from typing import Any, Final

from agents_contract import AgentEvent, ToolReturned
from detectors._state import SessionState
from detectors._suite import Detector, verdict
from detectors._verdict import FailureClass, Verdict
from detectors._window import insert, slide, slot

_ID_CHARS: Final = 24


def compact_id(agent_id: str) -> str:
    """An agent id as a slot keeps it: short ids as they are (they end up in evidence), long ones cut and
    tagged with their CRC, so a slot holding a few agents stays small and two long ids sharing a prefix stay
    apart."""
    if len(agent_id) <= _ID_CHARS:
        return agent_id
    return f"{agent_id[:15]}~{zlib.crc32(agent_id.encode()):08x}"


def _positive(**values: float) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ValueError(f"{key} must be positive, got {value!r}")


class ErrorBurst:
    """`count` tool errors within `window_ms`, or an error share of at least `ratio` once `min_calls` results
    are in the window."""

    kinds = frozenset({"tool.returned"})

    def __init__(
        self,
        *,
        name: str = "error_burst",
        count: int = 10,
        window_ms: int = 60_000,
        ratio: float | None = 0.5,
        min_calls: int = 10,
    ) -> None:
        _positive(count=count, window_ms=window_ms, min_calls=min_calls)
        if ratio is not None and not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1] or None, got {ratio!r}")
        self.name = name
        self.count = count
        self.window_ms = window_ms
        self.ratio = ratio
        self.min_calls = min_calls
        # Without the ratio rule only errors are kept, and `count` of them decide; with it, the share is taken
        # over at most this many of the newest results in the window.
        self._limit = count if ratio is None else max(count, min_calls) * 4

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        if not isinstance(event, ToolReturned) or state.late:
            return None
        failed = event.status == "error"
        if not failed and self.ratio is None:
            return None
        # Entries are [event time since the origin, 1 if it failed].
        results: list[list[int]] = slot(state, self.name, [])
        origin = state.origin_ms
        insert(results, [event.event_time_ms - origin, int(failed)])
        slide(results, state.last_event_ms - origin, self.window_ms, limit=self._limit)
        calls = len(results)
        errors = sum(entry[1] for entry in results)
        if not errors:
            return None
        window = (results[0][0] + origin, state.last_event_ms)
        window_s = f"{self.window_ms / 1000:g} s"
        evidence: dict[str, Any] = {
            "errors": errors,
            "window_ms": self.window_ms,
            "tool_name": event.tool_name,
            "error_type": event.error_type,
        }
        if self.ratio is not None:
            evidence["results"] = calls
        if errors >= self.count:
            return verdict(
                self.name,
                FailureClass.CASCADING_FAILURE,
                state,
                event,
                reason=f"{errors} tool calls failed within {window_s}; the limit is {self.count}",
                observed=errors,
                threshold=self.count,
                window=window,
                limit=self.count,
                **evidence,
            )
        if self.ratio is None or calls < self.min_calls:
            return None
        share = errors / calls
        if share < self.ratio:
            return None
        return verdict(
            self.name,
            FailureClass.CASCADING_FAILURE,
            state,
            event,
            reason=(
                f"{errors} of the last {calls} tool calls within {window_s} failed ({share:.0%}); "
                f"the limit is {self.ratio:.0%} over at least {self.min_calls} calls"
            ),
            observed=round(share, 4),
            threshold=self.ratio,
            window=window,
            error_ratio=round(share, 4),
            ratio=self.ratio,
            min_calls=self.min_calls,
            **evidence,
        )


class ErrorPropagation:
    """Tool errors from `agents` distinct agents of one session within `window_ms` of the first of them."""

    kinds = frozenset({"tool.returned"})

    def __init__(self, *, name: str = "error_propagation", agents: int = 3, window_ms: int = 60_000) -> None:
        _positive(agents=agents, window_ms=window_ms)
        self.name = name
        self.agents = agents
        self.window_ms = window_ms

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        if not isinstance(event, ToolReturned) or event.status != "error" or state.late:
            return None
        # One entry per agent, its newest error (time since the origin): the tightest window that the agents'
        # errors fit in.
        latest: list[list[Any]] = slot(state, self.name, [])
        agent = compact_id(event.agent_id)
        origin = state.origin_ms
        t = event.event_time_ms - origin
        for at, entry in enumerate(latest):
            if entry[1] == agent:
                if entry[0] >= t:
                    return None
                del latest[at]
                break
        insert(latest, [t, agent])
        # Only the newest `agents` of them can make the case, so no more are kept.
        slide(latest, state.last_event_ms - origin, self.window_ms, limit=self.agents)
        if len(latest) < self.agents:
            return None
        first_ms = latest[0][0] + origin
        names = [entry[1] for entry in latest]
        span_s = (latest[-1][0] + origin - first_ms) / 1000
        return verdict(
            self.name,
            FailureClass.CASCADING_FAILURE,
            state,
            event,
            reason=(
                f"tool errors spread to {len(names)} agents ({', '.join(names)}) within {span_s:g} s "
                f"of the first; the limit is {self.agents} agents within {self.window_ms / 1000:g} s"
            ),
            observed=len(names),
            threshold=self.agents,
            window=(first_ms, state.last_event_ms),
            agents=names,
            first_error_ms=first_ms,
            window_ms=self.window_ms,
            tool_name=event.tool_name,
            error_type=event.error_type,
        )


ERROR_DETECTORS: Final[tuple[type[Detector], ...]] = (ErrorBurst, ErrorPropagation)
