"""Runaway loops: repeated tool calls, cycles, agent ping-pong, no progress, monologues, repeated errors."""

from __future__ import annotations

import random
from collections.abc import Callable

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents_contract import MessageSent, ToolCalled, ToolReturned, TurnCompleted
from detectors import Detector, FailureClass, SessionState, Verdict
from detectors._loops import (
    LOOP_DETECTORS,
    AgentPingPong,
    CyclicPattern,
    Monologue,
    NoProgress,
    RepeatedError,
    RepeatedToolCall,
)
from tests.detectors.sessions import T0, SessionUnderTest


class Session(SessionUnderTest):
    """One session's events through a suite of loop detectors, with a sequence per agent."""

    def call(
        self, t: int, tool: str = "search", args: str = "d", agent: str = "a1", call_id: str | None = None
    ) -> list[Verdict]:
        return self.send(
            ToolCalled(
                **self.envelope(t, agent), tool_name=tool, call_id=call_id or f"c{t}", args_digest=args
            )
        )

    def result(
        self,
        t: int,
        digest: str | None = "r",
        *,
        tool: str = "search",
        error: str | None = None,
        prints: list[int] | None = None,
        agent: str = "a1",
        call_id: str | None = None,
    ) -> list[Verdict]:
        return self.send(
            ToolReturned(
                **self.envelope(t, agent),
                tool_name=tool,
                call_id=call_id or f"c{t}",
                status="ok" if error is None else "error",
                error_type=error,
                result_digest=digest,
                latency_ms=40.0,
                fingerprints=prints,
            )
        )

    def message(self, t: int, sender: str, to: str, digest: str) -> list[Verdict]:
        return self.send(MessageSent(**self.envelope(t, sender), to_agent_id=to, content_digest=digest))

    def turn(self, t: int, output: str | None = "o", agent: str = "a1") -> list[Verdict]:
        return self.send(
            TurnCompleted(
                **self.envelope(t, agent), model="m", input_tokens=10, output_tokens=5, output_digest=output
            )
        )


def fires_at(outcomes: list[list[Verdict]]) -> list[int]:
    return [i for i, v in enumerate(outcomes) if v]


# RepeatedToolCall


def test_the_fifth_identical_call_within_five_minutes_fires_and_the_fourth_does_not() -> None:
    s = Session(RepeatedToolCall())
    fired = [s.call(i * 10_000) for i in range(5)]
    assert fired[:4] == [[]] * 4
    (v,) = fired[4]
    assert (v.detector, v.failure_class) == ("repeated_tool_call", FailureClass.RUNAWAY_EXECUTION)
    assert (v.observed, v.threshold) == (5, 5)
    assert v.evidence["tool_name"] == "search"
    assert v.evidence["match"] == "same_arguments"
    assert v.event_ids == tuple(f"e-a1-{i}" for i in range(1, 6))
    assert v.event_ids[-1] == v.event_id == "e-a1-5"
    assert (v.window_start_ms, v.window_end_ms) == (T0, T0 + 40_000)


def test_identical_calls_that_fell_out_of_the_window_do_not_count() -> None:
    s = Session(RepeatedToolCall(count=3, window_ms=10_000))
    assert [s.call(t) for t in (0, 6_000, 12_000)] == [[], [], []]
    (v,) = s.call(14_000)
    assert v.event_ids == ("e-a1-2", "e-a1-3", "e-a1-4")
    assert (v.window_start_ms, v.window_end_ms) == (T0 + 6_000, T0 + 14_000)


def test_calls_with_different_arguments_or_tools_are_not_repeats() -> None:
    s = Session(RepeatedToolCall(count=3))
    assert all(s.call(i, args=f"d{i}") == [] for i in range(20))
    assert all(s.call(100 + i, tool=f"tool{i}", args="same") == [] for i in range(20))


