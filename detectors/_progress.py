"""Loops that never repeat themselves exactly: reworded calls, and calls that bring nothing new.

An agent stuck on one question rarely sends the same call twice: it rewords the search, rewrites the code,
re-asks its sub-agent with a refined request. Exact digests all differ, and so do the results. Two measures
see through that, both on what the SDK computed inside the agent (sketches and fingerprints, no content):

- `SimilarCalls`: one tool called `count` times within a window with arguments alike but not identical (the
  arguments' MinHash sketches at least `similarity` alike, each to the first call of the run or to the one
  before), or one agent sending another `count` alike requests: the same intent, reworded.
- `NoNewInformation`: the session's last `calls` tool results, whatever tools they came from, brought less
  than `min_new_share` content the session had not seen (a sample of each result's fingerprints against
  those of earlier results), counting the same call giving the same result again as nothing new. This is
  progress measured per call: interleaved search, visit and find over the same pages still add up to
  nothing.
"""

from __future__ import annotations

from typing import Any, Final

from agents_contract import AgentEvent, MessageSent, ToolCalled, ToolReturned, similarity
from detectors._calls import call_of, crc, note_call, same_result_run
from detectors._errors import compact_id
from detectors._state import SessionState
from detectors._suite import Detector, verdict
from detectors._verdict import FailureClass, Verdict
from detectors._window import packed_id, slide, slot, unpacked_ids

# Tools (or agent pairs) whose runs SimilarCalls keeps per session; a further one replaces the stalest.
_TRACKED: Final = 3
# NoNewInformation keeps one fingerprint in eight (the same ones in every result, so what two results share
# is sampled alike), as the top 16 bits in 4 hex digits, at most this many: about the last twelve results of
# 64 fingerprints, where an unrelated fingerprint looks seen once in about 700.
_SAMPLE_MASK: Final = 7
_SEEN: Final = 96
# A result this small is sampled whole (it would often keep no sample at all).
_SMALL: Final = 8


def _positive(**values: float) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ValueError(f"{key} must be positive, got {value!r}")


class SimilarCalls:
    """One tool called `count` times within `window_ms` with alike arguments (not the same ones), or one
    agent sending another agent `count` alike messages within it (the same one again neither counts nor
    breaks the run)."""

    kinds = frozenset({"tool.called", "message.sent"})

    def __init__(
        self,
        *,
        name: str = "similar_calls",
        count: int = 4,
        window_ms: int = 600_000,
        similarity: float = 0.3,
    ) -> None:
        if count < 2:
            raise ValueError(f"count must be at least 2, got {count!r}")
        _positive(window_ms=window_ms)
        if not 0 < similarity <= 1:
            raise ValueError(f"similarity must be in (0, 1], got {similarity!r}")
        self.name = name
        self.count = count
        self.window_ms = window_ms
        self.similarity = similarity

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        if state.late:
            return None
        if isinstance(event, ToolCalled):
            if event.args_sketch is None:
                return None
            sketch, digest = event.args_sketch, event.args_digest
            key = f"t{crc(event.tool_name)}"
        elif isinstance(event, MessageSent):
            # A user asking again is not an agent re-delegating: only the team's own messages are judged.
            if event.content_sketch is None or event.external:
                return None
            sketch, digest = event.content_sketch, event.content_digest
            key = f"m{crc(event.agent_id, event.to_agent_id)}"
        else:
            return None
        runs: dict[str, Any] = slot(state, self.name, {})
        t = event.event_time_ms - state.origin_ms
        mark = crc(digest)
        # The run: [first sketch, last sketch (0 while it is the first), last digest's hash, calls, first
        # time since the origin, ids].
        run: list[Any] | None = runs.pop(key, None)
        if run is not None and t - run[4] > self.window_ms:
            run = None
        if run is not None and mark == run[2]:
            # The same call or message again is RepeatedToolCall's or AgentPingPong's case: it neither
            # counts nor breaks the run.
            runs[key] = run
            return None
        if run is not None:
            alike = similarity(sketch, run[0])
            if run[1] and alike < self.similarity:
                alike = similarity(sketch, run[1])
            if alike < self.similarity:
                run = None
        if run is None:
            run = [sketch, 0, mark, 0, t, []]
        else:
            run[1] = sketch
        runs[key] = run
        if len(runs) > _TRACKED:
            del runs[next(iter(runs))]
        run[2] = mark
        run[3] += 1
        run[5].append(packed_id(event.event_id))
        del run[5][: -self.count]
        if run[3] < self.count:
            return None
        if isinstance(event, ToolCalled):
            what = f"tool {event.tool_name} was called {run[3]} times with reworded arguments"
            evidence: dict[str, Any] = {"tool_name": event.tool_name, "match": "similar_arguments"}
        else:
            what = f"agent {event.agent_id} sent {event.to_agent_id} {run[3]} reworded requests"
            evidence = {
                "agents": [compact_id(event.agent_id), compact_id(event.to_agent_id)],
                "match": "similar_messages",
            }
        return verdict(
            self.name,
            FailureClass.RUNAWAY_EXECUTION,
            state,
            event,
            reason=(
                f"{what} (each at least {self.similarity:.0%} alike to the first or the one before) within "
                f"{(t - run[4]) / 1000:g} s: one intent asked again; the limit is {self.count - 1}"
            ),
            observed=run[3],
            threshold=self.count,
            event_ids=unpacked_ids(run[5]),
            window=(run[4] + state.origin_ms, state.last_event_ms),
            calls=run[3],
            similarity=self.similarity,
            window_ms=self.window_ms,
            **evidence,
        )


