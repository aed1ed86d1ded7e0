"""Cascading failures: error bursts within a window, and errors spreading across a session's agents."""

from __future__ import annotations

import random
from collections.abc import Iterable

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents_contract import ToolCalled, ToolReturned
from detectors import FailureClass, SessionState, Verdict
from detectors._errors import ERROR_DETECTORS, ErrorBurst, ErrorPropagation, compact_id
from tests.detectors.sessions import T0, SessionUnderTest


class Session(SessionUnderTest):
    """One session's events through a suite of the detectors under test, with a sequence per agent."""

    def result(self, t: int, *, ok: bool = True, agent: str = "a1", tool: str = "search") -> list[Verdict]:
        event = ToolReturned(
            **self.envelope(t, agent),
            tool_name=tool,
            call_id=f"c{t}",
            status="ok" if ok else "error",
            error_type=None if ok else "TimeoutError",
            latency_ms=40.0,
        )
        return self.send(event)

    def call(self, t: int, agent: str = "a1") -> list[Verdict]:
        return self.send(
            ToolCalled(**self.envelope(t, agent), tool_name="search", call_id=f"c{t}", args_digest="d")
        )

    def results(self, outcomes: Iterable[tuple[int, bool]], agent: str = "a1") -> list[list[Verdict]]:
        return [self.result(t, ok=ok, agent=agent) for t, ok in outcomes]


# ErrorBurst


def test_ten_errors_within_a_minute_fire_on_the_tenth() -> None:
    s = Session(ErrorBurst(ratio=None))
    fired = s.results((i * 5_000, False) for i in range(10))
    assert fired[:9] == [[]] * 9
    (verdict,) = fired[9]
    assert verdict.detector == "error_burst"
    assert verdict.failure_class is FailureClass.CASCADING_FAILURE
    assert (verdict.observed, verdict.threshold) == (10, 10)
    assert verdict.evidence["tool_name"] == "search"
    assert verdict.evidence["error_type"] == "TimeoutError"
    assert (verdict.window_start_ms, verdict.window_end_ms) == (T0, T0 + 45_000)
    assert "10 tool calls failed" in verdict.reason


def test_errors_spread_over_more_than_the_window_do_not_fire() -> None:
    # Ten errors, 7 s apart: never more than nine inside any 60 s window.
    s = Session(ErrorBurst(ratio=None))
    assert all(v == [] for v in s.results((i * 7_000, False) for i in range(30)))


def test_a_flaky_tool_with_half_its_calls_failing_fires_the_ratio_rule() -> None:
    s = Session(ErrorBurst(count=10, ratio=0.5, min_calls=10))
    fired = s.results((i * 1_000, i % 2 == 0) for i in range(10))
    assert fired[:9] == [[]] * 9
    (verdict,) = fired[9]
    assert verdict.observed == pytest.approx(0.5)
    assert verdict.evidence["errors"] == 5
    assert verdict.evidence["results"] == 10
    assert "50%" in verdict.reason


def test_the_ratio_waits_for_min_calls() -> None:
    # Three errors out of three calls is 100%, but three calls say little.
    s = Session(ErrorBurst(count=10, ratio=0.5, min_calls=10))
    assert s.results([(0, False), (1_000, False), (2_000, False)]) == [[], [], []]


def test_a_healthy_error_share_does_not_fire() -> None:
    s = Session(ErrorBurst(count=10, ratio=0.5, min_calls=10))
    # One call in four fails, a call every 2 s for ten minutes: 7 or 8 errors a minute.
    assert all(v == [] for v in s.results((i * 2_000, i % 4 != 0) for i in range(300)))


def test_ratio_none_turns_the_ratio_rule_off() -> None:
    s = Session(ErrorBurst(count=10, ratio=None, min_calls=2))
    assert all(v == [] for v in s.results((i * 1_000, False) for i in range(9)))


def test_errors_too_late_for_the_window_are_left_out() -> None:
    s = Session(ErrorBurst(count=3, ratio=None), lateness_ms=5_000)
    s.result(100_000, ok=False)
    s.result(100_500, ok=False)
    # 30 s older than the newest event: counted in totals, not in the window.
    assert s.result(70_000, ok=False, agent="a2") == []
    assert s.result(101_000, ok=False)


def test_out_of_order_errors_within_the_lateness_count_once() -> None:
    s = Session(ErrorBurst(count=3, ratio=None))
    s.result(10_000, ok=False)
    assert s.result(8_000, ok=False, agent="a2") == []
    assert s.result(10_500, ok=False)


# ErrorPropagation


def test_errors_reaching_three_agents_within_a_minute_fire() -> None:
    s = Session(ErrorPropagation())
    assert s.result(0, ok=False, agent="planner") == []
    assert s.result(5_000, ok=False, agent="planner") == []
    assert s.result(20_000, ok=False, agent="researcher") == []
    (verdict,) = s.result(50_000, ok=False, agent="writer")
    assert verdict.failure_class is FailureClass.CASCADING_FAILURE
    assert verdict.evidence["agents"] == ["planner", "researcher", "writer"]
    # The tightest window: the planner's newest error.
    assert verdict.evidence["first_error_ms"] == T0 + 5_000
    assert (verdict.observed, verdict.threshold) == (3, 3)
    assert "planner, researcher, writer" in verdict.reason


