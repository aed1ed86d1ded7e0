"""Runaway loops: an agent (or two) doing the same thing again and again without getting anywhere.

Each detector keeps a small bounded window in the session's state and fires on the event that completes
the pattern, naming the events that make it:

- `RepeatedToolCall`: one tool called with the same canonical arguments `count` times within a window, or
  a run of `count` calls to one tool whose results bring nothing new (the near-repeat: arguments reworded,
  reordered or padded, results the same), which exact matching alone would miss;
- `CyclicPattern`: the last calls form a cycle of period 2..`max_period` repeated `repeats` times
  (search, fetch, search, fetch, ...);
- `AgentPingPong`: two agents passing messages back and forth `exchanges` times with nothing new in them;
- `NoProgress`: an agent producing the same output `repeats` turns in a row;
- `Monologue`: an agent taking `turns` LLM turns in a row without calling a tool or messaging anyone;
- `RepeatedError`: one tool failing with the same error class `count` times in a row.

Patterns are matched on short hashes (CRC-32) of digests the SDK computed, never on content.
"""

from __future__ import annotations

import zlib
from typing import Any, Final

from agents_contract import AgentEvent, MessageSent, ToolCalled, ToolReturned, TurnCompleted
from detectors._errors import compact_id
from detectors._state import SessionState
from detectors._suite import Detector, verdict
from detectors._verdict import FailureClass, Verdict
from detectors._window import packed_id, slot, unpacked_ids

# Agents (or tools) whose runs are kept per session; a further one replaces the one heard from longest ago.
_TRACKED: Final = 4
# Result digests remembered per run when judging whether a result is new, and the bitmap its fingerprints
# are folded into: 64 fingerprints (the SDK's default) fill about 12% of 512 bits, so a result of at least
# `_MIN_PRINTS` new fingerprints looks seen by chance less than once in 4,000 results.
_DIGESTS: Final = 8
_BITMAP_BITS: Final = 512
_MIN_PRINTS: Final = 4
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
    """One tool with the same canonical arguments `count` times within `window_ms`, or `count` calls in a
    row to one tool whose results after the first bring nothing new (same result digest, or fingerprints
    all seen already in the run)."""

    kinds = frozenset({"tool.called", "tool.returned"})

    def __init__(self, *, name: str = "repeated_tool_call", count: int = 5, window_ms: int = 300_000) -> None:
        _at_least(2, count=count)
        _at_least(1, window_ms=window_ms)
        self.name = name
        self.count = count
        self.window_ms = window_ms
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
        if event.status != "ok" or (event.result_digest is None and not event.fingerprints):
            return None
        window: dict[str, Any] = slot(state, self.name, {})
        # The run: [tool hash, results that brought nothing new, first result's time since the origin, result
        # digest hashes, fingerprint bitmap (hex), ids].
        run: list[Any] | None = window.get("run")
        tool = _h(event.tool_name)
        origin = state.origin_ms
        t = event.event_time_ms - origin
        if run is None or run[0] != tool or t - run[2] > self.window_ms:
            run = window["run"] = _fresh_run(tool, t)
        mark = _h(event.result_digest) if event.result_digest is not None else None
        prints = event.fingerprints or ()
        bitmap = int(run[4], 16)
        bits = 0
        for fp in prints:
            bits |= 1 << (fp % _BITMAP_BITS)
        stale = bool(run[5]) and (
            (mark is not None and mark in run[3]) or (len(prints) >= _MIN_PRINTS and bits & bitmap == bits)
        )
        if run[5] and not stale:
            # Something new came back: the run starts over from this result.
            run[:] = _fresh_run(tool, t)
            bitmap = 0
        elif stale:
            run[1] += 1
        if mark is not None and mark not in run[3]:
            run[3].append(mark)
            del run[3][:-_DIGESTS]
        run[4] = f"{bitmap | bits:x}"
        _ids(run[5], event.event_id, self.count)
        if run[1] + 1 < self.count:
            return None
        return verdict(
            self.name,
            FailureClass.RUNAWAY_EXECUTION,
            state,
            event,
            reason=(
                f"tool {event.tool_name} was called {run[1] + 1} times in a row and the results after the "
                f"first brought nothing new; the limit is {self.count - 1} such repeats"
            ),
            observed=run[1] + 1,
            threshold=self.count,
            event_ids=unpacked_ids(run[5]),
            window=(run[2] + origin, state.last_event_ms),
            match="same_results",
            tool_name=event.tool_name,
            calls=run[1] + 1,
            window_ms=self.window_ms,
        )


def _fresh_run(tool: int, t: int) -> list[Any]:
    return [tool, 0, t, [], "0", []]


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
    """An agent's turns producing the same output (digest) `repeats` times in a row."""

    kinds = frozenset({"turn.completed"})

    def __init__(self, *, name: str = "no_progress", repeats: int = 3) -> None:
        _at_least(2, repeats=repeats)
        self.name = name
        self.repeats = repeats

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        if not isinstance(event, TurnCompleted) or event.output_digest is None or state.late:
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
    """An agent taking `turns` LLM turns in a row without a tool call or a message in between."""

    kinds = frozenset({"turn.completed", "tool.called", "message.sent"})

    def __init__(self, *, name: str = "monologue", turns: int = 8) -> None:
        _at_least(2, turns=turns)
        self.name = name
        self.turns = turns

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        acting = isinstance(event, ToolCalled | MessageSent)
        if not (acting or isinstance(event, TurnCompleted)) or state.late:
            return None
        runs: dict[str, Any] = slot(state, self.name, {})
        # Per agent: [turns in a row, first time since the origin, ids].
        t = event.event_time_ms - state.origin_ms
        run = _tracked(runs, compact_id(event.agent_id), [0, t, []])
        if acting:
            run[:] = [0, t, []]
            return None
        if not run[0]:
            run[1] = t
        run[0] += 1
        _ids(run[2], event.event_id, self.turns)
        if run[0] < self.turns:
            return None
        return verdict(
            self.name,
            FailureClass.RUNAWAY_EXECUTION,
            state,
            event,
            reason=(
                f"agent {event.agent_id} took {run[0]} LLM turns in a row without calling a tool or "
                f"messaging another agent; the limit is {self.turns - 1}"
            ),
            observed=run[0],
            threshold=self.turns,
            event_ids=unpacked_ids(run[2]),
            window=(run[1] + state.origin_ms, state.last_event_ms),
            turns=run[0],
        )


class RepeatedError:
    """One tool failing with the same error class `count` times in a row (its other results break it)."""

    kinds = frozenset({"tool.returned"})

    def __init__(self, *, name: str = "repeated_error", count: int = 3) -> None:
        _at_least(2, count=count)
        self.name = name
        self.count = count

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        if not isinstance(event, ToolReturned) or state.late:
            return None
        runs: dict[str, Any] = slot(state, self.name, {})
        error = (event.error_type or "error") if event.status == "error" else None
        key = str(_h(event.tool_name))
        if error is None:
            runs.pop(key, None)
            return None
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
        )


LOOP_DETECTORS: Final[tuple[type[Detector], ...]] = (
    RepeatedToolCall,
    CyclicPattern,
    AgentPingPong,
    NoProgress,
    Monologue,
    RepeatedError,
)
