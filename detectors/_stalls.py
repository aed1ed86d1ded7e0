"""Sessions that stopped moving: gone quiet for too long, or agents waiting on each other in a circle.

`Stall` is a timed detector: the worker asks it about sessions that sent nothing for a while, and it fires
once the silence passes `quiet_ms`. `Deadlock` keeps the session's wait-for graph (who waits on whom, from
`agent.waiting` events) and fires on the wait that closes a cycle, which no agent in it can ever leave. A
heartbeat is the one event that does not end an agent's wait: a blocked agent may keep saying it is alive,
and that is exactly the deadlock that a quiet-session timer cannot see.

A stall can also be one of many: when a model provider hangs, every session waiting on it goes quiet in
the same minute. With `settle_ms` set, a session that passes `quiet_ms` is first reported to the
correlated-quiet stage (`quiet_signal`), and its kill waits `settle_ms` for the others. When the stage
finds enough sessions of its tenant (and model) quiet together it pages once and holds each one
(`hold_quiet`): its stall kill waits until the hold ends, and any event of the session lifts it.
"""

from __future__ import annotations

from typing import Any, Final

from agents_contract import AgentEvent, AgentWaiting, Heartbeat, TurnStarted
from detectors._errors import compact_id
from detectors._state import SessionState
from detectors._suite import Detector, verdict
from detectors._verdict import FailureClass, Verdict
from detectors._window import slot


def duration(ms: float) -> str:
    """A span as an operator reads it in a page: seconds, minutes or hours."""
    seconds = ms / 1000
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7_200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3_600:.3g} h"


class Stall:
    """A live session that has sent no event for more than `quiet_ms` (judged by the worker's timer), by
    its newest event's time or, when later, the time the worker heard it (a backlog is not silence); or one
    whose agent has been inside one guarded call for more than `max_call_ms` (its SDK's heartbeats say so:
    a long call is not silence, but a call that never ends is a stall too)."""

    kinds = frozenset({"heartbeat", "turn.started"})

    def __init__(
        self,
        *,
        name: str = "stall",
        quiet_ms: int = 300_000,
        max_call_ms: int = 1_800_000,
        settle_ms: int = 0,
        report: bool = False,
    ) -> None:
        if quiet_ms <= 0 or max_call_ms <= 0 or settle_ms < 0:
            raise ValueError(
                f"quiet_ms and max_call_ms must be positive and settle_ms not negative, got {quiet_ms!r}, "
                f"{max_call_ms!r}, {settle_ms!r}"
            )
        self.name = name
        self.quiet_ms = quiet_ms
        self.max_call_ms = max_call_ms
        self.settle_ms = settle_ms
        # Silences are noted for the correlated-quiet stage when it holds kills (settle_ms) or only pages.
        self.report = report or settle_ms > 0
        self._quiet = quiet_slot(name)
        self._model = f"{name}.model"

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        if isinstance(event, TurnStarted):
            # The model the session last called: sessions that hang on one provider's model go quiet together.
            if self.report and state.slots.get(self._model) != event.model:
                state.slots[self._model] = event.model
        elif not isinstance(event, Heartbeat):
            return None
        elif event.in_call_since_ms is None:
            state.slots.pop(self.name, None)
        else:
            # [in the call since, heartbeat time], both since the origin: the session is in the call
            # for as long as this heartbeat is its newest event.
            origin = state.origin_ms
            state.slots[self.name] = [event.in_call_since_ms - origin, event.event_time_ms - origin]
        return None

    def expire(self, state: SessionState, now_ms: int) -> Verdict | None:
        if state.ended or not state.events:
            return None
        last_ms = max(state.last_event_ms, state.heard_ms)
        in_call: list[int] | None = state.slots.get(self.name)
        if in_call is not None and in_call[1] + state.origin_ms >= state.last_event_ms:
            since_ms = in_call[0] + state.origin_ms
            calling = now_ms - since_ms
            if calling > self.max_call_ms and now_ms - last_ms <= self.quiet_ms:
                return verdict(
                    self.name,
                    FailureClass.MULTI_AGENT_DEADLOCK,
                    state,
                    None,
                    reason=(
                        f"session has been inside one call for {duration(calling)} (its heartbeats say so) "
                        f"without it ending; the limit is {duration(self.max_call_ms)}"
                    ),
                    observed=calling,
                    threshold=self.max_call_ms,
                    window=(since_ms, now_ms),
                    in_call_ms=calling,
                    in_call_since_ms=since_ms,
                    last_event_ms=state.last_event_ms,
                    events=state.events,
                )
        quiet = now_ms - last_ms
        if quiet <= self.quiet_ms:
            return None
        held_ms = 0
        if self.report:
            since = last_ms - state.origin_ms
            mark: list[int] | None = state.slots.get(self._quiet)
            if mark is None or mark[0] != since:
                # A new silence: the worker reports it to the correlated-quiet stage (`quiet_signal`).
                mark = state.slots[self._quiet] = [since, _NOTICED, 0, state.events]
            if mark[1] == _HELD:
                until = mark[2] + state.origin_ms
                if now_ms < until:
                    return None
                held_ms = until - last_ms - self.quiet_ms
            elif quiet <= self.quiet_ms + self.settle_ms:
                return None
        return verdict(
            self.name,
            FailureClass.MULTI_AGENT_DEADLOCK,
            state,
            None,
            reason=(
                f"session has been quiet for {duration(quiet)} without ending; "
                f"the limit is {duration(self.quiet_ms)}"
                + (
                    f" (its kill was held {duration(held_ms)} as one of many sessions gone quiet)"
                    if held_ms
                    else ""
                )
            ),
            observed=quiet,
            threshold=self.quiet_ms,
            window=(last_ms, now_ms),
            quiet_ms=quiet,
            last_event_ms=state.last_event_ms,
            events=state.events,
            held_ms=held_ms,
        )