def test_one_agent_failing_again_and_again_is_not_propagation() -> None:
    s = Session(ErrorPropagation())
    assert all(v == [] for v in s.results((i * 100, False) for i in range(200)))


def test_agent_errors_further_apart_than_the_window_do_not_fire() -> None:
    s = Session(ErrorPropagation(agents=3, window_ms=60_000))
    assert s.result(0, ok=False, agent="planner") == []
    assert s.result(40_000, ok=False, agent="researcher") == []
    assert s.result(61_000, ok=False, agent="writer") == []


def test_successes_do_not_spread_anything() -> None:
    s = Session(ErrorPropagation(agents=2))
    s.result(0, ok=False, agent="planner")
    assert s.result(1_000, ok=True, agent="writer") == []
    assert s.call(2_000, agent="writer") == []
    assert s.result(3_000, ok=False, agent="writer")


def test_long_agent_ids_stay_apart_and_short_in_the_slot() -> None:
    long_a, long_b = "x" * 100 + "a", "x" * 100 + "b"
    s = Session(ErrorPropagation(agents=2))
    s.result(0, ok=False, agent=long_a)
    (verdict,) = s.result(1_000, ok=False, agent=long_b)
    assert verdict.evidence["agents"] == [compact_id(long_a), compact_id(long_b)]
    assert len(orjson.dumps(s.state.slots)) < 120


# Properties


def _first_fire(fired: list[list[Verdict]]) -> int | None:
    return next((i for i, v in enumerate(fired) if v), None)


@given(st.lists(st.tuples(st.integers(0, 15_000), st.booleans()), max_size=150))
def test_error_burst_fires_exactly_when_a_window_crosses_a_limit(steps: list[tuple[int, bool]]) -> None:
    count, window, ratio, min_calls = 6, 30_000, 0.5, 8
    s = Session(ErrorBurst(count=count, window_ms=window, ratio=ratio, min_calls=min_calls))
    t, expected = 0, None
    seen: list[tuple[int, bool]] = []
    outcomes: list[tuple[int, bool]] = []
    for i, (gap, failed) in enumerate(steps):
        t += gap
        seen.append((t, failed))
        outcomes.append((t, not failed))
        inside = [f for u, f in seen if u >= t - window][-max(count, min_calls) * 4 :]
        errors = sum(inside)
        crossed = errors >= count or (len(inside) >= min_calls and errors / len(inside) >= ratio)
        if expected is None and crossed:
            expected = i
    assert _first_fire(s.results(outcomes)) == expected


@given(st.lists(st.tuples(st.integers(0, 30_000), st.sampled_from("abcde"), st.booleans()), max_size=100))
def test_error_propagation_fires_exactly_when_enough_agents_fail_in_a_window(
    steps: list[tuple[int, str, bool]],
) -> None:
    s = Session(ErrorPropagation(agents=3, window_ms=60_000))
    t, expected = 0, None
    errors: list[tuple[int, str]] = []
    fired: list[list[Verdict]] = []
    for i, (gap, agent, failed) in enumerate(steps):
        t += gap
        if failed:
            errors.append((t, agent))
            if expected is None and len({a for u, a in errors if u >= t - 60_000}) >= 3:
                expected = i
        fired.append(s.result(t, ok=not failed, agent=agent))
    assert _first_fire(fired) == expected


@given(st.lists(st.tuples(st.integers(1_500, 10_000), st.sampled_from("abc")), max_size=200))
def test_healthy_sessions_with_rare_errors_never_fire(steps: list[tuple[int, str]]) -> None:
    # One result in five fails, always the same agent's, at most nine a minute: below every default.
    s = Session(ErrorBurst(), ErrorPropagation())
    t = 0
    for i, (gap, agent) in enumerate(steps):
        t += gap
        failed = i % 5 == 0
        assert s.result(t, ok=not failed, agent="a1" if failed else agent) == []


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**32))
def test_state_stays_small_and_json_after_ten_thousand_out_of_order_events(seed: int) -> None:
    rng = random.Random(seed)
    s = Session(*[d() for d in ERROR_DETECTORS], lateness_ms=5_000)
    for i in range(10_000):
        # Event time jitters by up to 8 s against arrival: some within the lateness, some beyond it.
        t = i * 200 + rng.randint(-8_000, 0)
        s.result(max(t, 0), ok=rng.random() < 0.3, agent=f"agent-{rng.randint(1, 40)}")
        s.state.fired.clear()
    assert len(orjson.dumps(s.state.slots)) < 1_000
    assert SessionState.from_bytes(s.state.to_bytes()).slots == s.state.slots
    burst = s.state.slots["error_burst"]
    assert len(burst) <= 40
    assert [entry[0] for entry in burst] == sorted(entry[0] for entry in burst)
    assert len(s.state.slots["error_propagation"]) <= 3