def called(
    s: Session, t: int, args: str, result: str | None = "r", error: str | None = None
) -> list[Verdict]:
    """One call and its result, a second apart in the call's own id."""
    tool = "click" if args.startswith("#") else "search"
    s.call(t, tool=tool, args=args, call_id=f"k{t}")
    return s.result(t + 500, result, tool=tool, error=error, call_id=f"k{t}")


def test_the_same_click_changing_nothing_fires_on_its_third_time_among_other_actions() -> None:
    s = Session(RepeatedToolCall())
    fired = []
    for i in range(3):
        fired.append(called(s, i * 10_000, "#load-more", "page unchanged"))
        fired.append(called(s, i * 10_000 + 3_000, f"scroll {i}", f"viewport {i}"))
    assert fires_at(fired) == [4]
    (v,) = fired[4]
    assert (v.evidence["match"], v.evidence["tool_name"], v.observed) == ("same_result", "click", 3)
    assert v.event_ids == ("e-a1-2", "e-a1-6", "e-a1-10")


def test_a_click_whose_result_changes_is_not_a_repeat() -> None:
    s = Session(RepeatedToolCall(count=10))
    results = ["p1", "p1", "p2", "p2", "p3", "p3"]
    assert fires_at([called(s, i * 1_000, "#next", r) for i, r in enumerate(results)]) == []
    assert fires_at([called(s, 10_000 + i * 1_000, "#next", "p3") for i in range(1)]) == [0]


def test_same_results_are_counted_within_the_window_and_can_be_switched_off() -> None:
    s = Session(RepeatedToolCall(window_ms=60_000))
    assert fires_at([called(s, i * 40_000, "#next", "same") for i in range(4)]) == []
    off = Session(RepeatedToolCall(same_result_count=None))
    assert fires_at([called(off, i * 1_000, "#next", "same") for i in range(4)]) == []


def test_failures_are_not_same_results() -> None:
    s = Session(RepeatedToolCall())
    assert fires_at([called(s, i * 1_000, "#pay", None, "TimeoutError") for i in range(4)]) == []


# CyclicPattern


def test_search_fetch_search_fetch_fires_on_the_sixth_call_with_period_two() -> None:
    s = Session(CyclicPattern())
    fired = [s.call(i, tool=("search", "fetch")[i % 2]) for i in range(6)]
    assert fires_at(fired) == [5]
    (v,) = fired[5]
    assert (v.detector, v.failure_class) == ("cyclic_pattern", FailureClass.RUNAWAY_EXECUTION)
    assert (v.evidence["period"], v.evidence["repeats"]) == (2, 3)
    assert v.event_ids == tuple(f"e-a1-{i}" for i in range(1, 7))


def test_a_cycle_of_three_calls_fires_on_its_third_round_with_period_three() -> None:
    s = Session(CyclicPattern())
    fired = [s.call(i, tool="abc"[i % 3]) for i in range(9)]
    assert fires_at(fired) == [8]
    assert fired[8][0].evidence["period"] == 3


def test_one_call_repeated_is_not_a_cycle() -> None:
    s = Session(CyclicPattern())
    assert all(s.call(i) == [] for i in range(30))


def test_a_cycle_broken_on_its_last_call_does_not_fire() -> None:
    s = Session(CyclicPattern())
    assert all(s.call(i, tool=tool) == [] for i, tool in enumerate("ABABAC"))


# AgentPingPong


def test_two_agents_bouncing_the_same_two_messages_fire_at_the_exchange_limit() -> None:
    s = Session(AgentPingPong(exchanges=4))
    fired = [s.message(i, *(("a1", "a2", "x"), ("a2", "a1", "y"))[i % 2]) for i in range(6)]
    assert fires_at(fired) == [5]
    (v,) = fired[5]
    assert v.evidence["agents"] == ["a1", "a2"]
    assert (v.evidence["exchanges"], v.evidence["distinct_messages"]) == (4, 2)
    assert v.event_ids[-1] == v.event_id


def test_agents_saying_something_new_each_time_never_fire() -> None:
    s = Session(AgentPingPong(exchanges=2))
    assert all(s.message(i, *(("a1", "a2"), ("a2", "a1"))[i % 2], f"m{i}") == [] for i in range(50))