# What a silence's mark says: noticed (not yet reported), reported to the correlated-quiet stage, one of
# an incident's sessions held or (warn mode) only counted, and settled (its end reported to the stage).
_NOTICED: Final = 0
_REPORTED: Final = 1
_HELD: Final = 2
_WATCHED: Final = 3
_SETTLED: Final = 4


def quiet_slot(name: str = "stall") -> str:
    """The slot where a `Stall` called `name` keeps the session's current silence: [since (relative to the
    origin), what the mark says (_NOTICED ...), held until (relative), the session's events by then]."""
    return f"{name}.quiet"


QUIET_SLOT: Final = quiet_slot()


def _mark(state: SessionState, name: str) -> list[int] | None:
    # The worker asks about every session it sweeps: the default name's slot is not formatted each time.
    mark: list[int] | None = state.slots.get(QUIET_SLOT if name == "stall" else quiet_slot(name))
    return mark


def _model(state: SessionState, name: str) -> str:
    model = state.slots.get(f"{name}.model")
    return model if isinstance(model, str) else ""


def quiet_signal(state: SessionState, name: str = "stall") -> tuple[int, str] | None:
    """(silence began at, model or "") once for each silence `Stall` noticed, for the worker to report to
    the correlated-quiet stage; None when there is nothing new to report."""
    mark = _mark(state, name)
    if mark is None or mark[1] != _NOTICED:
        return None
    mark[1] = _REPORTED
    return mark[0] + state.origin_ms, _model(state, name)


