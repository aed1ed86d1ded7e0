"""Runaway loops: an agent (or two) doing the same thing again and again without getting anywhere.

Each detector keeps a small bounded window in the session's state and fires on the event that completes
the pattern, naming the events that make it:

- `RepeatedToolCall`: one tool called with the same canonical arguments `count` times within a window, or
  the same call giving the same result `same_result_count` times among other calls (reworded calls and
  results that bring nothing new are `detectors._progress`'s);
- `CyclicPattern`: the last calls form a cycle of period 2..`max_period` repeated `repeats` times
  (search, fetch, search, fetch, ...);
- `AgentPingPong`: two agents passing messages back and forth `exchanges` times with nothing new in them;
- `NoProgress`: an agent producing the same output `repeats` turns in a row;
- `Monologue`: an agent taking `turns` LLM turns in a row without calling a tool, messaging anyone or
  being messaged;
- `RepeatedError`: one tool failing with the same error class `count` times in a row, or the same call
  failing with the same error (one that retrying cannot cure) `same_call_count` times.

Patterns are matched on short hashes (CRC-32) of digests the SDK computed, never on content.
"""

from __future__ import annotations

import re
import zlib
from typing import Any, Final

from agents_contract import AgentEvent, MessageSent, ToolCalled, ToolReturned, TurnCompleted
from detectors._calls import call_of, crc, note_call, same_result_run
from detectors._errors import compact_id
from detectors._state import SessionState
from detectors._suite import Detector, verdict
from detectors._verdict import FailureClass, Verdict
from detectors._window import packed_id, slot, unpacked_ids

# Agents (or tools) whose runs are kept per session; a further one replaces the one heard from longest ago.
_TRACKED: Final = 4
# The slot of the tool calls that RepeatedToolCall and CyclicPattern share.
_CALLS: Final = "tool_calls"
# Message contents remembered per exchange between two agents.
_SEEN: Final = 48


def _h(*parts: str) -> int:
    return zlib.crc32("\x00".join(parts).encode("utf-8", "surrogatepass"))


def _at_least(minimum: int, **values: int) -> None:
    for key, value in values.items():
        if value < minimum:
            raise ValueError(f"{key} must be at least {minimum}, got {value!r}")


def _tracked(runs: dict[str, Any], key: str, fresh: Any) -> Any:
    """The run kept under `key`, moved to the newest end; the stalest run goes when too many are kept."""
    run = runs.pop(key, None)
    if run is None:
        run = fresh
    runs[key] = run
    if len(runs) > _TRACKED:
        del runs[next(iter(runs))]
    return run


def _same_in_a_row(
    runs: dict[str, Any], key: str, value: str, event: AgentEvent, origin_ms: int
) -> list[Any]:
    """The run under `key` ([value hash, times in a row, first time since `origin_ms`, ids]) after one more
    `value`."""
    mark = _h(value)
    t = event.event_time_ms - origin_ms
    run: list[Any] = _tracked(runs, key, [mark, 0, t, []])
    if run[0] != mark:
        run[:] = [mark, 0, t, []]
    run[1] += 1
    return run


def _recent_calls(state: SessionState, event: ToolCalled, keep: int, carried: list[list[Any]]) -> list[Any]:
    """The session's last tool calls as [event time since the origin, call hash, event id], in arrival order,
    `event` the newest: one list that RepeatedToolCall and CyclicPattern share, so each call is kept once,
    as long as the longer of their needs. `carried` seeds it from a checkpoint of a version that kept a list
    per detector."""
    shared: dict[str, Any] | None = state.slots.get(_CALLS)
    if shared is None:
        shared = state.slots[_CALLS] = {"keep": keep, "calls": carried}
    elif shared["keep"] < keep:
        shared["keep"] = keep
    calls: list[list[Any]] = shared["calls"]
    mark = packed_id(event.event_id)
    if not calls or calls[-1][2] != mark:  # the other detector may have added it already
        calls.append([event.event_time_ms - state.origin_ms, _h(event.tool_name, event.args_digest), mark])
        if len(calls) > shared["keep"]:
            del calls[: len(calls) - shared["keep"]]
    return calls


def _ids(ids: list[str], event_id: str, keep: int) -> None:
    ids.append(packed_id(event_id))
    if len(ids) > keep:
        del ids[: len(ids) - keep]