def test_a_message_between_another_pair_restarts_the_exchange() -> None:
    s = Session(AgentPingPong(exchanges=3))
    pairs = [("a1", "a2", "x"), ("a2", "a1", "y")]
    assert [s.message(i, *pairs[i % 2]) for i in range(4)] == [[]] * 4
    assert s.message(4, "a1", "a3", "z") == []
    assert fires_at([s.message(5 + i, *pairs[(i + 1) % 2]) for i in range(5)]) == [4]


# NoProgress


def test_the_same_output_three_turns_in_a_row_fires() -> None:
    s = Session(NoProgress())
    fired = [s.turn(i, "same") for i in range(3)]
    assert fires_at(fired) == [2]
    (v,) = fired[2]
    assert (v.evidence["turns"], v.evidence["output_digest"], v.evidence["model"]) == (3, "same", "m")
    assert v.event_ids == ("e-a1-1", "e-a1-2", "e-a1-3")


def test_a_different_output_in_between_resets_the_count() -> None:
    s = Session(NoProgress())
    assert [s.turn(i, out) for i, out in enumerate("xxyxx")] == [[]] * 5
    assert s.turn(5, "x") != []


def test_no_progress_is_counted_per_agent() -> None:
    s = Session(NoProgress())
    # Three "x" turns in the session, but from two agents: neither repeated itself three times.
    turns = [s.turn(0, "x", "a1"), s.turn(1, "x", "a2"), s.turn(2, "x", "a1"), s.turn(3, "y", "a2")]
    assert fires_at(turns) == []
    (v,) = s.turn(4, "x", "a1")
    assert v.evidence["agent_id"] == "a1"


# Monologue


def test_turns_in_a_row_without_acting_fire_once_the_turn_after_them_completes() -> None:
    s = Session(Monologue(turns=4))
    fired = [s.turn(i, f"o{i}") for i in range(5)]
    assert fires_at(fired) == [4]
    assert fired[4][0].evidence["turns"] == 4


def test_a_tool_call_or_a_message_in_between_resets_the_monologue() -> None:
    s = Session(Monologue(turns=4))
    assert all(s.turn(i) == [] for i in range(4))
    s.call(4)
    assert all(s.turn(i) == [] for i in range(5, 9))
    s.message(9, "a1", "a2", "hi")
    assert all(s.turn(i) == [] for i in range(10, 14))
    s.call(14, agent="a2")  # another agent acting does not stop a1's monologue
    assert s.turn(15) != []


def test_the_tool_call_reported_after_its_turn_makes_that_turn_an_acting_one() -> None:
    # The SDK publishes turn.completed, then the tool.called that the turn's output asked for.
    s = Session(Monologue(turns=3))
    outcomes = []
    for i in range(12):
        outcomes.append(s.turn(i * 10))
        s.call(i * 10 + 1, args=f"lookup {i}")
    assert fires_at(outcomes) == []


def test_a_support_dialogue_where_the_user_writes_between_the_answers_is_no_monologue() -> None:
    s = Session(Monologue(turns=3))
    outcomes = [s.turn(0)]
    s.call(1, args="order")
    for i in range(1, 12):
        s.message(i * 10, "user", "a1", f"question {i}")
        outcomes.append(s.turn(i * 10 + 5))
    assert fires_at(outcomes) == []


# RepeatedError


def test_one_tool_failing_the_same_way_three_times_fires() -> None:
    s = Session(RepeatedError())
    fired = [s.result(i, None, error="TimeoutError") for i in range(3)]
    assert fires_at(fired) == [2]
    (v,) = fired[2]
    evidence = {k: v.evidence[k] for k in ("tool_name", "error_type", "failures")}
    assert evidence == {"tool_name": "search", "error_type": "TimeoutError", "failures": 3}


