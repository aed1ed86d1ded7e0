"""Pace: burn-rate warnings before the cost ceiling, session deadlines, and memory write amplification."""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents_contract import Heartbeat, MemoryWritten, SessionEnded, SessionStarted, TurnCompleted
from detectors import Armed, FailureClass, SessionState, TimedDetector, Verdict
from detectors._pace import PACE_DETECTORS, BurnRate, MemoryWriteAmplification, SessionDeadline
from tests.detectors.sessions import T0, SessionUnderTest

HOUR = 3_600_000


class Session(SessionUnderTest):
    def start(self, t: int = 0) -> list[Verdict]:
        return self.send(SessionStarted(**self.envelope(t, "a1"), task="report"))

    def end(self, t: int) -> list[Verdict]:
        return self.send(SessionEnded(**self.envelope(t, "a1")))

    def turn(self, t: int, cost: float, agent: str = "a1") -> list[Verdict]:
        return self.send(
            TurnCompleted(
                **self.envelope(t, agent),
                model="gpt-4o",
                input_tokens=4_000,
                output_tokens=500,
                cost_usd=cost,
            )
        )

    def write(self, t: int, agent: str = "a1") -> list[Verdict]:
        return self.send(MemoryWritten(**self.envelope(t, agent), store="notes", key="k", fingerprints=[1]))

    def heartbeat(self, t: int, agent: str = "a1") -> list[Verdict]:
        return self.send(Heartbeat(**self.envelope(t, agent)))


# BurnRate


def test_burn_rate_warns_long_before_the_ceiling_is_hit() -> None:
    # $0.50 a turn every 5 s is $6/min: a $10 ceiling goes in under two minutes.
    s = Session(BurnRate(ceiling_usd=10.0, window_ms=60_000, horizon_ms=300_000))
    s.start()
    (verdict,) = s.turn(5_000, 0.50)
    assert s.state.cost_usd == pytest.approx(0.5)
    assert verdict.detector == "burn_rate"
    assert verdict.failure_class is FailureClass.RUNAWAY_EXECUTION
    assert verdict.advisory
    assert not verdict.kills
    assert verdict.evidence["rate_usd_per_min"] == pytest.approx(6.0)
    assert verdict.evidence["eta_ms"] == 95_000
    assert verdict.evidence["crosses_at_ms"] == T0 + 100_000
    assert verdict.threshold == 10.0
    assert verdict.observed > verdict.threshold
    assert "$6.00/min" in verdict.reason
    assert "in about 95 s" in verdict.reason


def test_an_advisory_never_kills_even_in_enforce_mode() -> None:
    s = Session(Armed(BurnRate(ceiling_usd=1.0), mode="enforce"))
    s.start()
    (verdict,) = s.turn(1_000, 0.2)
    assert verdict.mode == "enforce"
    assert not verdict.kills


def test_a_slow_session_gets_no_warning() -> None:
    # A cent every 10 s is $0.06/min: $0.30 over the five-minute horizon.
    s = Session(BurnRate(ceiling_usd=10.0))
    s.start()
    assert all(s.turn(i * 10_000, 0.01) == [] for i in range(1, 200))


def test_the_rate_is_the_recent_window_not_the_lifetime() -> None:
    s = Session(BurnRate(ceiling_usd=10.0, window_ms=60_000, horizon_ms=150_000, min_spend_usd=0.5))
    s.start()
    assert all(s.turn(i * 30_000, 0.01) == [] for i in range(1, 20))
    # Then $0.50 every 10 s: at the sixth, $3 in the last minute, and the $6.81 left goes in 2.3 min.
    fired = [s.turn(600_000 + i * 10_000, 0.5) for i in range(1, 7)]
    assert fired[:-1] == [[]] * 5
    (verdict,) = fired[-1]
    assert verdict.evidence["covered_ms"] == 60_000
    assert verdict.evidence["window_spend_usd"] == pytest.approx(3.0, abs=0.02)


def test_no_projection_from_pennies() -> None:
    s = Session(BurnRate(ceiling_usd=0.05, min_spend_usd=0.5))
    s.start()
    assert s.turn(1_000, 0.04) == []


def test_a_session_over_its_ceiling_is_the_ceilings_business() -> None:
    s = Session(BurnRate(ceiling_usd=1.0))
    s.start()
    assert s.turn(60_000, 1.5) == []


def test_late_spend_counts_in_the_total_not_in_the_rate() -> None:
    s = Session(BurnRate(ceiling_usd=10.0, min_spend_usd=0.5), lateness_ms=5_000)
    s.start()
    s.heartbeat(120_000)
    assert s.turn(60_000, 5.0, agent="a2") == []
    assert s.state.cost_usd == pytest.approx(5.0)
    assert "burn_rate" not in s.state.slots


# SessionDeadline


def test_a_session_past_its_deadline_fires_on_its_next_event() -> None:
    deadline = SessionDeadline(max_duration_ms=HOUR)
    s = Session(deadline)
    s.start()
    assert s.heartbeat(HOUR) == []
    (verdict,) = s.heartbeat(HOUR + 1)
    assert verdict.detector == "session_deadline"
    assert verdict.failure_class is FailureClass.RUNAWAY_EXECUTION
    assert (verdict.observed, verdict.threshold) == (HOUR + 1, HOUR)
    assert verdict.evidence["started_ms"] == T0
    assert "running for 60 min; the limit is 60 min" in verdict.reason