class RepeatedToolCall:
    """One tool with the same canonical arguments `count` times within `window_ms`, or the same call giving
    the same result `same_result_count` times within it, whatever other calls came in between (a click
    that changes nothing, clicked again)."""

    kinds = frozenset({"tool.called", "tool.returned"})

    def __init__(
        self,
        *,
        name: str = "repeated_tool_call",
        count: int = 5,
        window_ms: int = 300_000,
        same_result_count: int | None = 3,
    ) -> None:
        _at_least(2, count=count)
        _at_least(1, window_ms=window_ms)
        if same_result_count is not None:
            _at_least(2, same_result_count=same_result_count)
        self.name = name
        self.count = count
        self.window_ms = window_ms
        self.same_result_count = same_result_count
        # Calls kept in the window: a loop repeating one call among a few others still fits.
        self._limit = 3 * count

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        if state.late:
            return None
        if isinstance(event, ToolCalled):
            return self._call(state, event)
        if isinstance(event, ToolReturned):
            return self._result(state, event)
        return None

    def _call(self, state: SessionState, event: ToolCalled) -> Verdict | None:
        note_call(state, event)
        own: dict[str, Any] = state.slots.get(self.name) or {}
        calls = _recent_calls(state, event, self._limit, own.pop("calls", []))
        key = calls[-1][1]
        origin = state.origin_ms
        start = state.last_event_ms - origin - self.window_ms
        same = [entry for entry in calls[-self._limit :] if entry[1] == key and entry[0] >= start]
        if len(same) < self.count:
            return None
        first = min(entry[0] for entry in same)
        span_s = (max(entry[0] for entry in same) - first) / 1000
        return verdict(
            self.name,
            FailureClass.RUNAWAY_EXECUTION,
            state,
            event,
            reason=(
                f"tool {event.tool_name} was called {len(same)} times with the same arguments within "
                f"{span_s:g} s; the limit is {self.count - 1} repeats within {self.window_ms / 1000:g} s"
            ),
            observed=len(same),
            threshold=self.count,
            event_ids=unpacked_ids(entry[2] for entry in same),
            window=(first + origin, state.last_event_ms),
            match="same_arguments",
            tool_name=event.tool_name,
            args_digest=event.args_digest,
            calls=len(same),
            window_ms=self.window_ms,
        )

    def _result(self, state: SessionState, event: ToolReturned) -> Verdict | None:
        if event.status != "ok" or self.same_result_count is None:
            return None
        call = call_of(state, event)
        if call is None:
            return None
        run = same_result_run(state, event, call, crc(event.result_digest or ""))
        if run[1] < self.same_result_count or run[2] < state.last_event_ms - state.origin_ms - self.window_ms:
            return None
        return verdict(
            self.name,
            FailureClass.RUNAWAY_EXECUTION,
            state,
            event,
            reason=(
                f"tool {event.tool_name} was called {run[1]} times with the same arguments and gave the same "
                f"result each time (other calls in between); the limit is {self.same_result_count - 1} such "
                f"repeats"
            ),
            observed=run[1],
            threshold=self.same_result_count,
            event_ids=unpacked_ids(run[3]),
            window=(run[2] + state.origin_ms, state.last_event_ms),
            match="same_result",
            tool_name=event.tool_name,
            calls=run[1],
            window_ms=self.window_ms,
        )


class CyclicPattern:
    """The session's last tool calls are a cycle of period 2..`max_period` (tool and canonical arguments)
    repeated `repeats` times in a row."""

    kinds = frozenset({"tool.called"})

    def __init__(self, *, name: str = "cyclic_pattern", max_period: int = 4, repeats: int = 3) -> None:
        _at_least(2, max_period=max_period, repeats=repeats)
        self.name = name
        self.max_period = max_period
        self.repeats = repeats
        self._keep = max_period * repeats

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        if not isinstance(event, ToolCalled) or state.late:
            return None
        # A cycle is an order of calls: the shared list is in arrival order.
        own = state.slots.pop(self.name, None)  # a list of [call hash, event id] before format 5
        carried = [[0, *entry] for entry in own] if isinstance(own, list) else []
        calls = _recent_calls(state, event, self._keep, carried)[-self._keep :]
        keys = [entry[1] for entry in calls]
        for period in range(2, self.max_period + 1):
            span = period * self.repeats
            if len(keys) < span:
                break
            tail = keys[-span:]
            if len(set(tail[:period])) < 2:
                continue  # one call repeated is RepeatedToolCall's case, not a cycle
            if any(tail[i] != tail[i - period] for i in range(period, span)):
                continue
            if any(period % shorter == 0 and _periodic(tail, shorter) for shorter in range(2, period)):
                continue  # reported already under its shortest period
            ids = unpacked_ids(entry[2] for entry in calls[-span:])
            return verdict(
                self.name,
                FailureClass.RUNAWAY_EXECUTION,
                state,
                event,
                reason=(
                    f"the last {span} tool calls repeat one cycle of {period} calls {self.repeats} times "
                    f"(same tools, same arguments); the limit is {self.repeats - 1} repeats"
                ),
                observed=self.repeats,
                threshold=self.repeats,
                event_ids=ids,
                period=period,
                repeats=self.repeats,
                tool_name=event.tool_name,
            )
        return None