def test_a_success_or_another_error_class_breaks_the_run() -> None:
    s = Session(RepeatedError())
    errors = ["T", "T", None, "T", "T", "V", "T", "T"]
    assert all(s.result(i, None if e else "r", error=e) == [] for i, e in enumerate(errors))
    assert s.result(8, None, error="T") != []


def test_another_tools_results_do_not_break_the_run() -> None:
    s = Session(RepeatedError())
    assert s.result(0, None, error="T") == []
    assert s.result(1, "r", tool="fetch") == []
    assert s.result(2, None, tool="fetch", error="V") == []
    assert s.result(3, None, error="T") == []
    assert s.result(4, None, error="T") != []


# Every detector

Step = Callable[[Session, int, int], list[Verdict]]
LOOPS: list[tuple[Detector, int, Step]] = [
    (RepeatedToolCall(count=3), 3, lambda s, i, t: s.call(t)),
    (CyclicPattern(), 6, lambda s, i, t: s.call(t, tool="AB"[i % 2])),
    (AgentPingPong(exchanges=2), 3, lambda s, i, t: s.message(t, f"a{i % 2}", f"a{1 - i % 2}", "x")),
    (NoProgress(), 3, lambda s, i, t: s.turn(t)),
    (Monologue(turns=3), 4, lambda s, i, t: s.turn(t, f"o{i}")),
    (RepeatedError(), 3, lambda s, i, t: s.result(t, None, error="T")),
]
loops = pytest.mark.parametrize(("detector", "n", "step"), LOOPS, ids=[d.name for d, _, _ in LOOPS])


@loops
def test_a_detector_fires_once_per_session_however_long_the_loop(
    detector: Detector, n: int, step: Step
) -> None:
    s = Session(detector)
    assert sum(len(step(s, i, i * 100)) for i in range(10 * n)) == 1
    assert s.state.fired == [detector.name]


@loops
def test_events_later_than_the_allowed_lateness_are_left_out(detector: Detector, n: int, step: Step) -> None:
    s = Session(detector, lateness_ms=5_000)
    assert all(step(s, i, 100_000 + i) == [] for i in range(n - 1))
    assert step(s, n - 1, 90_000) == []  # would complete the loop, but is 10 s behind
    assert step(s, n - 1, 100_500) != []


@loops
def test_replayed_events_are_dropped(detector: Detector, n: int, step: Step) -> None:
    s = Session(detector)
    assert all(step(s, i, i) == [] for i in range(n - 1))
    assert s.last is not None
    replay = s.last
    assert all(s.suite.observe(s.state, replay).duplicate for _ in range(n))
    assert step(s, n - 1, n) != []


@loops
def test_a_loop_half_seen_survives_a_checkpoint(detector: Detector, n: int, step: Step) -> None:
    s = Session(detector)
    assert all(step(s, i, i) == [] for i in range(n - 1))
    restored = SessionState.from_bytes(s.state.to_bytes())
    assert restored.slots == s.state.slots
    s.state = restored
    assert step(s, n - 1, n) != []


BAD: list[tuple[Callable[..., Detector], str, int]] = [
    (RepeatedToolCall, "count", 1),
    (RepeatedToolCall, "window_ms", 0),
    (CyclicPattern, "max_period", 1),
    (CyclicPattern, "repeats", 1),
    (AgentPingPong, "exchanges", 1),
    (NoProgress, "repeats", 1),
    (Monologue, "turns", 0),
    (RepeatedError, "count", 1),
]


@pytest.mark.parametrize(("kind", "key", "value"), BAD)
def test_parameters_that_cannot_mean_a_loop_are_refused(
    kind: Callable[..., Detector], key: str, value: int
) -> None:
    with pytest.raises(ValueError, match=f"{key} must be at least"):
        kind(**{key: value})


# Properties