def hold_quiet(
    state: SessionState, since_ms: int, until_ms: int, *, hold: bool = True, name: str = "stall"
) -> bool:
    """Count the session in a correlated-quiet incident, and with `hold` hold its stall kill until
    `until_ms`, if it is still in the silence that began at `since_ms` (an event since then has ended that
    silence). True when it is; False when it spoke again or was killed since (`quiet_outcome` then has
    that to report)."""
    mark = _mark(state, name)
    origin = state.origin_ms
    if mark is None or mark[0] + origin != since_ms:
        return False
    if mark[1] == _SETTLED:
        return False
    if state.killed_by is not None or state.events > mark[3]:
        mark[1] = _WATCHED  # its outcome goes to the stage at once
        return False
    if hold:
        mark[1], mark[2] = _HELD, max(mark[2] if mark[1] == _HELD else 0, until_ms - origin)
    elif mark[1] != _HELD:
        mark[1] = _WATCHED
    return True


def quiet_outcome(state: SessionState, name: str = "stall") -> tuple[int, str, bool] | None:
    """(silence began at, model, killed) once, when a session counted in a correlated-quiet incident has
    spoken again or been killed: the stage closes the incident once every session in it has."""
    mark = _mark(state, name)
    if mark is None or mark[1] not in (_HELD, _WATCHED):
        return None
    killed = state.killed_by is not None
    if not killed and state.events <= mark[3]:
        return None
    mark[1] = _SETTLED
    return mark[0] + state.origin_ms, _model(state, name), killed


class Deadlock:
    """An `agent.waiting` that closes a cycle in the session's wait-for graph (A waits B ... waits A)."""

    def __init__(self, *, name: str = "deadlock", max_edges: int = 16) -> None:
        if max_edges < 2:
            raise ValueError(f"max_edges must be at least 2, got {max_edges!r}")
        self.name = name
        self.max_edges = max_edges

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        # Edges are [waiter, waited on, waiter's seq, event time]: an agent waits on one other at a time.
        edges: list[list[Any]] | None = state.slots.get(self.name)
        if isinstance(event, AgentWaiting):
            return self._wait(state, event, edges if edges is not None else slot(state, self.name, []))
        if edges and not isinstance(event, Heartbeat):
            agent = compact_id(event.agent_id)
            for at, edge in enumerate(edges):
                # By seq, not time: only a later step of the waiter itself ends its wait, whatever the clocks.
                if edge[0] == agent:
                    if event.seq > edge[2]:
                        del edges[at]
                    break
        return None

    def _wait(self, state: SessionState, event: AgentWaiting, edges: list[list[Any]]) -> Verdict | None:
        # A wait that arrives after a later event of the same agent is over already.
        if event.seq < state.seen.get(event.agent_id, [event.seq])[0]:
            return None
        waiter, waited_on = compact_id(event.agent_id), compact_id(event.waiting_on_agent_id)
        edges[:] = [edge for edge in edges if edge[0] != waiter]
        edges.append([waiter, waited_on, event.seq, event.event_time_ms])
        if len(edges) > self.max_edges:
            del edges[0]
        waits_on = {edge[0]: edge[1] for edge in edges}
        cycle = [waiter]
        node = waited_on
        while node != waiter and node in waits_on and len(cycle) <= len(waits_on):
            cycle.append(node)
            node = waits_on[node]
        if node != waiter:
            return None
        since = {edge[0]: edge[3] for edge in edges}
        started_ms = min(since[agent] for agent in cycle)
        if len(cycle) == 1:
            reason = f"agent {waiter} waits on itself; it can never proceed"
        else:
            chain = ", ".join(f"{a} waits on {b}" for a, b in zip(cycle, [*cycle[1:], waiter], strict=True))
            reason = f"{len(cycle)} agents wait on each other in a cycle ({chain}); none of them can proceed"
        return verdict(
            self.name,
            FailureClass.MULTI_AGENT_DEADLOCK,
            state,
            event,
            reason=reason,
            observed=len(cycle),
            threshold=1,
            window=(started_ms, max(started_ms, state.last_event_ms)),
            cycle=cycle,
            waiting_since_ms=started_ms,
        )


STALL_DETECTORS: Final[tuple[type[Detector], ...]] = (Stall, Deadlock)