def _periodic(keys: list[int], period: int) -> bool:
    return all(keys[i] == keys[i - period] for i in range(period, len(keys)))


class AgentPingPong:
    """Messages bouncing between the same two agents, alternating, `exchanges` times with content that
    was already sent in the exchange."""

    kinds = frozenset({"message.sent"})

    def __init__(self, *, name: str = "agent_ping_pong", exchanges: int = 6) -> None:
        _at_least(2, exchanges=exchanges)
        self.name = name
        self.exchanges = exchanges

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        if not isinstance(event, MessageSent) or state.late:
            return None
        sender, receiver = compact_id(event.agent_id), compact_id(event.to_agent_id)
        pair = sorted((sender, receiver))
        content = _h(event.content_digest)
        # The exchange: [pair, last sender, repeated messages, contents seen, first time (since the origin),
        # ids].
        run: list[Any] | None = state.slots.get(self.name)
        if run is None or run[0] != pair or run[1] == sender:
            t = event.event_time_ms - state.origin_ms
            run = state.slots[self.name] = [pair, sender, 0, [content], t, [packed_id(event.event_id)]]
            return None
        run[1] = sender
        if content in run[3]:
            run[2] += 1
        else:
            run[3].append(content)
            del run[3][:-_SEEN]
        _ids(run[5], event.event_id, self.exchanges + 1)
        if run[2] < self.exchanges:
            return None
        return verdict(
            self.name,
            FailureClass.RUNAWAY_EXECUTION,
            state,
            event,
            reason=(
                f"agents {pair[0]} and {pair[1]} passed {run[2]} messages back and forth with nothing new "
                f"in them; the limit is {self.exchanges - 1}"
            ),
            observed=run[2],
            threshold=self.exchanges,
            event_ids=unpacked_ids(run[5]),
            window=(run[4] + state.origin_ms, state.last_event_ms),
            agents=pair,
            exchanges=run[2],
            distinct_messages=len(run[3]),
        )


class NoProgress:
    """An agent's turns producing the same output (digest) `repeats` times in a row; outputs shorter than
    `min_output_tokens` (a router's next speaker, a classifier's label) are not judged."""

    kinds = frozenset({"turn.completed"})

    def __init__(self, *, name: str = "no_progress", repeats: int = 3, min_output_tokens: int = 0) -> None:
        _at_least(2, repeats=repeats)
        _at_least(0, min_output_tokens=min_output_tokens)
        self.name = name
        self.repeats = repeats
        self.min_output_tokens = min_output_tokens

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        if not isinstance(event, TurnCompleted) or event.output_digest is None or state.late:
            return None
        # A router's or a selector's whole output is a name or a label: the same one again is its job.
        if event.output_tokens < self.min_output_tokens:
            return None
        # Per agent: the same output in a row.
        run = _same_in_a_row(
            slot(state, self.name, {}),
            compact_id(event.agent_id),
            event.output_digest,
            event,
            state.origin_ms,
        )
        _ids(run[3], event.event_id, self.repeats)
        if run[1] < self.repeats:
            return None
        return verdict(
            self.name,
            FailureClass.RUNAWAY_EXECUTION,
            state,
            event,
            reason=(
                f"agent {event.agent_id} produced the same output {run[1]} turns in a row; "
                f"the limit is {self.repeats - 1}"
            ),
            observed=run[1],
            threshold=self.repeats,
            event_ids=unpacked_ids(run[3]),
            window=(run[2] + state.origin_ms, state.last_event_ms),
            turns=run[1],
            output_digest=event.output_digest,
            model=event.model,
        )


