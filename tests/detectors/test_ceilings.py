"""Per-session ceilings: fire on the event that crosses the limit, once, and never on replays."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from agents_contract import AgentEvent, Heartbeat, ToolCalled, TurnCompleted, TurnStarted
from detectors import CeilingLimits, DetectorSuite, FailureClass, SessionState, ceilings


def _envelope(seq: int, agent: str = "a1") -> dict[str, Any]:
    return {
        "event_id": f"e-{agent}-{seq}",
        "session_id": "s-1",
        "agent_id": agent,
        "tenant_id": "acme",
        "user_id": "u-1",
        "seq": seq,
        "event_time_ms": 1_000 + seq,
    }


def tool_call(seq: int, agent: str = "a1") -> AgentEvent:
    return ToolCalled(**_envelope(seq, agent), tool_name="search", call_id=f"c{seq}", args_digest="d")


def turn(seq: int, *, tokens: int = 0, cost: float = 0.0) -> AgentEvent:
    return TurnCompleted(**_envelope(seq), model="m", input_tokens=tokens, output_tokens=0, cost_usd=cost)


def suite(**limits: Any) -> DetectorSuite:
    base: dict[str, Any] = {"max_steps": None, "max_tokens": None, "max_cost_usd": None}
    return DetectorSuite(ceilings(CeilingLimits(**{**base, **limits})), clock=lambda: 5_000)


def test_step_ceiling_allows_the_limit_and_fires_on_the_next_step() -> None:
    s, state = suite(max_steps=3), SessionState("s-1")
    fired = [s.observe(state, tool_call(i)).verdicts for i in range(1, 5)]
    assert fired[:3] == [[], [], []]
    (verdict,) = fired[3]
    assert verdict.detector == "max_steps"
    assert verdict.failure_class is FailureClass.RUNAWAY_EXECUTION
    assert (verdict.observed, verdict.threshold, verdict.seq) == (4, 3, 4)
    assert verdict.event_id == "e-a1-4"


def test_turns_and_tool_calls_are_steps_heartbeats_are_not() -> None:
    s, state = suite(max_steps=2), SessionState("s-1")
    s.observe(state, Heartbeat(**_envelope(1)))
    s.observe(state, TurnStarted(**_envelope(2), model="m"))
    s.observe(state, tool_call(3))
    assert state.steps == 2


def test_cost_and_token_ceilings_sum_turn_usage() -> None:
    s, state = suite(max_cost_usd=1.0, max_tokens=1_000), SessionState("s-1")
    assert s.observe(state, turn(1, tokens=600, cost=0.6)).verdicts == []
    names = {v.detector for v in s.observe(state, turn(2, tokens=600, cost=0.6)).verdicts}
    assert names == {"max_cost_usd", "max_tokens"}


def test_a_killed_session_is_not_judged_again() -> None:
    s, state = suite(max_steps=1), SessionState("s-1")
    s.observe(state, tool_call(1))
    assert s.observe(state, tool_call(2)).verdicts
    state.killed_by = "max_steps"
    assert s.observe(state, tool_call(3)).verdicts == []
    assert state.steps == 3


def test_replayed_events_are_dropped_and_not_counted() -> None:
    s, state = suite(max_steps=10), SessionState("s-1")
    for i in (1, 2, 3):
        s.observe(state, tool_call(i))
    assert s.observe(state, tool_call(2)).duplicate
    assert state.steps == 3


def test_each_agent_has_its_own_sequence() -> None:
    s, state = suite(max_steps=10), SessionState("s-1")
    s.observe(state, tool_call(1, "a1"))
    assert not s.observe(state, tool_call(1, "a2")).duplicate
    assert state.steps == 2


@given(st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=200))
def test_any_mix_of_replays_and_reordering_counts_each_event_once(seqs: list[int]) -> None:
    s, state = suite(max_steps=10_000), SessionState("s-1")
    for seq in seqs:
        s.observe(state, tool_call(seq))
    assert state.steps == len(set(seqs))


@given(st.lists(st.integers(min_value=1, max_value=10**15), max_size=50))
def test_state_survives_its_checkpoint_bytes(seqs: list[int]) -> None:
    s, state = suite(max_steps=10_000), SessionState("s-1")
    for seq in seqs:
        s.observe(state, turn(seq, tokens=7, cost=0.25))
    # `late` belongs to the event being judged, not to the session: it is not checkpointed.
    assert SessionState.from_bytes(state.to_bytes()) == replace(state, late=False)