def _marks(prints: list[int]) -> list[str]:
    chosen = prints if len(prints) <= _SMALL else [fp for fp in prints if not fp & _SAMPLE_MASK]
    return [f"{fp >> 48:04x}" for fp in chosen]


def _seen(seen: str, mark: str) -> bool:
    at = seen.find(mark)
    while at >= 0:
        if not at & 3:
            return True
        at = seen.find(mark, at + 1)
    return False


class NoNewInformation:
    """The session's last `calls` tool results within `window_ms` brought, together, less than
    `min_new_share` of content not seen earlier in the session."""

    kinds = frozenset({"tool.called", "tool.returned"})

    def __init__(
        self,
        *,
        name: str = "no_new_information",
        calls: int = 8,
        window_ms: int = 600_000,
        min_new_share: float = 0.1,
    ) -> None:
        if calls < 2:
            raise ValueError(f"calls must be at least 2, got {calls!r}")
        _positive(window_ms=window_ms)
        if not 0 < min_new_share <= 1:
            raise ValueError(f"min_new_share must be in (0, 1], got {min_new_share!r}")
        self.name = name
        self.calls = calls
        self.window_ms = window_ms
        self.min_new_share = min_new_share

    def observe(self, state: SessionState, event: AgentEvent, now_ms: int) -> Verdict | None:
        if isinstance(event, ToolCalled):
            note_call(state, event)
            return None
        if not isinstance(event, ToolReturned) or state.late:
            return None
        # {"seen": sampled fingerprints (4 hex digits each), "calls": [[time since the origin, new, total,
        # id], ...]}
        # Kept from the first result that carries information either way: most sessions never need it.
        own: dict[str, Any] | None = state.slots.get(self.name)
        if own is None:
            own = {"seen": "", "calls": []}
        new, total = self._information(state, event, own)
        if not total:
            return None
        state.slots[self.name] = own
        t = event.event_time_ms - state.origin_ms
        calls: list[list[Any]] = own["calls"]
        calls.append([t, new, total, packed_id(event.event_id)])
        slide(calls, state.last_event_ms - state.origin_ms, self.window_ms, limit=self.calls)
        if len(calls) < self.calls:
            return None
        got = sum(entry[1] for entry in calls)
        out_of = sum(entry[2] for entry in calls)
        share = got / out_of
        if share >= self.min_new_share:
            return None
        return verdict(
            self.name,
            FailureClass.RUNAWAY_EXECUTION,
            state,
            event,
            reason=(
                f"the last {len(calls)} tool results brought {share:.0%} new content (the rest had been seen "
                f"earlier in the session, or was the same call's same answer again); the limit is at least "
                f"{self.min_new_share:.0%} new over {self.calls} calls"
            ),
            observed=round(share, 4),
            threshold=self.min_new_share,
            event_ids=unpacked_ids(entry[3] for entry in calls),
            window=(calls[0][0] + state.origin_ms, state.last_event_ms),
            new_share=round(share, 4),
            calls=len(calls),
            tool_name=event.tool_name,
            window_ms=self.window_ms,
        )

    @staticmethod
    def _information(state: SessionState, event: ToolReturned, own: dict[str, Any]) -> tuple[int, int]:
        """(new, total) for one result: its sampled fingerprints not seen before; a result without any counts
        as (0, 1) when its call gave it already, and is left out otherwise (an edit's "ok" is no
        information, nor a lack of it)."""
        prints = event.fingerprints
        if event.status == "ok" and prints:
            marks = _marks(prints)
            if not marks:
                return 0, 0
            seen: str = own["seen"]
            fresh = [m for m in dict.fromkeys(marks) if not _seen(seen, m)]
            if fresh:
                own["seen"] = (seen + "".join(fresh))[-4 * _SEEN :]
            return len(fresh), len(set(marks))
        call = call_of(state, event)
        if call is None:
            return 0, 0
        if event.status == "ok":
            result = crc(event.result_digest or "")
        else:
            result = crc("error", event.error_type or "error")
        run = same_result_run(state, event, call, result)
        return (0, 1) if run[1] >= 2 else (0, 0)


PROGRESS_DETECTORS: Final[tuple[type[Detector], ...]] = (SimilarCalls, NoNewInformation)