class Monologue:
    """An agent taking `turns` LLM turns in a row without acting: no tool call or message of its own after
    them, and no message to it (a user's or another agent's) in between.

    The SDK reports a turn's tool calls after the turn's own `turn.completed`, so a turn is known to have
    been without action only when the agent's next turn completes with nothing in between: the detector
    counts those, and fires as the turn after the `turns`-th such one completes."""

    kinds = frozenset({"turn.completed", "tool.called", "message.sent"})

    def __init__(self, *, name: str = "monologue", turns: int = 8) -> None:
        _at_least(2, turns=turns)
        self.name = name
        self.turns = turns

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        if state.late:
            return None
        runs: dict[str, Any] = slot(state, self.name, {})
        # Per agent: [turns known to be without action, first such turn's time since the origin, ids, the
        # newest turn's time (-1: acted since)].
        t = event.event_time_ms - state.origin_ms
        if isinstance(event, ToolCalled | MessageSent):
            self._reset(runs, compact_id(event.agent_id), t)
            if isinstance(event, MessageSent):
                self._reset(runs, compact_id(event.to_agent_id), t)
            return None
        if not isinstance(event, TurnCompleted):
            return None
        run = _tracked(runs, compact_id(event.agent_id), [0, t, [], -1])
        if run[3] >= 0:  # the turn before this one did nothing
            if not run[0]:
                run[1] = run[3]
            run[0] += 1
        run[3] = t
        _ids(run[2], event.event_id, self.turns + 1)
        if run[0] < self.turns:
            return None
        return verdict(
            self.name,
            FailureClass.RUNAWAY_EXECUTION,
            state,
            event,
            reason=(
                f"agent {event.agent_id} took {run[0]} LLM turns in a row without calling a tool, "
                f"messaging another agent or being messaged; the limit is {self.turns - 1}"
            ),
            observed=run[0],
            threshold=self.turns,
            event_ids=unpacked_ids(run[2]),
            window=(run[1] + state.origin_ms, state.last_event_ms),
            turns=run[0],
        )

    @staticmethod
    def _reset(runs: dict[str, Any], agent: str, t: int) -> None:
        run = runs.get(agent)
        if run is not None:
            run[:] = [0, t, [], -1]


# Error classes that say "try again later": the same call failing with one of them again is a retry, not a
# loop (the burst and circuit detectors judge those).
_TRANSIENT: Final = re.compile(
    r"timeout|timed ?out|rate ?limit|too ?many|throttl|unavailable|overload|busy|connection|network|"
    r"temporar|retry|try ?again|429|502|503|504",
    re.IGNORECASE,
)


class RepeatedError:
    """One tool failing with the same error class `count` times in a row (its other results break it), or
    one call (tool and arguments) failing with the same error `same_call_count` times, other calls in
    between, where the error is not one that retrying cures (timeouts, rate limits, unavailable
    services)."""

    kinds = frozenset({"tool.called", "tool.returned"})

    def __init__(
        self, *, name: str = "repeated_error", count: int = 3, same_call_count: int | None = 2
    ) -> None:
        _at_least(2, count=count)
        if same_call_count is not None:
            _at_least(2, same_call_count=same_call_count)
        self.name = name
        self.count = count
        self.same_call_count = same_call_count

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        if isinstance(event, ToolCalled):
            note_call(state, event)
            return None
        if not isinstance(event, ToolReturned) or state.late:
            return None
        runs: dict[str, Any] = slot(state, self.name, {})
        error = (event.error_type or "error") if event.status == "error" else None
        key = str(_h(event.tool_name))
        if error is None:
            runs.pop(key, None)
            return None
        same_call = self._same_call(state, event, error)
        if same_call is not None:
            return same_call
        # Per tool: the same error class in a row.
        run = _same_in_a_row(runs, key, error, event, state.origin_ms)
        _ids(run[3], event.event_id, self.count)
        if run[1] < self.count:
            return None
        return verdict(
            self.name,
            FailureClass.RUNAWAY_EXECUTION,
            state,
            event,
            reason=(
                f"tool {event.tool_name} failed with {error} {run[1]} times in a row; "
                f"the limit is {self.count - 1}"
            ),
            observed=run[1],
            threshold=self.count,
            event_ids=unpacked_ids(run[3]),
            window=(run[2] + state.origin_ms, state.last_event_ms),
            tool_name=event.tool_name,
            error_type=error,
            failures=run[1],
            match="same_tool",
        )

    def _same_call(self, state: SessionState, event: ToolReturned, error: str) -> Verdict | None:
        if self.same_call_count is None:
            return None
        call = call_of(state, event)
        if call is None:
            return None
        run = same_result_run(state, event, call, crc("error", error))
        if run[1] < self.same_call_count or _TRANSIENT.search(error):
            return None
        return verdict(
            self.name,
            FailureClass.RUNAWAY_EXECUTION,
            state,
            event,
            reason=(
                f"tool {event.tool_name} was called {run[1]} times with the same arguments and failed with "
                f"{error} each time; an error retrying does not cure, the limit is "
                f"{self.same_call_count - 1} such repeats"
            ),
            observed=run[1],
            threshold=self.same_call_count,
            event_ids=unpacked_ids(run[3]),
            window=(run[2] + state.origin_ms, state.last_event_ms),
            tool_name=event.tool_name,
            error_type=error,
            failures=run[1],
            match="same_call",
        )


LOOP_DETECTORS: Final[tuple[type[Detector], ...]] = (
    RepeatedToolCall,
    CyclicPattern,
    AgentPingPong,
    NoProgress,
    Monologue,
    RepeatedError,
)