def test_a_silent_session_past_its_deadline_fires_on_the_timer() -> None:
    deadline = SessionDeadline(max_duration_ms=HOUR)
    assert isinstance(deadline, TimedDetector)
    s = Session(deadline)
    s.start()
    s.turn(30_000, 0.1)
    assert s.suite.expire(s.state, T0 + HOUR) == []
    (verdict,) = s.suite.expire(s.state, T0 + HOUR + 5_000)
    assert (verdict.event_id, verdict.evidence["kind"]) == ("", "timer")
    assert (verdict.window_start_ms, verdict.window_end_ms) == (T0, T0 + HOUR + 5_000)


def test_an_ended_session_has_no_deadline() -> None:
    deadline = SessionDeadline(max_duration_ms=HOUR)
    s = Session(deadline)
    s.start()
    s.end(10_000)
    assert deadline.expire(s.state, T0 + 2 * HOUR) is None
    # A straggler event of the ended session does not fire it either.
    assert s.heartbeat(2 * HOUR, agent="a2") == []


def test_a_session_with_no_events_has_no_deadline() -> None:
    assert SessionDeadline(max_duration_ms=1).expire(SessionState("s-1"), T0) is None


# MemoryWriteAmplification


def test_more_than_fifty_writes_a_minute_warn() -> None:
    s = Session(MemoryWriteAmplification(writes=50, window_ms=60_000))
    fired = [s.write(i * 1_000) for i in range(51)]
    assert fired[:50] == [[]] * 50
    (verdict,) = fired[50]
    assert verdict.detector == "memory_write_amplification"
    assert verdict.failure_class is FailureClass.MEMORY_CORRUPTION
    assert verdict.advisory
    assert not verdict.kills
    assert (verdict.observed, verdict.threshold) == (51, 50)
    assert verdict.evidence["store"] == "notes"
    assert (verdict.window_start_ms, verdict.window_end_ms) == (T0, T0 + 50_000)


def test_a_steady_writer_below_the_rate_never_warns() -> None:
    s = Session(MemoryWriteAmplification(writes=50, window_ms=60_000))
    # A write every 1.25 s: 49 in any minute, for an hour.
    assert all(s.write(i * 1_250) == [] for i in range(2_880))


def test_late_writes_are_left_out_of_the_window() -> None:
    s = Session(MemoryWriteAmplification(writes=2, window_ms=60_000))
    s.write(100_000)
    s.write(100_100)
    assert s.write(90_000, agent="a2") == []
    assert s.write(100_200)


# Properties


@given(st.lists(st.tuples(st.integers(1_000, 20_000), st.floats(0, 0.01)), max_size=200))
def test_spend_too_slow_to_cross_the_ceiling_within_the_horizon_never_warns(
    turns: list[tuple[int, float]],
) -> None:
    # At most a cent a second, at most $2 in all: under $8 by the end of any five-minute horizon.
    s = Session(BurnRate(ceiling_usd=10.0))
    s.start()
    t = 0
    for gap, cost in turns:
        t += gap
        assert s.turn(t, cost) == []


@given(st.lists(st.integers(0, 3_000), max_size=150))
def test_write_amplification_fires_exactly_when_a_window_holds_too_many(gaps: list[int]) -> None:
    s = Session(MemoryWriteAmplification(writes=20, window_ms=30_000))
    t, expected = 0, None
    times: list[int] = []
    fired: list[list[Verdict]] = []
    for i, gap in enumerate(gaps):
        t += gap
        times.append(t)
        if expected is None and sum(1 for u in times if u >= t - 30_000) > 20:
            expected = i
        fired.append(s.write(t))
    assert next((i for i, v in enumerate(fired) if v), None) == expected


@given(st.lists(st.integers(0, 20 * 60_000), min_size=1, max_size=60))
def test_the_deadline_fires_exactly_on_the_first_event_past_it(times: list[int]) -> None:
    s = Session(SessionDeadline(max_duration_ms=HOUR))
    first = times[0]
    expected = None
    for i, t in enumerate(sorted(times)):
        first = min(first, t)
        if expected is None and t - first > HOUR:
            expected = i
    fired = [s.heartbeat(t) for t in sorted(times)]
    assert next((i for i, v in enumerate(fired) if v), None) == expected


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**32))
def test_state_stays_small_and_json_after_ten_thousand_out_of_order_events(seed: int) -> None:
    rng = random.Random(seed)
    s = Session(*[d() for d in PACE_DETECTORS])
    s.start()
    for i in range(10_000):
        t = max(i * 100 + rng.randint(-8_000, 0), 0)
        agent = f"agent-{rng.randint(1, 20)}"
        if rng.random() < 0.5:
            s.turn(t, rng.choice([0.0, 0.002, 0.3]), agent)
        else:
            s.write(t, agent)
        s.state.fired.clear()
    assert len(s.state.slots["burn_rate"]) <= 17
    assert len(s.state.slots["memory_write_amplification"]) <= 51
    assert len(orjson.dumps(s.state.slots)) < 1_500
    restored = SessionState.from_bytes(s.state.to_bytes())
    assert restored.slots == s.state.slots
    assert restored.cost_usd == pytest.approx(s.state.cost_usd)