@given(
    st.lists(st.tuples(st.integers(0, 20_000), st.sampled_from("ab"), st.sampled_from("xyz")), max_size=80)
)
def test_repeated_tool_call_fires_only_on_a_real_repeat(steps: list[tuple[int, str, str]]) -> None:
    count, window = 4, 60_000
    s = Session(RepeatedToolCall(count=count, window_ms=window))
    t, calls, verdicts = 0, list[tuple[int, str, str, str]](), list[Verdict]()
    for gap, tool, args in steps:
        t += gap
        calls.append((t, tool, args, f"e-a1-{len(calls) + 1}"))
        verdicts += s.call(t, tool, args)
        in_a_row = calls[-count:]
        if len(in_a_row) == count and len({c[1:3] for c in in_a_row}) == 1 and t - in_a_row[0][0] <= window:
            assert verdicts, "count identical calls in a row within the window must have fired"
    assert len(verdicts) <= 1
    if verdicts:
        named = [c for c in calls if c[3] in verdicts[0].event_ids]
        assert len(named) >= count
        assert len({c[1:3] for c in named}) == 1
        assert named[-1][0] - named[0][0] <= window


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32))
def test_any_mix_of_events_and_replays_keeps_state_small(seed: int) -> None:
    rng = random.Random(seed)
    s = Session(*[d() for d in LOOP_DETECTORS])
    agents = ["a1", "a2", "a3", "b" * 120, "c" * 120, "a6"]
    for i in range(1_000):
        agent, t = rng.choice(agents), max(0, i * 300 + rng.randint(-9_000, 0))
        pick = rng.randrange(5)
        if rng.random() < 0.1 and s.last is not None:
            s.send(s.last)  # a replay
        elif pick == 0:
            s.call(t, rng.choice("abc"), rng.choice("xy"), agent)
        elif pick == 1:
            prints = [rng.randrange(2**64) for _ in range(rng.randrange(65))] or None
            digest, error = rng.choice(["r", "q", None]), rng.choice([None, "T"])
            s.result(t, digest, error=error, prints=prints, agent=agent)
        elif pick == 2:
            s.message(t, agent, rng.choice(agents), rng.choice("xyz"))
        else:
            s.turn(t, rng.choice(["o", "p", None]), agent)
        s.state.fired.clear()
    raw = s.state.to_bytes()
    assert len(raw) < 4_096
    assert SessionState.from_bytes(raw).slots == s.state.slots


@loops
def test_a_loop_half_seen_before_relative_window_times_carries_on(
    detector: Detector, n: int, step: Step
) -> None:
    # A format-4 checkpoint held absolute event times in the windows; read today it has an origin of 0.
    s = Session(detector)
    s.state.events = 1  # the origin is fixed by a session's first event: here it stays 0, as before format 5
    assert all(step(s, i, i) == [] for i in range(n - 1))
    fmt, *fields, origin, open_agents = orjson.loads(s.state.to_bytes())
    assert (fmt, origin, open_agents) == (6, 0, 0)
    s.state = SessionState.from_bytes(orjson.dumps([4, *fields]))
    assert s.state.origin_ms == 0
    assert step(s, n - 1, n) != []


@loops
def test_windows_keep_times_since_the_sessions_first_event(detector: Detector, n: int, step: Step) -> None:
    s = Session(detector)
    assert all(step(s, i, 1_000 + i) == [] for i in range(n - 1))
    assert s.state.origin_ms == T0 + 1_000
    assert str(T0)[:6] not in orjson.dumps(s.state.slots).decode()
    verdicts = step(s, n - 1, 1_000 + n)
    assert verdicts != []
    assert verdicts[0].window_start_ms >= T0 + 1_000


def test_only_the_sdks_lowercase_hex_ids_are_packed_and_they_come_back_the_same() -> None:
    from detectors._window import packed_id, unpacked_ids

    sdk = "0123456789abcdef" * 2
    packed = packed_id(sdk)
    assert (len(packed), packed[0]) == (23, "~")
    assert unpacked_ids([packed]) == [sdk]
    for kept in (sdk.upper(), "0123456789abcdef 123456789abcdef", "g" * 32, sdk[:31], sdk + "0", "e-1"):
        assert packed_id(kept) == kept
